"""ID-based baselines on a tiny synthetic world: alignment, determinism, no leakage, signal."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import polars as pl
import pytest

from components.config import SplitConfig, SyntheticWorldConfig
from components.data.split import split_dataset
from components.data.synthetic import generate_world
from components.evaluate.baselines import (
    POPULARITY_VARIANTS,
    BaselineConfig,
    BaselineData,
    eval_candidates,
    fit_baselines,
    point_in_time_features,
    score_baselines,
    score_lists,
    training_lists,
)
from components.evaluate.metrics import roc_auc
from components.promptify.examples import label_events
from components.promptify.tasks import load_tasks

TASK_IDS = ("job_apply_jobs-home", "job_apply_job-search", "job_engage_any", "job_apply_any_sampled",
            "post_like_feed", "course_enroll_learning")
CFG = BaselineConfig(lgb_rounds=60, sasrec_epochs=3, seed=0)


def eval_lists(data: BaselineData, tasks, split: str = "valid") -> pl.DataFrame:
    """Evaluation prompts as promptify builds them (no sampled negatives): per (member,
    task) the member's task events in the window, one question per item, cutoff = first."""
    lab = label_events(data.interactions, tasks).filter(pl.col("split") == split)
    return (
        lab.with_columns(pl.col("timestamp").min().over("member_id", "task_id").alias("cutoff"))
        .group_by("member_id", "task_id", "cutoff", "item_id")
        .agg(pl.col("label").max(), pl.col("timestamp").min())
        .sort("member_id", "task_id", "timestamp", "item_id")
        .group_by("member_id", "task_id", "cutoff", maintain_order=True)
        .agg(pl.col("item_id").alias("candidate_item_ids"), pl.col("label").alias("labels"))
        .with_columns(pl.format("{}:{}:{}:0", "member_id", "task_id", pl.lit(split)).alias("example_id"))
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("baselines")
    generate_world(SyntheticWorldConfig(members=600, companies=40, jobs=300, posts=400, courses=60,
                                        days=90, seed=1), root / "world")
    split_dataset(root / "world", root / "split", SplitConfig())
    data = BaselineData.from_split_dir(root / "split")
    tasks = [t for t in load_tasks().tasks if t.id in TASK_IDS]
    return {"data": data, "tasks": tasks, "eval": eval_lists(data, tasks)}


@pytest.fixture(scope="module")
def fitted(world):
    return fit_baselines(world["data"], world["tasks"], CFG)


def _scores(scored: pl.DataFrame, name: str) -> list[list[float]]:
    return scored.filter(pl.col("baseline") == name)["scores"].to_list()


def test_scores_align_with_candidate_lists(world, fitted):
    ev = world["eval"]
    scored = score_baselines(fitted, world["data"], ev)
    assert set(scored["baseline"].unique()) == {"popularity", "lightgbm", "sasrec"}
    for name in fitted:
        part = scored.filter(pl.col("baseline") == name)
        assert part["example_id"].to_list() == ev["example_id"].to_list()
        assert part["scores"].list.len().to_list() == ev["candidate_item_ids"].list.len().to_list()
        assert np.isfinite(part["scores"].explode().to_numpy()).all()
    # score_lists gives the same numbers as arrays, in the order of the rows given
    rev = ev.reverse()
    arrays = score_lists(fitted["lightgbm"], world["data"], rev)
    assert [a.tolist() for a in arrays] == _scores(scored, "lightgbm")[::-1]


def test_fitting_is_deterministic(world, fitted):
    again = fit_baselines(world["data"], world["tasks"], CFG)
    a = score_baselines(fitted, world["data"], world["eval"])
    b = score_baselines(again, world["data"], world["eval"])
    for name in fitted:
        assert _scores(a, name) == _scores(b, name), name


def _with_events(data: BaselineData, rows: list[tuple]) -> BaselineData:
    extra = pl.DataFrame(rows, schema={"member_id": pl.Utf8, "item_id": pl.Utf8, "surface": pl.Utf8,
                                       "action": pl.Utf8, "timestamp": data.interactions.schema["timestamp"]},
                         orient="row").with_columns(pl.lit("valid").alias("split"))
    inter = pl.concat([data.interactions.drop("item_type"), extra], how="diagonal_relaxed")
    return BaselineData.from_frames(data.members, data.items, inter)


def test_no_feature_or_score_uses_events_at_or_after_the_cutoff(world, fitted):
    data, tasks = world["data"], world["tasks"]
    ev = world["eval"].filter(pl.col("task_id") == "job_engage_any")
    other = data.interactions["member_id"].unique().sort()[0]
    for k in (0, ev.height // 2, ev.height - 1):
        lst = ev.slice(k, 1)
        member, cutoff, items = lst["member_id"][0], lst["cutoff"][0], lst["candidate_item_ids"][0]
        queries = eval_candidates(lst)
        base = point_in_time_features(data, queries, tasks, CFG)
        future = []
        for i in items:  # the member and someone else apply at the cutoff and after it
            for m in (member, other):
                future += [(m, i, "jobs-home", "apply", cutoff), (m, i, "job-search", "save", cutoff + timedelta(hours=1))]
        future.append((member, items[0], "feed", "like", cutoff + timedelta(days=3)))
        later = _with_events(data, future)
        assert point_in_time_features(later, queries, tasks, CFG).equals(base)
        assert score_baselines(fitted, later, lst).equals(score_baselines(fitted, data, lst))
        # the same events one microsecond earlier are visible: the check can fail
        earlier = _with_events(data, [(m, i, s, a, min(t, cutoff) - timedelta(microseconds=1))
                                      for m, i, s, a, t in future])
        changed = point_in_time_features(earlier, queries, tasks, CFG)
        assert (changed["item_task_pos"] > base["item_task_pos"]).all()
        assert (changed["member_item_events"] > base["member_item_events"]).all()
        assert not score_baselines(fitted, earlier, lst).equals(score_baselines(fitted, data, lst))


def test_training_lists_come_from_the_train_split(world):
    data, tasks = world["data"], world["tasks"]
    lists = training_lists(data, tasks, CFG)
    valid_start, _ = data.window_bounds()
    assert lists["cutoff"].dt.epoch("us").max() < valid_start
    assert set(lists["label"].unique()) == {0, 1}
    assert set(lists["task_id"].unique()) == set(TASK_IDS)  # held-out tasks are trained too
    logged = lists.filter(pl.col("task_id") != "job_apply_any_sampled")
    train_events = data.interactions.filter(pl.col("split") == "train").select("member_id", "item_id").unique()
    assert logged.join(train_events, on=["member_id", "item_id"], how="anti").height == 0
    # a list's cutoff is its first question's time: no candidate event before it
    lab = label_events(data.interactions, tasks).filter(pl.col("split") == "train")
    j = logged.join(lab, on=["member_id", "task_id", "item_id"]).filter(
        pl.col("timestamp") >= pl.col("cutoff"))
    assert j.group_by("list_id").agg(pl.col("timestamp").min() == pl.col("cutoff").first())["timestamp"].all()
    # sampled negatives: alive at the cutoff, never an item the member has a labeled event with
    sampled = lists.filter((pl.col("task_id") == "job_apply_any_sampled") & (pl.col("label") == 0))
    assert sampled.height > 0
    created = sampled.join(data.items.select("item_id", "created_at", "item_type"), on="item_id")
    assert (created["created_at"] <= created["cutoff"]).all() and (created["item_type"] == "job").all()
    seen = label_events(data.interactions, tasks).select("member_id", "item_id").unique()
    assert sampled.join(seen, on=["member_id", "item_id"], how="semi").height == 0


def test_lightgbm_beats_random_on_job_tasks(world, fitted):
    ev = world["eval"]
    scored = score_baselines({"lightgbm": fitted["lightgbm"]}, world["data"], ev)
    for task in ("job_apply_jobs-home", "job_apply_job-search", "job_engage_any"):
        sel = (ev["task_id"] == task).to_numpy()
        s = np.concatenate([np.asarray(x) for x, k in zip(_scores(scored, "lightgbm"), sel, strict=True) if k])
        y = ev.filter(pl.col("task_id") == task)["labels"].explode().to_numpy()
        assert roc_auc(s, y) > 0.55, task


def test_popularity_picks_its_best_training_variant(fitted):
    pop = fitted["popularity"]
    assert set(pop.variant) == set(TASK_IDS)
    for task, variant in pop.variant.items():
        assert variant in POPULARITY_VARIANTS
        assert pop.train_auc[task][variant] == max(pop.train_auc[task].values())


def test_sasrec_unseen_items_share_the_unknown_embedding(world, fitted):
    lst = world["eval"].slice(0, 1).with_columns(pl.lit(["never_seen_1", "never_seen_2"]).alias("candidate_item_ids"))
    (scores,) = score_lists(fitted["sasrec"], world["data"], lst)
    assert scores[0] == scores[1]


def test_errors_name_the_column_and_the_fix(world, fitted):
    data = world["data"]
    with pytest.raises(ValueError, match=r"\['split'\].*split stage"):
        BaselineData.from_frames(data.members, data.items, data.interactions.drop("split"))
    with pytest.raises(FileNotFoundError, match="split stage output"):
        BaselineData.from_split_dir("/nonexistent")
    bad = world["eval"].slice(0, 1).with_columns(pl.lit("no_such_task").alias("task_id"))
    with pytest.raises(ValueError, match="no_such_task"):
        score_baselines(fitted, data, bad)
    with pytest.raises(ValueError, match="candidate_item_ids"):
        score_baselines(fitted, data, world["eval"].drop("candidate_item_ids"))
