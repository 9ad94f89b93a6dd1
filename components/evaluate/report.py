"""Evaluation reports: per-(model, task) metrics -> summary tables, markdown and plots.

The evaluation stage scores every (model, task) pair separately (one Ray task and one
MLflow run each) and hands the results here as :class:`EvalRecord` s; ``rankbrew
compare`` reads the same records back from MLflow. Both build their tables with the
functions of this module, so the stage's ``summary.md`` and the comparison printed
later from MLflow are the same table by construction.

Conventions (every table):

* AUC of a (model, task) is pooled over the task's candidates (lists = prompts);
  ``nan`` when the task's candidates hold one class only.
* A "mean over ... tasks" row holds, per column, the mean over the tasks of that group
  with a defined value (nan ignored); counts are summed.
* ``gain_vs_best_baseline`` of any row is the teacher's value minus the largest baseline
  value of that same row (so in a mean row: mean teacher AUC minus the best baseline's
  mean AUC).
* ``group_auc.<model>``: the per-list (group) AUC beside the pooled one.
* Teacher vs a baseline is judged by the **paired** delta (:func:`paired_delta_table`:
  both AUCs recomputed on the same member-bootstrap replicates), never by an interval of
  one model against the point of another, nor by counting tasks as if they were
  independent trials (a count of tasks with delta > 0 is printed as descriptive only).

Plain Python (numpy, Polars, matplotlib): no Ray, no MLflow.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from components.evaluate.metrics import (
    bootstrap_auc_ci,
    expected_calibration_error,
    group_auc,
    log_loss,
    ndcg_at_k,
    paired_bootstrap_auc_delta,
    roc_auc,
)

TEACHER = "teacher"
#: Canonical column order of the baselines (others follow in name order).
BASELINE_ORDER = ("popularity", "lightgbm", "lightgbm_ids", "sasrec")

#: Slices measured per (model, task) -> their MLflow metric suffix (MLflow names cannot
#: hold '<' or '>'). The activity buckets are cumulative, as in 360Brew's cold-start figure.
SLICE_METRIC_NAMES = {
    "activity<=5": "activity_le_5",
    "activity<=10": "activity_le_10",
    "activity<=100": "activity_le_100",
    "activity>100": "activity_gt_100",
    "new_item": "new_item",
    "cold_item": "cold_item",
}
ACTIVITY_SLICES = ("activity_le_5", "activity_le_10", "activity_le_100", "activity_gt_100")
#: Rows of the cold-start table: overall, the activity buckets, candidates new at the cutoff.
COLD_START_ROWS = ("all", *ACTIVITY_SLICES, "new_item")
COLD_START_LABELS = {"all": "all", "activity_le_5": "<=5", "activity_le_10": "<=10",
                     "activity_le_100": "<=100", "activity_gt_100": ">100", "new_item": "new item"}

TRAINED_MEAN = "mean over trained tasks"
HELD_OUT_MEAN = "mean over held-out tasks"
#: Per-list metric shown beside the pooled AUC (columns ``group_auc.<model>``).
PER_LIST_METRIC = "group_auc"
#: Columns of the tables that are not models.
FIXED_COLUMNS = frozenset({"task", "slice", "bucket", "held_out", "is_mean", "tasks", "prompts",
                           "candidates", "positives", "best_baseline", "gain_vs_best_baseline",
                           "tasks_group", "runs"})


@dataclass(frozen=True)
class EvalRecord:
    """What one (model, task) evaluation produced: flat metrics as logged to MLflow."""

    model: str
    task_id: str
    held_out: bool
    metrics: Mapping[str, float]


# ============================================================================ per (model, task)
def model_task_metrics(rows: pl.DataFrame, score_col: str = "score", prob_col: str | None = None,
                       n_boot: int = 1000, ece_bins: int = 10, seed: int = 0, k: int = 10
                       ) -> dict[str, float]:
    """Metrics of one model on one task's candidate rows.

    ``rows``: one row per (prompt, candidate) with ``example_id``, ``label``, the score
    column and the slice flags of :func:`components.evaluate.slices.slice_flags` (slices
    of :data:`SLICE_METRIC_NAMES` that are absent are skipped). ``prob_col`` names
    probabilities (log loss, ECE, mean probability are added only then).

    Returns ``n_prompts, n_candidates, n_positives, pos_rate, auc, auc_ci_low,
    auc_ci_high`` (bootstrap over whole prompts), ``group_auc``, ``ndcg_at_{k}``,
    [``log_loss, ece, mean_prob``] and per slice ``auc.<slice>``,
    ``n_candidates.<slice>``, ``n_positives.<slice>``."""
    missing = [c for c in ("example_id", "label", score_col, *([prob_col] if prob_col else []))
               if c not in rows.columns]
    if missing:
        raise ValueError(f"the scored rows lack column(s) {missing}: add one score per candidate "
                         f"row next to example_id and label")
    s = rows[score_col].to_numpy().astype(np.float64)
    y = rows["label"].to_numpy().astype(np.float64)
    g = rows["example_id"].to_numpy()
    ci = bootstrap_auc_ci(s, y, g, n=n_boot, seed=seed)
    out = {
        "n_prompts": float(rows["example_id"].n_unique()),
        "n_candidates": float(rows.height),
        "n_positives": float((y > 0).sum()),
        "pos_rate": float((y > 0).mean()) if rows.height else math.nan,
        "auc": ci.auc,
        "auc_ci_low": ci.low,
        "auc_ci_high": ci.high,
        "group_auc": group_auc(s, y, g),
        f"ndcg_at_{k}": ndcg_at_k(s, y, g, k=k),
    }
    if prob_col is not None:
        p = rows[prob_col].to_numpy().astype(np.float64)
        out.update({"log_loss": log_loss(p, y), "ece": expected_calibration_error(p, y, ece_bins),
                    "mean_prob": float(p.mean()) if p.size else math.nan})
    for slice_name, suffix in SLICE_METRIC_NAMES.items():
        if slice_name not in rows.columns:
            continue
        part = rows.filter(pl.col(slice_name))
        ys = part["label"].to_numpy().astype(np.float64)
        out[f"auc.{suffix}"] = roc_auc(part[score_col].to_numpy(), ys) if part.height else math.nan
        out[f"n_candidates.{suffix}"] = float(part.height)
        out[f"n_positives.{suffix}"] = float((ys > 0).sum())
    return out


# ============================================================================ tables
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


# ============================================================================ paired statistics
#: Columns of :func:`paired_delta_table` (one row per (task or mean, baseline)).
PAIRED_SCHEMA = {"task": pl.Utf8, "held_out": pl.Boolean, "is_mean": pl.Boolean, "tasks": pl.Int64,
                 "baseline": pl.Utf8, "teacher_auc": pl.Float64, "baseline_auc": pl.Float64,
                 "delta": pl.Float64, "low": pl.Float64, "high": pl.Float64, "n_valid": pl.Int64,
                 "n_boot": pl.Int64, "alpha": pl.Float64}
SCORE_COLUMNS = ("model", "task_id", "example_id", "position", "member_id", "label", "score", "held_out")


def paired_delta_table(scores: pl.DataFrame, teacher: str = TEACHER, baselines: Sequence[str] | None = None,
                       n_boot: int = 1000, alpha: float = 0.05, seed: int = 0) -> pl.DataFrame:
    """Teacher minus each baseline, per task and per task group, with a paired member bootstrap.

    ``scores``: one row per (model, candidate) with :data:`SCORE_COLUMNS` (the evaluate
    stage's ``scores.parquet``). Per baseline, the candidates both models scored are
    paired and :func:`components.evaluate.metrics.paired_bootstrap_auc_delta` resamples
    member ids (one draw per replicate shared by every task and, through the same
    ``seed``, by every baseline). Rows: each task, then ``mean over trained tasks`` /
    ``mean over held-out tasks`` (mean over the group's tasks of the per-task delta,
    recomputed inside every replicate), trained before held-out, columns of
    :data:`PAIRED_SCHEMA` (``teacher_auc`` / ``baseline_auc`` of a mean row: means over
    the same tasks)."""
    missing = [c for c in SCORE_COLUMNS if c not in scores.columns]
    if missing:
        raise ValueError(f"the scores frame lacks column(s) {missing}: pass the evaluate stage's "
                         f"scores.parquet (one row per model and candidate, with member_id)")
    models = model_order(scores["model"].unique().to_list(), teacher)
    if teacher not in models:
        return pl.DataFrame(schema=PAIRED_SCHEMA)
    baselines = [m for m in models if m != teacher] if baselines is None else list(baselines)
    key = ["task_id", "example_id", "position"]
    t = scores.filter(pl.col("model") == teacher).select(
        *key, "member_id", "label", "held_out", pl.col("score").alias("__a"))
    rows: list[dict] = []
    for b in baselines:
        j = t.join(scores.filter(pl.col("model") == b).select(*key, pl.col("score").alias("__b")),
                   on=key, how="inner")
        if j.height == 0:
            continue
        held = dict(j.group_by("task_id").agg(pl.col("held_out").first()).iter_rows())
        groups = {name: sorted(k for k, h in held.items() if h == flag)
                  for name, flag in ((TRAINED_MEAN, False), (HELD_OUT_MEAN, True))}
        groups = {k: v for k, v in groups.items() if v}
        res = paired_bootstrap_auc_delta(j["__a"].to_numpy(), j["__b"].to_numpy(), j["label"].to_numpy(),
                                         j["member_id"].to_numpy(), j["task_id"].to_numpy(), groups,
                                         n=n_boot, alpha=alpha, seed=seed)
        for task in res.tasks:
            d = res.per_task[task]
            rows.append({"task": task, "held_out": bool(held[task]), "is_mean": False, "tasks": 1,
                         "baseline": b, "teacher_auc": res.auc_a[task], "baseline_auc": res.auc_b[task],
                         "delta": d.delta, "low": d.low, "high": d.high, "n_valid": d.n_valid,
                         "n_boot": n_boot, "alpha": alpha})
        for name, d in res.means.items():
            used = res.mean_tasks[name]
            rows.append({"task": name, "held_out": name == HELD_OUT_MEAN, "is_mean": True,
                         "tasks": len(used), "baseline": b,
                         "teacher_auc": _nanmean(res.auc_a[k] for k in used),
                         "baseline_auc": _nanmean(res.auc_b[k] for k in used),
                         "delta": d.delta, "low": d.low, "high": d.high, "n_valid": d.n_valid,
                         "n_boot": n_boot, "alpha": alpha})
    order = {b: i for i, b in enumerate(baselines)}
    rows.sort(key=lambda r: (r["held_out"], r["is_mean"], r["task"], order[r["baseline"]]))
    return pl.DataFrame(rows, schema=PAIRED_SCHEMA, orient="row")


def paired_delta_metrics(deltas: pl.DataFrame) -> dict[str, float]:
    """The mean rows of a :func:`paired_delta_table` as metrics:
    ``paired_delta.{trained,held_out}.<baseline>`` and its ``_low`` / ``_high`` (nan left out)."""
    out = {}
    for r in deltas.filter(pl.col("is_mean")).iter_rows(named=True):
        key = f"paired_delta.{'held_out' if r['held_out'] else 'trained'}.{r['baseline']}"
        out.update({key: r["delta"], f"{key}_low": r["low"], f"{key}_high": r["high"]})
    return {k: float(v) for k, v in out.items() if v is not None and not math.isnan(v)}


def tasks_above(deltas: pl.DataFrame, baseline: str, held_out: bool = False) -> tuple[int, int]:
    """(tasks of the group where the teacher's paired delta over ``baseline`` is > 0, tasks
    where it is defined): a descriptive count, not a test (tasks share members and are
    not independent trials)."""
    d = deltas.filter(~pl.col("is_mean") & (pl.col("held_out") == held_out)
                      & (pl.col("baseline") == baseline) & pl.col("delta").is_not_nan())
    return int((d["delta"] > 0).sum()), d.height


def _ci(d: float, low: float, high: float) -> str:
    if d is None or math.isnan(d):
        return "-"
    if low is None or math.isnan(low):
        return f"{d:+.3f}"
    return f"{d:+.3f} [{low:+.3f}, {high:+.3f}]"


def verdict(deltas: pl.DataFrame, baseline: str = "popularity", held_out: bool = False,
            teacher: str = TEACHER) -> str | None:
    """One line: the paired delta of the group's mean AUC with its member-bootstrap interval,
    and the descriptive count of tasks above, e.g. ``teacher vs popularity: paired delta of
    mean AUC +0.210 [+0.180, +0.240] (95% member bootstrap); above on 20/21 trained tasks
    (descriptive)``. None when the table has no such mean row."""
    name = HELD_OUT_MEAN if held_out else TRAINED_MEAN
    row = deltas.filter(pl.col("is_mean") & (pl.col("task") == name) & (pl.col("baseline") == baseline))
    if row.height == 0:
        return None
    r = row.row(0, named=True)
    level = _level(r)
    above, of = tasks_above(deltas, baseline, held_out)
    group = "held-out tasks (teacher zero-shot)" if held_out else "trained tasks"
    return (f"{teacher} vs {baseline}: paired delta of mean AUC {_ci(r['delta'], r['low'], r['high'])} "
            f"({level}); above on {above}/{of} {group} (descriptive)")


def _level(row: Mapping) -> str:
    pct = f"{100 * (1 - row['alpha']):g}%" if row.get("alpha") else "95%"
    reps = f", {row['n_boot']} replicates" if row.get("n_boot") else ""
    return f"{pct} member bootstrap{reps}"


def verdict_lines(deltas: pl.DataFrame, teacher: str = TEACHER) -> list[str]:
    """:func:`verdict` for every baseline, trained tasks first, then the held-out ones."""
    baselines = model_order(deltas["baseline"].unique().to_list(), teacher)
    lines = [verdict(deltas, b, h, teacher) for h in (False, True) for b in baselines]
    return [x for x in lines if x]


def paired_delta_markdown(deltas: pl.DataFrame, teacher: str = TEACHER) -> str:
    """The paired deltas as markdown: one column per baseline (``delta [low, high]``), a row
    per task and per mean, and the descriptive count of tasks with delta > 0."""
    if deltas.height == 0:
        return ""
    baselines = model_order(deltas["baseline"].unique().to_list(), teacher)
    level = _level(deltas.row(0, named=True))
    parts = [f"## Paired deltas: {teacher} AUC minus each baseline's ({level})", "",
             "Both AUCs recomputed on the same resampled members (all their candidates, every task "
             "of the same replicate); a mean row is the mean over its tasks of the per-task delta, "
             "resampled the same way. The count of tasks with delta > 0 is descriptive, not a test.", ""]
    for held_out in (False, True):
        part = deltas.filter(pl.col("held_out") == held_out)
        if part.height == 0:
            continue
        lines = ["| task | " + " | ".join(f"vs {b}" for b in baselines) + " |",
                 "|---|" + "---:|" * len(baselines)]
        keys = part.select("task", "is_mean", "tasks").unique(maintain_order=True)
        for task, is_mean, n in keys.iter_rows():
            label = f"**{task}** ({n})" if is_mean else (f"{task} (held out)" if held_out else task)
            cells = []
            for b in baselines:
                r = part.filter((pl.col("task") == task) & (pl.col("baseline") == b))
                cells.append(_ci(*r.select("delta", "low", "high").row(0)) if r.height else "-")
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        counts = [tasks_above(deltas, b, held_out) for b in baselines]
        lines.append("| tasks with delta > 0 (descriptive) | " + " | ".join(f"{a}/{o}" for a, o in counts) + " |")
        head = "Zero-shot (held-out) tasks" if held_out else "Trained tasks"
        parts += [f"### {head}", "", "\n".join(lines), ""]
    return "\n".join(parts).rstrip()


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


# ============================================================================ several runs
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


# ============================================================================ markdown
def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return "-" if math.isnan(v) else f"{v:.3f}"
    return str(v)


def markdown_table(df: pl.DataFrame, headers: Mapping[str, str] | None = None,
                   signed: Sequence[str] = ()) -> str:
    """A GitHub markdown table of ``df`` (floats with 3 decimals, nan as ``-``; columns in
    ``signed`` with an explicit sign; ``headers`` renames columns)."""
    headers = headers or {}
    cols = df.columns
    lines = ["| " + " | ".join(headers.get(c, c) for c in cols) + " |",
             "|" + "|".join("---" if df.schema[c] in (pl.Utf8, pl.Boolean) else "---:" for c in cols) + "|"]
    for row in df.iter_rows(named=True):
        cells = []
        for c in cols:
            v = row[c]
            if c in signed and isinstance(v, float) and not math.isnan(v):
                cells.append(f"{v:+.3f}")
            elif isinstance(v, float) and c in ("prompts", "candidates", "positives"):
                cells.append("-" if math.isnan(v) else f"{int(v)}")
            else:
                cells.append(_fmt(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _task_section(table: pl.DataFrame, held_out: bool) -> str:
    part = table.filter(pl.col("held_out") == held_out)
    if part.height == 0:
        return ""
    part = part.with_columns(
        pl.when(pl.col("is_mean")).then(pl.format("**{}** ({})", "task", "tasks"))
        .when(pl.col("held_out")).then(pl.format("{} (held out)", "task"))
        .otherwise(pl.col("task")).alias("task")
    ).drop("held_out", "is_mean", "tasks", *[c for c in part.columns if "." in c])
    return markdown_table(part, {"best_baseline": "best baseline", "gain_vs_best_baseline": "gain"},
                          signed=("gain_vs_best_baseline",))


def render_markdown(table: pl.DataFrame, cold: pl.DataFrame, title: str,
                    notes: Sequence[str] = (), cold_held_out: pl.DataFrame | None = None,
                    extra_sections: Sequence[str] = (), deltas: pl.DataFrame | None = None,
                    warnings: Sequence[str] = ()) -> str:
    """The evaluation summary as markdown: the headline (mean pooled and per-list AUC per
    model, the :func:`verdict_lines` of ``deltas``), trained tasks, zero-shot (held-out)
    tasks, the paired deltas, the cold-start table, the one-class ``warnings``; ``notes``
    go under the title, ``extra_sections`` at the end."""
    parts = [f"# {title}", ""]
    parts += [*notes, ""] if notes else []
    parts += ["AUC pooled over each task's candidates; gain = teacher minus the best baseline "
              "of the row; a mean row averages each column over the tasks with a defined value; "
              "`-`: undefined (one class only).", ""]
    head = headline_table(table)
    if head.height:
        parts += ["## Headline: mean over tasks, pooled and per-list AUC", "",
                  "Per-list (group) AUC: the mean of per-prompt AUCs over prompts holding both "
                  "classes (never compares candidates of different members); per task in "
                  "`summary.csv` (`group_auc.<model>`).", "",
                  markdown_table(head, {"trained.auc": "trained: AUC", "trained.group_auc": "trained: per-list AUC",
                                        "held_out.auc": "held-out: AUC",
                                        "held_out.group_auc": "held-out: per-list AUC"}), ""]
    lines = verdict_lines(deltas) if deltas is not None and deltas.height else []
    if lines:
        parts += [*[f"- {v}" for v in lines], ""]
    trained = _task_section(table, False)
    if trained:
        parts += ["## Trained tasks", "", trained, ""]
    held = _task_section(table, True)
    if held:
        parts += ["## Zero-shot tasks (held out: no training prompts; the baselines were trained "
                  "on them)", "", held, ""]
    if deltas is not None and deltas.height:
        parts += [paired_delta_markdown(deltas), ""]
    cold_cols = {"bucket": "prior events", "best_baseline": "best baseline",
                 "gain_vs_best_baseline": "gain"}
    parts += ["## Cold start: AUC by member activity (trained tasks)", "",
              "Mean over trained tasks of the per-task AUC on the candidates of prompts whose member "
              "had that many prior events (cumulative buckets); `new item`: candidates nobody had "
              "an event with before the cutoff.", "",
              markdown_table(cold.drop("slice"), cold_cols, signed=("gain_vs_best_baseline",)), ""]
    if cold_held_out is not None and cold_held_out["tasks"].sum() > 0:
        parts += ["## Cold start on the held-out tasks", "",
                  markdown_table(cold_held_out.drop("slice"), cold_cols,
                                 signed=("gain_vs_best_baseline",)), ""]
    if warnings:
        parts += ["## Warnings: slices with one class", "", *[f"- {w}" for w in warnings], ""]
    for s in extra_sections:
        parts += [s, ""]
    return "\n".join(parts).rstrip() + "\n"


def render_side_by_side(table: pl.DataFrame, cold: pl.DataFrame, title: str,
                        notes: Sequence[str] = ()) -> str:
    """Markdown of :func:`side_by_side` tables (per task, then the cold-start buckets)."""
    parts = [f"# {title}", "", *notes, "",
             "`model` = the run, `model@against` = the other run, `delta_teacher` = run minus "
             "against.", ""]
    for held_out, head in ((False, "Trained tasks"), (True, "Zero-shot (held-out) tasks")):
        part = table.filter(pl.col("held_out") == held_out)
        if part.height:
            part = part.with_columns(pl.when(pl.col("is_mean")).then(pl.format("**{}**", "task"))
                                     .otherwise(pl.col("task")).alias("task")).drop("held_out", "is_mean")
            parts += [f"## {head}", "", markdown_table(part, signed=("delta_teacher",)), ""]
    parts += ["## Cold start (trained tasks)", "",
              markdown_table(cold.drop("slice"), {"bucket": "prior events"}, signed=("delta_teacher",)), ""]
    return "\n".join(parts).rstrip() + "\n"


# ============================================================================ plots
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


# ============================================================================ files
@dataclass(frozen=True)
class Report:
    """What :func:`write_report` wrote: the files, the markdown and the headline metrics."""

    files: list[Path]
    markdown: str
    metrics: dict[str, float]
    table: pl.DataFrame
    cold_start: pl.DataFrame
    deltas: pl.DataFrame | None = None     # paired_delta_table (with the per-row scores)
    verdicts: tuple[str, ...] = ()         # verdict_lines: print them under the table
    warnings: tuple[str, ...] = ()         # single_class_warnings


def calibration_section(probs: np.ndarray, labels: np.ndarray, held_out: np.ndarray | None,
                        n_bins: int = 10) -> tuple[str, dict[str, float]]:
    """Markdown and metrics of the teacher's calibration, pooled over all candidates and
    per task group: log loss, ECE, mean P(yes), positive rate."""
    groups = [("all tasks", np.ones(probs.size, dtype=bool))]
    if held_out is not None:
        groups += [("trained tasks", ~held_out.astype(bool)), ("held-out tasks", held_out.astype(bool))]
    rows, metrics = [], {}
    for name, sel in groups:
        if not sel.any():
            continue
        p, y = probs[sel], labels[sel]
        ll, ece = log_loss(p, y), expected_calibration_error(p, y, n_bins)
        rows.append({"candidates": name, "n": float(sel.sum()), "log loss": ll, "ECE": ece,
                     "mean P(yes)": float(p.mean()), "positive rate": float(y.mean())})
        key = name.split()[0].replace("-", "_")
        metrics.update({f"teacher.log_loss.{key}": ll, f"teacher.ece.{key}": ece})
    table = pl.DataFrame(rows, orient="row")
    md = markdown_table(table.with_columns(pl.col("n").cast(pl.Int64)))
    text = (f"## Calibration of the teacher (pooled, {n_bins} equal-mass bins)\n\n{md}\n\n"
            "Reliability diagram: `plots/teacher_calibration.png`.")
    return text, metrics


def write_report(records: Sequence[EvalRecord], out_dir: Path, title: str = "Evaluation",
                 notes: Sequence[str] = (), teacher: str = TEACHER,
                 teacher_probs: np.ndarray | None = None, teacher_labels: np.ndarray | None = None,
                 teacher_held_out: np.ndarray | None = None, ece_bins: int = 10,
                 scores: pl.DataFrame | None = None, n_boot: int = 1000, seed: int = 0) -> Report:
    """Write ``summary.csv`` (:func:`summary_table`), ``cold_start.csv``
    (:func:`cold_start_table`, trained and held-out tasks), ``summary.md``,
    ``results.json`` (the records) and ``plots/{task_auc,cold_start_gain}.png`` (plus
    ``plots/teacher_calibration.png`` given the teacher's pooled probabilities) into
    ``out_dir``; given the per-row ``scores`` (:data:`SCORE_COLUMNS`) also
    ``paired_deltas.csv`` (:func:`paired_delta_table`, ``n_boot`` replicates, ``seed``),
    whose mean rows become the metrics ``paired_delta.{trained,held_out}.<baseline>``
    (+ ``_low`` / ``_high``)."""
    import json

    out_dir = Path(out_dir)
    (out_dir / "plots").mkdir(parents=True, exist_ok=True)
    table = summary_table(records, teacher=teacher)
    cold = cold_start_table(records, teacher=teacher)
    cold_held = cold_start_table(records, teacher=teacher, held_out=True)
    files = []
    table.write_csv(out_dir / "summary.csv")
    pl.concat([cold.with_columns(pl.lit("trained").alias("tasks_group")),
               cold_held.with_columns(pl.lit("held_out").alias("tasks_group"))]
              ).write_csv(out_dir / "cold_start.csv")
    files += [out_dir / "summary.csv", out_dir / "cold_start.csv"]
    extra, metrics = [], summary_metrics(table, cold, teacher)
    files.append(plot_task_auc(table, out_dir / "plots" / "task_auc.png", teacher))
    files.append(plot_cold_start_gain(cold, out_dir / "plots" / "cold_start_gain.png", teacher))
    if teacher_probs is not None and teacher_labels is not None and len(teacher_probs):
        probs = np.asarray(teacher_probs, dtype=np.float64)
        labels = np.asarray(teacher_labels, dtype=np.float64)
        held = None if teacher_held_out is None else np.asarray(teacher_held_out, dtype=bool)
        section, cal = calibration_section(probs, labels, held, ece_bins)
        extra.append(section)
        metrics.update({k: v for k, v in cal.items() if not math.isnan(v)})
        from components.evaluate.metrics import calibration_curve

        files.append(plot_calibration(calibration_curve(probs, labels, ece_bins),
                                      out_dir / "plots" / "teacher_calibration.png", teacher))
    deltas = None
    if scores is not None and scores.height and n_boot > 0:
        deltas = paired_delta_table(scores, teacher, n_boot=n_boot, seed=seed)
        deltas.write_csv(out_dir / "paired_deltas.csv")
        files.append(out_dir / "paired_deltas.csv")
        metrics.update(paired_delta_metrics(deltas))
    warns = single_class_warnings(records)
    markdown = render_markdown(table, cold, title, notes, cold_held_out=cold_held, extra_sections=extra,
                               deltas=deltas, warnings=warns)
    (out_dir / "summary.md").write_text(markdown)
    (out_dir / "results.json").write_text(json.dumps({"records": [
        {"model": r.model, "task_id": r.task_id, "held_out": bool(r.held_out),
         "metrics": {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.metrics.items()}}
        for r in records]}, indent=1))
    files = [out_dir / "summary.md", *files, out_dir / "results.json"]
    verdicts = tuple(verdict_lines(deltas, teacher)) if deltas is not None and deltas.height else ()
    return Report(files, markdown, metrics, table, cold, deltas, verdicts, tuple(warns))
