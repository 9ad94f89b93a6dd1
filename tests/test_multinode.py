"""A real two-node Ray cluster on one machine: the pipeline joins it through RAY_ADDRESS,
MLflow records where every stage and every Train worker ran, and losing the worker node
in the middle of a training stage costs a restart from the last checkpoint, not the stage.

Two ``ray start --block`` processes (a head and a worker node, each in its own process
group and temp dir, on free ports, with this cluster's own auth token) and a
``rankbrew run`` subprocess against them; this pytest process never joins that cluster
(it holds the session's local Ray, which ran the tiny pipeline whose data artifacts the
cluster run reuses). Nodes are stopped by process group: ``ray stop`` would stop every
Ray node on the machine, other people's included.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipelines.dag import TAG_NODE_ID, TAG_NODE_IP
from pipelines.train_job import TAG_TRAIN_NODE_IDS, TAG_TRAIN_PLACEMENTS

REPO_ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
#: the tiny run's stages before cpt: copied from the session's run, so only cpt trains here
DATA_STAGES = ("ingest", "validate", "split", "prepare", "tokenizer")
#: cpt long enough to lose a node in: a checkpoint every 2 steps, each one committed
CPT_STEPS = 12
STARTED = "Ray runtime started"
#: how Ray names a node's port files in its session directory: ``<what>_port_<node id>``
NODE_ID_FILE = re.compile(r"_port_([0-9a-f]{56})$")


def _ray_cli() -> str:
    ray = BIN / "ray"
    if ray.exists():
        return str(ray)
    found = shutil.which("ray")
    if found is None:
        pytest.skip("the `ray` command line is missing: it comes with `pip install "
                    "'ray[default]'` (`make setup` puts it in .venv/bin)")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(cond: Callable[[], Any], timeout: float, what: str,
              proc: subprocess.Popen, log: Path) -> Any:
    """Poll ``cond`` until it is truthy; fail with ``log``'s tail if ``proc`` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {timeout:.0f} s (exit code {proc.poll()}), "
                         f"{log}:\n{log.read_text(errors='replace')[-4000:]}")


class RayNode:
    """One ``ray start --block`` in its own process group: killing the group is losing the
    node (raylet, object store and the workers it started), and nothing else."""

    def __init__(self, name: str, args: list[str], root: Path, env: dict[str, str]):
        self.name = name
        self.temp_dir = root / name
        self.temp_dir.mkdir(parents=True)
        self.log = root / f"{name}.log"
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(
                [_ray_cli(), "start", "--block", "--temp-dir", str(self.temp_dir),
                 "--disable-usage-stats", "--dashboard-agent-listen-port", str(_free_port()),
                 *args], stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def wait_started(self, timeout: float = 180) -> None:
        _wait_for(lambda: STARTED in self.log.read_text(errors="replace"), timeout,
                  f"Ray node {self.name} starting", self.proc, self.log)

    @property
    def node_id(self) -> str:
        session = self.temp_dir / "session_latest"
        ids = {m.group(1) for p in session.iterdir() if (m := NODE_ID_FILE.search(p.name))}
        assert len(ids) == 1, f"node {self.name}: expected one node id in {session}, got {ids}"
        return ids.pop()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):  # the group is gone already
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)


class Cluster:
    """A head (1 CPU) and a worker node (2 CPUs) on free ports, under ``root``."""

    def __init__(self, root: Path):
        self.root = root
        self.nodes: list[RayNode] = []
        # token auth as on a real cluster, with this cluster's own token (nothing read
        # from or written to ~/.ray); the nodes and the driver share it
        self.auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
        self.env = {**os.environ, **self.auth, "RAY_USAGE_STATS_ENABLED": "0",
                    # a killed node is declared dead in a few seconds, not ~30 s
                    "RAY_health_check_period_ms": "1000", "RAY_health_check_timeout_ms": "1000",
                    "RAY_health_check_failure_threshold": "3"}
        self.env.pop("RAY_ADDRESS", None)
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.head = self._start("head", [
            "--head", "--port", str(self.port), "--num-cpus", "1", "--include-dashboard=false",
            "--dashboard-port", str(_free_port()), "--ray-client-server-port", str(_free_port())])
        self.worker = self.start_worker("worker")

    def _start(self, name: str, args: list[str]) -> RayNode:
        node = RayNode(name, args, self.root, self.env)
        self.nodes.append(node)
        node.wait_started()
        return node

    def start_worker(self, name: str) -> RayNode:
        return self._start(name, ["--address", self.address, "--num-cpus", "2"])

    def stop(self, keep_logs: Path) -> None:
        for node in reversed(self.nodes):  # a test cluster has nothing to flush: no SIGTERM
            node.kill()
        for node in self.nodes:  # for whoever reads a failure: stdout and Ray's session logs
            shutil.copy(node.log, keep_logs / node.log.name)
            session_logs = node.temp_dir / "session_latest" / "logs"
            if session_logs.is_dir():
                shutil.copytree(session_logs, keep_logs / node.name, dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns("*.sock"),
                                ignore_dangling_symlinks=True)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    _ray_cli()  # skip before starting anything
    # a short root: Ray's unix socket paths (<temp>/session_*/sockets/...) must fit 107 bytes
    root = Path(tempfile.mkdtemp(prefix="rbmn-", dir="/tmp"))
    c = Cluster(root)
    try:
        c.start()
        yield c
    finally:
        logs = tmp_path / "ray-logs"
        logs.mkdir(exist_ok=True)
        try:
            c.stop(logs)
        finally:
            shutil.rmtree(root, ignore_errors=True)


def _rankbrew_run(profile: Path, work: Path, cluster: Cluster, log: Path) -> subprocess.Popen:
    """``rankbrew run`` of the tiny teacher up to cpt, on the cluster (RAY_ADDRESS), with
    the Train workers one per node."""
    sets = {"run.work_dir": str(work), "run.name": "multinode",
            # the local profile as is (its ray.num_cpus: 2): RAY_ADDRESS alone joins the cluster
            "ray.include_dashboard": False,
            "train.placement_strategy": "STRICT_SPREAD",
            "train.cpt.max_steps": CPT_STEPS, "train.cpt.checkpoint_every": 2}
    cli = [str(BIN / "rankbrew")] if (BIN / "rankbrew").exists() else [
        sys.executable, "-m", "pipelines.cli"]  # the project is not installed as a script
    args = [*cli, "run", "--profile", str(profile), "--stop-after", "cpt"]
    for k, v in sets.items():
        args += ["--set", f"{k}={yaml.safe_dump(v, default_flow_style=True).strip()}"]
    env = {**os.environ, **cluster.auth, "RAY_ADDRESS": cluster.address,
           "MLFLOW_DISABLE_TELEMETRY": "true", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RANKBREW_EVENTS", None)
    with log.open("w") as out:
        return subprocess.Popen(args, cwd=REPO_ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT)


def _committed_checkpoint(work: Path) -> str | None:
    """The newest checkpoint Ray Train has committed for cpt (its manager's snapshot)."""
    for snap in (work / "artifacts" / "cpt").glob("*.resume/cpt/checkpoint_manager_snapshot.json"):
        try:
            latest = json.loads(snap.read_text()).get("latest_checkpoint_result") or {}
        except (OSError, ValueError):  # being written
            continue
        if latest.get("checkpoint_dir_name"):
            return latest["checkpoint_dir_name"]
    return None


def _finish(driver: subprocess.Popen, log: Path, timeout: float = 400) -> int:
    try:
        return driver.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"rankbrew run did not finish in {timeout:.0f} s, {log}:\n"
                             f"{log.read_text(errors='replace')[-4000:]}") from None


def _step(checkpoint_dir_name: str) -> int:
    return int(checkpoint_dir_name.removeprefix("step_"))


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_pipeline_on_two_nodes_records_nodes_and_survives_losing_one(tiny_run, cluster,
                                                                     tmp_path):
    from mlflow.tracking import MlflowClient

    t0 = time.monotonic()
    cfg, session_run = tiny_run
    work = tmp_path / "work"
    for stage in DATA_STAGES:  # same config and code: the cluster run finds them cached
        shutil.copytree(session_run.results[stage].path,
                        work / "artifacts" / stage / session_run.results[stage].key)
    profile = tmp_path / "tiny.yaml"
    profile.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    head, first_worker = cluster.head.node_id, cluster.worker.node_id
    log = tmp_path / "driver.log"
    driver = _rankbrew_run(profile, work, cluster, log)
    try:
        committed = _wait_for(lambda: _committed_checkpoint(work), 400,
                              "a committed cpt checkpoint", driver, log)
        cluster.worker.kill()  # the node is lost: raylet, object store, its Train worker
        killed_at = time.monotonic() - t0
        cluster.worker = cluster.start_worker("worker2")
        second_worker = cluster.worker.node_id
        rc = _finish(driver, log)
        reruns = 0
        if rc != 0:  # Ray Train gave up: the rerun must resume from the stage's checkpoints
            reruns, log = 1, tmp_path / "driver-rerun.log"
            driver = _rankbrew_run(profile, work, cluster, log)
            rc = _finish(driver, log)
    finally:
        if driver.poll() is None:  # a failed wait: no driver outlives the test
            driver.kill()
            driver.wait()
    assert rc == 0, f"{log}:\n{log.read_text(errors='replace')[-4000:]}"
    print(f"committed {committed} at kill ({killed_at:.0f} s); reruns {reruns}; "
          f"total {time.monotonic() - t0:.0f} s")

    client = MlflowClient(tracking_uri=f"sqlite:///{work / 'mlflow.db'}")
    exp = client.get_experiment_by_name("multinode")
    stage_runs = client.search_runs([exp.experiment_id], "tags.`rankbrew.kind` = 'stage'",
                                    order_by=["attributes.start_time ASC"])
    by_stage: dict[str, list[Any]] = {}
    for r in stage_runs:
        by_stage.setdefault(r.data.tags["rankbrew.stage"], []).append(r)
    assert set(by_stage) == {*DATA_STAGES, "cpt"}
    cluster_nodes = {head, first_worker, second_worker}
    assert len(cluster_nodes) == 3
    # every stage's task ran on this cluster (not this process's local Ray) and says where
    for stage, runs in by_stage.items():
        for r in runs:
            assert r.data.tags.get(TAG_NODE_ID) in cluster_nodes, (stage, r.data.tags)
            assert r.data.tags.get(TAG_NODE_IP), (stage, r.data.tags)
    assert all(r.data.tags["rankbrew.cached"] == "true"
               for s in DATA_STAGES for r in by_stage[s]), "the copied artifacts were not reused"

    # cpt's worker group: one worker per node before the loss (FSDP2 across both nodes),
    # and after it a new group on the head and the replacement node that continued from a
    # committed checkpoint
    placements = [a for r in by_stage["cpt"]
                  for a in json.loads(r.data.tags[TAG_TRAIN_PLACEMENTS])]
    assert len(placements) >= 2, f"cpt finished before the node was lost: {placements}"
    first, last = placements[0], placements[-1]
    assert first["from_checkpoint"] is None
    assert set(first["node_ids"].values()) == {head, first_worker}
    assert set(last["node_ids"].values()) == {head, second_worker}
    assert json.loads(by_stage["cpt"][-1].data.tags[TAG_TRAIN_NODE_IDS]) == last["node_ids"]
    resumed = by_stage["cpt"][-1].data.metrics
    assert last["from_checkpoint"] is not None
    assert resumed["resumed_from_step"] == _step(last["from_checkpoint"]) >= _step(committed) > 0
    assert resumed["steps"] == CPT_STEPS


def test_placement_strategy_changes_no_cache_key_and_no_default_dump():
    """Placement decides where the workers run, not what they compute: every stage key
    stays, and a profile left at PACK dumps (and hashes) as before the field existed."""
    from components.config import config_hash, load_config
    from pipelines.keys import stage_key
    from pipelines.stages import build_pipeline

    pack = load_config("local")
    spread = load_config("local", {"train.placement_strategy": "STRICT_SPREAD"})
    assert "placement_strategy" not in pack.model_dump(mode="json")["train"]
    assert spread.model_dump(mode="json")["train"]["placement_strategy"] == "STRICT_SPREAD"
    assert type(pack).model_validate(spread.model_dump(mode="json")) == spread
    assert config_hash(pack) != config_hash(spread)
    pipeline = build_pipeline(pack)
    assert {"cpt", "sft", "align", "quantize"} <= set(pipeline.order)
    for name, st in pipeline.stages.items():  # the training stages and the chain's
        assert stage_key(st, pack, {}, {}) == stage_key(st, spread, {}, {}), name
