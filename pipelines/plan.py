"""``rankbrew run --dry-run``: what a run would do, decided without running anything.

Why: on a cluster a run costs GPU hours and a mistyped bucket or an unset
``MLFLOW_TRACKING_URI`` shows up only when the stage that needs it starts. The plan
resolves every path the run would read or write, and computes each stage's cache key
exactly as :func:`pipelines.dag.execute_stage` will (the same :func:`stage_key` over the
same code snapshot), so "cached" here means the run will reuse that artifact. It starts
no Ray, opens no MLflow store and contacts no remote filesystem.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from components import tracking
from components.config import PipelineConfig, config_hash, with_absolute_paths
from pipelines.dag import MANIFEST, Pipeline, Stage
from pipelines.keys import code_files, stage_key

#: URI schemes pyarrow.fs resolves (``FileSystem.from_uri``), besides plain local paths.
PYARROW_SCHEMES = {"file": "LocalFileSystem", "s3": "S3FileSystem", "gs": "GcsFileSystem",
                   "gcs": "GcsFileSystem", "hdfs": "HadoopFileSystem", "abfs": "AzureFileSystem",
                   "abfss": "AzureFileSystem"}

TRAIN_STAGES = ("cpt", "sft", "align")


@dataclass(frozen=True)
class PathRow:
    """One resolved location: what it is for, where, and whether the run can use it."""

    role: str
    where: str
    status: str
    ok: bool = True


@dataclass(frozen=True)
class StageRow:
    """One stage of the plan."""

    name: str
    deps: tuple[str, ...]
    key: str
    state: str  # cached, restored (from run.artifact_root), run, forced, skipped (--stop-after)
    resources: str


@dataclass(frozen=True)
class Plan:
    """The whole plan of a run; :meth:`problems` are the paths it cannot use."""

    profile: str
    config_hash: str
    paths: list[PathRow]
    stages: list[StageRow]

    def problems(self) -> list[PathRow]:
        return [p for p in self.paths if not p.ok]


def resolve_uri(uri: str) -> tuple[str, str, bool]:
    """``(where, status, ok)`` of a path or URI, without contacting a remote store.

    Local paths (and ``file://``) are checked on disk: an existing directory, or the nearest
    existing parent and whether this process may create below it. Remote URIs are checked
    for a scheme pyarrow.fs knows and a bucket; the store itself is reached when the run
    starts (credentials come from the environment, as pyarrow reads them)."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        path = Path(parsed.path if parsed.scheme else uri).expanduser()
        if path.exists():
            writable = os.access(path, os.W_OK)
            return str(path), "exists" + ("" if writable else ", NOT writable"), writable
        parent = next((p for p in path.parents if p.exists()), Path("/"))
        can = os.access(parent, os.W_OK)
        return str(path), (f"created at start (below {parent})" if can
                           else f"cannot be created: {parent} is not writable"), can
    fs = PYARROW_SCHEMES.get(parsed.scheme)
    if fs is None:
        known = ", ".join(f"{s}://" for s in PYARROW_SCHEMES)
        return uri, f"unknown scheme {parsed.scheme}:// (pyarrow.fs knows {known})", False
    if not parsed.netloc:
        return uri, f"{parsed.scheme}:// needs a bucket: {parsed.scheme}://<bucket>/<prefix>", False
    return uri, f"pyarrow.fs.{fs}, bucket {parsed.netloc} (not contacted in a dry run)", True


def _tracking_rows(cfg: PipelineConfig) -> list[PathRow]:
    uri = cfg.run.mlflow_tracking_uri or tracking.default_tracking_uri(cfg.run.work_dir)
    scheme = urlparse(uri).scheme
    if scheme == "sqlite":
        rows = [PathRow("MLflow store", uri, "SQLite file (one machine; docs/tracking-server.md "
                        "for a shared server)")]
    elif scheme in ("http", "https"):
        rows = [PathRow("MLflow store", uri, "tracking server (not contacted in a dry run)")]
    elif scheme.startswith("postgresql") or scheme.startswith("mysql"):
        rows = [PathRow("MLflow store", uri, "database (not contacted in a dry run)")]
    else:
        rows = [PathRow("MLflow store", uri, f"unknown tracking scheme {scheme!r}: use sqlite:///, "
                        "http(s):// or a database URI", False)]
    art = cfg.run.mlflow_artifact_root
    if art:
        rows.append(PathRow("MLflow artifacts", *resolve_uri(art)))
    elif scheme in ("http", "https"):
        rows.append(PathRow("MLflow artifacts", "the server's default artifact root",
                            "proxied by the server (mlflow-artifacts:/)"))
    else:
        rows.append(PathRow("MLflow artifacts", *resolve_uri(str(cfg.run.work_dir / "mlartifacts"))))
    return rows


def _input_rows(cfg: PipelineConfig) -> list[PathRow]:
    rows = []
    data = cfg.data
    if data.source == "synthetic":
        rows.append(PathRow("data", "synthetic world", f"{data.synthetic.members:,} members, "
                            f"generated by the ingest stage"))
    elif data.source == "movielens":
        p = data.movielens.path
        ok = (p / "u.data").exists()
        rows.append(PathRow("data", str(p), "MovieLens-100K found" if ok else
                            "u.data missing: download ml-100k from https://grouplens.org/datasets/"
                            "movielens/100k/ and set data.movielens.path", ok))
    elif data.mapping is not None:
        spec = data.mapping.spec
        rows.append(PathRow("data", str(spec), "mapping spec found" if spec.exists() else
                            "mapping spec missing: fix data.mapping.spec", spec.exists()))
    for role, path in (("tokenizer", cfg.tokenizer.path), ("base model", cfg.model.checkpoint)):
        if path is None:
            rows.append(PathRow(role, "-", "trained from scratch" if role == "tokenizer"
                                else "built from the model.* shape"))
        else:
            ok = Path(path).is_dir()
            rows.append(PathRow(role, str(path), "local directory found" if ok else
                                f"not a directory: fix {'tokenizer.path' if role == 'tokenizer' else 'model.checkpoint'}", ok))
    return rows


def _ray_row(cfg: PipelineConfig) -> PathRow:
    address = cfg.ray.address
    if address:
        return PathRow("Ray", address, "joins a running cluster" + (
            " (the one RAY_ADDRESS or this node's `ray start` names)" if address == "auto" else ""))
    env = os.environ.get("RAY_ADDRESS")
    if env:
        return PathRow("Ray", env, "joins the cluster RAY_ADDRESS names (ray.address is null)")
    return PathRow("Ray", "local", f"starts a local Ray with {cfg.ray.num_cpus or os.cpu_count()} CPUs")


def _resources(stage: Stage, cfg: PipelineConfig) -> str:
    if stage.name in TRAIN_STAGES or stage.name.startswith("distill_"):
        t = cfg.train
        cpus = f"{t.cpus_per_worker:g} CPU" if t.cpus_per_worker else "auto CPU"
        gpu = ", 1 GPU" if t.use_gpu else ""
        return f"train {t.num_workers} x ({cpus}{gpu})"
    return f"task {stage.num_cpus:g} CPU"


def plan_run(pipeline: Pipeline, cfg: PipelineConfig, *, profile: str = "custom",
             force: Iterable[str] = (), stop_after: str | None = None) -> Plan:
    """The plan of ``run_pipeline(pipeline, cfg, force=..., stop_after=...)``."""
    selected = set(pipeline.selection(force, stop_after))
    cfg = with_absolute_paths(cfg)
    work = cfg.run.work_dir
    artifacts = work / "artifacts"
    paths = [PathRow("work dir", *resolve_uri(str(work)))]
    store = None
    if cfg.run.artifact_root:
        paths.append(PathRow("artifact store", *resolve_uri(cfg.run.artifact_root)))
        if urlparse(cfg.run.artifact_root).scheme in ("", "file") and paths[-1].ok:
            from pipelines.artifact_store import ArtifactStore

            store = ArtifactStore(cfg.run.artifact_root, MANIFEST)  # local: checked, not remote
    paths += [_ray_row(cfg), *_tracking_rows(cfg), *_input_rows(cfg)]
    forced = pipeline.downstream_of(force)
    keys: dict[str, str] = {}
    rows = []
    for name in pipeline.order:
        st = pipeline.stages[name]
        key = stage_key(st, cfg, {d: keys[d] for d in st.deps}, code_files(st))
        keys[name] = key
        if name not in selected:
            state = "skipped"
        elif name in forced:
            state = "forced"
        else:
            state = "cached" if (artifacts / name / key / MANIFEST).exists() else "run"
            if state == "run" and store is not None and store.has(name, key):
                state = "restored"
        rows.append(StageRow(name, st.deps, key, state, _resources(st, cfg)))
    return Plan(profile, config_hash(cfg), paths, rows)


def render(plan: Plan, console) -> None:
    """The plan as two rich tables (paths, stages) and a verdict line."""
    from rich.table import Table

    paths = Table("role", "where", "status", title=f"paths (profile {plan.profile}, config "
                  f"{plan.config_hash})", title_justify="left")
    for p in plan.paths:
        paths.add_row(p.role, p.where, p.status if p.ok else f"[red]{p.status}[/red]")
    console.print(paths)
    stages = Table("stage", "after", "cache", "key", "resources", title="stages", title_justify="left")
    style = {"cached": "green", "restored": "cyan", "run": "yellow", "forced": "magenta",
             "skipped": "dim"}
    for s in plan.stages:
        stages.add_row(s.name, ", ".join(s.deps) or "-", f"[{style[s.state]}]{s.state}[/]",
                       s.key, s.resources)
    console.print(stages)
    counts = {k: sum(s.state == k for s in plan.stages) for k in style}
    console.print(f"dry run: {counts['run'] + counts['forced']} stage(s) would run, "
                  f"{counts['cached']} cached, {counts['restored']} restored from the artifact "
                  f"store, {counts['skipped']} outside --stop-after; nothing was started")
    for p in plan.problems():
        console.print(f"[red]problem:[/red] {p.role}: {p.where}: {p.status}", highlight=False)
