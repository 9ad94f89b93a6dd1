"""Paired teacher-minus-baseline AUC deltas (member bootstrap) and their verdict lines."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import polars as pl

from components.evaluate.metrics import paired_bootstrap_auc_delta
from components.evaluate.report.records import (
    HELD_OUT_MEAN,
    TEACHER,
    TRAINED_MEAN,
)
from components.evaluate.report.tables import _nanmean, model_order

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
