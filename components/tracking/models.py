"""Find a trained ranker by the name a user has for it: a path, a registry URI, a run id.

``rankbrew evaluate --model X`` (``evaluate.model``) scores a dataset with a model trained
elsewhere: another run's teacher, a registered version, a checkpoint on disk. What the
scoring engine needs is a Hugging Face model directory (``config.json`` + weights +
tokenizer); this module turns each kind of reference into one:

* a local directory holding ``config.json`` (a teacher's ``model/`` dir, any HF checkpoint);
* ``models:/<name>/<version>`` or ``models:/<name>@<alias>`` (the MLflow model registry:
  the registered pyfunc is downloaded and its HF directory found inside);
* ``runs:/<run id>/<artifact path>`` (an artifact directory of an MLflow run);
* a bare run id (32 hex digits): the model version registered from that run, or from the
  ``align`` child of that pipeline run.

The trained tasks travel with a teacher (``rankbrew_tasks.json``, written by the align
stage), so an evaluation with a foreign model reports every other task as zero-shot.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

TASKS_FILE = "rankbrew_tasks.json"
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


class ModelRefError(ValueError):
    """A model reference that names nothing usable (the message says what was tried)."""


def _hf_dir(root: Path, ref: str) -> Path:
    """The directory under ``root`` that holds ``config.json`` (shallowest first)."""
    if (root / "config.json").exists():
        return root
    hits = sorted(root.rglob("config.json"), key=lambda p: len(p.parts))
    if not hits:
        raise ModelRefError(f"evaluate.model {ref!r}: no config.json under {root}: the reference "
                            f"must hold a Hugging Face model directory (a teacher's model/ dir)")
    return hits[0].parent


def _version_of_run(client, run_id: str) -> tuple[str, str] | None:
    versions = client.search_model_versions(f"run_id='{run_id}'")
    if versions:
        v = max(versions, key=lambda v: int(v.version))
        return v.name, v.version
    return None


def registry_uri_of_run(run_id: str, tracking_uri: str | None) -> str:
    """``models:/<name>/<version>`` registered from run ``run_id`` or from its child runs
    (a pipeline run's ``align`` stage registers the teacher)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    try:
        run = client.get_run(run_id)
    except MlflowException as e:
        raise ModelRefError(f"evaluate.model {run_id!r}: no such run in {tracking_uri}: pass the "
                            f"run's tracking store with --set run.mlflow_tracking_uri=...") from e
    found = _version_of_run(client, run_id)
    if found is None:
        children = client.search_runs([run.info.experiment_id],
                                      f"tags.`mlflow.parentRunId` = '{run_id}'")
        for child in children:
            found = _version_of_run(client, child.info.run_id)
            if found:
                break
    if found is None:
        raise ModelRefError(f"evaluate.model {run_id!r}: no model version was registered from that "
                            f"run or its stages: pass models:/<name>/<version> or a model directory")
    return f"models:/{found[0]}/{found[1]}"


def pinned_reference(ref: str, tracking_uri: str | None) -> str:
    """``ref`` with what it points to now made explicit, for a cache key: an alias becomes
    its version, a run id the version registered from it, a directory its absolute path
    (its files' sizes and times are added by the caller)."""
    if ref.startswith("models:/") and "@" in ref:
        from mlflow.tracking import MlflowClient

        name, alias = ref[len("models:/"):].split("@", 1)
        v = MlflowClient(tracking_uri).get_model_version_by_alias(name, alias)
        return f"models:/{name}/{v.version}"
    if _RUN_ID.match(ref) and not Path(ref).exists():
        return registry_uri_of_run(ref, tracking_uri)
    if Path(ref).expanduser().exists():
        return str(Path(ref).expanduser().resolve())
    return ref


def resolve_model(ref: str, tracking_uri: str | None, download_dir: Path) -> Path:
    """The local HF model directory ``ref`` names (downloaded under ``download_dir`` when it
    lives in MLflow). Raises :class:`ModelRefError` naming the reference and the fix."""
    local = Path(ref).expanduser()
    if local.exists():
        if not local.is_dir():
            raise ModelRefError(f"evaluate.model {ref!r} is a file: pass the model directory")
        return _hf_dir(local, ref)
    uri = ref
    if _RUN_ID.match(ref):
        uri = registry_uri_of_run(ref, tracking_uri)
    if not (uri.startswith("models:/") or uri.startswith("runs:/")):
        raise ModelRefError(f"evaluate.model {ref!r}: not a directory, a models:/ or runs:/ URI, or "
                            f"a run id (32 hex digits)")
    import mlflow

    download_dir = Path(download_dir)
    download_dir.mkdir(parents=True, exist_ok=True)
    try:
        path = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(download_dir),
                                                   tracking_uri=tracking_uri)
    except Exception as e:  # MLflow raises several types for a missing model / run
        raise ModelRefError(f"evaluate.model {ref!r}: could not download {uri} from {tracking_uri}: "
                            f"{e}") from e
    return _hf_dir(Path(path), ref)


def trained_tasks(model_dir: Path) -> set[str] | None:
    """The task ids a rankbrew teacher was trained on, or None when the model does not
    say (a foreign checkpoint: every task is zero-shot for it)."""
    p = Path(model_dir) / TASKS_FILE
    if not p.exists():
        return None
    return set(json.loads(p.read_text())["trained"])


def write_trained_tasks(model_dir: Path, trained: list[str], held_out: list[str]) -> Path:
    """Record with a model which tasks it was trained on (read by :func:`trained_tasks`)."""
    p = Path(model_dir) / TASKS_FILE
    p.write_text(json.dumps({"trained": sorted(trained), "held_out": sorted(held_out)}, indent=1))
    return p
