"""Analyses 2 and 3, the training sweeps: ``data_amount`` (AUC vs the share of the
training prompts) and ``model_size`` (AUC vs model width), each point a model trained
from a random init for the same number of steps and scored on one validation sample."""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from components.analyses.context import AnalysisContext, AnalysisError, AnalysisResult, write_csv
from components.analyses.scoring import load_engine, nanmean, per_task_auc, score_margins
from components.config import ConfigError, PipelineConfig
from components.evaluate.report import pyplot, save_figure


def _key(x: float) -> str:
    """A sweep value as an MLflow metric-name suffix: 64 -> "64", 0.015 -> "0.015"."""
    return f"{x:g}"


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
    valid = ctx.art.eval_prompts("valid", ctx.acfg.training.valid_prompts_per_task,
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
    engine = load_engine(res.module.lm, sweep.tokenizer)
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
    files = [write_csv(table, out / f"{name}.csv"), write_csv(per_task, out / f"{name}_per_task.csv"),
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
