"""The teacher's training stages: ``cpt -> sft -> align``, each a Ray Train run.

Thin wrappers over :func:`pipelines.train_job.run_training`: they pick the inputs from
the upstream artifacts (member rows and the split's validation start for CPT; the
promptified examples for SFT and alignment), continue from the previous stage's model,
keep Ray Train's checkpoints in the stage's ``resume_dir`` (a crashed stage continues
from its last checkpoint when the pipeline is run again) and leave
``<artifact>/model/`` (safetensors + tokenizer) for the next stage.

After training, each prompt stage scores the validation prompts with the new model and
logs per-task AUC and calibration, so MLflow shows what SFT and alignment changed; the
aligned teacher is logged and registered in the MLflow model registry.
"""

from __future__ import annotations

import json
import math
import shutil
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from components.config import PipelineConfig
from components.train.config import TrainConfig
from pipelines.dag import Stage, StageContext

if TYPE_CHECKING:
    from components.evaluate.gate import GateResult

MODEL_DIR = "model"


def _base_model(cfg: PipelineConfig) -> dict[str, Any] | str:
    """The initial model of the first stage: a local checkpoint, or the configured shape."""
    if cfg.model.checkpoint is not None:
        return str(cfg.model.checkpoint)
    return {"model_config": cfg.model.model_dump(mode="json")}


def _run(ctx: StageContext, stage: str, data_update: dict[str, Any],
         base_model: dict[str, Any] | str, train: TrainConfig | None = None,
         teacher_model: Path | None = None) -> dict[str, float]:
    """One training stage (``train``: its settings, default ``cfg.train.<stage>``;
    ``teacher_model``: the parent a ``distill`` stage learns from)."""
    from components.tracking import default_tracking_uri
    from pipelines.train_job import run_training

    tcfg = ctx.cfg.train
    train = train or getattr(tcfg, stage)
    if train.max_steps == 0:
        return _skip(ctx, stage, base_model, train.seed)
    assert ctx.resume_dir is not None
    data = tcfg.data.model_copy(update=data_update)
    uri = ctx.cfg.run.mlflow_tracking_uri or default_tracking_uri(ctx.cfg.run.work_dir)
    out = run_training(
        train.stage, data=data, train=train,
        tokenizer_dir=ctx.inputs["tokenizer"] / "tokenizer", base_model=base_model,
        storage_path=ctx.resume_dir.resolve(), name=stage, num_workers=tcfg.num_workers,
        cpus_per_worker=tcfg.cpus_per_worker, use_gpu=tcfg.use_gpu,
        max_failures=tcfg.max_failures, mlflow_run_id=ctx.mlflow_run_id,
        mlflow_tracking_uri=uri if ctx.mlflow_run_id else None, teacher_model=teacher_model,
        placement_strategy=tcfg.placement_strategy)
    dest = ctx.out_dir / MODEL_DIR
    shutil.copytree(out.model_dir, dest)
    (ctx.out_dir / "history.json").write_text(json.dumps(out.history))
    hist = out.history
    steady = sorted(h["tokens_per_s"] for h in hist[2:]) or [hist[-1]["tokens_per_s"]]
    last = hist[-10:]
    metrics = {
        "train_seconds": out.seconds,
        "steps": float(hist[-1]["step"]) if hist else 0.0,
        "tokens_seen": float(hist[-1].get("tokens_seen", 0)) if hist else 0.0,
        "tokens_per_s_median": float(steady[len(steady) // 2]),
        "loss_first": float(hist[0]["loss"]),
        "loss_last10_mean": float(sum(h["loss"] for h in last) / len(last)),
        "resumed_from_step": float(out.resumed_from_step or 0),
        **{f"data.{k}": float(v) for k, v in out.data_stats.items()},
    }
    for e in out.evals[-1:]:
        metrics.update({k: float(v) for k, v in e.items() if k != "step"})
    if out.best is not None:  # train.keep_best: the weights saved are this evaluation's
        metrics.update({"best.step": float(out.best["step"]),
                        f"best.{out.best['metric']}": float(out.best["value"])})
        if out.best["step"] != metrics["steps"]:
            ctx.note(f"{stage}: kept the weights of step {out.best['step']} (best "
                     f"{out.best['metric']} {out.best['value']:.3f}), not of the last step")
    ctx.log_artifact(_plot_history(hist, stage, ctx.out_dir / "plots" / f"{stage}_loss.png"),
                     "plots")
    ctx.log(f"{stage}: {out.seconds:.0f}s, loss {metrics['loss_first']:.3f} -> "
            f"{metrics['loss_last10_mean']:.3f}, {metrics['tokens_per_s_median']:.0f} tokens/s")
    return metrics


def _skip(ctx: StageContext, stage: str, base_model: dict[str, Any] | str,
          seed: int) -> dict[str, float]:
    """``max_steps: 0``: the stage passes its input model on untrained (a checkpoint is
    copied; a configured shape is built from its seed and saved with the tokenizer)."""
    dest = ctx.out_dir / MODEL_DIR
    if isinstance(base_model, str):
        shutil.copytree(base_model, dest)
    else:
        from components.model.factory import save_model
        from components.promptify.tokenizer import load_tokenizer
        from pipelines.train_job import load_base_model

        tok = load_tokenizer(ctx.inputs["tokenizer"] / "tokenizer")
        model = load_base_model(base_model, len(tok), seed,
                                tok.pad_token_id, tok.eos_token_id)
        save_model(model, tok, dest)
    (ctx.out_dir / "history.json").write_text("[]")
    ctx.log(f"{stage}: max_steps 0, skipped: the input model is passed on untrained")
    return {"steps": 0.0, "train_seconds": 0.0}


def _plot_history(history: list[dict[str, float]], stage: str, path: Path) -> Path:
    from components.evaluate.report import pyplot, save_figure

    plt = pyplot()
    steps = [h["step"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, [h["loss"] for h in history], lw=0.6, alpha=0.5, label="loss")
    k = max(1, len(history) // 20)
    smooth = [sum(h["loss"] for h in history[max(0, i - k):i + 1]) / len(history[max(0, i - k):i + 1])
              for i in range(len(history))]
    ax.plot(steps, smooth, lw=1.5, label=f"moving mean ({k + 1})")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title(f"{stage} training loss")
    ax.legend()
    return save_figure(plt, fig, path)


def report_prompts(cfg: PipelineConfig) -> int:
    """Validation prompts of the reports that calibrate and gate (align, quantize)."""
    data = cfg.train.data
    return data.max_report_prompts or data.max_valid_prompts or 200


def validation_report(ctx: StageContext, model_dir: Path, limit: int,
                      calibrate: bool = False) -> dict[str, float]:
    """Per-task AUC, log loss and ECE of ``model_dir`` on ``limit`` validation prompts (a
    seeded random sample, the same for every stage given the same ``limit``: see
    ``report_prompts``; multi-item scoring, as served); logged so stages can be compared.

    ``calibrate``: fit a Platt calibration (an intercept per trained task, and a slope per
    task when that family has the lower out-of-fold log loss: ``fit_calibration``) on
    this sample's margins and save it with the model (``calibration.json``), logging raw
    and calibrated log loss / mean P(yes). Per-task AUCs are the same either way (a
    monotone map within a task). The test split never sees the fit. The ECE a gate reads,
    ``valid_ece.trained_out_of_fold``, scores each member's candidates with a fit on the
    other half of the members (``out_of_fold_probabilities``); ``valid_ece.trained`` is
    the in-sample one (optimistic: the fit saw those labels)."""
    import numpy as np
    import polars as pl

    from components.evaluate.metrics import ece_noise_floor, expected_calibration_error
    from components.model.engine import ScoringEngine
    from components.train.data import read_examples
    from components.train.loop import roc_auc

    examples = ctx.inputs["promptify"] / "examples"
    rows = read_examples(examples, "valid", include_held_out=True, limit=None)
    cols = ["example_id", "task_id", "held_out", "member_id", "cutoff", "candidate_item_ids"]
    rows = rows.drop([c for c in cols[1:] if c in rows.columns]).join(
        pl.read_parquet(examples, columns=cols), on="example_id", how="left")
    rows = rows.sample(n=min(limit, rows.height), seed=0) if rows.height else rows
    engine = ScoringEngine.from_pretrained(model_dir, calibrated=False)
    margins = engine.score_batch([(p, list(c)) for p, c in zip(rows["prefix"], rows["candidates"],
                                                                strict=True)], margins=True)
    probs = [1.0 / (1.0 + np.exp(-m.astype(np.float64))) for m in margins]
    metrics: dict[str, float] = {}
    # fitted on trained tasks only: a zero-shot task's labels must not shape any parameter
    trained = ~rows["held_out"].fill_null(False).to_numpy() if rows.height else np.zeros(0, bool)
    if calibrate and trained.any():
        from components.model.calibration import fit_calibration

        labels = np.concatenate([np.asarray(y, dtype=np.float64) for y in rows["labels"]])
        fit_m = np.concatenate([m for m, t in zip(margins, trained, strict=True) if t])
        fit_y = np.concatenate([np.asarray(y, dtype=np.float64) for y, t in zip(rows["labels"], trained, strict=True) if t])
        per_cand = [(task, member) for task, member, m, t in
                    zip(rows["task_id"], rows["member_id"], margins, trained, strict=True) if t for _ in m]
        fit_t = np.array([t for t, _ in per_cand], dtype=object)
        fit_g = np.array([str(g) for _, g in per_cand], dtype=object)
        # two families (an intercept per task; a slope per task too), the one with the lower
        # out-of-fold log loss kept: a distilled student's margins have a scale per task
        choice = fit_calibration(fit_m, fit_y, fit_g, fit_t,
                                 fitted_on=f"valid, trained tasks ({int(trained.sum())} prompts)")
        cal, oof = choice.calibration, choice.out_of_fold
        for fam, loss in choice.oof_log_loss.items():
            metrics[f"calibration.oof_log_loss.{fam}"] = loss
            metrics[f"calibration.oof_ece.{fam}"] = float(
                expected_calibration_error(choice.oof_by_family[fam], fit_y))
        metrics["calibration.task_slopes"] = float(len(cal.task_slopes))
        metrics["valid_ece.trained_out_of_fold"] = float(expected_calibration_error(oof, fit_y))
        # what a calibrated model would show on this many candidates (the ECE's own noise)
        metrics["valid_ece.trained_out_of_fold_floor"] = ece_noise_floor(oof)
        metrics["valid_ece.trained_candidates"] = float(fit_y.size)
        ctx.log_artifact(cal.save(model_dir))
        # a refused fit is saved as the identity: say so where people look (console, MLflow)
        ctx.note(f"calibration {cal.status} ({choice.family}): slope {cal.slope:.4g}, intercept "
                 f"{cal.intercept:.4g}" + (f" ({cal.reason})" if cal.reason else ""))
        metrics.update({"calibration.slope": cal.slope, "calibration.intercept": cal.intercept,
                        "calibration.fitted": float(cal.status == "fitted"),
                        "calibration.task_offsets": float(len(cal.task_offsets))})
        raw = np.clip(np.concatenate(probs), 1e-7, 1 - 1e-7)
        metrics["valid_log_loss_uncalibrated"] = float(
            -np.mean(labels * np.log(raw) + (1 - labels) * np.log(1 - raw)))
        metrics["valid_mean_p_yes_uncalibrated"] = float(raw.mean())
        probs = [cal.apply(m, task) for m, task in zip(margins, rows["task_id"], strict=True)]
    per_task: dict[str, tuple[list[float], list[int]]] = {}
    for task, p, y in zip(rows["task_id"], probs, rows["labels"], strict=True):
        s, lab = per_task.setdefault(task, ([], []))
        s.extend(np.asarray(p, dtype=np.float64).tolist())
        lab.extend(int(v) for v in y)
    aucs = {}
    for task, (s, lab) in sorted(per_task.items()):
        a = roc_auc(np.array(s), np.array(lab))
        if not math.isnan(a):
            aucs[task] = a
            metrics[f"valid_task_auc.{task}"] = a
    # nan (not absent) when no task had both classes: the run still shows the metric
    metrics["valid_task_auc_mean"] = float(np.mean(list(aucs.values()))) if aucs else math.nan
    held = set(rows.filter(pl.col("held_out").fill_null(False))["task_id"].unique().to_list()) if rows.height else set()
    for name, keep in (("trained", lambda t: t not in held), ("held_out", lambda t: t in held)):
        part = [a for t, a in aucs.items() if keep(t)]
        metrics[f"valid_task_auc_mean.{name}"] = float(np.mean(part)) if part else math.nan
    allp = np.clip(np.concatenate([np.asarray(p, dtype=np.float64) for p in probs]), 1e-7, 1 - 1e-7)
    ally = np.concatenate([np.asarray(y, dtype=np.float64) for y in rows["labels"]])
    metrics["valid_log_loss"] = float(-np.mean(ally * np.log(allp) + (1 - ally) * np.log(1 - allp)))
    if trained.any():  # calibration as served, on the tasks the model was trained for
        tp = np.concatenate([np.asarray(p, dtype=np.float64) for p, t in zip(probs, trained, strict=True) if t])
        ty = np.concatenate([np.asarray(y, dtype=np.float64) for y, t in zip(rows["labels"], trained, strict=True) if t])
        metrics["valid_ece.trained"] = float(expected_calibration_error(tp, ty))
    metrics["valid_mean_p_yes"] = float(allp.mean())
    metrics["valid_positive_rate"] = float(ally.mean())
    (ctx.out_dir / "valid_report.json").write_text(json.dumps(metrics, indent=1))
    # the scored rows, for the popularity gate and for anyone checking these numbers
    rows.drop("prefix", "candidates").with_columns(
        pl.Series("probs", [np.asarray(p, dtype=np.float64) for p in probs], dtype=pl.List(pl.Float64))
    ).write_parquet(ctx.out_dir / VALID_SCORES)
    return metrics


VALID_SCORES = "valid_scores.parquet"


def gate_against_popularity(ctx: StageContext, model: str = "teacher") -> GateResult:
    """The popularity gate (components/evaluate/gate.py) on the validation rows the align
    stage scored: said on the console, returned for MLflow and the registry."""
    import polars as pl

    from components.evaluate.baselines import BaselineConfig, BaselineData
    from components.evaluate.gate import popularity_gate
    from pipelines.tasks import load_pipeline_tasks, steering_relabel_hook

    rows = pl.read_parquet(ctx.out_dir / VALID_SCORES)
    tasks = load_pipeline_tasks(ctx.cfg)
    p = ctx.cfg.promptify
    cfg = BaselineConfig(seed=ctx.cfg.evaluate.seed, sampled_negatives=p.sampled_negatives,
                         negative_pool=p.negative_pool, hard_negatives=p.hard_negatives,
                         negative_window_days=p.negative_window_days)
    res = popularity_gate(rows["probs"].to_list(), rows, BaselineData.from_split_dir(ctx.inputs["split"]),
                          tasks, cfg, relabel=steering_relabel_hook(ctx.cfg, tasks))
    ctx.note(("" if res.passed else "WARNING: ") + res.line(model))
    return res


def cpt(ctx: StageContext) -> dict[str, float]:
    """Continued pre-training on verbalized member histories (before the validation start)."""
    cutoffs = json.loads((ctx.inputs["split"] / "cutoffs.json").read_text())
    return _run(ctx, "cpt", {"member_rows_dir": ctx.inputs["prepare"] / "member_rows",
                             "history_cutoff": datetime.fromisoformat(cutoffs["valid_start"])},
                _base_model(ctx.cfg))


def sft(ctx: StageContext) -> dict[str, float]:
    """Answer-token SFT on the promptified training examples, from the CPT model."""
    metrics = _run(ctx, "sft", {"examples_dir": ctx.inputs["promptify"] / "examples"},
                   str(ctx.inputs["cpt"] / MODEL_DIR))
    metrics.update(validation_report(ctx, ctx.out_dir / MODEL_DIR, report_prompts(ctx.cfg)))
    return metrics


def align(ctx: StageContext) -> dict[str, float]:
    """Pairwise-ranking alignment from the SFT model; logs and registers the teacher."""
    from components.tracking.models import write_trained_tasks
    from pipelines.tasks import load_pipeline_tasks

    metrics = _run(ctx, "align", {"examples_dir": ctx.inputs["promptify"] / "examples"},
                   str(ctx.inputs["sft"] / MODEL_DIR))
    # the tasks travel with the model: evaluate.model elsewhere reports the others as zero-shot
    tasks = load_pipeline_tasks(ctx.cfg)
    write_trained_tasks(ctx.out_dir / MODEL_DIR, [t.id for t in tasks if not t.held_out],
                        [t.id for t in tasks if t.held_out])
    metrics.update(validation_report(ctx, ctx.out_dir / MODEL_DIR, report_prompts(ctx.cfg),
                                     calibrate=ctx.cfg.train.calibrate))
    gate = gate_against_popularity(ctx)
    metrics.update(gate.as_metrics())
    sft_report = ctx.inputs["sft"] / "valid_report.json"
    if sft_report.exists():  # what alignment changed, as deltas next to the values
        before = json.loads(sft_report.read_text())
        for k in ("valid_task_auc_mean", "valid_log_loss"):
            if k in before and k in metrics:
                metrics[f"delta_vs_sft.{k}"] = metrics[k] - before[k]
        if "delta_vs_sft.valid_task_auc_mean" in metrics:
            ctx.note(f"align vs sft on validation: task-mean AUC {before['valid_task_auc_mean']:.3f} -> "
                    f"{metrics['valid_task_auc_mean']:.3f} ({metrics['delta_vs_sft.valid_task_auc_mean']:+.3f})")
    _log_teacher(ctx, gate)
    return metrics


def _log_teacher(ctx: StageContext, gate: GateResult) -> None:
    """Log the teacher as an MLflow pyfunc model (weights + tokenizer as its artifact) and
    register it, so ``models:/rankbrew-teacher/<version>`` loads a scorer anywhere. Only a
    teacher that passed the popularity gate gets the ``champion`` alias; every version
    carries the gate's verdict as a tag."""
    if ctx.mlflow_run_id is None:
        return
    import mlflow

    mlflow.set_tag("rankbrew.gate", gate.verdict)

    from pipelines.registry import TeacherScorer, pip_requirements

    name = ctx.cfg.train.registered_model_name
    info = mlflow.pyfunc.log_model(
        name="teacher", python_model=TeacherScorer(),
        artifacts={"model": str(ctx.out_dir / MODEL_DIR)},
        pip_requirements=pip_requirements(), registered_model_name=name or None)
    if name:
        version = info.registered_model_version
        client = mlflow.MlflowClient()
        client.set_model_version_tag(name, str(version), "gate", gate.verdict)
        if gate.passed:
            client.set_registered_model_alias(name, CHAMPION, str(version))
            ctx.log(f"registered {name} version {version} ({info.model_uri}), alias '{CHAMPION}'")
        else:
            ctx.note(f"registered {name} version {version} ({info.model_uri}) WITHOUT the '{CHAMPION}' "
                    f"alias: {gate.verdict} on validation")


CHAMPION = "champion"

TRAIN_KEYS = ("model", "train.num_workers", "train.data", "train.use_gpu")

# the code whose changes change a teacher stage's output (in its cache key, docs/pipelines.md)
TEACHER_CODE = ("components.model", "components.train", "components.promptify.tokenizer",
                "components.evaluate.report", "components.evaluate.metrics", "pipelines.train_job")

TEACHER_STAGES = (
    Stage("cpt", cpt, deps=("split", "prepare", "tokenizer"), code=TEACHER_CODE,
          config_keys=(*TRAIN_KEYS, "train.cpt"), num_cpus=0,
          description="Ray Train FSDP2: continued pre-training on member histories"),
    Stage("sft", sft, deps=("promptify", "tokenizer", "cpt"), code=TEACHER_CODE,
          config_keys=(*TRAIN_KEYS, "train.sft"), num_cpus=0,
          description="Ray Train FSDP2: answer-token SFT on promptified examples"),
    Stage("align", align, deps=("split", "promptify", "tokenizer", "sft"),
          code=(*TEACHER_CODE, "pipelines.registry", "components.evaluate",
                "pipelines.tasks", "components.tracking.models"),
          config_keys=(*TRAIN_KEYS, "train.align", "train.registered_model_name",
                       "train.calibrate"), num_cpus=0,
          description="Ray Train FSDP2: pairwise ranking alignment -> registered teacher"),
)
