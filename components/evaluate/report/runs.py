"""Several runs (seeds) of the evaluation: mean and s.d. over runs, paired deltas over runs."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import polars as pl

from components.evaluate.report.markdown import _fmt
from components.evaluate.report.paired import _ci
from components.evaluate.report.records import (
    HELD_OUT_MEAN,
    TEACHER,
    TRAINED_MEAN,
)
from components.evaluate.report.tables import model_columns, model_order


def across_runs_table(tables: Sequence[pl.DataFrame], teacher: str = TEACHER) -> pl.DataFrame:
    """:func:`summary_table` s of several runs (seeds) -> per row (task or mean) and model:
    the mean over runs (column ``<model>``), the sample s.d. over runs (``<model>.sd``,
    ddof 1) and ``runs`` (runs holding the row). A value undefined in a run is skipped."""
    if not tables:
        raise ValueError("no tables: pass one summary table per run")
    models = model_order({m for t in tables for m in model_columns(t)}, teacher)
    long = pl.concat([t.select("task", "held_out", "is_mean",
                               *[pl.col(m) if m in t.columns else pl.lit(None, pl.Float64).alias(m)
                                 for m in models]).with_columns(pl.lit(i).alias("__run"))
                      for i, t in enumerate(tables)], how="vertical")
    long = long.with_columns([pl.col(m).fill_nan(None) for m in models])
    out = long.group_by("task", "held_out", "is_mean", maintain_order=True).agg(
        pl.col("__run").n_unique().alias("runs"),
        *[pl.col(m).mean().alias(m) for m in models],
        *[pl.col(m).std(ddof=1).alias(f"{m}.sd") for m in models])
    return out.sort("held_out", "is_mean", "task").with_columns(
        [pl.col(c).fill_null(math.nan) for c in out.columns if out.schema[c] == pl.Float64])


def paired_across_runs(deltas: Sequence[pl.DataFrame], alpha: float = 0.05) -> pl.DataFrame:
    """:func:`paired_delta_table` s of several runs -> per (row, baseline): ``mean_delta`` and
    ``sd_delta`` over runs, ``t_low`` / ``t_high`` (mean +- t_{1-alpha/2, k-1} s.d./sqrt(k),
    nan with fewer than 2 runs), ``runs``, ``runs_above`` (runs with delta > 0) and the
    per-run paired bootstrap results as lists ``delta_runs``, ``low_runs``, ``high_runs``
    (in the order of ``run_index``, the runs' positions in ``deltas``)."""
    from scipy.stats import t as student_t

    frames = [d.with_columns(pl.lit(i).alias("__run")) for i, d in enumerate(deltas) if d.height]
    if not frames:
        raise ValueError("no paired deltas: none of the runs has a paired_deltas table")
    long = pl.concat(frames).with_columns(pl.col("delta").fill_nan(None))
    out = long.sort("__run").group_by("task", "held_out", "is_mean", "baseline", maintain_order=True).agg(
        pl.col("delta").drop_nulls().len().alias("runs"),
        pl.col("delta").mean().alias("mean_delta"),
        pl.col("delta").std(ddof=1).alias("sd_delta"),
        (pl.col("delta") > 0).sum().alias("runs_above"),
        pl.col("__run").alias("run_index"),
        pl.col("delta").fill_null(math.nan).alias("delta_runs"),
        pl.col("low").alias("low_runs"), pl.col("high").alias("high_runs"))
    k = out["runs"].to_numpy().astype(float)
    q = np.where(k >= 2, student_t.ppf(1.0 - alpha / 2.0, np.maximum(k - 1, 1)), np.nan)
    sd = out["sd_delta"].fill_null(math.nan).to_numpy()
    half = q * sd / np.sqrt(np.maximum(k, 1))
    mean = out["mean_delta"].fill_null(math.nan).to_numpy()
    return out.with_columns(pl.Series("mean_delta", mean), pl.Series("sd_delta", sd),
                            pl.Series("t_low", mean - half), pl.Series("t_high", mean + half)
                            ).sort("held_out", "is_mean", "task")


def multi_run_verdict(paired: pl.DataFrame, baseline: str = "popularity", held_out: bool = False,
                      teacher: str = TEACHER) -> str | None:
    """One line over several runs: the mean paired delta of the group's mean AUC with its
    t-interval over runs and each run's member-bootstrap interval."""
    name = HELD_OUT_MEAN if held_out else TRAINED_MEAN
    row = paired.filter(pl.col("is_mean") & (pl.col("task") == name) & (pl.col("baseline") == baseline))
    if row.height == 0:
        return None
    r = row.row(0, named=True)
    per_run = ", ".join(_ci(d, lo, hi) for d, lo, hi in zip(r["delta_runs"], r["low_runs"], r["high_runs"],
                                                           strict=True))
    group = "held-out tasks" if held_out else "trained tasks"
    return (f"{teacher} vs {baseline}, {group}, {r['runs']} runs: mean paired delta of mean AUC "
            f"{_ci(r['mean_delta'], r['t_low'], r['t_high'])} (95% t-interval over runs, s.d. "
            f"{_fmt(r['sd_delta'])}); per run (95% member bootstrap): {per_run}")


def render_across_runs(table: pl.DataFrame, paired: pl.DataFrame | None, title: str,
                       notes: Sequence[str] = (), run_labels: Sequence[str] = (),
                       teacher: str = TEACHER) -> str:
    """Markdown of :func:`across_runs_table` (mean +- s.d. per model) and
    :func:`paired_across_runs` (mean paired delta +- s.d. [t-interval], per-run bootstrap
    intervals of the mean rows), with the verdict lines."""
    models = model_order(model_columns(table), teacher)
    parts = [f"# {title}", "", *notes, ""]
    verdicts = []
    if paired is not None and paired.height:
        baselines = model_order(paired["baseline"].unique().to_list(), teacher)
        verdicts = [v for h in (False, True) for b in baselines
                    if (v := multi_run_verdict(paired, b, h, teacher))]
        parts += [*[f"- {v}" for v in verdicts], ""]
    parts += ["## AUC over runs (mean ± s.d. over runs)", "",
              "| task | runs | " + " | ".join(models) + " |", "|---|---:|" + "---:|" * len(models)]
    for r in table.iter_rows(named=True):
        label = f"**{r['task']}**" if r["is_mean"] else (f"{r['task']} (held out)" if r["held_out"] else r["task"])
        cells = [("-" if math.isnan(r[m]) else f"{r[m]:.3f} ± {_fmt(r[f'{m}.sd'])}") for m in models]
        parts.append(f"| {label} | {r['runs']} | " + " | ".join(cells) + " |")
    parts.append("")
    if paired is not None and paired.height:
        parts += [f"## Paired deltas over runs: {teacher} minus each baseline", "",
                  "Mean over runs of the per-run paired delta ± its s.d. over runs [95% t-interval "
                  "over runs].", "",
                  "| task | " + " | ".join(f"vs {b}" for b in baselines) + " |",
                  "|---|" + "---:|" * len(baselines)]
        for (task, held, is_mean), part in paired.group_by("task", "held_out", "is_mean", maintain_order=True):
            label = f"**{task}**" if is_mean else (f"{task} (held out)" if held else task)
            cells = []
            for b in baselines:
                r = part.filter(pl.col("baseline") == b)
                if r.height == 0 or math.isnan(r["mean_delta"][0]):
                    cells.append("-")
                    continue
                r = r.row(0, named=True)
                t_int = "" if math.isnan(r["t_low"]) else f" [{r['t_low']:+.3f}, {r['t_high']:+.3f}]"
                cells.append(f"{r['mean_delta']:+.3f} ± {_fmt(r['sd_delta'])}{t_int}")
            parts.append(f"| {label} | " + " | ".join(cells) + " |")
        parts += ["", "### Per-run paired bootstrap intervals of the mean rows", "",
                  "| run | tasks | " + " | ".join(f"vs {b}" for b in baselines) + " |",
                  "|---|---|" + "---:|" * len(baselines)]
        means = paired.filter(pl.col("is_mean"))
        per_run: dict[tuple[int, str, str], str] = {}
        for r in means.iter_rows(named=True):
            for i, d, lo, hi in zip(r["run_index"], r["delta_runs"], r["low_runs"], r["high_runs"],
                                    strict=True):
                per_run[(i, r["task"], r["baseline"])] = _ci(d, lo, hi)
        for i in sorted({k[0] for k in per_run}):
            for name in means["task"].unique(maintain_order=True):
                run = run_labels[i] if i < len(run_labels) else str(i + 1)
                cells = [per_run.get((i, name, b), "-") for b in baselines]
                parts.append(f"| {run} | {name} | " + " | ".join(cells) + " |")
        parts.append("")
    return "\n".join(parts).rstrip() + "\n"
