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

from components.evaluate.report.markdown import (
    CONSOLE_SECTIONS,
    console_summary,
    markdown_table,
    render_markdown,
    render_side_by_side,
)
from components.evaluate.report.markdown import _fmt as _fmt
from components.evaluate.report.markdown import _task_section as _task_section
from components.evaluate.report.paired import (
    PAIRED_SCHEMA,
    SCORE_COLUMNS,
    paired_delta_markdown,
    paired_delta_metrics,
    paired_delta_table,
    tasks_above,
    verdict,
    verdict_lines,
)
from components.evaluate.report.paired import _ci as _ci
from components.evaluate.report.paired import _level as _level
from components.evaluate.report.plots import (
    plot_calibration,
    plot_cold_start_gain,
    plot_task_auc,
    pyplot,
    save_figure,
)
from components.evaluate.report.records import (
    ACTIVITY_SLICES,
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
    load_records,
    model_task_metrics,
)
from components.evaluate.report.runs import (
    across_runs_table,
    multi_run_verdict,
    paired_across_runs,
    render_across_runs,
)
from components.evaluate.report.tables import _gain as _gain
from components.evaluate.report.tables import _nanmean as _nanmean
from components.evaluate.report.tables import (
    cold_start_table,
    headline_table,
    model_columns,
    model_order,
    side_by_side,
    single_class_warnings,
    summary_metrics,
    summary_table,
)
from components.evaluate.report.write import (
    Report,
    calibration_section,
    write_report,
)

__all__ = [
    "ACTIVITY_SLICES",
    "BASELINE_ORDER",
    "COLD_START_LABELS",
    "COLD_START_ROWS",
    "CONSOLE_SECTIONS",
    "EvalRecord",
    "FIXED_COLUMNS",
    "HELD_OUT_MEAN",
    "PAIRED_SCHEMA",
    "PER_LIST_METRIC",
    "Report",
    "SCORE_COLUMNS",
    "SLICE_METRIC_NAMES",
    "TEACHER",
    "TRAINED_MEAN",
    "across_runs_table",
    "calibration_section",
    "cold_start_table",
    "console_summary",
    "headline_table",
    "load_records",
    "markdown_table",
    "model_columns",
    "model_order",
    "model_task_metrics",
    "multi_run_verdict",
    "paired_across_runs",
    "paired_delta_markdown",
    "paired_delta_metrics",
    "paired_delta_table",
    "plot_calibration",
    "plot_cold_start_gain",
    "plot_task_auc",
    "pyplot",
    "render_across_runs",
    "render_markdown",
    "render_side_by_side",
    "save_figure",
    "side_by_side",
    "single_class_warnings",
    "summary_metrics",
    "summary_table",
    "tasks_above",
    "verdict",
    "verdict_lines",
    "write_report",
]
