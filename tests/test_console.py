"""The run console (pipelines/console.py): events in, a short readable view out, all kept in the log."""

from __future__ import annotations

import io

from rich.console import Console

from pipelines.console import EVENTS_ENV, Follower, emit, headline
from pipelines.eval_stage import console_summary


def test_events_become_stage_lines_and_everything_reaches_the_log(tmp_path, monkeypatch):
    events = tmp_path / "events.jsonl"
    monkeypatch.setenv(EVENTS_ENV, str(events))
    out, log = io.StringIO(), io.StringIO()
    follower = Follower(events, Console(file=out, width=200, color_system=None), log)
    emit("start", "sft", key="abc")
    emit("log", "sft", msg="a detail nobody needs on the console")
    emit("progress", "sft", done=5, total=10, unit="steps", info="loss 0.5")
    emit("note", "sft", msg="calibration fitted")
    emit("done", "sft", seconds=12.5, metrics={"loss_last10_mean": 0.51234, "valid_task_auc_mean": 0.7})
    emit("cached", "split", metrics={})
    with events.open("a") as f:
        f.write('{"kind": "start", "stage": "half')  # a line still being written: not read yet
    follower.poll()
    follower.close()
    shown = out.getvalue()
    assert "▶ sft" in shown and "running" in shown
    assert "calibration fitted" in shown and "✓ sft" in shown and "12.5s" in shown
    assert "loss_last10_mean 0.512, valid_task_auc_mean 0.700" in shown
    assert "✓ split" in shown and "cached" in shown
    assert "a detail nobody needs" not in shown  # detail lines: log file only (or --verbose)
    logged = log.getvalue()
    assert "a detail nobody needs on the console" in logged and "calibration fitted" in logged
    assert "half" not in logged


def test_emit_without_the_env_is_a_no_op(tmp_path, monkeypatch):
    monkeypatch.delenv(EVENTS_ENV, raising=False)
    emit("start", "x")  # a component run outside the pipeline: nothing to write, no error
    assert headline({"prompts": 4500.0, "unknown": 1.0}) == "prompts 4,500"


def test_console_summary_keeps_the_headline_and_drops_per_task_tables():
    md = "\n".join([
        "# Evaluation on the test split", "", "Split notes.", "",
        "## Headline: mean over tasks", "", "explanation", "", "| model | AUC |", "|---|---:|",
        "| teacher | 0.7 |", "", "- teacher vs popularity: paired delta +0.2 [+0.1, +0.3]", "",
        "## Trained tasks", "", "| task | teacher |", "| a | 0.9 |", "",
        "## Cold start: AUC by member activity", "", "text", "| prior events | teacher |", "| <=5 | 0.8 |", "",
        "## Does the question matter? Opposite tasks", "", "text", "| task | corr |", "", "- teacher reads it",
    ])
    out = console_summary(md)
    assert "| teacher | 0.7 |" in out and "paired delta +0.2" in out and "| <=5 | 0.8 |" in out
    assert "- teacher reads it" in out
    assert "| a | 0.9 |" not in out and "explanation" not in out and "| task | corr |" not in out
