"""Run, redeploy and roll back the ranker's Serve app (``rankbrew serve ...``, ``make serve``).

``start`` launches a background process that owns a local Ray (dashboard off, HTTP bound to
127.0.0.1) and deploys the app, writes ``<work_dir>/serve/state.json`` (its pid, Ray's
address, the URL) and returns once ``/readyz`` answers; ``stop`` ends exactly that process
(and so its Ray). ``redeploy`` connects to that Ray and re-runs the app with the version the
alias points to now (or a named one): only the scorer's ``user_config`` changes, so Serve
reconfigures the live replicas in place. ``rollback`` moves the alias back to the version
deployed before the live one (the deploy history is a tag of the registered model, so any
machine sees it) and redeploys. Every deploy pins the alias to a version first: a
``user_config`` naming ``@champion`` would not change when the alias moves.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.serve.registry import DEFAULT_MODELS, ServedModelError, parse_reference, pin_first

#: Registered-model tag holding the versions deployed under an alias, oldest first.
HISTORY_TAG = "rankbrew.deploy_history.{alias}"
NAMESPACE = "rankbrew-serve"


@dataclass
class ServeTarget:
    """Where the app runs and what it serves (from the profile and the command line)."""

    work_dir: Path
    tracking_uri: str
    profile: str = "local"
    overrides: dict[str, Any] | None = None
    model: str = DEFAULT_MODELS[0]
    host: str = "127.0.0.1"
    port: int = 8000
    scorer_replicas: int = 2
    api: dict[str, Any] | None = None
    options: dict[str, Any] | None = None  # more build_app args (queue limits, surge)

    @property
    def state_path(self) -> Path:
        return self.work_dir / "serve" / "state.json"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def target_from_profile(profile: str, overrides: dict[str, Any] | None = None, **kw: Any) -> ServeTarget:
    from components.config import load_config, with_absolute_paths
    from components.tracking import default_tracking_uri

    cfg = with_absolute_paths(load_config(profile, overrides))
    work = Path(cfg.run.work_dir)
    uri = cfg.run.mlflow_tracking_uri or default_tracking_uri(work)
    return ServeTarget(work, uri, profile, overrides or {}, **{k: v for k, v in kw.items() if v is not None})


def pinned(target: ServeTarget, version: str | None = None) -> tuple[str, str, str | None]:
    """(models:/name/version, version, alias) to deploy: ``version`` of the configured
    model's name, or what its alias (falling back to the teacher's) points to now."""
    if version is not None:
        name, _, _ = parse_reference(target.model)
        ref, (name, v, _) = pin_first([f"models:/{name}/{version}"], target.tracking_uri)
        alias = None
    else:
        fallbacks = [m for m in DEFAULT_MODELS if m != target.model]
        ref, (name, v, alias) = pin_first([target.model, *fallbacks], target.tracking_uri)
    return f"models:/{name}/{v}", v, alias


def app_args(target: ServeTarget, model_uri: str, alias: str | None) -> dict[str, Any]:
    """``build_app`` arguments: the pinned version in the scorer's ``user_config``."""
    return {"scorer": {"model": model_uri, "alias": alias, "fallbacks": [], "profile": target.profile,
                       "overrides": target.overrides or {}, "tracking_uri": target.tracking_uri,
                       "work_dir": str(target.work_dir)},
            "api": target.api or {}, "scorer_replicas": target.scorer_replicas, **(target.options or {})}


def deploy(target: ServeTarget, version: str | None = None, wait_s: float = 300) -> dict[str, Any]:
    """(Re)deploy the app on the Ray this process is connected to; returns the new args.
    Waits until ``/v1/models`` reports the version (each scorer replica swaps in place)."""
    from ray import serve

    from pipelines.serve_app import APP_NAME, build_app

    uri, v, alias = pinned(target, version)
    args = app_args(target, uri, alias)
    serve.run(build_app(args), name=APP_NAME, route_prefix="/", blocking=False)
    _record(target, uri, alias)
    _wait_version(target, v, wait_s)
    return args


def _record(target: ServeTarget, uri: str, alias: str | None) -> None:
    from mlflow.tracking import MlflowClient

    name, _, version = parse_reference(uri)
    key = HISTORY_TAG.format(alias=alias or "pinned")
    client = MlflowClient(target.tracking_uri)
    hist = _history(client, name, key)
    if not hist or hist[-1] != version:
        client.set_registered_model_tag(name, key, ",".join([*hist, version][-50:]))


def _history(client, name: str, key: str) -> list[str]:
    tags = client.get_registered_model(name).tags or {}
    return [v for v in tags.get(key, "").split(",") if v]


def rollback(target: ServeTarget, alias: str = "champion") -> tuple[str, str]:
    """Move ``alias`` to the version deployed before the live one and redeploy:
    (from version, to version)."""
    from mlflow.tracking import MlflowClient

    live = live_model(target)
    name, version = live["name"], live["version"]
    client = MlflowClient(target.tracking_uri)
    key = HISTORY_TAG.format(alias=alias)
    hist = _history(client, name, key)
    i = len(hist) - 1 - hist[::-1].index(version) if version in hist else 0
    earlier = [k for k in range(i) if hist[k] != version]
    if not earlier:
        raise ServedModelError(f"rollback: no version of {name} was deployed under '{alias}' before version "
                               f"{version} (history: {hist or 'empty'}); redeploy a named one with "
                               f"`rankbrew serve redeploy --version N`")
    prev = hist[earlier[-1]]
    client.set_registered_model_alias(name, alias, prev)
    client.set_registered_model_tag(name, key, ",".join(hist[: earlier[-1] + 1]))
    deploy(ServeTarget(**{**target.__dict__, "model": f"models:/{name}@{alias}"}))
    return version, prev


def live_model(target: ServeTarget, timeout: float = 5) -> dict[str, Any]:
    """The live model as ``/v1/models`` reports it."""
    return _get(f"{target.url}/v1/models", timeout)["model"]


def _get(url: str, timeout: float) -> dict[str, Any]:
    req = urllib.request.Request(url)
    token = os.environ.get("RANKBREW_SERVE_TOKEN")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def _wait_version(target: ServeTarget, version: str, wait_s: float) -> None:
    deadline, last = time.time() + wait_s, None
    while time.time() < deadline:
        try:
            info = _get(f"{target.url}/v1/models", 5)
            last = info.get("model", {}).get("version")
            # every scorer replica must answer with it: ask a few times
            if last == version and all(_get(f"{target.url}/v1/models", 5).get("model", {}).get("version")
                                       == version for _ in range(2 * target.scorer_replicas)):
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"the app did not report version {version} within {wait_s:.0f} s (last: {last}); "
                       f"see {target.work_dir / 'serve' / 'serve.log'}")


# ------------------------------------------------------------------ the background process
def start(target: ServeTarget, wait_s: float = 600) -> dict[str, Any]:
    """Start the background process (unless one runs) and wait until it is ready."""
    state = read_state(target)
    if state is not None:
        return state
    pinned(target)  # fail here, with the registry's answer, when there is nothing to serve
    log = target.state_path.parent / "serve.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    spec = json.dumps({**target.__dict__, "work_dir": str(target.work_dir)})
    with log.open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "pipelines.serve_ctl", spec], stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True, cwd=os.getcwd())
    deadline = time.time() + wait_s
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the serve process exited with {proc.returncode}: see {log}")
        state = read_state(target)
        if state is not None:
            return state
        time.sleep(1)
    os.killpg(proc.pid, signal.SIGTERM)
    raise TimeoutError(f"not ready within {wait_s:.0f} s: see {log}")


def read_state(target: ServeTarget) -> dict[str, Any] | None:
    """The running app's state, or None (a stale file of a dead process is removed)."""
    p = target.state_path
    if not p.exists():
        return None
    state = json.loads(p.read_text())
    try:
        os.kill(state["pid"], 0)
    except (ProcessLookupError, PermissionError):
        p.unlink(missing_ok=True)
        return None
    return state


def stop(target: ServeTarget, wait_s: float = 60) -> bool:
    """Stop the background process ``start`` launched (and its Ray); False if none ran."""
    state = read_state(target)
    if state is None:
        return False
    os.killpg(state["pid"], signal.SIGTERM)
    deadline = time.time() + wait_s
    while time.time() < deadline:
        try:
            os.kill(state["pid"], 0)
        except ProcessLookupError:
            break
        time.sleep(0.5)
    else:
        os.killpg(state["pid"], signal.SIGKILL)
    target.state_path.unlink(missing_ok=True)
    return True


def connect(target: ServeTarget) -> None:
    """Connect this process to the running app's Ray (for redeploy, rollback, status).

    The app's local Ray authenticates drivers with the token in ``~/.ray/auth_token`` (Ray
    2.60's default for a cluster started by ``ray.init``); a connecting driver sends it only
    with ``RAY_AUTH_MODE=token``, which Ray reads when it is first imported: call this
    before anything imports ray."""
    state = read_state(target)
    if state is None:
        raise RuntimeError(f"no app is running for {target.work_dir} (start it with `make serve`)")
    if "ray" not in sys.modules:
        os.environ.setdefault("RAY_AUTH_MODE", state.get("ray_auth_mode", "token"))
    import ray

    if not ray.is_initialized():
        ray.init(address=state["ray_address"], namespace=NAMESPACE, log_to_driver=False)


def _daemon(spec: str) -> None:
    import logging

    import ray
    from ray import serve

    t = json.loads(spec)
    target = ServeTarget(**{**t, "work_dir": Path(t["work_dir"])})
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    ray.init(namespace=NAMESPACE, include_dashboard=False, logging_level=logging.WARNING,
             runtime_env={"env_vars": {"MLFLOW_DISABLE_TELEMETRY": "true"}})
    try:
        serve.start(http_options={"host": target.host, "port": target.port})
        args = deploy(target)
        target.state_path.write_text(json.dumps({
            "pid": os.getpid(), "ray_address": ray.get_runtime_context().gcs_address, "url": target.url,
            "ray_auth_mode": os.environ.get("RAY_AUTH_MODE", "token"),
            "model": args["scorer"]["model"], "alias": args["scorer"]["alias"], "started_at": time.time()}))
        print(f"serving {args['scorer']['model']} at {target.url}", flush=True)
        while not stopping:
            time.sleep(0.5)
    finally:
        target.state_path.unlink(missing_ok=True)
        try:
            serve.shutdown()
        finally:
            ray.shutdown()


if __name__ == "__main__":
    _daemon(sys.argv[1])
