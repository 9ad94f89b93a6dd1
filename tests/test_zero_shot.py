"""Zero-shot tasks are unseen: no held-out task's answers among trained tasks' labels.

Checked on the labelled events themselves, on the shipped registry and a synthetic world:
each held-out task is labelled alone (so the check does not reuse the rule it checks),
and its answers are looked up among every trained task's train/valid labels.
"""

from __future__ import annotations

import polars as pl
import pytest

from components.config import SplitConfig, SyntheticWorldConfig
from components.data.split import split_dataset
from components.data.synthetic import generate_world
from components.evaluate.baselines import BaselineData
from components.promptify.examples import label_events
from components.promptify.tasks import load_tasks

KEY = ["member_id", "item_id", "surface", "action", "timestamp"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("zero_shot")
    generate_world(SyntheticWorldConfig(members=400, companies=30, jobs=200, posts=300, courses=40,
                                        days=60, seed=3), root / "world")
    split_dataset(root / "world", root / "split", SplitConfig())
    data = BaselineData.from_split_dir(root / "split")
    return data.interactions, load_tasks().for_domain("professional")


def leaks(events: pl.DataFrame, tasks, keep_apart: bool) -> dict[str, int]:
    """Per held-out task: how many of its train/valid answers (and, on a surface no trained
    task names, any of its labelled events) are labels of some trained task."""
    trained = [t for t in tasks if not t.held_out]
    named = {(t.item_type, t.surface) for t in trained if t.surface}
    learned = (label_events(events, tasks, keep_held_out_apart=keep_apart, with_event_keys=True)
               .filter(pl.col("task_id").is_in([t.id for t in trained]) & (pl.col("split") != "test"))
               .select(KEY).unique())
    out = {}
    for h in (t for t in tasks if t.held_out):
        own = label_events(events, [h], with_event_keys=True).filter(pl.col("split") != "test")
        # a new surface or item type: every labelled event is the task's own; a new action: its answers
        mine = own if (h.item_type, h.surface) not in named else own.filter(pl.col("label") == 1)
        out[h.id] = mine.select(KEY).unique().join(learned, on=KEY, how="inner").height
    return out


def test_held_out_answers_never_train_a_trained_task(world):
    events, tasks = world
    assert sum(leaks(events, tasks, keep_apart=True).values()) == 0


def test_the_check_catches_the_old_registry_behaviour(world):
    # without the rule, job_engage_any etc. label notification events: the check must see it
    before = leaks(events := world[0], world[1], keep_apart=False)
    assert before["job_engage_notifications"] > 0 and before["post_like_notifications"] > 0, before
    assert events.height > 0


def test_test_split_and_held_out_tasks_keep_their_labels(world):
    events, tasks = world
    kept = label_events(events, tasks)
    full = label_events(events, tasks, keep_held_out_apart=False)
    held = [t.id for t in tasks if t.held_out]
    for part in (pl.col("split") == "test", pl.col("task_id").is_in(held)):
        assert kept.filter(part).height == full.filter(part).height
    assert kept.height < full.height  # something was kept apart


def test_value_rule_held_out_task(world):
    """A held-out "will dislike" (rating <= 2) removes low ratings from trained rating tasks."""
    import datetime as dt

    ev = pl.DataFrame({
        "member_id": ["m1"] * 4, "item_id": ["a", "b", "c", "d"], "item_type": ["movie"] * 4,
        "surface": ["web"] * 4, "action": ["rate"] * 4, "value": [1.0, 2.0, 4.0, 5.0],
        "split": ["train", "train", "train", "test"],
        "timestamp": [dt.datetime(2026, 1, d, tzinfo=dt.UTC) for d in (1, 2, 3, 4)],
    })
    tasks = {t.id: t for t in load_tasks().for_domain("movielens")}
    lab = label_events(ev, [tasks["ml_will_like"], tasks["ml_will_dislike"]])
    like = lab.filter(pl.col("task_id") == "ml_will_like")
    assert sorted(like["item_id"]) == ["c", "d"]  # the 1 and 2 ratings are dislike's answers
    assert lab.filter(pl.col("task_id") == "ml_will_dislike").height == 4
