"""What `rankbrew run` shows: a line per stage start and end, a progress bar per stage,
notes that matter; everything else to a log file under the run's directory.

Why a file of events and not Ray's log forwarding: Ray forwards every worker's stdout to
the driver (checkpoint paths, ``TrainingReport(...)`` reprs, weight-loading bars), 626
lines for one `make run`, in which the stage progress was hard to find. Stages and Ray
Train workers instead append one JSON event per line to the file named by
``$RANKBREW_EVENTS`` (:func:`emit`; the driver sets it for every Ray worker through the
runtime env); the driver follows the file (:class:`Follower`), writes every event as a
text line to the run's log and puts only the readable view on the console. Ray's own
logs are started with ``log_to_driver`` off and copied next to the run log at the end;
``--verbose`` forwards them to the console again.

On a cluster whose workers do not share the driver's disk, events from other nodes are
not seen: the stage lines still come (the driver writes them), the bars do not.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

EVENTS_ENV = "RANKBREW_EVENTS"

#: Metrics shown on a stage's "done" line, the first few a stage has.
HEADLINE_METRICS = (
    "rows.interactions", "interactions.rows_kept", "interactions.rows_quarantined", "prompts",
    "train.prompts", "test.prompts", "loss_last10_mean", "valid_task_auc_mean", "gate.delta",
    "mean_auc.trained.teacher", "mean_auc.trained.popularity", "mean_auc.held_out.teacher",
)


def emit(kind: str, stage: str, **fields: Any) -> None:
    """Append one event to ``$RANKBREW_EVENTS`` (no-op when it is not set: a component or
    a test run outside the pipeline). One ``write`` of one line in append mode: lines from
    several processes do not interleave on a local disk."""
    path = os.environ.get(EVENTS_ENV)
    if not path:
        return
    line = json.dumps({"t": time.time(), "kind": kind, "stage": stage, **fields}, default=str) + "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)


def _fmt(v: float) -> str:
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.3f}" if v != int(v) else f"{int(v)}"


def headline(metrics: dict[str, float], n: int = 3) -> str:
    """``key value`` pairs of the first ``n`` :data:`HEADLINE_METRICS` present."""
    picked = [(k, metrics[k]) for k in HEADLINE_METRICS if k in metrics][:n]
    return ", ".join(f"{k} {_fmt(float(v))}" for k, v in picked)


class Follower:
    """Reads new events from the events file; prints the console view; logs every event.

    ``console`` is a rich Console; ``log`` an open text file (the run log)."""

    def __init__(self, events: Path, console: Any, log: Any, verbose: bool = False):
        self.events, self.console, self.log, self.verbose = Path(events), console, log, verbose
        self.offset = 0
        self.progress = None
        self.bars: dict[str, Any] = {}

    def _bar(self, stage: str, total: float, unit: str):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        if self.progress is None:
            self.progress = Progress(TextColumn("  {task.description:<10}"), BarColumn(bar_width=30),
                                     MofNCompleteColumn(), TextColumn("{task.fields[unit]}"),
                                     TimeElapsedColumn(), TextColumn("{task.fields[info]}"),
                                     console=self.console, transient=True)
            self.progress.start()
        if stage not in self.bars:
            self.bars[stage] = self.progress.add_task(stage, total=total, unit=unit, info="")
        return self.bars[stage]

    def _close_bar(self, stage: str) -> None:
        if self.progress is not None and stage in self.bars:
            self.progress.remove_task(self.bars.pop(stage))
            if not self.bars:
                self.progress.stop()
                self.progress = None

    def poll(self) -> None:
        if not self.events.exists():
            return
        with self.events.open(encoding="utf-8") as f:
            f.seek(self.offset)
            chunk = f.read()
        end = chunk.rfind("\n")
        if end < 0:
            return
        self.offset += len(chunk[:end + 1].encode("utf-8"))
        for line in chunk[:end].splitlines():
            try:
                self.handle(json.loads(line))
            except json.JSONDecodeError:
                self.log.write(line + "\n")

    def say(self, text: str) -> None:
        self.console.print(text, highlight=False)

    def handle(self, ev: dict[str, Any]) -> None:
        kind, stage = ev.get("kind"), ev.get("stage", "")
        stamp = time.strftime("%H:%M:%S", time.localtime(ev.get("t", time.time())))
        if kind != "progress":
            self.log.write(f"{stamp} [{stage}] {kind}: {ev.get('msg') or json.dumps(ev, default=str)}\n")
            self.log.flush()
        if kind == "start":
            self.say(f"[bold]▶ {stage:<10}[/bold] running  [dim](key {ev.get('key')})[/dim]")
        elif kind == "cached":
            self.say(f"[green]✓ {stage:<10}[/green] cached   [dim]{headline(ev.get('metrics', {}))}[/dim]")
        elif kind == "done":
            self._close_bar(stage)
            self.say(f"[green]✓ {stage:<10}[/green] {ev.get('seconds', 0):6.1f}s  "
                     f"{headline(ev.get('metrics', {}))}")
        elif kind == "note":
            self.say(f"  [cyan]{stage}[/cyan]: {ev.get('msg')}")
        elif kind == "log" and self.verbose:
            self.say(f"  [dim]{stage}: {ev.get('msg')}[/dim]")
        elif kind == "progress":
            task = self._bar(stage, float(ev.get("total") or 0), ev.get("unit", ""))
            self.progress.update(task, completed=float(ev.get("done", 0)), info=ev.get("info", ""))

    def close(self) -> None:
        self.poll()
        for stage in list(self.bars):
            self._close_bar(stage)
