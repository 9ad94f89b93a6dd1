"""The ``evaluate`` stage: the teacher vs the ID-based baselines, per task and per slice.

Flow (deps: ``split``, ``promptify``, ``align``):

1. Pick the evaluation prompts: the configured split (``evaluate.split``, default
   ``test``), every task including the held-out ones, at most
   ``evaluate.max_prompts_per_task`` prompts per task (a seeded sample of whole lists).
2. Fit the baselines once on the train split (``components.evaluate.baselines``), with
   the prepare stage's steering relabel hook on synthetic data, so they learn the same
   targets as the language model.
3. Fan out one Ray task (``num_cpus=1``, one torch thread) per (model, task), model in
   {teacher, each model of the compression chain (``student_<step>``, ``quantized``), each
   baseline}: score the task's prompts (the teacher with
   ``ScoringEngine`` on ``<align>/model``), compute the metrics and the slices. Plain
   tasks, not actors: an actor pool holding the CPUs deadlocked on 2 cores.
4. As each result arrives, this process logs one MLflow run per (model, task) nested
   under the pipeline's parent run (tags ``rankbrew.kind=eval``, ``rankbrew.model``,
   ``rankbrew.task``, ``rankbrew.held_out``). Logging here rather than from the tasks
   keeps one SQLite writer (concurrent writers contend, see API-NOTES).
5. Write ``summary.csv``, ``cold_start.csv``, ``summary.md``, ``results.json``,
   ``paired_deltas.csv`` (teacher minus each baseline, paired member bootstrap),
   ``scores.parquet`` and the plots; log them to the stage run and to the parent run
   (under ``evaluate/``; ``scores.parquet`` to the parent only); print the table, the
   one-class slice warnings and the verdict lines; return the headline numbers. The
   headline tables hold the teacher and the baselines; the chain's models get their own
   table (``compression.csv``, pipelines/compress_report.py).

``rankbrew compare`` (pipelines/compare.py) reads the nested runs back.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from components.config import PipelineConfig
from components.evaluate.report import CONSOLE_SECTIONS as CONSOLE_SECTIONS
from components.evaluate.report import TEACHER, EvalRecord
from components.evaluate.report import console_summary as console_summary
from components.evaluate.report import load_records as load_records
from components.evaluate.sample import EXAMPLE_COLUMNS as EXAMPLE_COLUMNS
from components.evaluate.sample import select_eval_rows
from components.evaluate.score import evaluate_model_on_task
from pipelines.dag import Stage, StageContext

TAG_MODEL = "rankbrew.model"
TAG_TASK = "rankbrew.task"
TAG_HELD_OUT = "rankbrew.held_out"
TAG_EVAL_SPLIT = "rankbrew.eval_split"
EVAL_KIND = "eval"


# ============================================================================ fan-out
# the prompts: components/evaluate/sample.py; one (model, task): components/evaluate/score.py
def run_fanout(examples: pl.DataFrame, flags: pl.DataFrame, scorers: Mapping[str, Any], data: Any,
               settings: Mapping[str, Any], on_result: Callable[[EvalRecord], None] | None = None,
               teacher_gpus: float = 0.0) -> list[tuple[EvalRecord, pl.DataFrame]]:
    """One Ray task (``num_cpus=1``) per (model, task); ``on_result`` is called in this
    process as each finishes. Needs Ray initialized (inside a stage task it is).

    Returns (record, scores) per pair, scores with ``model`` and ``task_id`` added."""
    import ray

    remote = ray.remote(evaluate_model_on_task)
    is_lm = {m: isinstance(s, str) for m, s in scorers.items()}  # a model directory: an LM
    data_ref = ray.put(data) if not all(is_lm.values()) else None
    scorer_refs = {m: (s if is_lm[m] else ray.put(s)) for m, s in scorers.items()}
    per_task = examples.partition_by("task_id", as_dict=True, maintain_order=True)
    flags_by_task = flags.partition_by("task_id", as_dict=True, maintain_order=True)
    inputs = {}
    for (task_id,), ex in per_task.items():
        inputs[task_id] = (ray.put(ex), ray.put(flags_by_task[(task_id,)]), bool(ex["held_out"][0]))
    pending: dict[Any, tuple[str, str, bool]] = {}
    # the language models' tasks first: they are the longest, starting them early shortens the tail
    for m in sorted(scorers, key=lambda m: not is_lm[m]):
        for task_id, (ex_ref, fl_ref, held_out) in inputs.items():
            opts: dict[str, Any] = {"num_cpus": 1, "max_retries": 1, "name": f"eval:{m}:{task_id}"}
            if is_lm[m] and teacher_gpus:
                opts["num_gpus"] = teacher_gpus
            ref = remote.options(**opts).remote(m, ex_ref, fl_ref, scorer_refs[m],
                                                data_ref if not is_lm[m] else None, settings)
            pending[ref] = (m, task_id, held_out)
    out = []
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            m, task_id, held_out = pending.pop(done[0])
            metrics, scores = ray.get(done[0])
            record = EvalRecord(m, task_id, held_out, metrics)
            if on_result is not None:
                on_result(record)
            out.append((record, scores.with_columns(pl.lit(m).alias("model"), pl.lit(task_id).alias("task_id"))))
    finally:
        for ref in pending:  # a failed pair fails the stage: do not leave the others running
            ray.cancel(ref)
    return out


# ============================================================================ MLflow
class EvalRunLogger:
    """Logs one MLflow run per (model, task), nested under the pipeline's parent run.

    The parent is the stage run's ``mlflow.parentRunId``; the runs carry the stage run's
    git sha, config hash, profile and stage key tags, so ``rankbrew compare`` finds them
    even when a later pipeline run reuses the cached stage."""

    def __init__(self, stage_run_id: str, params: Mapping[str, Any], split: str):
        from mlflow.tracking import MlflowClient

        from components import tracking

        self.client = MlflowClient()
        run = self.client.get_run(stage_run_id)
        self.stage_run_id = stage_run_id
        self.parent_run_id = run.data.tags.get("mlflow.parentRunId") or stage_run_id
        self.experiment_id = run.info.experiment_id
        # not rankbrew.stage: tools that list a pipeline's stage runs by it must not see these
        keep = (tracking.TAG_GIT_SHA, tracking.TAG_CONFIG_HASH, tracking.TAG_PROFILE, tracking.TAG_STAGE_KEY)
        self.tags = {k: v for k, v in run.data.tags.items() if k in keep}
        self.tags.update({tracking.TAG_KIND: EVAL_KIND, TAG_EVAL_SPLIT: split})
        self.params = {k: str(v) for k, v in params.items()}
        self.run_ids: dict[tuple[str, str], str] = {}

    def log(self, record: EvalRecord, extra_params: Mapping[str, str] | None = None) -> str:
        from mlflow.entities import Metric, Param

        tags = {**self.tags, "mlflow.parentRunId": self.parent_run_id, TAG_MODEL: record.model,
                TAG_TASK: record.task_id, TAG_HELD_OUT: str(bool(record.held_out)).lower()}
        run = self.client.create_run(self.experiment_id, tags=tags,
                                     run_name=f"eval/{record.model}/{record.task_id}")
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, 0) for k, v in sorted(record.metrics.items())]
        params = [Param(k, v) for k, v in {**self.params, **(extra_params or {})}.items()]
        self.client.log_batch(run.info.run_id, metrics=metrics, params=params)
        self.client.set_terminated(run.info.run_id, "FINISHED")
        self.run_ids[(record.model, record.task_id)] = run.info.run_id
        return run.info.run_id

    def log_artifacts(self, paths: list[Path], artifact_path: str) -> None:
        """To the parent run (under ``evaluate/``); the stage run gets them via the ctx."""
        for p in paths:
            self.client.log_artifact(self.parent_run_id, str(p), artifact_path)


def _model_params(name: str, model: Any, task_id: str) -> dict[str, str]:
    """Per-(model, task) facts worth a param: the popularity variant, a LightGBM fallback."""
    if name == "popularity" and hasattr(model, "variant"):
        return {"popularity_variant": model.variant.get(task_id, "-")}
    from components.evaluate.baselines import LIGHTGBM_BASELINES

    if name in LIGHTGBM_BASELINES and getattr(model, "fallback", {}).get(task_id):
        return {"lightgbm_fallback": model.fallback[task_id]}
    return {}


# ============================================================================ the stage
def evaluate(ctx: StageContext) -> dict[str, float]:
    """Teacher vs baselines on the configured split: nested MLflow runs, summary, plots."""
    from components.evaluate.baselines import BaselineConfig, BaselineData, fit_baselines
    from components.evaluate.report import write_report
    from components.evaluate.slices import candidate_rows, slice_flags
    from pipelines.tasks import load_pipeline_tasks, steering_relabel_hook

    ecfg = ctx.cfg.evaluate
    t0 = time.perf_counter()
    examples = select_eval_rows(ctx.inputs["promptify"] / "examples", ecfg.split,
                                ecfg.max_prompts_per_task, ecfg.seed, ecfg.tasks)
    wanted = set(examples["task_id"].unique().to_list())
    tasks = [t for t in load_pipeline_tasks(ctx.cfg) if t.id in wanted]
    missing = sorted(wanted - {t.id for t in tasks})
    if missing:
        raise ValueError(f"tasks {missing} of the examples are not in the task registry of this profile: "
                         f"set promptify.tasks / promptify.domain as the promptify stage had them")
    model_dir = teacher_model_dir(ctx)
    if ecfg.model is not None:
        # a model trained elsewhere: a task is trained only if the model says it trained on it
        from components.tracking.models import trained_tasks

        trained = trained_tasks(model_dir) or set()
        tasks = [t.model_copy(update={"held_out": t.id not in trained}) for t in tasks]
        examples = examples.with_columns(held_out=~pl.col("task_id").is_in(sorted(trained)))
        ctx.log(f"teacher: {ecfg.model} -> {model_dir}; trained on {len(trained & wanted)} of these "
                f"tasks, the other {len(wanted - trained)} are zero-shot for it")
    ctx.log(f"{examples.height} '{ecfg.split}' prompts of {len(tasks)} tasks "
            f"({sum(t.held_out for t in tasks)} held out); baselines {ecfg.baselines}")

    data = BaselineData.from_split_dir(ctx.inputs["split"])
    baselines: dict[str, Any] = {}
    relabel = steering_relabel_hook(ctx.cfg, tasks)
    if ecfg.baselines:
        baselines = fit_baselines(data, tasks, BaselineConfig(
            baselines=list(ecfg.baselines), seed=ecfg.seed,
            # training lists sample negatives as the run's prompts do
            sampled_negatives=ctx.cfg.promptify.sampled_negatives, negative_pool=ctx.cfg.promptify.negative_pool,
            hard_negatives=ctx.cfg.promptify.hard_negatives,
            negative_window_days=ctx.cfg.promptify.negative_window_days,
            match_fields=ctx.cfg.promptify.match_fields),
                                  relabel=relabel)
    fit_seconds = time.perf_counter() - t0
    ctx.log(f"baselines fitted in {fit_seconds:.1f}s (steering relabel: "
            f"{'on' if relabel else 'off'})")

    flags = slice_flags(candidate_rows(examples), data.items)
    from pipelines.compress_stages import compressed_models
    from pipelines.teacher_stages import MODEL_DIR

    # every model of the compression chain, scored on the same candidates as the teacher
    students = {name: str(ctx.inputs[stage] / MODEL_DIR) for name, stage in
                compressed_models(ctx.cfg).items() if stage in ctx.inputs and ecfg.model is None}
    scorers = {TEACHER: str(model_dir), **students, **baselines}
    settings = {"bootstrap_samples": ecfg.bootstrap_samples, "ece_bins": ecfg.ece_bins, "seed": ecfg.seed}
    logger = None
    if ctx.mlflow_run_id is not None:
        logger = EvalRunLogger(ctx.mlflow_run_id, {
            "split": ecfg.split, "max_prompts_per_task": ecfg.max_prompts_per_task,
            "bootstrap_samples": ecfg.bootstrap_samples, "ece_bins": ecfg.ece_bins, "seed": ecfg.seed},
            ecfg.split)

    n_evals, finished = len(scorers) * len(tasks), [0]

    def on_result(rec: EvalRecord) -> None:
        if logger is not None:
            logger.log(rec, _model_params(rec.model, scorers[rec.model], rec.task_id))
        auc = rec.metrics.get("auc", math.nan)
        ctx.log(f"{rec.model:<10} {rec.task_id:<45} AUC {auc:.3f}")
        finished[0] += 1
        ctx.progress(finished[0], n_evals, "(model, task)", f"{rec.model} {rec.task_id} AUC {auc:.3f}")

    t1 = time.perf_counter()
    results = run_fanout(examples, flags, scorers, data, settings, on_result,
                         teacher_gpus=1.0 if ctx.cfg.train.use_gpu else 0.0)
    fanout_seconds = time.perf_counter() - t1
    all_records = sorted((r for r, _ in results), key=lambda r: (r.task_id, r.model))
    # the headline report: the teacher against the baselines; the chain has its own table
    records = [r for r in all_records if r.model not in students]

    all_scores = pl.concat([s for _, s in results]).join(
        flags.select("example_id", "position", "task_id", "member_id", "held_out", "item_id", "label",
                     "n_prior_events", "new_item"), on=["example_id", "position", "task_id"], how="left",
    ).sort("model", "task_id", "example_id", "position")
    all_scores.write_parquet(ctx.out_dir / "scores.parquet")
    scores = all_scores.filter(~pl.col("model").is_in(list(students)))
    notes = [f"Split `{ecfg.split}`: {examples.height} prompts, {flags.height} candidates, "
             f"{len(tasks)} tasks (at most {ecfg.max_prompts_per_task or 'all'} prompts per task, "
             f"seed {ecfg.seed}); models: {', '.join(scorers)}; AUC intervals: "
             f"{ecfg.bootstrap_samples} bootstrap replicates over prompts; paired deltas: "
             f"{ecfg.bootstrap_samples} replicates over members."]
    teacher = scores.filter(pl.col("model") == TEACHER)
    report = write_report(records, ctx.out_dir, title=f"Evaluation on the {ecfg.split} split",
                          notes=notes, teacher_probs=teacher["prob"].to_numpy(),
                          teacher_labels=teacher["label"].to_numpy(),
                          teacher_held_out=teacher["held_out"].to_numpy(), ece_bins=ecfg.ece_bins,
                          scores=scores, n_boot=ecfg.bootstrap_samples, seed=ecfg.seed)
    for p in report.files:
        ctx.log_artifact(p, "plots" if p.parent.name == "plots" else None)
    if logger is not None:
        logger.log_artifacts([p for p in report.files if p.parent.name != "plots"], "evaluate")
        logger.log_artifacts([p for p in report.files if p.parent.name == "plots"], "evaluate/plots")
        # per-row scores with member ids: paired statistics can be recomputed from MLflow alone
        logger.log_artifacts([ctx.out_dir / "scores.parquet"], "evaluate")
    opposites, opposite_line = _opposite_check(ctx, model_dir, examples, tasks, scores, logger)
    chain_metrics: dict[str, float] = {}
    if students:
        from pipelines.compress_report import compression_report

        chain_metrics = compression_report(ctx, all_records, all_scores, list(students), logger)
    ctx.log("\n" + report.markdown)
    for line in (*report.warnings, *report.verdicts, *([opposite_line] if opposite_line else [])):
        ctx.log(line)  # the verdicts last: under the table
    return {
        "prompts": float(examples.height),
        "candidates": float(flags.height),
        "tasks": float(len(tasks)),
        "eval_runs": float(len(all_records)),
        "fit_seconds": fit_seconds,
        "fanout_seconds": fanout_seconds,
        **report.metrics,
        **opposites,
        **chain_metrics,
    }


def teacher_model_dir(ctx: StageContext) -> Path:
    """The model the stage evaluates: ``evaluate.model`` (resolved, downloaded under the
    stage's directory when it lives in MLflow) or this run's align output."""
    ecfg = ctx.cfg.evaluate
    if ecfg.model is None:
        from pipelines.teacher_stages import MODEL_DIR

        return ctx.inputs["align"] / MODEL_DIR
    from components.tracking import default_tracking_uri
    from components.tracking.models import resolve_model

    uri = ctx.cfg.run.mlflow_tracking_uri or default_tracking_uri(ctx.cfg.run.work_dir)
    return resolve_model(ecfg.model, uri, ctx.out_dir / "model_download")


def _opposite_check(ctx: StageContext, model_dir: Path, examples: pl.DataFrame, tasks, scores: pl.DataFrame,
                    logger: EvalRunLogger | None) -> tuple[dict[str, float], str | None]:
    """Score correlation between opposite tasks (issue 14.6): ``opposites.csv``, a section
    of ``summary.md``, metrics and a verdict line. The prompts as asked reuse the fan-out's
    teacher scores; only the swapped ones are scored here."""
    from components.evaluate.opposites import (
        opposite_correlations,
        opposite_pairs,
        opposite_verdict,
    )
    from components.evaluate.report import markdown_table
    from components.model.engine import ScoringEngine

    ecfg = ctx.cfg.evaluate
    pairs = opposite_pairs(tasks, ecfg.opposite_tasks)
    if not pairs or ecfg.opposite_max_prompts == 0:
        return {}, None
    engine = ScoringEngine.from_pretrained(str(model_dir))
    teacher = scores.filter(pl.col("model") == TEACHER).sort("example_id", "position")
    asked = {e: g["score"].to_numpy() for (e,), g in teacher.group_by("example_id", maintain_order=True)}

    def score(batch):
        return [np.asarray(x, dtype=np.float64) for x in engine.score_batch(batch, margins=True)]

    t0 = time.perf_counter()
    table = opposite_correlations(examples, tasks, pairs, score, asked, ecfg.opposite_max_prompts,
                                  ecfg.bootstrap_samples, ecfg.seed)
    ctx.log(f"opposite-task check: {table.height} pairs in {time.perf_counter() - t0:.1f}s")
    if table.height == 0:
        return {}, None
    path = ctx.out_dir / "opposites.csv"
    table.write_csv(path)
    line = opposite_verdict(table)
    md = ("\n## Does the question matter? Opposite tasks\n\n"
          "Each row: the teacher's scores on the first task's prompts as asked and asked with the "
          "opposite task's question, Spearman correlation within each list (mean, 95% bootstrap "
          "interval over lists). Reading the question gives < 0; ignoring it ~+1.\n\n"
          + markdown_table(table) + f"\n\n- {line}\n")
    summary = ctx.out_dir / "summary.md"
    summary.write_text(summary.read_text() + md)
    ctx.log_artifact(path)
    if logger is not None:
        logger.log_artifacts([path, summary], "evaluate")
    metrics = {"opposite_corr_mean": float(table["mean_corr"].mean()),
               "opposite_corr_max": float(table["mean_corr"].max()),
               "opposite_pairs_negative": float((table["corr_high"] < 0).sum()),
               "opposite_pairs": float(table.height)}
    return metrics, line


EVALUATE_CODE = ("components.evaluate", "components.model", "components.promptify", "components.data.synthetic",
                 "components.tracking.models", "pipelines.tasks", "pipelines.teacher_stages")
EVALUATE_STAGE = Stage(
    "evaluate", evaluate, deps=("split", "promptify", "align"), config_keys=("evaluate",), num_cpus=0,
    code=EVALUATE_CODE,
    description="teacher vs baselines per task: Ray fan-out, nested MLflow runs, summary + plots",
)


def _model_fingerprint(cfg: PipelineConfig) -> str:
    """What ``evaluate.model`` points to now (an alias's version, a directory's files)."""
    from components.tracking import default_tracking_uri
    from components.tracking.models import pinned_reference
    from pipelines.dag import fingerprint_paths

    uri = cfg.run.mlflow_tracking_uri or default_tracking_uri(cfg.run.work_dir)
    pinned = pinned_reference(str(cfg.evaluate.model), uri)
    local = Path(pinned)
    files = fingerprint_paths(p for p in local.rglob("*") if p.is_file()) if local.is_dir() else ""
    return f"{pinned}|{files}"


#: ``evaluate.model`` set: score a model trained elsewhere; no teacher stages run.
EVALUATE_MODEL_STAGE = Stage(
    "evaluate", evaluate, deps=("split", "promptify"), config_keys=("evaluate",), num_cpus=0,
    code=EVALUATE_CODE, fingerprint=_model_fingerprint,
    description="a given model (evaluate.model) vs baselines per task, zero-shot where it never trained",
)


def summary_path(stage_dir: Path) -> Path:
    """Where the stage leaves its markdown summary (the CLI prints it after a run)."""
    return Path(stage_dir) / "summary.md"
