"""The Ray driver: runs a :class:`~pipelines.dag.Pipeline` as ``@ray.remote`` tasks.

Each stage becomes one Ray task (:func:`pipelines.dag.execute_stage`) whose arguments are
its upstream stages' ``ObjectRef``s, so Ray resolves the dependencies and runs independent
branches in parallel. The driver owns what a run has once: the MLflow parent run, the
snapshot of the code every stage is keyed by, the console follower and the log files, and
Ray itself (started here, or joined at ``ray.address``). Split from :mod:`pipelines.dag`
so the graph and the per-stage cache logic read without the driver's plumbing.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components import tracking
from components.config import PipelineConfig, config_hash, with_absolute_paths
from pipelines.console import EVENTS_ENV, Follower
from pipelines.dag import Pipeline, PipelineError, RunInfo, StageResult, execute_stage
from pipelines.keys import code_files


def _ray_init(cfg: PipelineConfig, env: dict[str, str], log_to_driver: bool = True) -> bool:
    """Start (or join) Ray; returns True when this call started it."""
    import logging

    import ray

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {
        "include_dashboard": cfg.ray.include_dashboard,
        "logging_level": logging.WARNING,
        "runtime_env": {"env_vars": env},
        "log_to_driver": log_to_driver,
    }
    # RAY_ADDRESS joins a cluster even when the profile says "local Ray" (ray.init reads it
    # too): a CPU count is then the cluster's business, and ray.init refuses one
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    if address:
        kwargs["address"] = address
    elif cfg.ray.num_cpus:
        kwargs["num_cpus"] = cfg.ray.num_cpus
    ray.init(**kwargs)
    return True


@dataclass
class PipelineRun:
    """The outcome of :func:`run_pipeline`."""

    results: dict[str, StageResult]
    work_dir: Path
    tracking_uri: str
    parent_run_id: str
    experiment: str
    log_path: Path | None = None

    def summary_lines(self) -> list[str]:
        lines = []
        for r in self.results.values():
            state = "cached" if r.cached else f"ran {r.seconds:.1f}s"
            lines.append(f"  {r.name:<12} {state:<12} {r.path}")
        return lines


def run_pipeline(
    pipeline: Pipeline,
    cfg: PipelineConfig,
    *,
    profile: str = "custom",
    force: Iterable[str] = (),
    stop_after: str | None = None,
    console: Any = None,
    verbose: bool = False,
) -> PipelineRun:
    """Run the pipeline on Ray, tracked in MLflow; finished stages are reused.

    ``force`` reruns the named stages and everything downstream of them.
    ``stop_after`` runs only that stage and its ancestors.
    ``console`` (a rich Console): show the readable view (pipelines/console.py) and send
    Ray's worker output to ``<work_dir>/logs/`` instead (unless ``verbose``).
    """
    import ray

    selected = pipeline.selection(force, stop_after)
    cfg = with_absolute_paths(cfg)
    work_dir = cfg.run.work_dir
    work_dir.mkdir(parents=True, exist_ok=True)
    uri = cfg.run.mlflow_tracking_uri or tracking.default_tracking_uri(work_dir)
    tracking.configure(uri)
    import mlflow

    exp_id = tracking.experiment_id(cfg.run.name, tracking.artifact_root(uri, work_dir, cfg.run.mlflow_artifact_root))
    chash = config_hash(cfg)
    tags = {tracking.TAG_GIT_SHA: tracking.git_sha(), tracking.TAG_CONFIG_HASH: chash,
            tracking.TAG_PROFILE: profile}
    # read on the driver, before any stage starts: a bad declaration fails here, and every
    # stage of the run is keyed by the same snapshot of the code
    code = {name: code_files(pipeline.stages[name]) for name in selected}
    env = {"MLFLOW_TRACKING_URI": uri, "MLFLOW_DISABLE_TELEMETRY": "true"}
    follower, log_file, log_path = None, None, None
    if console is not None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        (work_dir / "logs").mkdir(exist_ok=True)
        log_path = work_dir / "logs" / f"run-{stamp}.log"
        events = work_dir / "logs" / f"run-{stamp}.events.jsonl"
        events.touch()
        env[EVENTS_ENV] = str(events)
        os.environ[EVENTS_ENV] = str(events)
        log_file = log_path.open("a", encoding="utf-8")
        follower = Follower(events, console, log_file, verbose)
        console.print(f"log:      {log_path}" + ("" if verbose else "  (Ray's worker output: --verbose)"),
                      highlight=False)
    started_ray = _ray_init(cfg, env, log_to_driver=console is None or verbose)
    parent = mlflow.start_run(experiment_id=exp_id, run_name=f"{cfg.run.name}-{profile}",
                              tags={**tags, tracking.TAG_KIND: "pipeline"})
    try:
        mlflow.log_params(tracking.flatten(cfg.model_dump(mode="json")))
        info = RunInfo(
            artifacts_root=work_dir / "artifacts",
            tracking_uri=uri,
            experiment_id=exp_id,
            parent_run_id=parent.info.run_id,
            tags=tags,
            force=frozenset(pipeline.downstream_of(force)),
            code=code,
        )
        remote = ray.remote(execute_stage)
        refs: dict[str, Any] = {}
        for name in selected:
            st = pipeline.stages[name]
            refs[name] = remote.options(num_cpus=st.num_cpus, name=f"stage:{name}", max_retries=0).remote(
                st, cfg, info, *[refs[d] for d in st.deps]
            )
        results: dict[str, StageResult] = {}
        pending = {ref: name for name, ref in refs.items()}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1, timeout=None if follower is None else 0.5)
            if follower is not None:
                follower.poll()
            if not done:
                continue
            name = pending.pop(done[0])
            try:
                results[name] = ray.get(done[0])
            except Exception as exc:
                cause = getattr(exc, "cause", None) or exc  # RayTaskError wraps the original
                trace = str(exc) if follower is not None else ""  # the worker's traceback
                if log_file is not None:
                    log_file.write(f"stage '{name}' failed:\n{trace}\n")
                raise PipelineError(
                    (f"{trace}\n" if trace else "")
                    + f"stage '{name}' failed: {type(cause).__name__}: {cause}\nFinished stages are cached under "
                    f"{info.artifacts_root}; rerun the same command to resume at '{name}'."
                    + (f"\nlog: {log_path} (Ray's worker logs beside it)" if log_path else "")
                ) from exc
        mlflow.log_metrics({f"{n}.seconds": r.seconds for n, r in results.items()})
        mlflow.log_metrics({f"{n}.cached": float(r.cached) for n, r in results.items()})
        mlflow.end_run("FINISHED")
    except BaseException:
        mlflow.end_run("FAILED")
        raise
    finally:
        if follower is not None:
            follower.close()
            os.environ.pop(EVENTS_ENV, None)
        if started_ray and log_path is not None:
            _keep_ray_logs(log_path.with_suffix(".ray"))
        if started_ray:
            ray.shutdown()
        if log_file is not None:
            log_file.close()
    ordered = {n: results[n] for n in selected}
    return PipelineRun(ordered, work_dir, uri, parent.info.run_id, cfg.run.name, log_path)


def _keep_ray_logs(dest: Path) -> None:
    """Copy this Ray session's log directory (driver and worker output) next to the run
    log: nothing the console leaves out is lost, and it outlives /tmp/ray's cleanup."""
    try:
        from ray._private.worker import global_worker

        session = Path(global_worker.node.get_session_dir_path()) / "logs"
        shutil.copytree(session, dest, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("*.sock", "*.pid"))
    except Exception as err:  # best effort: never fail a finished run over its logs
        print(f"(Ray's logs were not copied: {err})")
