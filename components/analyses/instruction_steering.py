"""Analysis 4, ``steering``: does the ranking move the way the instruction says? The
steering tasks' candidate lists scored under their own instruction and under their base
task's, and the score change correlated with the named criteria's utility."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from components.analyses.context import (
    AnalysisContext,
    AnalysisError,
    AnalysisResult,
    eval_rows,
    write_csv,
)
from components.analyses.rendering import PrefixRenderer
from components.analyses.scoring import load_engine, nanmean, score_margins
from components.config import ConfigError
from components.evaluate.metrics import roc_auc
from components.evaluate.report import pyplot, save_figure
from components.promptify.verbalize import swap_candidate_question


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
    rows = eval_rows(ctx, ctx.acfg.steering.max_prompts_per_task, [t.id for t in steer])
    renderer = PrefixRenderer(ctx.art, ctx.inputs, rows["member_id"].unique().to_list())
    renderer.check_reproduces(rows)
    engine = load_engine(ctx.art.model_dir)
    table, metrics, per_candidate = [], {}, []
    for task in steer:
        part = rows.filter(pl.col("task_id") == task.id)
        base = steering_base_task(task, tasks, ctx.acfg.steering.base_tasks)
        t0 = time.perf_counter()
        base_prefix = renderer.render(part, task_ids=[base.id] * part.height)["prefix"].to_list()
        cands = part["candidates"].to_list()
        # with promptify.question_in_candidates each candidate repeats the question: ask the base's
        base_cands = [[swap_candidate_question(s, task.question, base.question) for s in c] for c in cands]
        steered = score_margins(engine, part["prefix"].to_list(), cands)
        unsteered = score_margins(engine, base_prefix, base_cands)
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
    files = [write_csv(df, out / "steering.csv"),
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
