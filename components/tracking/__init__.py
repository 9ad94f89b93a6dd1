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
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

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
    """Point MLflow at the store, quietly (no telemetry, no emoji banners in logs).

    A tracking server (http/https) is checked once per process: MLflow's own client retries
    an unreachable server for minutes before it fails, and the error it ends with does not
    say which setting to fix.
    """
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # "View run ... at http://..." on every end_run against a server
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    if is_server(tracking_uri):
        check_server(tracking_uri)
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)


class TrackingServerError(RuntimeError):
    """The configured tracking server does not answer (the message names the URI and the fix)."""


def is_server(tracking_uri: str) -> bool:
    """True for an MLflow tracking server (``http(s)://``): the server, not this process,
    opens the store and decides where artifacts go."""
    return urlparse(tracking_uri).scheme in ("http", "https")


_ANSWERED: set[str] = set()


def check_server(tracking_uri: str, timeout_s: float = 10.0) -> None:
    """Raise :class:`TrackingServerError` unless ``<tracking_uri>/health`` answers.

    Any HTTP answer counts (a proxy in front of the server may want credentials for
    ``/health``): only a refused connection, a timeout or an unknown host fails.
    """
    if tracking_uri in _ANSWERED:
        return
    import urllib.error
    import urllib.request

    url = tracking_uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s):
            pass
    except urllib.error.HTTPError:
        pass  # it answered
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise TrackingServerError(
            f"run.mlflow_tracking_uri {tracking_uri!r}: no MLflow server answers at {url} "
            f"({reason}). Start it (docs/tracking-server.md: docker compose -f "
            f"infra/mlflow/compose.yaml up -d), fix the URI, or drop run.mlflow_tracking_uri "
            f"to track in the run's own SQLite store") from err
    _ANSWERED.add(tracking_uri)


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


def artifact_root(tracking_uri: str, work_dir: Path, configured: str | None = None) -> str | None:
    """Where a new experiment keeps its artifacts (``run.mlflow_artifact_root`` is
    ``configured``): that location when set (``s3://...``, or a path, made absolute);
    else ``None`` against a tracking server, which then uses its own default (the proxied
    ``mlflow-artifacts:/`` store with ``--serve-artifacts``: clients upload through the
    server and need no access to its storage); else ``<work_dir>/mlartifacts``. The last
    because with a store this process opens itself (SQLite, a database URI) MLflow's
    default is ``./mlruns`` of the current directory, which differs between Ray workers.
    """
    if configured:
        return _location(configured)
    if is_server(tracking_uri):
        return None
    return _location(Path(work_dir) / "mlartifacts")


def _location(root: Path | str) -> str:
    """A URI as given (``s3://bucket/x``, ``file:///x``); a path as an absolute ``file:`` URI."""
    return str(root) if "://" in str(root) else Path(root).resolve().as_uri()


def experiment_id(name: str, artifact_root: Path | str | None = None) -> str:
    """Get or create the experiment (races between processes are tolerated).

    ``artifact_root`` (a path or a URI, see :func:`artifact_root`) is the artifact location
    of a new experiment; ``None`` leaves it to the store (a tracking server's default). An
    existing experiment keeps its location: MLflow cannot move it. One that a tracking
    server reports at a local ``file:`` path (created by an older rankbrew, or by a client
    that pinned one) gets a warning, because each client then writes artifacts to its own
    disk, where neither the server nor other machines can read them.
    """
    import mlflow

    exp = mlflow.get_experiment_by_name(name)
    if exp is None:
        location = _location(artifact_root) if artifact_root is not None else None
        try:
            return mlflow.create_experiment(name, artifact_location=location)
        except Exception:  # another process created it first
            exp = mlflow.get_experiment_by_name(name)
            if exp is None:
                raise
    if is_server(mlflow.get_tracking_uri()) and urlparse(exp.artifact_location).scheme in ("", "file"):
        warnings.warn(
            f"MLflow experiment {name!r} keeps its artifacts at {exp.artifact_location}, a local "
            f"path: on the tracking server {mlflow.get_tracking_uri()} each client writes them to "
            f"its own disk. Use a new run.name (a new experiment gets the server's proxied "
            f"artifact store) or set run.mlflow_artifact_root for it", stacklevel=2)
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
