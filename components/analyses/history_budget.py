"""Analysis 1, ``context_budget``: the trained teacher's mean per-task AUC per history
token budget, the evaluation prefixes re-rendered by promptify's own code."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import polars as pl

from components.analyses.context import AnalysisContext, AnalysisResult, eval_rows, write_csv
from components.analyses.rendering import PrefixRenderer
from components.analyses.scoring import load_engine, nanmean, per_task_auc, score_margins
from components.evaluate.report import pyplot, save_figure

#: Prompts whose member had at most this many prior events form the cold-start bucket
#: (the evaluation's ``activity<=5`` slice).
COLD_START_MAX_EVENTS = 5


def context_budget(ctx: AnalysisContext) -> AnalysisResult:
    """Mean per-task AUC of the trained teacher per history token budget."""
    acfg = ctx.acfg.context_budget
    run_budget = ctx.inputs.cfg.promptify.history_token_budget
    budgets = sorted({*acfg.budgets, run_budget})
    rows = eval_rows(ctx, acfg.max_prompts_per_task)
    renderer = PrefixRenderer(ctx.art, ctx.inputs, rows["member_id"].unique().to_list())
    renderer.check_reproduces(rows)
    engine = load_engine(ctx.art.model_dir)
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
    files = [write_csv(df, out / "context_budget.csv"),
             write_csv(pl.DataFrame(per_task), out / "context_budget_per_task.csv"),
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
