"""The "go small" stages: ``distill_<step>`` for each step of ``compress.chain``, then
``quantize``; the evaluate stage scores every model they leave.

``distill_<step>`` (deps: the parent's stage, promptify, tokenizer, split):

1. The student's start: the parent **pruned** to the step's shape (whole layers, KV
   groups, MLP channels, ranked on training prompts; ``components/compress/prune.py``),
   scored on validation as it is (``pruned_init.*``: the "no re-distillation" ablation),
   or a **random** model of the shape.
2. Distillation on Ray Train + FSDP2 (the loop of cpt/sft/align): the SFT loss on the
   labels plus KD from the parent's answer distribution (``train.kd_weight``,
   ``train.kd_temperature``); checkpoints in the stage's resume dir, so a crashed step
   resumes.
3. Validation report (per-task AUC, calibration fitted on trained tasks, ECE) and the
   student's sizes, logged to its MLflow child run (CPU latency: the evaluate stage).

``quantize`` (deps: the last step, or align when the chain is empty): the student's
safetensors plus ``quantization.json`` (torchao, LM head fp32, checked on the loaded
model), the acceptance gate on validation (AUC drop vs the unquantized parent, ECE),
the head-quantized ablation, and, when the gate and the popularity gate pass, the
MLflow registry version with alias ``champion`` (what serving loads).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from components.compress.config import DistillStep
from components.config import PipelineConfig
from pipelines.dag import Stage, StageContext
from pipelines.teacher_stages import MODEL_DIR, TEACHER_CODE, TRAIN_KEYS, report_prompts

QUANTIZE = "quantize"
#: A distilled student this far below its pruned start (validation AUC) gets a warning.
REDISTILL_TOLERANCE = 0.005


def step_stage_name(step: DistillStep) -> str:
    return f"distill_{step.name}"


def parent_stage(cfg: PipelineConfig, index: int) -> str:
    """The stage whose model step ``index`` starts from (align for the first)."""
    return "align" if index == 0 else step_stage_name(cfg.compress.chain[index - 1])


def final_stage(cfg: PipelineConfig) -> str:
    """The stage holding the last unquantized model of the chain."""
    return step_stage_name(cfg.compress.chain[-1]) if cfg.compress.chain else "align"


def _probe_request(ctx: StageContext) -> tuple[str, list[str]]:
    """One validation prompt's prefix and candidates for the latency probe (the first by
    example_id: the same request for every model of the chain)."""
    from components.train.data import read_examples

    rows = read_examples(ctx.inputs["promptify"] / "examples", "valid", False, 1)
    return rows["prefix"][0], list(rows["candidates"][0])


def model_report(ctx: StageContext, model_dir: Path) -> dict[str, float]:
    """Sizes and CPU latency per scored item of ``model_dir`` (as the engine serves it)."""
    from components.compress.measure import latency_per_item, model_facts
    from components.model.engine import ScoringEngine

    c = ctx.cfg.compress
    engine = ScoringEngine.from_pretrained(model_dir, device="cpu")
    prefix, cands = _probe_request(ctx)
    facts = model_facts(engine, model_dir)
    facts["latency_ms_per_item"] = 1e3 * latency_per_item(engine, prefix, cands, c.latency_candidates,
                                                          threads=c.latency_threads)
    return facts


def _student_start(ctx: StageContext, step: DistillStep, index: int, parent_dir: Path
                   ) -> tuple[dict[str, Any] | str, dict[str, float]]:
    """The student's initial model (a saved directory or a shape) and the metrics of it."""
    from components.model.factory import save_model
    from pipelines.teacher_stages import validation_report

    cfg = ctx.cfg
    if step.init == "random":
        from components.compress.students import random_student_config

        shape = cfg.model.model_dump(mode="json")
        for earlier in cfg.compress.chain[: index + 1]:  # the shapes of the chain so far
            shape = random_student_config(shape, earlier)
        return {"model_config": shape}, {}
    from components.compress.students import pruned_student

    model, tok, report = pruned_student(parent_dir, ctx.inputs["promptify"] / "examples", step,
                                        cfg.compress.calibration_prompts, cfg.train.data.max_seq_len)
    init_dir = save_model(model, tok, ctx.out_dir / "pruned_init")
    (ctx.out_dir / "prune_report.json").write_text(json.dumps(report, indent=1))
    ctx.log_artifact(ctx.out_dir / "prune_report.json")
    ctx.log(f"pruned {parent_dir.parent.name} -> {step.name}: {report}")
    before = validation_report(ctx, init_dir, report_prompts(cfg))
    keep = ("valid_task_auc_mean.trained", "valid_task_auc_mean.held_out", "valid_log_loss")
    return str(init_dir), {f"pruned_init.{k}": v for k, v in before.items() if k in keep}


def redistill_warning(start: float | None, end: float, index: int) -> str | None:
    """A WARNING line when the distilled student ends more than ``REDISTILL_TOLERANCE``
    below its pruned start (validation AUC, trained tasks); None otherwise. Measured on the
    embedded default (2026-12-04, docs/benchmarks.md): a pruned start that kept the parent's
    AUC lost 0.03-0.10 in 150 steps at every lr tried, so this must not pass silently."""
    if start is None or not end < start - REDISTILL_TOLERANCE:
        return None
    return (f"WARNING: re-distillation lowered validation AUC (trained tasks) from {start:.3f} "
            f"(pruned start) to {end:.3f}: try a lower compress.chain.{index}.train.lr "
            f"(docs/compression.md)")


def distill_step(ctx: StageContext, step: DistillStep, index: int) -> dict[str, float]:
    """Prune (or build) the student, distil it from its parent, report it."""
    from components.tracking.models import write_trained_tasks
    from pipelines.tasks import load_pipeline_tasks
    from pipelines.teacher_stages import _run, validation_report

    cfg = ctx.cfg
    parent_dir = ctx.inputs[parent_stage(cfg, index)] / MODEL_DIR
    start, metrics = _student_start(ctx, step, index, parent_dir)
    teacher = parent_dir if step.train.kd_weight > 0 else None
    metrics.update(_run(ctx, step_stage_name(step), {"examples_dir": ctx.inputs["promptify"] / "examples"},
                        start, train=step.train, teacher_model=teacher))
    tasks = load_pipeline_tasks(cfg)
    write_trained_tasks(ctx.out_dir / MODEL_DIR, [t.id for t in tasks if not t.held_out],
                        [t.id for t in tasks if t.held_out])
    metrics.update(validation_report(ctx, ctx.out_dir / MODEL_DIR, report_prompts(cfg),
                                     calibrate=True))
    # sizes only: the latencies are measured in the evaluate stage, every model one after
    # another under the same conditions (compress_report.py)
    from components.compress.measure import model_facts
    from components.model.engine import ScoringEngine

    metrics.update(model_facts(ScoringEngine.from_pretrained(ctx.out_dir / MODEL_DIR, device="cpu"),
                               ctx.out_dir / MODEL_DIR))
    parent = json.loads((parent_dir.parent / "valid_report.json").read_text()) \
        if (parent_dir.parent / "valid_report.json").exists() else {}
    key = "valid_task_auc_mean.trained"
    if key in parent and key in metrics:
        metrics[f"delta_vs_parent.{key}"] = metrics[key] - parent[key]
        line = (f"validation AUC (trained tasks) {parent[key]:.3f} (parent) -> "
                f"{metrics[key]:.3f}")
        if "pruned_init." + key in metrics:
            line += f" (pruned, before distillation: {metrics['pruned_init.' + key]:.3f})"
        ctx.note(line + f"; {metrics['non_embedding_parameters']:,.0f} non-embedding parameters")
    warning = redistill_warning(metrics.get("pruned_init." + key), metrics.get(key, float("nan")), index)
    if warning:
        ctx.note(warning)
    return metrics


def quantize(ctx: StageContext) -> dict[str, float]:
    """Quantize the chain's last model, gate it, register it (see the module docstring)."""
    from components.compress.measure import model_facts
    from components.compress.quantize import (
        compression_gate,
        head_is_fp32,
        quantized_linear_count,
        write_recipe,
    )
    from components.model.engine import ScoringEngine
    from pipelines.teacher_stages import gate_against_popularity, validation_report

    cfg = ctx.cfg
    qc = cfg.compress.quantize
    src = ctx.inputs[final_stage(cfg)] / MODEL_DIR
    dest = ctx.out_dir / MODEL_DIR
    shutil.copytree(src, dest)
    write_recipe(dest, qc.recipe)
    engine = ScoringEngine.from_pretrained(dest, device="cpu")
    n_quantized = quantized_linear_count(engine.model)
    if not head_is_fp32(engine.model) or n_quantized == 0:
        raise RuntimeError(f"{dest}: after loading, head fp32 = {head_is_fp32(engine.model)}, "
                           f"{n_quantized} quantized linear layers: the recipe was not applied as stored")
    limit = report_prompts(cfg)
    metrics: dict[str, float] = {"quantized_linear_layers": float(n_quantized), "head_fp32": 1.0}
    if qc.head_ablation:
        ablation = ctx.out_dir / "ablation_head_quantized"
        shutil.copytree(src, ablation)
        write_recipe(ablation, qc.recipe.model_copy(update={"head": "quantized"}))
        ab = validation_report(ctx, ablation, limit, calibrate=True)
        metrics.update({f"ablation_head_quantized.{k}": v for k, v in ab.items()
                        if k.startswith(("valid_task_auc_mean", "valid_ece", "valid_log_loss"))})
        shutil.rmtree(ablation)  # weights identical to the model's: only the numbers are kept
    metrics.update(validation_report(ctx, dest, limit, calibrate=True))
    metrics.update(model_facts(engine, dest))  # sizes; latency: the evaluate stage
    parent = json.loads((src.parent / "valid_report.json").read_text())
    key = "valid_task_auc_mean.trained"
    decision = compression_gate(parent.get(key, float("nan")), metrics.get(key, float("nan")),
                                metrics.get("valid_ece.trained_out_of_fold", float("nan")), qc.max_auc_drop, qc.max_ece,
                                metrics.get("valid_ece.trained_out_of_fold_floor", float("nan")))
    metrics.update({"gate.auc_drop": decision.auc_drop, "gate.ece": decision.ece,
                    "gate.quantization_passed": float(decision.passed)})
    verdict = f"quantize ({qc.recipe.method}, head {qc.recipe.head}) on validation: {decision.reason}"
    ctx.note(("" if decision.passed else "WARNING: not registered: ") + verdict)
    gate = gate_against_popularity(ctx, "quantized model")
    metrics.update(gate.as_metrics())
    _register(ctx, decision.passed and gate.passed, verdict if not decision.passed else gate.verdict)
    return metrics


def _register(ctx: StageContext, champion: bool, verdict: str) -> None:
    """Log the quantized model as an MLflow pyfunc and register it; only a model that
    passed both gates gets the ``champion`` alias (serving loads that alias)."""
    name = ctx.cfg.compress.registered_model_name
    if ctx.mlflow_run_id is None or not name:
        return
    import mlflow

    from pipelines.registry import TeacherScorer, pip_requirements
    from pipelines.teacher_stages import CHAMPION

    if not champion:
        ctx.note(f"{name}: no version registered (a gate failed: see above)")
        return
    info = mlflow.pyfunc.log_model(name="ranker", python_model=TeacherScorer(),
                                   artifacts={"model": str(ctx.out_dir / MODEL_DIR)},
                                   pip_requirements=pip_requirements(), registered_model_name=name)
    version = str(info.registered_model_version)
    client = mlflow.MlflowClient()
    client.set_model_version_tag(name, version, "gate", verdict)
    client.set_registered_model_alias(name, CHAMPION, version)
    ctx.note(f"registered {name} version {version} ({info.model_uri}), alias '{CHAMPION}'")


COMPRESS_CODE = (*TEACHER_CODE, "components.compress", "components.evaluate", "pipelines.tasks", "pipelines.teacher_stages",
                 "pipelines.registry", "components.tracking.models")


def _step_runner(step: DistillStep, index: int):
    """The stage function of one chain step (a closure: its module, and so its source file
    in the cache key, is this one; a ``functools.partial`` would report ``functools``)."""
    def run(ctx: StageContext) -> dict[str, float]:
        return distill_step(ctx, step, index)

    run.__name__ = run.__qualname__ = f"distill_{step.name}"
    return run


def compress_stages(cfg: PipelineConfig) -> tuple[Stage, ...]:
    """``distill_<step>`` per chain step, then ``quantize`` (when enabled)."""
    if not cfg.compress.enabled:
        return ()
    stages = []
    for i, step in enumerate(cfg.compress.chain):
        stages.append(Stage(
            step_stage_name(step), _step_runner(step, i), deps=("split", "promptify", "tokenizer", parent_stage(cfg, i)),
            code=COMPRESS_CODE, num_cpus=0,
            config_keys=(*TRAIN_KEYS, f"compress.chain.{i}", "compress.calibration_prompts"),
            description=f"Ray Train FSDP2: {'prune + ' if step.init == 'pruned' else ''}distil "
                        f"{parent_stage(cfg, i)} -> {step.name}"))
    if cfg.compress.quantize.enabled:
        stages.append(Stage(
            QUANTIZE, quantize, deps=("split", "promptify", "tokenizer", final_stage(cfg)),
            code=COMPRESS_CODE, num_cpus=0,
            config_keys=(*TRAIN_KEYS, "compress.quantize", "compress.registered_model_name"),
            description="torchao int8/FP8 with an fp32 head, gate vs parent -> registered ranker"))
    return tuple(stages)


def compressed_models(cfg: PipelineConfig) -> dict[str, str]:
    """Evaluation name -> stage of every model the chain leaves (in chain order)."""
    if not cfg.compress.enabled:
        return {}
    from components.compress.report import QUANTIZED, STUDENT_PREFIX

    out = {f"{STUDENT_PREFIX}{s.name}": step_stage_name(s) for s in cfg.compress.chain}
    if cfg.compress.quantize.enabled:
        out[QUANTIZED] = QUANTIZE
    return out
