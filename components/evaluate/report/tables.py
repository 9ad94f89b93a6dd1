"""Summary and cold-start tables over :class:`EvalRecord` s, their headline metrics and
the one-class slice warnings."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import polars as pl

from components.evaluate.report.records import (
    BASELINE_ORDER,
    COLD_START_LABELS,
    COLD_START_ROWS,
    FIXED_COLUMNS,
    HELD_OUT_MEAN,
    PER_LIST_METRIC,
    SLICE_METRIC_NAMES,
    TEACHER,
    TRAINED_MEAN,
    EvalRecord,
)


def model_order(models: Iterable[str], teacher: str = TEACHER) -> list[str]:
    """Teacher first, then the baselines in canonical order, then any other model by name."""
    ms = set(models)
    head = [m for m in (teacher, *BASELINE_ORDER) if m in ms]
    return head + sorted(ms - set(head))


def _gain(row: Mapping[str, float], teacher: str, baselines: Sequence[str]) -> tuple[str | None, float]:
    """(best baseline of the row, teacher minus it); nan when either side is undefined."""
    vals = {b: row[b] for b in baselines if row.get(b) is not None and not math.isnan(row[b])}
    t = row.get(teacher)
    if not vals or t is None or math.isnan(t):
        return (max(vals, key=vals.get) if vals else None), math.nan
    best = max(vals, key=vals.get)
    return best, float(t - vals[best])


def _nanmean(values: Iterable[float | None]) -> float:
    v = [x for x in values if x is not None and not math.isnan(x)]
    return float(np.mean(v)) if v else math.nan


def model_columns(df: pl.DataFrame) -> list[str]:
    """The model columns of a :func:`summary_table` / :func:`cold_start_table` (not the
    fixed columns, not the ``group_auc.<model>`` ones)."""
    return [c for c in df.columns if c not in FIXED_COLUMNS and "." not in c and "@" not in c
            and not c.startswith("delta_")]


def summary_table(records: Sequence[EvalRecord], metric: str = "auc",
                  teacher: str = TEACHER, per_list: str | None = PER_LIST_METRIC) -> pl.DataFrame:
    """One row per task (trained tasks, their mean row, held-out tasks, their mean row).

    Columns: ``task, held_out, is_mean, tasks`` (tasks averaged in a mean row, 1 in a
    task row), ``prompts, candidates, positives`` (from the first model's record: the
    candidates are the same for every model), one column per model holding ``metric``,
    ``best_baseline``, ``gain_vs_best_baseline`` and, with ``per_list`` (default the
    per-list AUC), ``<per_list>.<model>`` per model (a mean row: mean over tasks)."""
    if not records:
        raise ValueError("no evaluation records: nothing to tabulate")
    models = model_order({r.model for r in records}, teacher)
    baselines = [m for m in models if m != teacher]
    extra = [f"{per_list}.{m}" for m in models] if per_list else []
    by_task: dict[str, dict] = {}
    for r in records:
        row = by_task.setdefault(r.task_id, {"task": r.task_id, "held_out": bool(r.held_out)})
        row[r.model] = float(r.metrics.get(metric, math.nan))
        if per_list:
            row[f"{per_list}.{r.model}"] = float(r.metrics.get(per_list, math.nan))
        if "prompts" not in row:
            row.update({"prompts": r.metrics.get("n_prompts", math.nan),
                        "candidates": r.metrics.get("n_candidates", math.nan),
                        "positives": r.metrics.get("n_positives", math.nan)})
    out: list[dict] = []
    for held_out, label in ((False, TRAINED_MEAN), (True, HELD_OUT_MEAN)):
        rows = sorted((r for r in by_task.values() if r["held_out"] == held_out), key=lambda r: r["task"])
        if not rows:
            continue
        for r in rows:
            r.update({"is_mean": False, "tasks": 1})
            for m in (*models, *extra):
                r.setdefault(m, math.nan)
            out.append(r)
        mean = {"task": label, "held_out": held_out, "is_mean": True, "tasks": len(rows),
                **{c: float(np.nansum([r[c] for r in rows])) for c in ("prompts", "candidates", "positives")},
                **{m: _nanmean(r[m] for r in rows) for m in (*models, *extra)}}
        out.append(mean)
    for r in out:
        r["best_baseline"], r["gain_vs_best_baseline"] = _gain(r, teacher, baselines)
    cols = ["task", "held_out", "is_mean", "tasks", "prompts", "candidates", "positives", *models,
            "best_baseline", "gain_vs_best_baseline", *extra]
    schema = {"task": pl.Utf8, "held_out": pl.Boolean, "is_mean": pl.Boolean, "tasks": pl.Int64,
              "prompts": pl.Float64, "candidates": pl.Float64, "positives": pl.Float64,
              **{m: pl.Float64 for m in models}, "best_baseline": pl.Utf8,
              "gain_vs_best_baseline": pl.Float64, **{c: pl.Float64 for c in extra}}
    return pl.DataFrame([{c: r.get(c) for c in cols} for r in out], schema=schema, orient="row")


def cold_start_table(records: Sequence[EvalRecord], teacher: str = TEACHER,
                     held_out: bool = False) -> pl.DataFrame:
    """AUC per member-activity bucket (and for new items) per model, over the trained
    tasks (``held_out=True``: the held-out ones).

    One row per :data:`COLD_START_ROWS` entry: ``slice`` (the metric suffix), ``bucket``
    (display label), ``tasks`` (tasks whose AUC in the slice is defined for the teacher,
    else the first model), ``candidates`` (summed over the group's tasks), one column per
    model (mean over tasks of the per-task AUC in the slice), ``best_baseline`` and
    ``gain_vs_best_baseline``."""
    recs = [r for r in records if bool(r.held_out) == held_out]
    models = model_order({r.model for r in records}, teacher)
    baselines = [m for m in models if m != teacher]
    ref_model = teacher if teacher in models else (models[0] if models else None)
    out = []
    for sl in COLD_START_ROWS:
        auc_key = "auc" if sl == "all" else f"auc.{sl}"
        n_key = "n_candidates" if sl == "all" else f"n_candidates.{sl}"
        row: dict = {"slice": sl, "bucket": COLD_START_LABELS[sl]}
        ref = [r for r in recs if r.model == ref_model]
        row["tasks"] = sum(1 for r in ref if not math.isnan(r.metrics.get(auc_key, math.nan)))
        row["candidates"] = float(np.nansum([r.metrics.get(n_key, math.nan) for r in ref])) if ref else 0.0
        for m in models:
            row[m] = _nanmean(r.metrics.get(auc_key, math.nan) for r in recs if r.model == m)
        row["best_baseline"], row["gain_vs_best_baseline"] = _gain(row, teacher, baselines)
        out.append(row)
    schema = {"slice": pl.Utf8, "bucket": pl.Utf8, "tasks": pl.Int64, "candidates": pl.Float64,
              **{m: pl.Float64 for m in models}, "best_baseline": pl.Utf8,
              "gain_vs_best_baseline": pl.Float64}
    return pl.DataFrame(out, schema=schema, orient="row")


def side_by_side(run: pl.DataFrame, against: pl.DataFrame, teacher: str = TEACHER) -> pl.DataFrame:
    """Two :func:`summary_table` s (or two :func:`cold_start_table` s) joined on their row
    key: each model's value in ``run`` and in ``against`` (suffix ``@against``), and
    ``delta_<teacher>`` = run minus against. Rows present in only one run keep nan."""
    key = "task" if "task" in run.columns else "slice"
    models = model_order({*model_columns(run), *model_columns(against)}, teacher)
    keep = [c for c in (key, "bucket", "held_out", "is_mean") if c in run.columns]
    left = run.select(*keep, *[pl.col(m) if m in run.columns else pl.lit(None, pl.Float64).alias(m)
                               for m in models])
    right = against.select(key, *[pl.col(m).alias(f"{m}@against") if m in against.columns
                                  else pl.lit(None, pl.Float64).alias(f"{m}@against") for m in models])
    joined = left.join(right, on=key, how="left", maintain_order="left")
    cols = [*keep]
    for m in models:
        cols += [m, f"{m}@against"]
    out = joined.select(cols)
    if teacher in models:
        out = out.with_columns((pl.col(teacher) - pl.col(f"{teacher}@against")).alias(f"delta_{teacher}"))
    return out


def summary_metrics(table: pl.DataFrame, cold: pl.DataFrame, teacher: str = TEACHER) -> dict[str, float]:
    """Headline numbers for the stage's MLflow run: ``mean_auc.{trained,held_out}.<model>``,
    ``gain_vs_best_baseline.{trained,held_out}``, ``cold_start.<model>.<slice>`` and
    ``cold_start.gain_vs_best_baseline.<slice>``, and ``mean_group_auc.{trained,held_out}.<model>``
    when the table has per-list columns (nan values are left out)."""
    models = model_columns(table)
    out: dict[str, float] = {}
    for row in table.filter(pl.col("is_mean")).iter_rows(named=True):
        group = "held_out" if row["held_out"] else "trained"
        out[f"tasks.{group}"] = float(row["tasks"])
        for m in models:
            out[f"mean_auc.{group}.{m}"] = row[m]
            if f"{PER_LIST_METRIC}.{m}" in row:
                out[f"mean_group_auc.{group}.{m}"] = row[f"{PER_LIST_METRIC}.{m}"]
        out[f"gain_vs_best_baseline.{group}"] = row["gain_vs_best_baseline"]
    for row in cold.iter_rows(named=True):
        for m in models:
            if m in row:
                out[f"cold_start.{m}.{row['slice']}"] = row[m]
        out[f"cold_start.gain_vs_best_baseline.{row['slice']}"] = row["gain_vs_best_baseline"]
    return {k: float(v) for k, v in out.items() if v is not None and not math.isnan(float(v))}


def headline_table(table: pl.DataFrame, teacher: str = TEACHER) -> pl.DataFrame:
    """The mean rows of a :func:`summary_table` turned around: one row per model, pooled
    and per-list (group) AUC for the trained and the held-out tasks."""
    means = {("held_out" if r["held_out"] else "trained"): r
             for r in table.filter(pl.col("is_mean")).iter_rows(named=True)}
    out = []
    for m in model_order(model_columns(table), teacher):
        row: dict = {"model": m}
        for g in ("trained", "held_out"):
            if g in means:
                row[f"{g}.auc"] = means[g][m]
                row[f"{g}.group_auc"] = means[g].get(f"{PER_LIST_METRIC}.{m}", math.nan)
        out.append(row)
    cols = ["model", *[f"{g}.{k}" for g in ("trained", "held_out") if g in means for k in ("auc", "group_auc")]]
    return pl.DataFrame(out, schema={c: (pl.Utf8 if c == "model" else pl.Float64) for c in cols}, orient="row")


# ============================================================================ undefined slices
def single_class_warnings(records: Sequence[EvalRecord]) -> list[str]:
    """One warning per reported slice (and per whole task) whose candidates hold one class
    only for some (model, task): its AUC is undefined and left out of every mean, so a
    bucket's mean covers fewer tasks than the table's header suggests."""
    names = {"": "all candidates", **{v: k for k, v in SLICE_METRIC_NAMES.items()}}
    found: dict[str, dict[tuple[str, int, int], list[str]]] = {}
    for r in records:
        for suffix, label in names.items():
            tail = f".{suffix}" if suffix else ""
            n = r.metrics.get(f"n_candidates{tail}", math.nan)
            p = r.metrics.get(f"n_positives{tail}", math.nan)
            if math.isnan(n) or math.isnan(p) or n <= 0 or 0 < p < n:
                continue
            found.setdefault(label, {}).setdefault((r.task_id, int(n), int(p)), []).append(r.model)
    all_models = {r.model for r in records}
    out = []
    for label in names.values():
        if label not in found:
            continue
        items = []
        for (task, n, p), models in sorted(found[label].items()):
            who = "" if set(models) == all_models else f"; {', '.join(model_order(models))}"
            items.append(f"{task} ({n} candidates, {'all' if p == n else 'no'} positive{who})")
        out.append(f"warning: slice `{label}` holds one class only, AUC undefined (left out of the "
                   f"means) on {len(items)} task(s): {'; '.join(items)}")
    return out
