"""The evaluation report on disk: tables, ``summary.md``, ``results.json`` and plots."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from components.evaluate.metrics import expected_calibration_error, log_loss
from components.evaluate.report.markdown import markdown_table, render_markdown
from components.evaluate.report.paired import (
    paired_delta_metrics,
    paired_delta_table,
    verdict_lines,
)
from components.evaluate.report.plots import plot_calibration, plot_cold_start_gain, plot_task_auc
from components.evaluate.report.records import (
    TEACHER,
    EvalRecord,
)
from components.evaluate.report.tables import (
    cold_start_table,
    single_class_warnings,
    summary_metrics,
    summary_table,
)


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
