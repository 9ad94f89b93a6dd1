"""Pipeline-wide sections of a profile: where a run writes (``run``) and the Ray it runs on
(``ray``). No component computes with them, so they live with the composition.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from components.config_base import StrictModel


class RunConfig(StrictModel):
    """Where a pipeline run writes and how it is tracked."""

    name: str = Field("rankbrew", description="Pipeline name; also the MLflow experiment name.")
    work_dir: Path = Field(
        Path("runs/local"),
        description="Artifacts, caches and the default MLflow store live here (relative paths "
        "are resolved against the directory the command is run from).",
    )
    mlflow_tracking_uri: str | None = Field(
        None, description="Defaults to sqlite:///<work_dir>/mlflow.db (absolute, so Ray workers agree)."
    )
    artifact_root: str | None = Field(
        None, description="Also publish every finished stage artifact here, and restore from "
        "here what <work_dir>/artifacts lacks: a path or a pyarrow.fs URI (file://, "
        "s3://<bucket>/<prefix>, gs://<bucket>/<prefix>), so a new cluster or a node without "
        "the shared work dir reuses finished stages. null: the work dir only.")
    mlflow_artifact_root: str | None = Field(
        None, description="Artifact location of a new MLflow experiment (s3://, gs://, a "
        "path). Default: <work_dir>/mlartifacts with a local store; the tracking server's own "
        "default artifact root with an http(s) one.")
    seed: int = 0


class RayConfig(StrictModel):
    """How to reach Ray: ``address: null`` starts a local Ray for the run."""

    address: str | None = None
    num_cpus: int | None = Field(None, description="CPUs for a local Ray (default: all).")
    include_dashboard: bool = Field(True, description="Start the Ray dashboard with a local "
                                    "Ray (http://127.0.0.1:8265). It also serves the State "
                                    "API, which Ray Train's placement-group cleaner polls: "
                                    "without it every Train stage logs 'State API may be "
                                    "temporarily unavailable' every few seconds.")
