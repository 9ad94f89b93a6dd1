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
    id_count_features,
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
CFG = BaselineConfig(lgb_rounds=60, sasrec_epochs=3, sasrec_task_epochs=2, seed=0)


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
    assert set(scored["baseline"].unique()) == {"popularity", "lightgbm", "lightgbm_ids", "sasrec"}
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
    # sampled negatives: live at one of their list's question times (the catalogue pool draws
    # each at a positive's time), never an item the member has a labeled event with
    sampled = lists.filter((pl.col("task_id") == "job_apply_any_sampled") & (pl.col("label") == 0))
    assert sampled.height > 0
    last_q = lab.group_by("member_id", "task_id").agg(pl.col("timestamp").max().alias("__last"))
    created = (sampled.join(data.items.select("item_id", "created_at", "item_type"), on="item_id")
               .join(last_q, on=["member_id", "task_id"]))
    assert (created["created_at"] < created["__last"]).all() and (created["item_type"] == "job").all()
    assert (created["created_at"] > created["cutoff"]).any()  # drawn at later questions too
    seen = label_events(data.interactions, tasks).select("member_id", "item_id").unique()
    assert sampled.join(seen, on=["member_id", "item_id"], how="semi").height == 0


def test_lightgbm_beats_random_on_job_tasks(world, fitted):
    ev = world["eval"]
    scored = score_baselines({n: fitted[n] for n in ("lightgbm", "lightgbm_ids")}, world["data"], ev)
    aucs = {"lightgbm": [], "lightgbm_ids": []}
    for task in ("job_apply_jobs-home", "job_apply_job-search", "job_engage_any"):
        sel = (ev["task_id"] == task).to_numpy()
        y = ev.filter(pl.col("task_id") == task)["labels"].explode().to_numpy()
        for name, out in aucs.items():
            s = np.concatenate([np.asarray(x) for x, k in zip(_scores(scored, name), sel, strict=True) if k])
            out.append(roc_auc(s, y))
    assert min(aucs["lightgbm"]) > 0.55, aucs
    # ids + counts only: above chance on average (0.51-0.66 per task), below the feature model
    assert np.mean(aucs["lightgbm"]) > np.mean(aucs["lightgbm_ids"]) > 0.55, aucs


def test_lightgbm_ids_reads_ids_and_counts_only(fitted):
    ids, feats = fitted["lightgbm_ids"], fitted["lightgbm"]
    assert ids.id_features and not feats.id_features  # lgb_id_features is off by default
    assert ids.features == id_count_features(feats.features)
    assert {"item_events_7d", "item_task_rate", "member_task_pos", "member_item_events"} <= set(ids.features)
    left_out = set(feats.features) - set(ids.features)
    assert {"item_age_days", "item_days_since_event", "member_days_active", "skill_share",
            "member_industry_share"} <= left_out
    booster = next(b for b in ids.boosters.values() if b is not None)
    assert booster.feature_name()[-2:] == ["member", "item"]


def test_popularity_picks_its_best_training_variant(fitted):
    pop = fitted["popularity"]
    assert set(pop.variant) == set(TASK_IDS)
    for task, variant in pop.variant.items():
        assert variant in POPULARITY_VARIANTS
        assert pop.train_auc[task][variant] == max(pop.train_auc[task].values())


def test_sasrec_unseen_items_differ_by_their_attributes(world, fitted):
    data = world["data"]
    # items neither in training nor in the items table: the unknown id, no attributes: a tie
    lst = world["eval"].slice(0, 1).with_columns(pl.lit(["never_seen_1", "never_seen_2"]).alias("candidate_item_ids"))
    (scores,) = score_lists(fitted["sasrec"], data, lst)
    assert scores[0] == scores[1]
    # items of the table without a train-split event share the unknown id but not their attributes
    seen = data.interactions.filter(pl.col("split") == "train")["item_id"].unique()
    jobs = data.items.filter((pl.col("item_type") == "job") & ~pl.col("item_id").is_in(seen.implode()))
    pair = jobs.filter(pl.col("company") != jobs["company"][0]).head(1)["item_id"].to_list()
    lst = lst.with_columns(pl.lit([jobs["item_id"][0], *pair]).alias("candidate_item_ids"))
    (scores,) = score_lists(fitted["sasrec"], data, lst)
    assert scores[0] != scores[1]


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


def test_match_features_follow_the_declared_pairs():
    from datetime import UTC, datetime

    from components.evaluate.baselines import _profile_matches

    t = datetime(2026, 1, 1, tzinfo=UTC)
    members = pl.DataFrame({"member_id": ["a"], "city": ["Berlin"], "tags": [["Go", "sql"]]})
    items = pl.DataFrame({"item_id": ["x", "y"], "location": ["berlin", "Paris"], "tags": [["go", "rust"], []]})
    q = pl.DataFrame({"__q": [0, 1], "member_id": ["a", "a"], "item_id": ["x", "y"], "cutoff": [t, t]})
    out = _profile_matches(q, members, items, {"city": "location", "tags": "tags"}).sort("__q")
    assert out["same_city"].to_list() == [1.0, 0.0]  # case-insensitive
    assert out["tags_share"].to_list() == [0.5, None]  # no item tags: no share
    # default: the columns both texts show (here only `tags`: `city` is not an item column)
    assert set(_profile_matches(q, members, items).columns) == {"__q", "tags_share"}
    with pytest.raises(ValueError, match="item column 'town'"):
        _profile_matches(q, members, items, {"city": "town"})
