"""Analyses of a finished pipeline run (issue 6 item 5): ``rankbrew analyze``.

Each analysis is one MLflow run (tags ``rankbrew.kind=analysis``,
``rankbrew.analysis=<name>``) nested under the pipeline run it analyses, with one metric
per sweep point (``auc_mean.budget_64``), a CSV table and a PNG plot:

| analysis | question | cost |
|---|---|---|
| ``context_budget`` | does the trained teacher rank better with more history? The evaluation prefixes are re-rendered by promptify's own code with other history token budgets and scored | scoring only |
| ``data_amount`` | AUC vs the share of the training prompts, at equal steps | one training per share |
| ``model_size`` | AUC vs model width (parameters), at equal steps | one training per width |
| ``steering`` | does the ranking move the way the instruction says? The steering tasks' lists scored under their own instruction and under their base task's | scoring only |

The training sweeps run in this process (no Ray): ``components.train.train`` from a
random init, answer-token SFT with the profile's ``train.sft`` settings, then the
serving engine scores a fixed sample of validation prompts. Settings: the profile's
``analyses:`` section (``components.config.AnalysesConfig``). Not part of ``rankbrew run``
(time budget). See docs/evaluation.md, "Analyses (issue 6 item 5)".
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from components import tracking
from components.config import ANALYSIS_NAMES, ConfigError, PipelineConfig
from components.evaluate.metrics import roc_auc
from components.evaluate.report import pyplot, save_figure
from pipelines.compare import search_all_runs
from pipelines.dag import MANIFEST

ANALYSIS_KIND = "analysis"
TAG_ANALYSIS = "rankbrew.analysis"
TAG_SKIPPED = "rankbrew.skipped"
PARENT_TAG = "mlflow.parentRunId"
#: Prompts whose member had at most this many prior events form the cold-start bucket
#: (the evaluation's ``activity<=5`` slice).
COLD_START_MAX_EVENTS = 5


class AnalysisError(RuntimeError):
    """Nothing to analyse, or inputs that do not fit; the message names the fix."""


# ============================================================================ the run's artifacts
@dataclass(frozen=True)
class RunArtifacts:
    """The stage directories of one pipeline run (``<artifacts>/<stage>/<key>``)."""

    stage_dirs: Mapping[str, Path]
    pipeline_run_id: str | None = None
    experiment_id: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)

    def stage(self, name: str) -> Path:
        path = self.stage_dirs.get(name)
        if path is None or not (path / MANIFEST).exists():
            raise AnalysisError(f"the pipeline run has no finished '{name}' stage "
                                f"(looked for {path}): run `rankbrew run` to build it")
        return path

    def config(self, stage: str) -> dict[str, Any]:
        """The config sections the stage was built with (from its manifest)."""
        return json.loads((self.stage(stage) / MANIFEST).read_text())["config"]

    @property
    def model_dir(self) -> Path:
        from pipelines.teacher_stages import MODEL_DIR

        return self.stage("align") / MODEL_DIR

    @property
    def examples_dir(self) -> Path:
        return self.stage("promptify") / "examples"

    @property
    def key(self) -> str:
        return self.stage("align").name

    @classmethod
    def from_stage_dir(cls, stage_dir: Path, **kwargs: Any) -> RunArtifacts:
        """Every stage upstream of ``stage_dir`` (e.g. an align artifact), found through
        the manifests' ``inputs``."""
        dirs: dict[str, Path] = {}
        todo = [Path(stage_dir)]
        while todo:
            d = todo.pop()
            manifest = json.loads((d / MANIFEST).read_text())
            dirs[manifest["stage"]] = d
            todo += [Path(p) for s, p in manifest["inputs"].items() if s not in dirs]
        return cls(dirs, **kwargs)


def _stage_dirs_of(client, run, artifacts_root: Path) -> dict[str, Path]:
    """Stage name -> artifact directory, from the pipeline run's stage runs (cached stages
    have stage runs too, carrying the key of the artifact they reused)."""
    stages = search_all_runs(client, [run.info.experiment_id],
                     f"tags.`{PARENT_TAG}` = '{run.info.run_id}' and tags.`{tracking.TAG_KIND}` = 'stage'")
    return {r.data.tags[tracking.TAG_STAGE]: Path(artifacts_root) / r.data.tags[tracking.TAG_STAGE]
            / r.data.tags[tracking.TAG_STAGE_KEY] for r in stages
            if tracking.TAG_STAGE in r.data.tags and tracking.TAG_STAGE_KEY in r.data.tags}


def find_run_artifacts(tracking_uri: str, experiment: str, artifacts_root: Path,
                       run_id: str | None = None) -> RunArtifacts:
    """The artifacts of pipeline run ``run_id``, or of the newest finished pipeline run of
    ``experiment`` whose trained teacher (``align/<key>/model``) is on disk."""
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri.removeprefix("sqlite:///")).exists():
        raise AnalysisError(f"no MLflow store at {tracking_uri.removeprefix('sqlite:///')}: run the "
                            f"pipeline first (`make run`) or pass --tracking-uri / --profile")
    tracking.configure(tracking_uri)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    keep = (tracking.TAG_GIT_SHA, tracking.TAG_CONFIG_HASH, tracking.TAG_PROFILE)

    def artifacts(run) -> RunArtifacts:
        return RunArtifacts(_stage_dirs_of(client, run, artifacts_root), run.info.run_id,
                            run.info.experiment_id, {k: v for k, v in run.data.tags.items() if k in keep})

    if run_id is not None:
        try:
            run = client.get_run(run_id)
        except Exception as err:  # MlflowException: RESOURCE_DOES_NOT_EXIST
            raise AnalysisError(f"run '{run_id}' is not in the tracking store {tracking_uri}: pass "
                                f"the id of a pipeline (parent) run, as `rankbrew run` prints it") from err
        kind = run.data.tags.get(tracking.TAG_KIND, "?")
        if kind != "pipeline":
            raise AnalysisError(f"run '{run_id}' is a '{kind}' run, not a pipeline run: pass the "
                                f"pipeline's parent run id")
        art = artifacts(run)
        art.stage("align")  # a clear error when it has no teacher
        return art
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise AnalysisError(f"no experiment '{experiment}' in {tracking_uri}: run the pipeline "
                            f"first or pass --experiment / --profile")
    runs = search_all_runs(client, [exp.experiment_id], f"tags.`{tracking.TAG_KIND}` = 'pipeline'",
                   order_by=["attributes.start_time DESC"])
    for run in runs:
        if run.info.status != "FINISHED":
            continue
        art = artifacts(run)
        align = art.stage_dirs.get("align")
        if align is not None and (align / MANIFEST).exists():
            return art
    raise AnalysisError(f"no finished pipeline run of experiment '{experiment}' has a trained "
                        f"teacher on disk under {artifacts_root}/align ({len(runs)} pipeline runs): "
                        f"run `rankbrew run` with train.enabled")


# ============================================================================ shared pieces
@dataclass
class RunInputs:
    """What the run was built with: its data and promptify settings and its tasks."""

    cfg: PipelineConfig   # the profile, with data / promptify as the run had them
    tasks: dict[str, Any]  # task id -> TaskSpec

    @classmethod
    def of(cls, art: RunArtifacts, profile: PipelineConfig) -> RunInputs:
        from components.config import DataConfig, PromptifyConfig
        from pipelines.stages import load_pipeline_tasks

        update: dict[str, Any] = {
            "promptify": PromptifyConfig.model_validate(art.config("promptify")["promptify"])}
        if "ingest" in art.stage_dirs:
            update["data"] = DataConfig.model_validate(art.config("ingest")["data"])
        cfg = profile.model_copy(update=update)
        return cls(cfg, {t.id: t for t in load_pipeline_tasks(cfg)})


class PrefixRenderer:
    """Evaluation prefixes re-rendered by promptify's own code path.

    The history comes from ``PromptBuilder.history_section`` (the member's verbalized events
    before the question's cutoff, cut to the token budget by ``fit_to_budget``) and the
    prefix from ``render_prefix``, exactly as :class:`PromptBuilder` assembles it; only the
    history token budget, or the task whose instruction and question are asked, changes.
    :meth:`check_reproduces` verifies that the run's own budget gives the stored prefixes
    back byte for byte."""

    def __init__(self, art: RunArtifacts, inputs: RunInputs, member_ids: Sequence[str]):
        from components.promptify.examples import PreparedData, PromptBuilder

        prep = art.stage("prepare")
        prepared = PreparedData.from_dir(prep)
        self.cfg = inputs.cfg.promptify
        self.tasks = inputs.tasks
        self.builder = PromptBuilder(str(art.stage("tokenizer") / "tokenizer"), prepared,
                                     list(inputs.tasks.values()), self.cfg)
        rows = pl.read_parquet(prepared.members_dir).filter(pl.col("member_id").is_in(list(member_ids)))
        self.members = {r["member_id"]: r for r in rows.iter_rows(named=True)}
        self._line_tokens: dict[str, dict[str, np.ndarray]] = {}  # per member and style

    def render(self, rows: pl.DataFrame, budget: int | None = None,
               task_ids: Sequence[str] | None = None) -> pl.DataFrame:
        """Prefixes of evaluation ``rows`` (``member_id, task_id, style, n_prior_events``)
        with history budget ``budget`` (None: the run's) and the instruction and question of
        ``task_ids`` (None: each row's own task). Returns ``example_id, prefix,
        history_lines, history_tokens`` in row order."""
        from components.promptify.verbalize import PromptPieces, render_prefix

        # promptify validates budgets >= 16; the sweep's 0 (no history) bypasses that check
        # on purpose: fit_to_budget keeps no line for a budget <= 0
        self.builder.cfg = (self.cfg if budget is None
                            else self.cfg.model_copy(update={"history_token_budget": int(budget)}))
        task_ids = rows["task_id"].to_list() if task_ids is None else list(task_ids)
        out: dict[str, list] = {"example_id": [], "prefix": [], "history_lines": [], "history_tokens": []}
        for r, task_id in zip(rows.iter_rows(named=True), task_ids, strict=True):
            member = self.members.get(r["member_id"])
            if member is None:
                raise AnalysisError(f"member {r['member_id']} of example {r['example_id']} is not in "
                                    f"the prepare stage's member rows: the promptify and prepare "
                                    f"artifacts are from different runs")
            style = r["style"]
            history, kept, used = self.builder.history_section(
                member, style, int(r["n_prior_events"]), member["hist_action"] or [],
                self._line_tokens.setdefault(r["member_id"], {}))
            task = self.tasks[task_id]
            cutoff = r.get("cutoff")
            pieces = PromptPieces(task.instruction, member[f"profile_{style}"] or "", (), (), task.question,
                                  today=cutoff.strftime("%Y-%m-%d") if cutoff is not None else "")
            out["example_id"].append(r["example_id"])
            out["prefix"].append(render_prefix(pieces, history, style))
            out["history_lines"].append(kept)
            out["history_tokens"].append(used)
        self.builder.cfg = self.cfg
        return pl.DataFrame(out, schema={"example_id": pl.Utf8, "prefix": pl.Utf8,
                                         "history_lines": pl.Int64, "history_tokens": pl.Int64})

    def check_reproduces(self, rows: pl.DataFrame) -> None:
        """Raise unless the run's budget and each row's own task give the stored prefixes."""
        got = self.render(rows)["prefix"].to_list()
        bad = [eid for eid, a, b in zip(rows["example_id"], got, rows["prefix"], strict=True) if a != b]
        if bad:
            raise AnalysisError(
                f"{len(bad)} of {rows.height} evaluation prefixes re-rendered at the run's history "
                f"budget differ from the stored ones (first: {bad[0]}): the task registry or the "
                f"promptify code changed since this run. Re-run the pipeline (`make run`) and "
                f"analyse the new run")


def score_margins(engine: Any, prefixes: Sequence[str], candidates: Sequence[Sequence[str]]
                  ) -> list[np.ndarray]:
    """The engine's ``logit_yes - logit_no`` per candidate (P(yes) in fp32 saturates)."""
    lists = engine.score_batch([(p, list(c)) for p, c in zip(prefixes, candidates, strict=True)],
                               margins=True)
    return [np.asarray(x, dtype=np.float64) for x in lists]


def per_task_auc(task_ids: Sequence[str], scores: Sequence[np.ndarray], labels: Sequence[Sequence[int]],
                 keep: Sequence[bool] | None = None) -> dict[str, float]:
    """Pooled AUC per task over its candidates (rows with ``keep`` only); nan with one class."""
    pooled: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {}
    for i, (task, s, y) in enumerate(zip(task_ids, scores, labels, strict=True)):
        if keep is not None and not keep[i]:
            continue
        ss, yy = pooled.setdefault(task, ([], []))
        ss.append(np.asarray(s, dtype=np.float64))
        yy.append(np.asarray(y, dtype=np.int64))
    return {t: roc_auc(np.concatenate(s), np.concatenate(y)) for t, (s, y) in sorted(pooled.items())}


def nanmean(values: Sequence[float] | Any) -> float:
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return float(np.mean(vals)) if vals else math.nan


def _key(x: float) -> str:
    """A sweep value as an MLflow metric-name suffix: 64 -> "64", 0.015 -> "0.015"."""
    return f"{x:g}"


# ============================================================================ results
@dataclass
class AnalysisResult:
    """What one analysis produced (and, once logged, its MLflow run id)."""

    name: str
    table: pl.DataFrame = field(default_factory=pl.DataFrame)
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    summary_columns: tuple[str, ...] = ()
    skipped: str | None = None
    seconds: float = 0.0
    run_id: str | None = None

    def markdown(self) -> str:
        from components.evaluate.report import markdown_table

        if self.skipped:
            return f"### {self.name}: skipped\n\n{self.skipped}\n"
        cols = [c for c in self.summary_columns if c in self.table.columns] or self.table.columns
        run = f", MLflow run `{self.run_id}`" if self.run_id else ""
        return (f"### {self.name} ({self.seconds:.0f}s{run})\n\n"
                f"{markdown_table(self.table.select(cols))}\n")


@dataclass
class AnalysisContext:
    """What an analysis gets: the profile, the run, where to write, a log and a cache."""

    cfg: PipelineConfig
    art: RunArtifacts
    inputs: RunInputs
    out_dir: Path
    log: Callable[[str], None] = print
    cache: dict[Any, Any] = field(default_factory=dict)

    @property
    def acfg(self):
        return self.cfg.analyses


def _eval_rows(ctx: AnalysisContext, max_per_task: int, tasks: Sequence[str] | None = None) -> pl.DataFrame:
    """The evaluation prompts (``analyses.split``), a seeded sample per task, with the
    columns re-rendering needs."""
    from pipelines.eval_stage import select_eval_rows

    rows = select_eval_rows(ctx.art.examples_dir, ctx.acfg.split, max_per_task, ctx.acfg.seed, tasks)
    extra = pl.read_parquet(ctx.art.examples_dir, columns=["example_id", "style", "history_tokens",
                                                           "n_history_kept"])
    return rows.join(extra, on="example_id", how="left")


def _engine(model_or_dir: Any, tokenizer: Any = None):
    from components.model.engine import ScoringEngine

    if tokenizer is None:
        return ScoringEngine.from_pretrained(model_or_dir)
    return ScoringEngine(model_or_dir, tokenizer)


# ============================================================================ 1. context budget
def context_budget(ctx: AnalysisContext) -> AnalysisResult:
    """Mean per-task AUC of the trained teacher per history token budget."""
    acfg = ctx.acfg.context_budget
    run_budget = ctx.inputs.cfg.promptify.history_token_budget
    budgets = sorted({*acfg.budgets, run_budget})
    rows = _eval_rows(ctx, acfg.max_prompts_per_task)
    renderer = PrefixRenderer(ctx.art, ctx.inputs, rows["member_id"].unique().to_list())
    renderer.check_reproduces(rows)
    engine = _engine(ctx.art.model_dir)
    held = dict(zip(rows["task_id"], rows["held_out"], strict=True))
    cold = (rows["n_prior_events"] <= COLD_START_MAX_EVENTS).to_list()
    labels = rows["labels"].to_list()
    table, per_task, metrics = [], [], {}
    for b in budgets:
        t0 = time.perf_counter()
        rendered = renderer.render(rows, budget=b)
        margins = score_margins(engine, rendered["prefix"].to_list(), rows["candidates"].to_list())
        aucs = per_task_auc(rows["task_id"].to_list(), margins, labels)
        cold_aucs = per_task_auc(rows["task_id"].to_list(), margins, labels, keep=cold)
        prefix_tokens = [len(engine.tokenize(p, [])[0]) for p in rendered["prefix"]]
        point = {
            "budget": b,
            "auc_mean": nanmean(aucs.values()),
            "auc_mean_trained": nanmean(a for t, a in aucs.items() if not held[t]),
            "auc_mean_held_out": nanmean(a for t, a in aucs.items() if held[t]),
            # over trained tasks, as the evaluate stage's cold-start table
            "auc_cold_start": nanmean(a for t, a in cold_aucs.items() if not held[t]),
            "history_lines_mean": float(rendered["history_lines"].mean()),
            "history_tokens_mean": float(rendered["history_tokens"].mean()),
            "history_tokens_max": float(rendered["history_tokens"].max()),
            "prefix_tokens_mean": float(np.mean(prefix_tokens)),
            "seconds": time.perf_counter() - t0,
        }
        table.append(point)
        per_task += [{"budget": b, "task_id": t, "held_out": held[t], "auc": a,
                      "auc_cold_start": cold_aucs.get(t, math.nan)} for t, a in aucs.items()]
        for k, v in point.items():
            if k != "budget":
                metrics[f"{k}.budget_{b}"] = float(v)
        ctx.log(f"context_budget {b:>5}: mean AUC {point['auc_mean']:.3f} (trained "
                f"{point['auc_mean_trained']:.3f}, cold start {point['auc_cold_start']:.3f}), "
                f"{point['history_lines_mean']:.1f} history lines, {point['seconds']:.0f}s")
    df = pl.DataFrame(table)
    metrics.update({"prompts": float(rows.height), "candidates": float(rows["labels"].list.len().sum()),
                    "tasks": float(len(held)), "cold_start_prompts": float(sum(cold)),
                    "run_budget": float(run_budget)})
    out = ctx.out_dir
    files = [_write_csv(df, out / "context_budget.csv"),
             _write_csv(pl.DataFrame(per_task), out / "context_budget_per_task.csv"),
             _plot_context_budget(df, run_budget, out / "context_budget.png")]
    return AnalysisResult("context_budget", df, metrics, {
        "budgets": str(budgets), "run_budget": str(run_budget), "split": ctx.acfg.split,
        "max_prompts_per_task": str(acfg.max_prompts_per_task), "seed": str(ctx.acfg.seed),
        "model_dir": str(ctx.art.model_dir)}, files,
        ("budget", "auc_mean", "auc_mean_trained", "auc_mean_held_out", "auc_cold_start",
         "history_lines_mean", "history_tokens_mean"))


def _plot_context_budget(df: pl.DataFrame, run_budget: int, path: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    x = df["budget"].to_numpy()
    for col, label in (("auc_mean_trained", "trained tasks"), ("auc_mean_held_out", "held-out tasks"),
                       ("auc_cold_start", f"trained, <= {COLD_START_MAX_EVENTS} prior events")):
        ax.plot(x, df[col].to_numpy(), marker="o", label=label)
    for xi, lines in zip(x, df["history_lines_mean"].to_numpy(), strict=True):
        ax.annotate(f"{lines:.1f}", (xi, 1.0), textcoords="offset points", xytext=(0, -10),
                    ha="center", fontsize=7, xycoords=("data", "axes fraction"))
    ax.axhline(0.5, color="grey", ls="--", lw=0.8)
    ax.axvline(run_budget, color="grey", ls=":", lw=0.8)
    ax.set_xlabel("history token budget (numbers: mean history lines kept; dotted: the run's)")
    ax.set_ylabel("mean per-task AUC")
    ax.set_title("Teacher AUC vs history token budget", fontsize=10)
    ax.legend(fontsize=7)
    return save_figure(plt, fig, path)


def _write_csv(df: pl.DataFrame, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    df.write_csv(path)
    return path


# ============================================================================ 2-3. training sweeps
@dataclass
class SweepData:
    """Tokenized training prompts (a seeded order: share f = the first f of them) and the
    fixed validation sample every sweep point is scored on."""

    tokenizer: Any
    yes_id: int
    no_id: int
    train_pool: Any          # PromptDataset of the first ceil(largest share x N) shuffled rows
    n_train_prompts: int     # training prompts of the run (share 1.0)
    valid: pl.DataFrame


def _sweep_data(ctx: AnalysisContext, max_fraction: float) -> SweepData:
    from components.promptify.tokenizer import answer_token_ids, load_tokenizer
    from components.train import read_examples, tokenize_prompts

    cached = ctx.cache.get("sweep_data")
    if cached is not None and cached[0] >= max_fraction:
        return cached[1]
    tok = load_tokenizer(ctx.art.model_dir)
    yes, no = answer_token_ids(tok)
    train_rows = read_examples(ctx.art.examples_dir, "train")  # trained tasks, by example_id
    if train_rows.height == 0:
        raise AnalysisError(f"no training prompts in {ctx.art.examples_dir}")
    order = np.random.default_rng(ctx.acfg.seed).permutation(train_rows.height)
    n = math.ceil(max_fraction * train_rows.height)
    data = ctx.cfg.train.data
    pool = tokenize_prompts(train_rows[order[:n]], tok, yes, no, data.max_seq_len, data.layout)
    from pipelines.eval_stage import select_eval_rows

    valid = select_eval_rows(ctx.art.examples_dir, "valid", ctx.acfg.training.valid_prompts_per_task,
                             ctx.acfg.seed).filter(~pl.col("held_out"))
    sweep = SweepData(tok, yes, no, pool, train_rows.height, valid)
    ctx.cache["sweep_data"] = (max_fraction, sweep)
    return sweep


def _subset(pool: Any, n_rows: int) -> Any:
    """The prompts of the first ``n_rows`` source rows (a row the length cap dropped is
    missing from the pool, so the subset is cut by source row, not by position)."""
    from components.train.data import PromptDataset

    keep = [i for i, p in enumerate(pool.prompts) if p.row < n_rows]
    return PromptDataset([pool.prompts[i] for i in keep], pool.stats, pool.layout, pool.with_answers,
                         [pool.example_ids[i] for i in keep] if pool.example_ids else [])


def sweep_train_config(cfg: PipelineConfig):
    """One sweep point's optimisation: ``train.sft`` with the analyses' steps, batch, lr and
    threads; no intermediate checkpoints or evaluations."""
    from components.train.config import TrainConfig

    base, sweep = cfg.train.sft, cfg.analyses.training
    return TrainConfig.model_validate({
        **base.model_dump(), "stage": "sft", "max_steps": sweep.steps,
        "batch_size": sweep.batch_size or base.batch_size, "lr": sweep.lr or base.lr,
        "warmup_steps": min(base.warmup_steps, sweep.steps // 10), "checkpoint_every": 0,
        "eval_every": 0, "log_every": max(1, sweep.steps // 30), "threads": cfg.analyses.threads,
        "seed": cfg.analyses.seed})


def width_model_config(cfg: PipelineConfig, hidden: int, num_layers: int | None = None):
    """The profile's model at width ``hidden``: same head size, same K/V grouping, same
    MLP-to-hidden ratio; built from its shape (a ``model.checkpoint`` is not loaded)."""
    from components.model.factory import ModelConfig

    m = cfg.model
    head = m.head_dim or m.hidden_size // m.num_heads
    if hidden % head:
        raise ConfigError(f"analyses.model_size.hidden_sizes: {hidden} is not a multiple of the "
                          f"model's head size {head} (model.hidden_size / model.num_heads): use "
                          f"multiples of {head}")
    heads = hidden // head
    group = max(1, m.num_heads // m.num_kv_heads)
    kv = heads // group if heads % group == 0 and heads >= group else 1
    return ModelConfig.model_validate({
        **m.model_dump(), "hidden_size": hidden, "num_heads": heads, "num_kv_heads": kv,
        "head_dim": m.head_dim, "num_layers": num_layers or m.num_layers,
        "intermediate_size": max(8, round(hidden * m.intermediate_size / m.hidden_size)),
        "checkpoint": None})


def train_sweep_point(ctx: AnalysisContext, model_cfg: Any, fraction: float) -> dict[str, Any]:
    """Train one model on the first ``fraction`` of the training prompts for the sweep's
    steps and score the validation sample; cached per (model shape, share) so the two
    sweeps share their common point."""
    import torch

    from components.model.factory import build_model, count_parameters
    from components.train import train

    key = ("point", json.dumps(model_cfg.model_dump(mode="json"), sort_keys=True), fraction)
    if key in ctx.cache:
        ctx.log("  trained already for the other sweep: reused")
        return ctx.cache[key]
    sweep = _sweep_data(ctx, max(fraction, ctx.cache.get("max_fraction", fraction)))
    n_rows = max(1, math.ceil(fraction * sweep.n_train_prompts))
    subset = _subset(sweep.train_pool, n_rows)
    if len(subset) == 0:
        raise AnalysisError(f"share {fraction} of the training prompts holds no prompt that fits "
                            f"train.data.max_seq_len: raise the share")
    tcfg = sweep_train_config(ctx.cfg)
    device = "cuda" if ctx.cfg.train.use_gpu and torch.cuda.is_available() else "cpu"
    t0 = time.perf_counter()
    torch.manual_seed(ctx.acfg.seed)  # the same init for every share of one shape
    lm = build_model(model_cfg, len(sweep.tokenizer), sweep.tokenizer.pad_token_id)
    params = count_parameters(lm)
    work = ctx.out_dir / "_train"
    try:
        res = train(lm, subset, tcfg, work, yes_id=sweep.yes_id, no_id=sweep.no_id,
                    pad_id=sweep.tokenizer.pad_token_id, device=device)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # checkpoints are not needed afterwards
    train_seconds = time.perf_counter() - t0
    engine = _engine(res.module.lm, sweep.tokenizer)
    v = sweep.valid
    margins = score_margins(engine, v["prefix"].to_list(), v["candidates"].to_list())
    aucs = per_task_auc(v["task_id"].to_list(), margins, v["labels"].to_list())
    hist = res.history
    point = {
        "params": params, "hidden_size": model_cfg.hidden_size, "num_layers": model_cfg.num_layers,
        "fraction": fraction, "train_prompts": len(subset),
        "epochs": tcfg.max_steps * tcfg.batch_size * tcfg.grad_accum / len(subset),
        "auc_mean": nanmean(aucs.values()),
        "loss_first": float(hist[0]["loss"]) if hist else math.nan,
        "loss_last": nanmean(h["loss"] for h in hist[-3:]) if hist else math.nan,
        "train_seconds": train_seconds, "seconds": time.perf_counter() - t0,
        "per_task": aucs,
    }
    ctx.log(f"  hidden {model_cfg.hidden_size} ({params / 1e6:.2f}M params), {len(subset)} prompts "
            f"({point['epochs']:.2f} epochs): loss {point['loss_first']:.3f} -> {point['loss_last']:.3f}, "
            f"valid mean AUC {point['auc_mean']:.3f} ({point['seconds']:.0f}s)")
    ctx.cache[key] = point
    return point


def _sweep_result(ctx: AnalysisContext, name: str, points: list[dict[str, Any]], x: str,
                  params: dict[str, str], summary: tuple[str, ...]) -> AnalysisResult:
    v = ctx.cache["sweep_data"][1].valid
    table = pl.DataFrame([{k: val for k, val in p.items() if k != "per_task"} for p in points])
    per_task = pl.DataFrame([{x: p[x], "task_id": t, "auc": a} for p in points for t, a in p["per_task"].items()])
    metrics: dict[str, float] = {"valid_prompts": float(v.height),
                                 "valid_candidates": float(v["labels"].list.len().sum()),
                                 "valid_tasks": float(v["task_id"].n_unique())}
    suffix = {"fraction": "fraction", "hidden_size": "hidden"}[x]
    for p in points:
        for k in ("auc_mean", "params", "train_prompts", "epochs", "loss_first", "loss_last", "seconds"):
            metrics[f"{k}.{suffix}_{_key(p[x])}"] = float(p[k])
    tcfg = sweep_train_config(ctx.cfg)
    params = {**params, "steps": str(tcfg.max_steps), "batch_size": str(tcfg.batch_size),
              "lr": str(tcfg.lr), "lm_weight": str(tcfg.lm_weight), "seed": str(ctx.acfg.seed),
              "valid_prompts_per_task": str(ctx.acfg.training.valid_prompts_per_task),
              "threads": str(ctx.acfg.threads)}
    out = ctx.out_dir
    files = [_write_csv(table, out / f"{name}.csv"), _write_csv(per_task, out / f"{name}_per_task.csv"),
             _plot_sweep(table, name, out / f"{name}.png")]
    return AnalysisResult(name, table, metrics, params, files, summary)


def _plot_sweep(df: pl.DataFrame, name: str, path: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 3.6))
    if name == "data_amount":
        x, xlabel = df["train_prompts"].to_numpy(), "training prompts (log scale; numbers: epochs)"
        notes = [f"{e:.2g} ep" for e in df["epochs"]]
    else:
        x, xlabel = df["params"].to_numpy(), "parameters (log scale; numbers: hidden size)"
        notes = [f"h={h}" for h in df["hidden_size"]]
    y = df["auc_mean"].to_numpy()
    ax.plot(x, y, marker="o", color="black")
    for xi, yi, n in zip(x, y, notes, strict=True):
        ax.annotate(n, (xi, yi), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7)
    ax.set_xscale("log")
    ax.axhline(0.5, color="grey", ls="--", lw=0.8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("mean per-task AUC (valid sample)")
    ax.set_title(f"{'AUC vs training data' if name == 'data_amount' else 'AUC vs model size'} "
                 f"(equal steps)", fontsize=10)
    return save_figure(plt, fig, path)


def data_amount(ctx: AnalysisContext) -> AnalysisResult:
    """Mean per-task validation AUC per share of the training prompts, equal steps."""
    fractions = sorted(set(ctx.acfg.data_amount.fractions))
    model_cfg = ctx.cfg.model
    points = []
    for f in fractions:
        ctx.log(f"data_amount: share {f:g} of the training prompts")
        points.append(train_sweep_point(ctx, model_cfg, f))
    return _sweep_result(ctx, "data_amount", points, "fraction", {"fractions": str(fractions)},
                         ("fraction", "train_prompts", "epochs", "loss_last", "auc_mean", "seconds"))


def model_size(ctx: AnalysisContext) -> AnalysisResult:
    """Mean per-task validation AUC per model width, equal steps and data."""
    mcfg = ctx.acfg.model_size
    shapes = [width_model_config(ctx.cfg, h, mcfg.num_layers) for h in sorted(set(mcfg.hidden_sizes))]
    points = []
    for m in shapes:
        ctx.log(f"model_size: hidden {m.hidden_size}, {m.num_layers} layers, {m.num_heads} heads")
        points.append(train_sweep_point(ctx, m, mcfg.data_fraction))
    return _sweep_result(ctx, "model_size", points, "hidden_size",
                         {"hidden_sizes": str(sorted(set(mcfg.hidden_sizes))),
                          "data_fraction": str(mcfg.data_fraction)},
                         ("hidden_size", "params", "loss_last", "auc_mean", "seconds"))


# ============================================================================ 4. steering
def steering_base_task(task: Any, tasks: Mapping[str, Any], explicit: Mapping[str, str]) -> Any:
    """The unsteered task a steering task is compared with: ``explicit[task.id]`` when set,
    else the non-steering, trained task of the same item type that shares the most
    positive actions, then negative actions, then the surface and the negatives mode
    (ties: task id)."""
    if task.id in explicit:
        base = tasks.get(explicit[task.id])
        if base is None:
            raise ConfigError(f"analyses.steering.base_tasks maps {task.id} to "
                              f"'{explicit[task.id]}', which is not a task of this profile")
        return base

    def jaccard(a: Sequence[str], b: Sequence[str]) -> float:
        sa, sb = set(a), set(b)
        return len(sa & sb) / len(sa | sb) if sa | sb else 1.0

    pool = [t for t in tasks.values() if not t.steering and not t.held_out and t.item_type == task.item_type]
    if not pool:
        raise AnalysisError(f"steering task {task.id} has no unsteered task of item type "
                            f"'{task.item_type}' to compare with: set analyses.steering.base_tasks")
    return max(sorted(pool, key=lambda t: t.id, reverse=True), key=lambda t: (
        jaccard(t.positive_actions, task.positive_actions), jaccard(t.negative_actions, task.negative_actions),
        t.surface == task.surface, t.negatives == task.negatives))


def shift_correlation(delta: np.ndarray, criterion: np.ndarray, groups: np.ndarray) -> float:
    """Spearman correlation between the score change ``delta`` and the named criteria's
    utility ``criterion``, both centred within each candidate list (``groups``), so it
    measures how the ranking *within* a member's list moves, not a member's overall level.
    Lists with one candidate carry no ranking and are left out; nan when nothing is left
    or either side is constant."""
    delta, criterion, groups = (np.asarray(delta, dtype=np.float64), np.asarray(criterion, dtype=np.float64),
                                np.asarray(groups))
    _, inv, counts = np.unique(groups, return_inverse=True, return_counts=True)
    keep = counts[inv] >= 2
    if keep.sum() < 3:
        return math.nan

    def centred(v: np.ndarray) -> np.ndarray:
        means = np.bincount(inv, weights=v) / counts
        c = (v - means[inv])[keep]
        # rounding leaves ~1e-15 residues in lists that are constant: they are ties, not ranks
        c[np.abs(c) <= 1e-9 * max(1.0, float(np.abs(v).max()))] = 0.0
        return c

    a, b = centred(delta), centred(criterion)
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def shift_correlation_null(delta: np.ndarray, criterion: np.ndarray, groups: np.ndarray,
                           n: int = 200, seed: int = 0) -> float:
    """The 95th percentile of |shift_correlation| when ``delta`` is shuffled within each
    list: how large a value chance alone gives on these lists."""
    rng = np.random.default_rng(seed)
    groups = np.asarray(groups)
    order = np.argsort(groups, kind="stable")
    bounds = np.flatnonzero(np.r_[True, groups[order][1:] != groups[order][:-1], True])
    values = []
    for _ in range(n):
        shuffled = np.array(delta, dtype=np.float64, copy=True)
        for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
            idx = order[lo:hi]
            shuffled[idx] = shuffled[rng.permutation(idx)]
        values.append(abs(shift_correlation(shuffled, criterion, groups)))
    values = [v for v in values if not math.isnan(v)]
    return float(np.quantile(values, 0.95)) if values else math.nan


def criterion_utility(ctx: AnalysisContext, rows: pl.DataFrame, criteria: Sequence[str]) -> np.ndarray:
    """The synthetic world's utility restricted to ``criteria`` (the steering labels'
    ranking), per candidate of ``rows``, flattened in list order. Evaluated at the list's
    cutoff (the named criteria of the registry do not depend on time)."""
    from components.data.synthetic import steering_weights, utility, utility_components

    split = ctx.art.stage("split")
    world = ctx.inputs.cfg.data.synthetic  # as the run's ingest stage generated it
    pairs = rows.select("member_id", "cutoff", pl.col("candidate_item_ids").alias("item_id")).explode("item_id")
    key = ("split_tables", str(split))
    if key not in ctx.cache:
        ctx.cache[key] = (pl.read_parquet(split / "members"), pl.read_parquet(split / "items"))
    members, items = ctx.cache[key]
    comps = utility_components(members, items, pairs.rename({"cutoff": "timestamp"}), world)
    return utility(comps, steering_weights(criteria)).to_numpy().astype(np.float64)


def steering(ctx: AnalysisContext) -> AnalysisResult:
    """Steering tasks scored under their own and their base task's instruction."""
    cfg, tasks = ctx.inputs.cfg, ctx.inputs.tasks
    if cfg.data.source != "synthetic":
        return AnalysisResult("steering", skipped=(
            f"data.source is '{cfg.data.source}': steering variants need the synthetic world, "
            f"whose hidden utility labels them; this dataset has none"))
    present = set(pl.read_parquet(ctx.art.examples_dir, columns=["task_id", "split"])
                  .filter(pl.col("split") == ctx.acfg.split)["task_id"].unique().to_list())
    steer = [t for t in tasks.values() if t.steering and t.id in present]
    if not steer:
        return AnalysisResult("steering", skipped=(
            f"no task with `steering:` criteria has '{ctx.acfg.split}' prompts in this run: "
            f"add steering tasks to the registry (components/promptify/tasks/)"))
    rows = _eval_rows(ctx, ctx.acfg.steering.max_prompts_per_task, [t.id for t in steer])
    renderer = PrefixRenderer(ctx.art, ctx.inputs, rows["member_id"].unique().to_list())
    renderer.check_reproduces(rows)
    engine = _engine(ctx.art.model_dir)
    table, metrics, per_candidate = [], {}, []
    for task in steer:
        part = rows.filter(pl.col("task_id") == task.id)
        base = steering_base_task(task, tasks, ctx.acfg.steering.base_tasks)
        t0 = time.perf_counter()
        base_prefix = renderer.render(part, task_ids=[base.id] * part.height)["prefix"].to_list()
        cands = part["candidates"].to_list()
        steered = score_margins(engine, part["prefix"].to_list(), cands)
        unsteered = score_margins(engine, base_prefix, cands)
        sizes = [len(c) for c in cands]
        groups = np.repeat(np.arange(part.height), sizes)
        labels = np.concatenate([np.asarray(y, dtype=np.int64) for y in part["labels"]])
        s_flat, b_flat = np.concatenate(steered), np.concatenate(unsteered)
        delta = s_flat - b_flat
        crit = criterion_utility(ctx, part, task.steering)
        point = {
            "task_id": task.id, "criteria": "+".join(task.steering), "base_task": base.id,
            "prompts": part.height, "candidates": int(labels.size), "positives": int(labels.sum()),
            "auc_base_instruction": roc_auc(b_flat, labels),
            "auc_steered_instruction": roc_auc(s_flat, labels),
            "auc_criterion_utility": roc_auc(crit, labels),
            "shift_spearman": shift_correlation(delta, crit, groups),
            "shift_spearman_null95": shift_correlation_null(delta, crit, groups, seed=ctx.acfg.seed),
            "criterion_spearman_base": shift_correlation(b_flat, crit, groups),
            "criterion_spearman_steered": shift_correlation(s_flat, crit, groups),
            "mean_delta": float(delta.mean()) if delta.size else math.nan,
            "seconds": time.perf_counter() - t0,
        }
        point["auc_gain"] = point["auc_steered_instruction"] - point["auc_base_instruction"]
        table.append(point)
        for k, v in point.items():
            if isinstance(v, int | float) and k not in ("seconds",):
                metrics[f"{k}.{task.id}"] = float(v)
        per_candidate.append(pl.DataFrame({
            "task_id": task.id, "example_id": np.repeat(part["example_id"].to_numpy(), sizes),
            "position": np.concatenate([np.arange(n) for n in sizes]),
            "label": labels, "score_base": b_flat, "score_steered": s_flat, "delta": delta,
            "criterion_utility": crit}))
        ctx.log(f"steering {task.id} (base {base.id}): AUC {point['auc_base_instruction']:.3f} -> "
                f"{point['auc_steered_instruction']:.3f}, shift Spearman {point['shift_spearman']:+.3f} "
                f"(chance 95%: {point['shift_spearman_null95']:.3f})")
    df = pl.DataFrame(table)
    for col in ("auc_base_instruction", "auc_steered_instruction", "auc_gain", "shift_spearman",
                "auc_criterion_utility"):
        metrics[f"{col}.mean"] = nanmean(df[col].to_list())
    out = ctx.out_dir
    files = [_write_csv(df, out / "steering.csv"),
             _plot_steering(df, out / "steering.png")]
    pl.concat(per_candidate).write_parquet(out / "steering_scores.parquet")  # local only
    return AnalysisResult("steering", df, metrics, {
        "split": ctx.acfg.split, "max_prompts_per_task": str(ctx.acfg.steering.max_prompts_per_task),
        "base_tasks": json.dumps({r["task_id"]: r["base_task"] for r in table}), "seed": str(ctx.acfg.seed),
        "model_dir": str(ctx.art.model_dir)}, files,
        ("task_id", "base_task", "candidates", "auc_base_instruction", "auc_steered_instruction",
         "shift_spearman", "shift_spearman_null95"))


def _plot_steering(df: pl.DataFrame, path: Path) -> Path:
    plt = pyplot()
    n = df.height
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9.5, max(2.6, 0.5 * n + 1.4)), sharey=True)
    y = np.arange(n)
    a1.barh(y - 0.2, np.nan_to_num(df["auc_base_instruction"].to_numpy(), nan=0.0), height=0.4,
            label="base task's instruction")
    a1.barh(y + 0.2, np.nan_to_num(df["auc_steered_instruction"].to_numpy(), nan=0.0), height=0.4,
            label="steering instruction", color="black")
    a1.axvline(0.5, color="grey", ls="--", lw=0.8)
    a1.set_xlim(0, 1)
    a1.set_yticks(y, df["task_id"].to_list(), fontsize=7)
    a1.set_xlabel("AUC vs the steered labels")
    a1.legend(fontsize=7, loc="lower right")
    a2.barh(y, np.nan_to_num(df["shift_spearman"].to_numpy(), nan=0.0), height=0.5, color="tab:green")
    null = np.nan_to_num(df["shift_spearman_null95"].to_numpy(), nan=0.0)
    a2.errorbar(np.zeros(n), y, xerr=null, fmt="none", ecolor="grey", capsize=3, lw=0.8)
    a2.axvline(0.0, color="black", lw=0.8)
    a2.set_xlim(-1, 1)
    a2.set_xlabel("Spearman(score change, named criteria's utility)\ngrey: 95% of chance")
    fig.suptitle("Instruction steering: does the ranking move the way the instruction says?", fontsize=10)
    return save_figure(plt, fig, path)


# ============================================================================ MLflow and the driver
RUNNERS: dict[str, Callable[[AnalysisContext], AnalysisResult]] = {
    "context_budget": context_budget, "data_amount": data_amount, "model_size": model_size,
    "steering": steering,
}


class AnalysisRunLogger:
    """One MLflow run per analysis, nested under the analysed pipeline run when there is
    one, carrying that run's git sha, config hash and profile tags."""

    def __init__(self, tracking_uri: str, art: RunArtifacts, experiment: str, artifacts_root: Path):
        tracking.configure(tracking_uri)
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.experiment_id = art.experiment_id or tracking.experiment_id(experiment, artifacts_root)
        self.tags = {**art.tags, tracking.TAG_KIND: ANALYSIS_KIND}
        if art.pipeline_run_id:
            self.tags[PARENT_TAG] = art.pipeline_run_id
        if "align" in art.stage_dirs:
            self.tags[tracking.TAG_STAGE_KEY] = art.stage_dirs["align"].name

    def log(self, result: AnalysisResult) -> str:
        from mlflow.entities import Metric, Param

        tags = {**self.tags, TAG_ANALYSIS: result.name}
        if result.skipped:
            tags[TAG_SKIPPED] = result.skipped[:5000]
        run = self.client.create_run(self.experiment_id, tags=tags, run_name=f"analysis/{result.name}")
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, 0) for k, v in sorted(result.metrics.items())]
        metrics.append(Metric("analysis_seconds", float(result.seconds), now, 0))
        params = [Param(k, str(v)[:6000]) for k, v in sorted(result.params.items())]
        for i in range(0, max(len(metrics), 1), 900):  # MLflow takes at most 1000 per batch
            self.client.log_batch(run.info.run_id, metrics=metrics[i:i + 900],
                                  params=params if i == 0 else [])
        for p in result.files:
            self.client.log_artifact(run.info.run_id, str(p))
        self.client.set_terminated(run.info.run_id, "FINISHED")
        return run.info.run_id


def analyze(cfg: PipelineConfig, art: RunArtifacts, only: Sequence[str] | None = None,
            tracking_uri: str | None = None, out_root: Path | None = None,
            log: Callable[[str], None] = print) -> list[AnalysisResult]:
    """Run the analyses (``only``, else ``cfg.analyses.run``) on the run ``art``; log each
    as an MLflow run when ``tracking_uri`` is given. Files go to
    ``<out_root or run.work_dir/analyses>/<align key>/<analysis>/``."""
    import torch

    names = list(only or cfg.analyses.run)
    unknown = [n for n in names if n not in ANALYSIS_NAMES]
    if unknown:
        raise ConfigError(f"unknown analyses {unknown}: choose from {list(ANALYSIS_NAMES)}")
    if "model_size" in names:  # shape errors before any training
        for h in cfg.analyses.model_size.hidden_sizes:
            width_model_config(cfg, h, cfg.analyses.model_size.num_layers)
    torch.set_num_threads(cfg.analyses.threads)
    inputs = RunInputs.of(art, cfg)
    root = Path(out_root or Path(cfg.run.work_dir) / "analyses") / art.key
    logger = None
    if tracking_uri is not None:
        logger = AnalysisRunLogger(tracking_uri, art, cfg.run.name, Path(cfg.run.work_dir) / "mlartifacts")
    cache: dict[Any, Any] = {}
    # one tokenization of the training prompts serves both sweeps
    shares = [*(cfg.analyses.data_amount.fractions if "data_amount" in names else []),
              *([cfg.analyses.model_size.data_fraction] if "model_size" in names else [])]
    if shares:
        cache["max_fraction"] = max(shares)
    results = []
    for name in names:
        t0 = time.perf_counter()
        ctx = AnalysisContext(cfg, art, inputs, root / name, log, cache)
        result = RUNNERS[name](ctx)
        result.seconds = time.perf_counter() - t0
        if result.skipped:
            log(f"{name}: skipped: {result.skipped}")
        if logger is not None:
            result.run_id = logger.log(result)
        results.append(result)
    return results
