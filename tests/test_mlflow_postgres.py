"""The pipeline against a shared MLflow tracking server on a real PostgreSQL.

What a team's set-up (infra/mlflow/compose.yaml, docs/tracking-server.md) looks like, built
from the distribution's PostgreSQL and this environment's ``mlflow server``: a database in
a temporary directory, the server on it with a proxied artifact store, and two
``rankbrew run`` processes logging into the same experiment at the same time. Then every
run, metric, param and artifact is read back through the server and checked against what
each run's stage manifests and console say it logged.

Cost: the server's start-up (tens of seconds on 2 busy cores) and two pipelines that stop
after ``split`` (the first stage that logs a plot as an artifact).
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from components import tracking
from tests.conftest import REPO_ROOT

STOP_AFTER = "split"
STAGES = ("ingest", "validate", "split")
EXPERIMENT = "pg-shared"
#: Artifacts the stages log (pipelines/stages.py), per stage, beside their local copies.
LOGGED_FILES = {"validate": ("report.json",), "split": ("cutoffs.json", "plots/split.png")}
MANIFEST = "_rankbrew_manifest.json"
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module", autouse=True)
def _keep_tracking_uri() -> Iterator[None]:
    """Give later test modules back the tracking URI they had: this module points the
    process's MLflow at a server that is gone once the module ends."""
    import mlflow

    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")}
    uri = mlflow.get_tracking_uri()
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    mlflow.set_tracking_uri(uri)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _postgres_bin() -> Path:
    """The newest ``/usr/lib/postgresql/<version>/bin`` with initdb and pg_ctl, or a skip."""
    found = sorted((p for p in Path("/usr/lib/postgresql").glob("*/bin")
                    if (p / "initdb").exists() and (p / "pg_ctl").exists()),
                   key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    if not found:
        pytest.skip("PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin: "
                    "apt-get install postgresql")
    return found[-1]


def _as_db_user() -> list[str]:
    """The prefix that runs a command as a user PostgreSQL accepts: it refuses root, so as
    root (CI) the distribution's ``postgres`` account, else the current user."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("running as root and there is no 'postgres' user to run the database as: "
                    "apt-get install postgresql (it creates one), or run the tests as a normal user")
    runuser = shutil.which("runuser")
    if runuser is None:
        pytest.skip("running as root and runuser is missing: apt-get install util-linux")
    return [runuser, "-u", "postgres", "--"]


@dataclass
class Postgres:
    port: int
    url: str  # SQLAlchemy URI of the mlflow database


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    """A real PostgreSQL: initdb in a temporary directory, listening on 127.0.0.1 only, trust
    auth (nothing else can reach it); stopped (``pg_ctl stop -m fast``) and removed after."""
    pg_bin = _postgres_bin()
    as_user = _as_db_user()
    pytest.importorskip("psycopg2", reason="psycopg2 missing (mlflow server's PostgreSQL driver): "
                        "pip install -e '.[dev]' (psycopg2-binary)")
    # not under pytest's tmp_path: its parents are private to root, the postgres user must enter
    root = Path(tempfile.mkdtemp(prefix="rankbrew-pg-"))
    if as_user:
        shutil.chown(root, "postgres")
    data, log = root / "data", root / "postgres.log"
    port = _free_port()
    started = False
    try:
        subprocess.run([*as_user, str(pg_bin / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
                        "-E", "UTF8", "--no-sync"], check=True, capture_output=True, text=True, timeout=120)
        opts = (f"-h 127.0.0.1 -p {port} -k {root} -c fsync=off -c synchronous_commit=off "
                f"-c full_page_writes=off")
        subprocess.run([*as_user, str(pg_bin / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", opts,
                        "-w", "-t", "120", "start"], check=True, capture_output=True, text=True, timeout=150)
        started = True
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("CREATE DATABASE mlflow")
        conn.close()
        yield Postgres(port, f"postgresql+psycopg2://postgres@127.0.0.1:{port}/mlflow")
    except subprocess.CalledProcessError as err:
        tail = log.read_text()[-2000:] if log.exists() else ""
        pytest.fail(f"PostgreSQL did not start: {err.cmd}: {err.stderr}\n{tail}")
    finally:
        if started:
            subprocess.run([*as_user, str(pg_bin / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                           capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout_s: float) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if proc.poll() is not None:
            pytest.fail(f"mlflow server exited ({proc.returncode}) before answering:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(urllib.error.URLError, OSError), \
                urllib.request.urlopen(url + "/health", timeout=2) as r:
            if r.status == 200:
                return time.monotonic() - t0
        time.sleep(0.5)
    pytest.fail(f"mlflow server did not answer {url}/health within {timeout_s:.0f} s:\n{log.read_text()[-3000:]}")


@dataclass
class Server:
    url: str
    artifacts: Path  # --artifacts-destination
    startup_s: float


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the process group (the server's uvicorn worker too), SIGKILL what stays."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def mlflow_server(postgres: Postgres, tmp_path_factory) -> Iterator[Server]:
    """``mlflow server`` (this environment's) on the database, serving artifacts from a
    temporary directory through its proxy, as infra/mlflow/compose.yaml runs it."""
    tmp = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    log = tmp / "server.log"
    mlflow_cli = [str(BIN / "mlflow")] if (BIN / "mlflow").exists() else [sys.executable, "-m", "mlflow"]
    cmd = [*mlflow_cli, "server", "--backend-store-uri", postgres.url,
           "--artifacts-destination", str(tmp / "artifacts"), "--serve-artifacts",
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp,
                                start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        startup = _wait_healthy(url, proc, log, timeout_s=240)
        yield Server(url, tmp / "artifacts", startup)
    finally:
        _stop(proc)


@dataclass
class PipelineRun:
    work_dir: Path
    returncode: int
    output: str
    seconds: float

    @property
    def parent_run_id(self) -> str:
        """What the console says the run logged to: ``MLflow: <uri>  (parent run <id>)``."""
        m = re.search(r"parent run ([0-9a-f]{32})", self.output)
        assert m, f"no 'parent run <id>' line in the console output:\n{self.output[-3000:]}"
        return m.group(1)

    def manifests(self) -> dict[str, dict]:
        """stage -> its manifest (metrics, config) in this run's artifact cache."""
        out = {}
        for stage in STAGES:
            found = list((self.work_dir / "artifacts" / stage).glob(f"*/{MANIFEST}"))
            assert len(found) == 1, f"{stage}: expected one finished artifact under {self.work_dir}, got {found}"
            out[stage] = json.loads(found[0].read_text())
        return out


def _rankbrew_run(work_dir: Path, server: Server, ray_address: str) -> list[str]:
    return [str(BIN / "rankbrew"), "run", "--profile", "local", "--stop-after", STOP_AFTER,
            "--set", f"run.work_dir={work_dir}", "--set", f"run.name={EXPERIMENT}",
            "--set", f"run.mlflow_tracking_uri={server.url}",
            "--set", "data.synthetic.members=300", "--set", "data.synthetic.members_per_file=100",
            "--set", f"ray.address={ray_address}", "--set", "ray.include_dashboard=false"]


@pytest.fixture(scope="module")
def two_runs(mlflow_server: Server, ray_local, tmp_path_factory) -> list[PipelineRun]:
    """Two ``rankbrew run`` processes started together: different work dirs (no shared
    cache), the same server and experiment, both creating it if it is missing. Both join
    the session's Ray as drivers (as two users of one cluster would): two local Rays
    starting at once on 2 busy cores time out in the raylet's start-up."""
    if not (BIN / "rankbrew").exists():
        pytest.skip(f"no rankbrew script beside {sys.executable}: pip install -e .")
    ray_address = ray_local.get_runtime_context().gcs_address
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env.update(MLFLOW_DISABLE_TELEMETRY="true", RAY_USAGE_STATS_ENABLED="0")
    root = tmp_path_factory.mktemp("shared-runs")
    results: list[PipelineRun | None] = [None, None]
    barrier = threading.Barrier(2)

    def launch(i: int) -> None:
        work = root / f"run{i}"
        barrier.wait()
        t0 = time.monotonic()
        proc = subprocess.run(_rankbrew_run(work, mlflow_server, ray_address), cwd=REPO_ROOT, env=env,
                              capture_output=True, text=True, timeout=400)
        results[i] = PipelineRun(work, proc.returncode, proc.stdout + proc.stderr, time.monotonic() - t0)

    threads = [threading.Thread(target=launch, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in results:
        assert r is not None and r.returncode == 0, f"rankbrew run failed:\n{r.output[-4000:] if r else ''}"
    print(f"\nmlflow server start-up {mlflow_server.startup_s:.1f} s; pipeline runs "
          + ", ".join(f"{r.seconds:.1f} s" for r in results))
    return results  # type: ignore[return-value]


def _client(server: Server):
    tracking.configure(server.url)
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=server.url)


def _children(client, exp_id: str, parent_id: str) -> dict[str, object]:
    runs = client.search_runs([exp_id], f"tags.`mlflow.parentRunId` = '{parent_id}'", max_results=1000)
    by_stage: dict[str, list] = {}
    for r in runs:
        by_stage.setdefault(r.data.tags.get(tracking.TAG_STAGE), []).append(r)
    assert all(len(v) == 1 for v in by_stage.values()), \
        f"parent {parent_id}: more than one child run for a stage: {({k: len(v) for k, v in by_stage.items()})}"
    return {k: v[0] for k, v in by_stage.items()}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_run_on_server_logs_parent_stages_and_proxied_artifacts(two_runs, mlflow_server, tmp_path):
    """(a) Each run: one parent run with the whole config as params and per-stage seconds;
    one child per stage with rankbrew's tags, the manifest's metrics and config; artifacts
    in the server's proxied store (mlflow-artifacts:/, not a path on the client), readable
    back and equal to the stage's local files."""
    client = _client(mlflow_server)
    exp = client.get_experiment_by_name(EXPERIMENT)
    assert exp is not None, f"experiment {EXPERIMENT!r} missing on the server"
    assert exp.artifact_location.startswith("mlflow-artifacts:/"), (
        f"experiment artifact location {exp.artifact_location!r}: against a server it must be the "
        f"server's proxied store, not a path on the client")
    for run in two_runs:
        parent = client.get_run(run.parent_run_id)
        assert parent.info.status == "FINISHED"
        assert parent.data.tags[tracking.TAG_KIND] == "pipeline"
        assert parent.info.experiment_id == exp.experiment_id
        for stage in STAGES:
            assert f"{stage}.seconds" in parent.data.metrics and parent.data.metrics[f"{stage}.cached"] == 0.0
        assert len(parent.data.params) > 100  # the whole config, logged in several batches

        children = _children(client, exp.experiment_id, run.parent_run_id)
        assert sorted(children) == sorted(STAGES), f"child runs {sorted(children)}, expected {STAGES}"
        for stage, manifest in run.manifests().items():
            child = children[stage]
            tags = child.data.tags
            assert child.info.status == "FINISHED"
            assert tags[tracking.TAG_KIND] == "stage" and tags[tracking.TAG_CACHED] == "false"
            assert tags[tracking.TAG_STAGE_KEY] == manifest["key"]
            for key in (tracking.TAG_GIT_SHA, tracking.TAG_CONFIG_HASH, tracking.TAG_PROFILE):
                assert tags.get(key), f"{stage}: tag {key} missing"
            assert manifest["metrics"], f"{stage}: the manifest has no metrics to compare"
            for name, value in manifest["metrics"].items():
                assert child.data.metrics.get(name) == pytest.approx(value), f"{stage}: metric {name}"
            assert "stage_seconds" in child.data.metrics
            assert set(child.data.params) == set(tracking.flatten(manifest["config"])), f"{stage}: params"

            assert child.info.artifact_uri.startswith("mlflow-artifacts:/")
            stage_dir = run.work_dir / "artifacts" / stage / manifest["key"]
            for rel in LOGGED_FILES.get(stage, ()):
                got = Path(client.download_artifacts(child.info.run_id, rel, str(tmp_path)))
                assert got.read_bytes() == (stage_dir / rel).read_bytes(), f"{stage}: artifact {rel}"
                stored = list(mlflow_server.artifacts.rglob(f"{child.info.run_id}/artifacts/{rel}"))
                assert stored, f"{stage}: {rel} is not in the server's artifact store {mlflow_server.artifacts}"
    # nothing leaked into the client-side default location of the sqlite set-up
    assert not any((r.work_dir / "mlartifacts").exists() for r in two_runs)
    assert not any((r.work_dir / "mlflow.db").exists() for r in two_runs)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_concurrent_runs_lose_no_run_or_metric(two_runs, mlflow_server):
    """(b) Two pipelines logging at the same time: the experiment holds exactly their runs
    (2 parents, one child per stage each) and every metric each manifest says was logged."""
    client = _client(mlflow_server)
    exp = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = {r.parent_run_id for r in two_runs}
    assert len(parents) == 2
    kinds = [r.data.tags.get(tracking.TAG_KIND) for r in runs]
    assert kinds.count("pipeline") == 2 and kinds.count("stage") == 2 * len(STAGES), (
        f"{len(runs)} runs in {EXPERIMENT}: kinds {kinds}")
    assert {r.info.run_id for r in runs if r.data.tags.get(tracking.TAG_KIND) == "pipeline"} == parents
    logged, expected = 0, 0
    for run in two_runs:
        children = _children(client, exp.experiment_id, run.parent_run_id)
        for stage, manifest in run.manifests().items():
            expected += len(manifest["metrics"]) + 1  # + stage_seconds
            logged += sum(1 for k in [*manifest["metrics"], "stage_seconds"] if k in children[stage].data.metrics)
        parent = client.get_run(run.parent_run_id)
        expected += 2 * len(STAGES)
        logged += sum(1 for s in STAGES for k in (f"{s}.seconds", f"{s}.cached") if k in parent.data.metrics)
    assert logged == expected, f"{expected - logged} of {expected} metrics missing on the server"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_compare_against_server_names_what_is_missing(two_runs, mlflow_server):
    """``rankbrew compare`` reads the server (search by tags, over REST): runs without an
    evaluate stage give its message, not a traceback."""
    proc = subprocess.run([str(BIN / "rankbrew"), "compare", "--tracking-uri", mlflow_server.url,
                           "--experiment", EXPERIMENT], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=240, env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})
    out = " ".join((proc.stdout + proc.stderr).split())  # the console wraps long lines
    assert proc.returncode == 1
    assert "has evaluation runs" in out and "(2 pipeline runs)" in out, out[-3000:]
    assert "Traceback" not in out, out[-3000:]


def test_unreachable_server_fails_fast_naming_the_setting():
    """A tracking URI nobody answers: a clear error within seconds, not MLflow's minutes of
    retries."""
    uri = f"http://127.0.0.1:{_free_port()}"
    t0 = time.monotonic()
    with pytest.raises(tracking.TrackingServerError, match="run.mlflow_tracking_uri"):
        tracking.configure(uri)
    assert time.monotonic() - t0 < 10
    assert os.environ.get("MLFLOW_TRACKING_URI") != uri


def test_artifact_root_follows_the_store(tmp_path):
    """A local store pins artifacts under the work dir (Ray workers agree); a server keeps
    its own default; a configured root wins either way."""
    assert tracking.artifact_root("sqlite:////x/mlflow.db", tmp_path) == (tmp_path / "mlartifacts").as_uri()
    assert tracking.artifact_root("http://mlflow:5000", tmp_path) is None
    assert tracking.artifact_root("https://mlflow.example.com", tmp_path, "s3://bucket/rb") == "s3://bucket/rb"
    assert tracking.artifact_root("http://mlflow:5000", tmp_path, str(tmp_path / "a")) == (tmp_path / "a").as_uri()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_new_experiment_on_server_gets_proxied_store_old_local_one_warns(mlflow_server, tmp_path):
    """What the driver does (``experiment_id`` with ``artifact_root``): a new experiment on a
    server gets the server's store; one pinned to a client path is kept but named in a warning."""
    client = _client(mlflow_server)
    work = tmp_path / "work"
    new = tracking.experiment_id("pg-new", tracking.artifact_root(mlflow_server.url, work))
    assert client.get_experiment(new).artifact_location.startswith("mlflow-artifacts:/")
    old = client.create_experiment("pg-old-local", artifact_location=(work / "mlartifacts").as_uri())
    with pytest.warns(UserWarning, match="local path"):
        assert tracking.experiment_id("pg-old-local", tracking.artifact_root(mlflow_server.url, work)) == old


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_registry_on_server_registers_pins_and_downloads_a_model(mlflow_server, tmp_path):
    """The registry path of the align stage and of serving, on the server: a scorer logged and
    registered as the teacher is (pipelines/teacher_stages.py ``_log_teacher``), its alias
    pinned, its files uploaded through the proxy and downloaded back by serving's resolver."""
    import mlflow
    from transformers import LlamaConfig, LlamaForCausalLM

    from components.serve.registry import resolve_served
    from components.tracking.models import pinned_reference
    from pipelines.registry import TeacherScorer, pip_requirements

    hf = tmp_path / "model"
    LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=1, head_dim=8)).save_pretrained(hf)
    client = _client(mlflow_server)
    exp = tracking.experiment_id("pg-registry", tracking.artifact_root(mlflow_server.url, tmp_path))
    with mlflow.start_run(experiment_id=exp) as run:
        info = mlflow.pyfunc.log_model(name="teacher", python_model=TeacherScorer(), artifacts={"model": str(hf)},
                                       pip_requirements=pip_requirements(), registered_model_name="pg-teacher")
    version = str(info.registered_model_version)
    client.set_registered_model_alias("pg-teacher", "champion", version)

    assert pinned_reference("models:/pg-teacher@champion", mlflow_server.url) == f"models:/pg-teacher/{version}"
    served = resolve_served("models:/pg-teacher@champion", mlflow_server.url, tmp_path / "dl")
    assert (served.version, served.run_id) == (version, run.info.run_id)
    assert (served.model_dir / "model.safetensors").read_bytes() == (hf / "model.safetensors").read_bytes()
    assert list(mlflow_server.artifacts.rglob("model.safetensors")), "model files not in the server's store"


def test_compose_pins_match_the_installed_mlflow():
    """infra/mlflow: the server image's MLflow and psycopg2 are the versions this environment
    runs and tests (a client far from its server's version is where REST surprises come
    from), every image has an exact tag, the port is published on 127.0.0.1 only, and
    every variable compose needs without a default is in .env.example."""
    from importlib import metadata

    import yaml

    infra = REPO_ROOT / "infra" / "mlflow"
    compose_text = (infra / "compose.yaml").read_text()
    compose = yaml.safe_load(compose_text)
    dockerfile = (infra / "Dockerfile").read_text()
    mlflow_version, psycopg2_version = metadata.version("mlflow"), metadata.version("psycopg2-binary")
    hint = "bump infra/mlflow/Dockerfile and compose.yaml with the .venv"
    assert f"ARG MLFLOW_VERSION={mlflow_version}\n" in dockerfile, hint
    assert f"ARG PSYCOPG2_VERSION={psycopg2_version}\n" in dockerfile, hint
    assert "FROM ghcr.io/mlflow/mlflow:v${MLFLOW_VERSION}" in dockerfile
    server, db = compose["services"]["mlflow"], compose["services"]["postgres"]
    assert server["build"]["args"]["MLFLOW_VERSION"] == mlflow_version, hint
    assert server["build"]["args"]["PSYCOPG2_VERSION"] == psycopg2_version, hint
    assert server["image"].endswith(f":{mlflow_version}")
    for name, svc in compose["services"].items():
        tag = svc["image"].rpartition(":")[2]
        assert re.fullmatch(r"v?\d+(\.\d+)+(-[a-z0-9]+)?", tag), f"{name}: image {svc['image']} needs an exact tag"
    assert all(p.startswith("127.0.0.1:") for p in server["ports"])
    assert "healthcheck" in db and server["depends_on"]["postgres"]["condition"] == "service_healthy"
    command = server["command"]
    assert "--serve-artifacts" in command and "--artifacts-destination" in command
    assert command[command.index("--backend-store-uri") + 1].startswith("postgresql+psycopg2://")
    assert command[command.index("--host") + 1] == "0.0.0.0"
    example = (infra / ".env.example").read_text()
    required = set(re.findall(r"\$\{([A-Z0-9_]+)(?::\?[^}]*)?\}", compose_text))
    defaulted = set(re.findall(r"\$\{([A-Z0-9_]+):-", compose_text))
    for var in sorted(required - defaulted):
        assert re.search(rf"^{var}=", example, re.M), f"{var} is used by compose.yaml but not in .env.example"
    assert ".env" in (infra / ".gitignore").read_text().split()
