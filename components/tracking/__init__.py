"""MLflow helpers shared by every stage: tracking URI, tags, params, nested runs.

Why here and not in each stage: every run must carry the same tags (git sha, config
hash, stage key) so that data scientists can filter and compare runs in MLflow, and
the tracking URI must be absolute so Ray workers in other directories agree on it.
MLflow is imported lazily: components stay importable where MLflow is absent (the GPU
machine).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

TAG_GIT_SHA = "rankbrew.git_sha"
TAG_CONFIG_HASH = "rankbrew.config_hash"
TAG_STAGE = "rankbrew.stage"
TAG_STAGE_KEY = "rankbrew.stage_key"
TAG_CACHED = "rankbrew.cached"
TAG_PROFILE = "rankbrew.profile"
TAG_KIND = "rankbrew.kind"


def default_tracking_uri(work_dir: Path) -> str:
    """``sqlite:////abs/path/mlflow.db``: absolute, so every Ray worker writes the same store."""
    return f"sqlite:///{(Path(work_dir).resolve() / 'mlflow.db')}"


def configure(tracking_uri: str) -> None:
    """Point MLflow at the store, quietly (no telemetry, no emoji banners in logs)."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)


def git_sha(repo: Path | None = None) -> str:
    """The commit of the code that ran (``-dirty`` when there are uncommitted changes)."""
    repo = repo or Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo, capture_output=True, text=True, check=True,
        ).stdout.strip()
        return f"{sha}-dirty" if dirty else sha
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config dict -> ``{"data.synthetic.members": "1000"}`` for ``log_params``."""
    out: dict[str, str] = {}
    for k, v in params.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = str(v)[:6000]  # MLflow's param value limit
    return out


def experiment_id(name: str, artifact_root: Path | None = None) -> str:
    """Get or create the experiment (races between processes are tolerated).

    ``artifact_root`` pins artifacts to an absolute directory: MLflow's default
    (``./mlruns`` of the current directory) would scatter them across Ray workers.
    """
    import mlflow

    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        location = Path(artifact_root).resolve().as_uri() if artifact_root else None
        return mlflow.create_experiment(name, artifact_location=location)
    except Exception:  # another process created it first
        exp = mlflow.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


@contextmanager
def child_run(
    parent_run_id: str, experiment: str, run_name: str, tags: Mapping[str, str]
) -> Iterator[Any]:
    """A nested run under ``parent_run_id``, usable from any process (Ray worker)."""
    import mlflow

    with mlflow.start_run(
        run_name=run_name,
        experiment_id=experiment,
        parent_run_id=parent_run_id,
        tags=dict(tags),
    ) as run:
        yield run
