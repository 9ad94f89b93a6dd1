"""Plots of the evaluation (headless matplotlib): AUC per task, cold-start gain, calibration."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import polars as pl

from components.evaluate.report.records import (
    ACTIVITY_SLICES,
    TEACHER,
)
from components.evaluate.report.tables import model_columns


def pyplot():
    """``matplotlib.pyplot`` on the headless Agg backend (stages run without a display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_task_auc(table: pl.DataFrame, path: Path, teacher: str = TEACHER) -> Path:
    """Horizontal grouped bars: AUC per task, one bar per model; held-out tasks marked
    ``(held out)`` and separated by a line; the chance line at 0.5."""
    plt = pyplot()
    tasks = table.filter(~pl.col("is_mean")).sort("held_out", "task", descending=[True, True])
    models = model_columns(table)
    n, k = tasks.height, max(1, len(models))
    fig, ax = plt.subplots(figsize=(8, max(3.0, 0.32 * n * max(1.0, k / 3) + 1.2)))
    y = np.arange(n)
    h = 0.8 / k
    for i, m in enumerate(models):
        vals = np.nan_to_num(tasks[m].to_numpy().astype(float), nan=0.0)
        ax.barh(y + (i - (k - 1) / 2) * h, vals, height=h, label=m,
                color="black" if m == teacher else None, alpha=0.85 if m == teacher else 0.7)
    labels = [f"{t} (held out)" if ho else t for t, ho in zip(tasks["task"], tasks["held_out"], strict=True)]
    ax.set_yticks(y, labels, fontsize=7)
    n_held = int(tasks["held_out"].sum())
    if 0 < n_held < n:
        ax.axhline(n_held - 0.5, color="grey", lw=0.8)
    ax.axvline(0.5, color="grey", ls="--", lw=0.8)
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel("AUC (task's candidates pooled)")
    ax.set_title("AUC per task: teacher vs ID-based baselines")
    ax.legend(fontsize=7, loc="lower right")
    return save_figure(plt, fig, path)


def plot_cold_start_gain(cold: pl.DataFrame, path: Path, teacher: str = TEACHER) -> Path:
    """360Brew's cold-start figure: the teacher's AUC minus each baseline's, per member
    activity bucket (mean over tasks), with the candidates per bucket under the labels."""
    plt = pyplot()
    rows = cold.filter(pl.col("slice").is_in(ACTIVITY_SLICES))
    baselines = [c for c in model_columns(cold) if c != teacher]
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    x = np.arange(rows.height)
    k = max(1, len(baselines))
    w = 0.8 / k
    if teacher in cold.columns:
        for i, b in enumerate(baselines):
            gain = (rows[teacher] - rows[b]).to_numpy().astype(float)
            ax.bar(x + (i - (k - 1) / 2) * w, np.nan_to_num(gain, nan=0.0), width=w, label=f"vs {b}")
    ax.axhline(0.0, color="black", lw=0.8)
    ax.set_xticks(x, [f"{b}\n({int(c)} cands)" for b, c in zip(rows["bucket"], rows["candidates"], strict=True)])
    ax.set_xlabel("member's prior events (cumulative buckets)")
    ax.set_ylabel("teacher AUC - baseline AUC")
    ax.set_title("Cold start: teacher's AUC gain by member activity (trained tasks)", fontsize=10)
    if baselines:
        ax.legend(fontsize=8)
    return save_figure(plt, fig, path)


def save_figure(plt, fig, path: Path) -> Path:
    """Write a figure (creating its directory) and free it."""
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_calibration(curve: Mapping[str, np.ndarray], path: Path, title: str = "teacher") -> Path:
    """Reliability diagram (equal-mass bins of :func:`components.evaluate.metrics.calibration_curve`)
    with the diagonal of perfect calibration."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    hi = max(0.05, float(np.max(curve["mean_prob"], initial=0.0)), float(np.max(curve["frac_pos"], initial=0.0)))
    hi = min(1.0, hi * 1.1)
    ax.plot([0, hi], [0, hi], color="grey", ls="--", lw=0.8, label="perfect")
    ax.plot(curve["mean_prob"], curve["frac_pos"], marker="o", label=title)
    ax.set_xlim(0, hi)
    ax.set_ylim(0, hi)
    ax.set_xlabel("mean predicted P(yes) in bin")
    ax.set_ylabel("observed positive rate in bin")
    ax.set_title(f"Calibration of the {title} (equal-mass bins)")
    ax.legend(fontsize=8)
    return save_figure(plt, fig, path)
