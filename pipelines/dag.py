"""The stage graph and how one stage runs, with a content-addressed artifact cache.

The Ray driver that runs a whole graph is :mod:`pipelines.ray_runner`.

Design (see docs/pipelines.md):

* A :class:`Stage` is a plain function ``run(ctx) -> metrics`` plus its upstream stage
  names and the config sections that change its output.
* :func:`pipelines.ray_runner.run_pipeline` submits every stage as a ``@ray.remote`` task and passes the
  upstream ``ObjectRef``s as arguments, so Ray resolves the dependencies and runs
  independent branches in parallel. (Ray Workflows is gone and ``DAGNode.execute()`` is
  deprecated in Ray 2.60; plain tasks + ObjectRefs are the stable core API.)
* A stage's output is a directory ``<work_dir>/artifacts/<stage>/<key>`` where
  ``key = hash(stage, its config sections, its code, upstream keys, external-input
  fingerprint)`` (:mod:`pipelines.keys`; changed code never reuses an artifact that older
  code built).
  The directory is built under a temporary name and renamed when the stage succeeds,
  so a crashed stage leaves no half-written artifact: the rerun skips every finished
  stage (and says so) and resumes at the one that failed.
* MLflow: one parent run per pipeline run (created by the driver), one child run per
  stage (created by the stage's Ray task, so long stages can log curves live), tagged
  with git sha, config hash, stage key and the Ray node (id, IP) it ran on. Cached
  stages get a child run tagged ``rankbrew.cached=true`` carrying the metrics of the
  run that built the artifact.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from graphlib import CycleError, TopologicalSorter
from pathlib import Path
from typing import Any

from components import tracking
from components.config import PipelineConfig
from pipelines.console import emit
from pipelines.keys import code_files, select_config, stage_key
from pipelines.keys import fingerprint_paths as fingerprint_paths  # re-exported: stages use it

MANIFEST = "_rankbrew_manifest.json"

# Beside the tags of components.tracking (TAG_STAGE, ...): which Ray node ran the stage's
# task, so a multi-node run shows in MLflow where each stage happened.
TAG_NODE_ID = "rankbrew.node_id"
TAG_NODE_IP = "rankbrew.node_ip"


def ray_node_tags() -> dict[str, str]:
    """``{TAG_NODE_ID: ..., TAG_NODE_IP: ...}`` of the Ray node this process runs on; empty
    outside Ray (``execute_stage`` also runs without it)."""
    import sys

    ray = sys.modules.get("ray")  # never import Ray here: a stage run without it has no node
    if ray is None or not ray.is_initialized():
        return {}
    return {TAG_NODE_ID: ray.get_runtime_context().get_node_id(),
            TAG_NODE_IP: ray.util.get_node_ip_address()}


@dataclass
class StageContext:
    """What a stage function gets: its config, where to write, and its inputs' paths."""

    stage: str
    cfg: PipelineConfig
    out_dir: Path
    inputs: dict[str, Path]
    mlflow_run_id: str | None = None
    resume_dir: Path | None = None
    """Survives a crashed attempt (the output dir does not): a long stage keeps its
    checkpoints here, keyed like the artifact, and a rerun continues from them."""

    def log(self, message: str) -> None:
        """A detail: to the run's log file (and the console with ``--verbose``)."""
        print(f"[{self.stage}] {message}", flush=True)
        emit("log", self.stage, msg=message)

    def note(self, message: str) -> None:
        """A line the person running the pipeline should read (a verdict, a fallback):
        on the console and in the run's log."""
        print(f"[{self.stage}] {message}", flush=True)
        emit("note", self.stage, msg=message)

    def progress(self, done: float, total: float, unit: str, info: str = "") -> None:
        """Advance the stage's progress bar on the driver's console."""
        emit("progress", self.stage, done=done, total=total, unit=unit, info=info)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log intermediate metrics to the stage's MLflow run (no-op without MLflow)."""
        if self.mlflow_run_id is None:
            return
        import mlflow

        mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        if self.mlflow_run_id is None:
            return
        import mlflow

        mlflow.log_artifact(str(path), artifact_path=artifact_path)


StageFn = Callable[[StageContext], Mapping[str, float] | None]


@dataclass(frozen=True)
class Stage:
    """One node of the pipeline.

    ``config_keys`` are dotted paths into :class:`PipelineConfig` whose values change
    this stage's output (and only those: a change elsewhere must not invalidate it).
    ``fingerprint`` hashes external inputs (source files) the config does not capture.
    """

    name: str
    run: StageFn
    deps: tuple[str, ...] = ()
    config_keys: tuple[str, ...] = ()
    fingerprint: Callable[[PipelineConfig], str] | None = None
    num_cpus: float = 1.0
    description: str = ""
    #: Dotted names of the modules and packages (a package: all its ``.py`` files) whose
    #: code changes this stage's output, besides the stage function's own module, which is
    #: always hashed. Their file contents are part of the cache key (see
    #: :func:`code_files`). Declare what the stage imports, transitively; config modules
    #: need not be listed (the config values are in the key already).
    code: tuple[str, ...] = ()
    #: Bump when something that is not code (nor config, nor an upstream artifact) changes
    #: what the stage writes. Code is covered by ``code``; the git sha is not used (it
    #: would invalidate everything on every commit).
    version: str = "1"


@dataclass(frozen=True)
class StageResult:
    """What a finished stage hands downstream (through its ObjectRef) and to the driver."""

    name: str
    key: str
    path: Path
    cached: bool
    seconds: float
    metrics: dict[str, float] = field(default_factory=dict)
    mlflow_run_id: str | None = None


class PipelineError(RuntimeError):
    """A stage failed; the message names it and how to resume."""


class Pipeline:
    """A validated, topologically ordered set of stages."""

    def __init__(self, name: str, stages: Iterable[Stage]):
        self.name = name
        self.stages: dict[str, Stage] = {}
        for s in stages:
            if s.name in self.stages:
                raise ValueError(f"pipeline '{name}': stage name '{s.name}' is used twice")
            self.stages[s.name] = s
        for s in self.stages.values():
            missing = [d for d in s.deps if d not in self.stages]
            if missing:
                raise ValueError(
                    f"pipeline '{name}': stage '{s.name}' depends on unknown stage(s) {missing}; "
                    f"known: {list(self.stages)}"
                )
        try:
            self.order = list(
                TopologicalSorter({s.name: s.deps for s in self.stages.values()}).static_order()
            )
        except CycleError as err:
            raise ValueError(f"pipeline '{name}' has a dependency cycle: {err.args[1]}") from None

    def selection(self, force: Iterable[str] = (), stop_after: str | None = None) -> list[str]:
        """The stages a run with ``force`` / ``stop_after`` runs, in order: every stage, or
        ``stop_after`` and its ancestors. Raises ``ValueError`` naming an unknown stage."""
        unknown = [s for s in [*force, *([stop_after] if stop_after else [])] if s not in self.stages]
        if unknown:
            raise ValueError(f"unknown stage(s) {unknown}; stages are {self.order}")
        if not stop_after:
            return list(self.order)
        needed = {stop_after}
        for n in reversed(self.order):
            if n in needed:
                needed.update(self.stages[n].deps)
        return [n for n in self.order if n in needed]

    def downstream_of(self, names: Iterable[str]) -> set[str]:
        """The named stages and every stage that depends on them, transitively."""
        out = set(names)
        for n in self.order:
            if any(d in out for d in self.stages[n].deps):
                out.add(n)
        return out


# ----------------------------------------------------------------------------- execution


@dataclass(frozen=True)
class RunInfo:
    """Driver-side facts every stage task needs."""

    artifacts_root: Path
    tracking_uri: str | None
    experiment_id: str | None
    parent_run_id: str | None
    tags: dict[str, str]
    force: frozenset[str] = frozenset()
    #: :func:`code_files` per stage, read once by the driver (one snapshot of the code for
    #: the whole run); a stage missing here hashes its code where it runs.
    code: dict[str, dict[str, str]] = field(default_factory=dict)


def execute_stage(stage: Stage, cfg: PipelineConfig, info: RunInfo, *upstream: StageResult) -> StageResult:
    """Run one stage, or reuse its artifact; usable with or without Ray."""
    t0 = time.perf_counter()
    inputs = {r.name: r.path for r in upstream}
    code = info.code.get(stage.name)
    if code is None:
        code = code_files(stage)
    key = stage_key(stage, cfg, {r.name: r.key for r in upstream}, code)
    final = info.artifacts_root / stage.name / key
    manifest_path = final / MANIFEST
    store = None
    if cfg.run.artifact_root:  # published stage artifacts (pipelines/artifact_store.py)
        from pipelines.artifact_store import ArtifactStore

        store = ArtifactStore(cfg.run.artifact_root, MANIFEST)
        for r in upstream:  # a node without the shared work dir: its inputs from the store
            if not r.path.exists() and not store.restore(r.name, r.key, r.path):
                raise FileNotFoundError(f"stage '{stage.name}': input '{r.name}' is neither at "
                                        f"{r.path} nor in run.artifact_root {store.uri}")
    restored = (store is not None and stage.name not in info.force and not manifest_path.exists()
                and store.restore(stage.name, key, final))
    cached = manifest_path.exists() and stage.name not in info.force
    tags = {
        **info.tags,
        tracking.TAG_STAGE: stage.name,
        tracking.TAG_STAGE_KEY: key,
        tracking.TAG_CACHED: str(cached).lower(),
        tracking.TAG_KIND: "stage",
        **ray_node_tags(),
    }

    def body(run_id: str | None) -> StageResult:
        if cached:
            manifest = json.loads(manifest_path.read_text())
            metrics = manifest.get("metrics", {})
            print(f"[{stage.name}] cached: reusing {final} (key {key})"
                  + (f", restored from {store.uri}" if restored else ""), flush=True)
            emit("cached", stage.name, key=key, path=str(final), metrics=metrics)
        else:
            final.parent.mkdir(parents=True, exist_ok=True)
            for stale in final.parent.glob(f"{key}.partial-*"):
                shutil.rmtree(stale, ignore_errors=True)  # left by a crashed attempt
            tmp = final.parent / f"{key}.partial-{uuid.uuid4().hex[:8]}"
            tmp.mkdir()
            resume = final.parent / f"{key}.resume"
            if stage.name in info.force:
                shutil.rmtree(resume, ignore_errors=True)  # forced: start over
            ctx = StageContext(stage.name, cfg, tmp, inputs, run_id, resume)
            print(f"[{stage.name}] running (key {key})", flush=True)
            emit("start", stage.name, key=key)
            metrics = {k: float(v) for k, v in (stage.run(ctx) or {}).items()}
            manifest = {
                "stage": stage.name,
                "key": key,
                "inputs": {r.name: str(r.path) for r in upstream},
                "config": select_config(cfg, stage.config_keys),
                "code": code,
                "metrics": metrics,
                "seconds": time.perf_counter() - t0,
                "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
            if final.exists():  # a forced rerun replaces the old artifact
                shutil.rmtree(final)
            os.replace(tmp, final)
        forced = stage.name in info.force
        if store is not None and (forced or not store.has(stage.name, key)):
            # manifest last: a cut upload is not "finished"; a forced rerun replaces the old one
            store.publish(final, stage.name, key, replace=forced)
        seconds = time.perf_counter() - t0
        if run_id is not None:
            import mlflow

            mlflow.log_params(tracking.flatten(select_config(cfg, stage.config_keys)))
            mlflow.log_metrics({**metrics, "stage_seconds": seconds})
        if not cached:
            print(f"[{stage.name}] done in {seconds:.1f}s -> {final}", flush=True)
            emit("done", stage.name, seconds=seconds, path=str(final), metrics=metrics)
        return StageResult(stage.name, key, final, cached, seconds, metrics, run_id)

    if info.tracking_uri is None or info.parent_run_id is None:
        return body(None)
    tracking.configure(info.tracking_uri)
    with tracking.child_run(info.parent_run_id, info.experiment_id, stage.name, tags) as run:
        return body(run.info.run_id)


def __getattr__(name: str) -> Any:
    """``run_pipeline`` / ``PipelineRun`` moved to :mod:`pipelines.ray_runner`; old imports work."""
    if name in ("run_pipeline", "PipelineRun"):
        from pipelines import ray_runner

        return getattr(ray_runner, name)
    raise AttributeError(f"module 'pipelines.dag' has no attribute {name!r}")
