"""Sampled negatives without a time shortcut: their age and "new item" share match the
positives'; the old impressions-at-first-cutoff draw is shown to differ (so the check bites)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from scipy.stats import ks_2samp

from components.config import SplitConfig, SyntheticWorldConfig
from components.data.split import split_dataset
from components.data.synthetic import generate_world
from components.evaluate.baselines import BaselineData
from components.promptify.examples import label_events
from components.promptify.negatives import (
    CatalogueSampler,
    NegativeSampler,
    catalogue_pool,
    impression_pool,
)
from components.promptify.tasks import load_tasks

DAY_US = 86_400_000_000


@pytest.fixture(scope="module")
def lists(tmp_path_factory):
    root = tmp_path_factory.mktemp("negatives")
    generate_world(SyntheticWorldConfig(members=500, companies=30, jobs=250, posts=400, courses=40,
                                        days=60, seed=5), root / "world")
    split_dataset(root / "world", root / "split", SplitConfig())
    data = BaselineData.from_split_dir(root / "split")
    task = load_tasks().by_id()["post_engage_any_sampled"]
    lab = (label_events(data.interactions, [task]).filter(pl.col("split") == "test")
           .with_columns(pl.col("timestamp").dt.epoch("us").alias("t")))
    # one evaluation list per member: its positives over the whole test window
    per = lab.filter(pl.col("label") == 1).group_by("member_id").agg(
        pl.col("item_id"), pl.col("t")).sort("member_id")
    first_event = dict(data.interactions.group_by("item_id").agg(
        pl.col("timestamp").min().dt.epoch("us")).iter_rows())
    created = dict(data.items.select("item_id", pl.col("created_at").dt.epoch("us")).iter_rows())
    return data, task, per, first_event, created


def _age_and_new(pairs, first_event, created):
    age = np.array([(t - created[it]) / DAY_US for t, it in pairs])
    new = np.array([first_event.get(it, np.iinfo(np.int64).max) >= t for t, it in pairs])
    return age, new


def _draw(lists, pool: str):
    data, task, per, first_event, created = lists
    sampler = (CatalogueSampler(catalogue_pool(data.items, data.interactions)) if pool == "catalogue"
               else NegativeSampler(impression_pool(data.interactions, data.items)))
    pos, neg = [], []
    for m, (_member, items, times) in enumerate(per.iter_rows()):
        rng = np.random.default_rng([0, m])
        anchors = list(zip(times, items, strict=True))
        pos += anchors
        if pool == "catalogue":
            neg += [(t, it) for it, t in sampler.draw(rng, task.item_type, anchors, set(items), 4)]
        else:
            cutoff = min(times)  # the old scheme: drawn once, at the list's first question
            got = sampler.sample(rng, task.item_type, None, cutoff, set(items), 4)
            neg += [(t, it) for t, it in zip(sorted(times), got, strict=False)]
    return _age_and_new(pos, first_event, created), _age_and_new(neg, first_event, created)


def test_catalogue_negatives_match_positives_in_age_and_newness(lists):
    (age_p, new_p), (age_n, new_n) = _draw(lists, "catalogue")
    assert len(age_n) > 200
    ks = ks_2samp(age_p, age_n).statistic
    assert ks < 0.1, f"age distributions differ: KS {ks:.3f}"
    assert abs(new_p.mean() - new_n.mean()) < 0.05, (new_p.mean(), new_n.mean())
    assert (age_n >= 0).all()  # every negative was live (created before its question)


def test_impressions_at_first_cutoff_had_the_shortcut(lists):
    (age_p, new_p), (age_n, new_n) = _draw(lists, "impressions")
    assert ks_2samp(age_p, age_n).statistic > 0.15 or new_n.mean() < new_p.mean() - 0.05


def test_catalogue_sampler_respects_live_window_and_exclusions():
    import datetime as dt

    def us(d):
        return int(dt.datetime(2026, 1, d, tzinfo=dt.UTC).timestamp() * 1e6)

    items = pl.DataFrame({
        "item_id": ["a", "b", "c", "d", "e"], "item_type": ["job"] * 5,
        "created_at": [dt.datetime(2026, 1, d, tzinfo=dt.UTC) for d in (1, 2, 3, 4, 20)],
        "expires_at": [dt.datetime(2026, 1, 5, tzinfo=dt.UTC), None, None, None, None],
    })
    s = CatalogueSampler(items)
    rng = np.random.default_rng(0)
    for _ in range(50):
        got = s.sample(rng, "job", [(us(10), "c")], {"c"}, 2)
        assert len(got) == 2 and not {"a", "c", "e"} & set(got)  # expired, excluded, not yet created
    assert s.sample(rng, "job", [(us(1), "a")], set(), 3) == []  # nothing live before Jan 1
    assert s.sample(rng, "course", [(us(10), "c")], set(), 3) == []
