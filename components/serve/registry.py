"""Which model to serve, from the MLflow registry, and the run it came from.

The Serve app is configured with a registry reference (``models:/rankbrew-ranker@champion``
by default): :func:`resolve_served` pins the alias to a version, downloads the version's
files and finds the Hugging Face directory inside (safetensors only: the registered pyfunc's
pickle is never loaded), and finds the pipeline run that trained it, whose prepare and
tokenizer stages hold the member rows and catalogue that ``member_id`` requests read. The
ranker alias is preferred; until the compression chain has registered one, the teacher's.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

#: Tried in order when the configured reference has no version (a fresh run registers the
#: teacher; the compression chain registers the ranker once it passes its gate).
DEFAULT_MODELS = ("models:/rankbrew-ranker@champion", "models:/rankbrew-teacher@champion")


class ServedModelError(RuntimeError):
    """The configured model cannot be served (the message names the reference and the fix)."""


@dataclass(frozen=True)
class Served:
    """A resolved model: where its files are and what it is."""

    name: str
    version: str
    alias: str | None
    uri: str                # models:/<name>/<version>
    model_dir: Path         # the HF directory (config.json, model.safetensors, tokenizer)
    run_id: str | None      # the MLflow run that logged it (a pipeline stage's run)
    stage_dir: Path | None  # that stage's output directory, when it is on this machine

    def info(self) -> dict[str, str | None]:
        recipe = self.model_dir / "quantization.json"
        quant = json.loads(recipe.read_text()).get("method") if recipe.exists() else None
        return {"name": self.name, "version": self.version, "alias": self.alias, "uri": self.uri,
                "quantization": quant}


def parse_reference(ref: str) -> tuple[str, str | None, str | None]:
    """``models:/name@alias`` -> (name, alias, None); ``models:/name/3`` -> (name, None, "3")."""
    if not ref.startswith("models:/"):
        raise ServedModelError(f"serve model {ref!r}: use a registry reference, models:/<name>@<alias> "
                               f"or models:/<name>/<version>")
    body = ref[len("models:/"):]
    if "@" in body:
        name, alias = body.split("@", 1)
        return name, alias, None
    name, _, version = body.partition("/")
    if not version.isdigit():
        raise ServedModelError(f"serve model {ref!r}: the version must be a number (or use @<alias>)")
    return name, None, version


def pin(ref: str, tracking_uri: str | None) -> tuple[str, str, str | None]:
    """(name, version, alias) that ``ref`` names now."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    name, alias, version = parse_reference(ref)
    client = MlflowClient(tracking_uri)
    try:
        if alias is not None:
            version = client.get_model_version_by_alias(name, alias).version
        else:
            client.get_model_version(name, version)
    except MlflowException as e:
        raise ServedModelError(f"serve model {ref!r}: not in the registry at {tracking_uri} ({e}). "
                               f"Run the pipeline first (make run), or name a registered version") from e
    return name, str(version), alias


def pin_first(refs: Sequence[str], tracking_uri: str | None) -> tuple[str, tuple[str, str, str | None]]:
    """The first of ``refs`` that resolves, with its pin (errors of all when none does)."""
    errors = []
    for ref in refs:
        try:
            return ref, pin(ref, tracking_uri)
        except ServedModelError as e:
            errors.append(str(e))
    raise ServedModelError("no model to serve: " + " | ".join(errors))


def resolve_served(ref: str | Sequence[str], tracking_uri: str | None, download_dir: Path,
                   artifacts_root: Path | None = None) -> Served:
    """Pin ``ref`` (or the first of several that resolves), download the version and find
    its run's stage directory.

    ``artifacts_root``: the pipeline's ``<work_dir>/artifacts``; the stage directory is
    ``<artifacts_root>/<stage>/<key>`` from the logging run's tags."""
    import fcntl

    from components.tracking import configure

    if tracking_uri:
        configure(tracking_uri)  # the registry of models:/ URIs is the tracking store's
    Path(download_dir).mkdir(parents=True, exist_ok=True)
    # replicas start together: one at a time opens the store and fills the shared cache
    # (concurrent first connections to a SQLite store race on its schema check)
    with (Path(download_dir) / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _, pinned = pin_first([ref] if isinstance(ref, str) else list(ref), tracking_uri)
        return _resolve_locked(*pinned, tracking_uri, Path(download_dir), artifacts_root)


def _resolve_locked(name: str, version: str, alias: str | None, tracking_uri: str | None,
                    download_dir: Path, artifacts_root: Path | None) -> Served:
    from mlflow.tracking import MlflowClient

    from components.model.factory import ModelLoadError, check_safetensors_dir
    from components.tracking import TAG_STAGE, TAG_STAGE_KEY
    from components.tracking.models import ModelRefError, resolve_model

    uri = f"models:/{name}/{version}"
    dest = Path(download_dir) / name / version
    try:  # a version is immutable: a finished download is reused as a local directory
        model_dir = resolve_model(str(dest) if (dest / ".complete").exists() else uri, tracking_uri, dest)
        check_safetensors_dir(model_dir)  # the engine loads safetensors only; the pyfunc pickle never
    except (ModelRefError, ModelLoadError) as e:
        raise ServedModelError(f"serve model {uri}: {e}") from e
    (dest / ".complete").touch()
    client = MlflowClient(tracking_uri)
    mv = client.get_model_version(name, version)
    stage_dir = None
    if mv.run_id and artifacts_root is not None:
        tags = client.get_run(mv.run_id).data.tags
        stage, key = tags.get(TAG_STAGE), tags.get(TAG_STAGE_KEY)
        if stage and key and (Path(artifacts_root) / stage / key).exists():
            stage_dir = Path(artifacts_root) / stage / key
    return Served(name, version, alias, uri, model_dir, mv.run_id, stage_dir)


def run_inputs(stage_dir: Path, manifest: str) -> dict[str, Path]:
    """The upstream stage directories of a finished stage (its manifest's ``inputs``), and
    theirs, transitively: ``prepare``, ``tokenizer``, ``promptify``, ``split``, ...
    ``manifest``: the manifest's file name (``pipelines.dag.MANIFEST``)."""
    out: dict[str, Path] = {}
    todo = [Path(stage_dir)]
    while todo:
        m = todo.pop() / manifest
        if not m.exists():
            continue
        for name, path in json.loads(m.read_text()).get("inputs", {}).items():
            if name not in out and Path(path).exists():
                out[name] = Path(path)
                todo.append(Path(path))
    return out


def stage_config(stage_dir: Path, manifest: str) -> dict:
    """The config sections a finished stage ran with (its manifest's ``config``)."""
    return json.loads((Path(stage_dir) / manifest).read_text()).get("config", {})
