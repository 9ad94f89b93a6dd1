"""The popularity gate passes a scorer that ranks and stops one that does not."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from components.config import SplitConfig, SyntheticWorldConfig
from components.data.split import split_dataset
from components.data.synthetic import generate_world
from components.evaluate.baselines import BaselineConfig, BaselineData
from components.evaluate.gate import BETTER, NOT_BETTER, popularity_gate
from components.promptify.examples import label_events
from components.promptify.tasks import load_tasks

TASKS = ("job_apply_jobs-home", "post_like_feed", "job_apply_notifications")
CFG = BaselineConfig(seed=0)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("gate")
    generate_world(SyntheticWorldConfig(members=500, companies=30, jobs=250, posts=400, courses=40,
                                        days=60, seed=2), root / "world")
    split_dataset(root / "world", root / "split", SplitConfig())
    data = BaselineData.from_split_dir(root / "split")
    tasks = [t for t in load_tasks().tasks if t.id in TASKS]
    held = {t.id for t in tasks if t.held_out}
    lab = label_events(data.interactions, tasks).filter(pl.col("split") == "valid")
    rows = (lab.with_columns(pl.col("timestamp").min().over("member_id", "task_id").alias("cutoff"))
            .group_by("member_id", "task_id", "cutoff", "item_id").agg(pl.col("label").max())
            .sort("member_id", "task_id", "item_id")
            .group_by("member_id", "task_id", "cutoff", maintain_order=True)
            .agg(pl.col("item_id").alias("candidate_item_ids"), pl.col("label").alias("labels"))
            .with_columns(pl.format("{}:{}:valid:0", "member_id", "task_id").alias("example_id"),
                          pl.col("task_id").is_in(list(held)).alias("held_out")))
    return data, tasks, rows


def test_a_ranking_scorer_passes(world):
    data, tasks, rows = world
    rng = np.random.default_rng(0)
    good = [np.asarray(y, dtype=float) + rng.normal(0, 0.3, len(y)) for y in rows["labels"]]
    res = popularity_gate(good, rows, data, tasks, CFG, n_boot=200)
    assert res.passed and res.verdict == BETTER and res.low > 0
    assert res.tasks == 2  # the held-out task is reported, not gated
    assert not np.isnan(res.held_out_delta)
    assert "better than popularity on validation" in res.line()


def test_a_random_scorer_is_stopped(world):
    data, tasks, rows = world
    rng = np.random.default_rng(1)
    noise = [rng.random(len(y)) for y in rows["labels"]]
    res = popularity_gate(noise, rows, data, tasks, CFG, n_boot=200)
    assert not res.passed and res.verdict == NOT_BETTER and res.low <= 0


def test_rows_must_line_up(world):
    data, tasks, rows = world
    with pytest.raises(ValueError, match="one per row"):
        popularity_gate([np.zeros(1)], rows, data, tasks, CFG)
    with pytest.raises(ValueError, match="lack"):
        popularity_gate([], rows.drop("member_id"), data, tasks, CFG)
