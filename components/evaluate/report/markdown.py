"""Markdown of the evaluation tables: ``summary.md``, the side-by-side comparison, and the
sections the console shows."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import polars as pl

from components.evaluate.report.paired import paired_delta_markdown, verdict_lines
from components.evaluate.report.tables import headline_table


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


#: Sections of ``summary.md`` the console shows after a run (the per-task tables stay in
#: the file: 30 tasks x 5 models would bury the headline).
CONSOLE_SECTIONS = ("## Headline", "## Cold start: ", "## Does the question matter?")


def console_summary(markdown: str) -> str:
    """The title, the headline table with its verdict lines, the cold-start table and the
    opposite-task verdict of a ``summary.md``."""
    parts = markdown.split("\n## ")
    out = [parts[0].splitlines()[0]]
    for part in parts[1:]:
        section = "## " + part
        if section.startswith(CONSOLE_SECTIONS):
            lines = [ln for ln in section.splitlines() if ln.strip()]
            if section.startswith("## Does the question matter?"):
                lines = [lines[0], *[ln for ln in lines if ln.startswith("- ")]]
            else:  # the table and its bullet lines, not the explanatory paragraph
                lines = [lines[0], *[ln for ln in lines[1:] if ln.startswith(("|", "- "))]]
            out.append("\n".join(lines))
    return "\n\n".join(out)
