"""As-of item statistics: counts, means, strictly-before cutoffs, no leakage, text."""

from __future__ import annotations

import pickle
import time
from datetime import UTC, datetime

import numpy as np
import polars as pl
import pytest

from components.config import load_config
from components.promptify.config import MeanWords, PromptifyConfig
from components.promptify.item_stats import ItemStats, ItemStatsAsOf, render_item_stats

S = 1_000_000  # microseconds per second


def _table(rows: list[tuple[str, str, str, int, float | None]]) -> pl.DataFrame:
    """Canonical interactions from (member, item, action, seconds, value)."""
    return pl.DataFrame(
        rows, schema={"member_id": pl.Utf8, "item_id": pl.Utf8, "action": pl.Utf8,
                      "t": pl.Int64, "value": pl.Float64}, orient="row",
    ).select(
        "member_id", "item_id", "action",
        pl.from_epoch("t", time_unit="s").dt.replace_time_zone("UTC")
        .cast(pl.Datetime("us", "UTC")).alias("timestamp"),
        "value",
    )


ROWS = [
    ("u1", "m1", "rate", 10, 4.0),
    ("u2", "m1", "rate", 20, 2.0),
    ("u3", "m1", "rate", 30, 5.0),
    ("u1", "m2", "rate", 15, 3.0),
    ("u2", "m2", "view", 5, None),      # not a counted action
    ("u4", "m2", "rate", 25, None),     # counted, but carries no value
    ("u1", "m3", "rate", 50, 1.0),
]


@pytest.fixture
def stats() -> ItemStatsAsOf:
    return ItemStatsAsOf(_table(ROWS), actions=["rate"])


def test_counts_and_means(stats: ItemStatsAsOf) -> None:
    assert stats.lookup("m1", 100 * S) == ItemStats(3, 3, pytest.approx(11 / 3))
    assert stats.lookup("m1", 25 * S) == ItemStats(2, 2, 3.0)
    assert stats.lookup("m1", 5 * S) == ItemStats(0, 0, None)
    # The view is not counted; the valueless rating counts but is not in the mean.
    assert stats.lookup("m2", 100 * S) == ItemStats(2, 2, 3.0)
    assert stats.lookup("unknown", 100 * S) == ItemStats(0, 0, None)
    assert len(stats) == 3
    # A datetime cutoff is the same instant.
    assert stats.lookup("m1", datetime(1970, 1, 1, 0, 0, 25, tzinfo=UTC)) == ItemStats(2, 2, 3.0)


def test_strictly_before_the_cutoff(stats: ItemStatsAsOf) -> None:
    assert stats.lookup("m1", 20 * S).n_events == 1        # the event at 20 s is not counted
    assert stats.lookup("m1", 20 * S + 1).n_events == 2
    assert stats.lookup("m3", 50 * S) == ItemStats(0, 0, None)


def test_distinct_members_and_counted_actions() -> None:
    rows = [("u1", "m1", "rate", 10, 4.0), ("u1", "m1", "rate", 20, 2.0),
            ("u2", "m1", "like", 30, None)]
    s = ItemStatsAsOf(_table(rows), actions=["rate", "like"])
    assert s.lookup("m1", 25 * S) == ItemStats(2, 1, 3.0)   # two events, one member
    assert s.lookup("m1", 31 * S) == ItemStats(3, 2, 3.0)
    no_value = ItemStatsAsOf(_table(rows).drop("value"), actions=["rate"])
    assert no_value.lookup("m1", 25 * S) == ItemStats(2, 1, None)
    with pytest.raises(ValueError, match="actions is empty"):
        ItemStatsAsOf(_table(rows), actions=[])
    with pytest.raises(ValueError, match=r"lack columns \['timestamp'\]"):
        ItemStatsAsOf(_table(rows).drop("timestamp"))


def test_no_leakage_from_events_at_or_after_the_cutoff() -> None:
    rng = np.random.default_rng(0)
    n = 2_000
    base = _table([(f"u{rng.integers(50)}", f"m{rng.integers(20)}", "rate",
                    int(rng.integers(0, 1_000)), float(rng.integers(1, 6))) for _ in range(n)])
    cutoff_s = 500
    before = ItemStatsAsOf(base.filter(pl.col("timestamp").dt.epoch("s") < cutoff_s))
    # The future: more ratings of the same and new items, some exactly at the cutoff.
    future = _table([(f"u{rng.integers(80)}", f"m{rng.integers(30)}", "rate",
                      cutoff_s + int(rng.integers(0, 3)), float(rng.integers(1, 6)))
                     for _ in range(500)])
    full = ItemStatsAsOf(pl.concat([base, future]))
    for i in range(30):
        for style in ("markdown", "compact", "narrative"):
            assert (full.render(f"m{i}", cutoff_s * S, style)
                    == before.render(f"m{i}", cutoff_s * S, style))
        assert full.lookup(f"m{i}", cutoff_s * S) == before.lookup(f"m{i}", cutoff_s * S)
    # Sanity: the future events do change later answers.
    assert any(full.lookup(f"m{i}", 10**4 * S) != before.lookup(f"m{i}", 10**4 * S)
               for i in range(30))


def test_render_each_style(stats: ItemStatsAsOf) -> None:
    cut = 100 * S
    assert stats.render("m1", cut, "markdown") == "\n- Ratings so far: 3, mean 3.7"
    assert stats.render("m1", cut, "compact") == "; ratings_so_far=3; mean_rating_so_far=3.7"
    assert stats.render("m1", cut, "narrative") == "; rated by 3 members so far, mean 3.7"
    assert stats.render("m3", cut, "narrative") == "; rated by 1 member so far, mean 1.0"
    assert render_item_stats(ItemStats(57, 57, 3.8), "markdown") == "- Ratings so far: 57, mean 3.8"
    assert render_item_stats(ItemStats(2, 2, None), "compact") == "ratings_so_far=2"
    # No ratings yet.
    assert stats.render("m1", 0, "markdown") == "\n- Ratings so far: none yet"
    assert stats.render("m1", 0, "compact") == "; ratings_so_far=0"
    assert stats.render("nope", cut, "narrative") == "; not rated by any member yet"
    with pytest.raises(ValueError, match="unknown style 'xml'"):
        stats.render("m1", cut, "xml")


WORDS = {"edges": [3.0, 3.5, 4.0], "words": ["panned", "mixed", "liked", "acclaimed"],
         "prior_mean": 3.5, "prior_weight": 2.0}


def test_mean_words_band_the_shrunk_mean() -> None:
    w = MeanWords(**WORDS)
    # shrunk = (mean * n + 3.5 * 2) / (n + 2); band i holds edges[i-1] <= shrunk < edges[i]
    assert w.word(1, 5.0) == "acclaimed"       # (5 + 7) / 3 = 4.0: on the edge, the upper band
    assert w.word(1, 4.0) == "liked"           # (4 + 7) / 3 = 3.67 (the raw 4.0 would be acclaimed)
    assert w.word(8, 5.0) == "acclaimed"       # (40 + 7) / 10 = 4.7
    assert w.word(8, 2.0) == "panned"          # (16 + 7) / 10 = 2.3
    assert w.word(2, 3.0) == "mixed"           # (6 + 7) / 4 = 3.25
    assert w.word(3, None) is None
    assert MeanWords(**{**WORDS, "prior_weight": 0}).word(1, 4.5) == "acclaimed"  # raw mean


def test_render_with_words(stats: ItemStatsAsOf) -> None:
    worded = ItemStatsAsOf(_table(ROWS), actions=["rate"], words=MeanWords(**WORDS))
    cut = 100 * S  # m1: 3 ratings, mean 11/3 -> (11 + 7) / 5 = 3.6 -> liked
    assert worded.render("m1", cut, "markdown") == "\n- Ratings so far: 3, mean 3.7 (liked)"
    assert worded.render("m1", cut, "compact") == \
        "; ratings_so_far=3; mean_rating_so_far=3.7; verdict=liked"
    assert worded.render("m1", cut, "narrative") == "; rated by 3 members so far, mean 3.7 (liked)"
    # As of 25 s only u1 (4) and u2 (2) count: (6 + 7) / 4 = 3.25 -> mixed: the word moves
    # with the cutoff like the numbers (strictly before it), never with later ratings.
    assert worded.render("m1", 25 * S, "markdown") == "\n- Ratings so far: 2, mean 3.0 (mixed)"
    # Nothing to band: no ratings, or ratings without a value.
    assert worded.render("m1", 0, "markdown") == stats.render("m1", 0, "markdown")
    assert render_item_stats(ItemStats(2, 2, None), "compact", MeanWords(**WORDS)) == "ratings_so_far=2"
    assert pickle.loads(pickle.dumps(worded)).render("m1", cut, "compact") == worded.render("m1", cut, "compact")


def test_mean_words_config_errors_name_the_fix() -> None:
    with pytest.raises(ValueError, match="3 edges make 4 bands but 3 words"):
        MeanWords(edges=[3.0, 3.5, 4.0], words=["a", "b", "c"])
    with pytest.raises(ValueError, match="strictly ascending"):
        MeanWords(edges=[3.5, 3.0], words=["a", "b", "c"])
    with pytest.raises(ValueError, match="letters only"):
        MeanWords(edges=[3.0], words=["so-so", "good"])
    with pytest.raises(ValueError, match="item_stats is off"):
        PromptifyConfig(item_stats_words=WORDS)


def test_parquet_and_pickle(tmp_path, stats: ItemStatsAsOf) -> None:
    d = tmp_path / "interactions"
    d.mkdir()
    t = _table(ROWS).with_columns(pl.lit("train").alias("split"), pl.lit("s").alias("surface"))
    t.head(4).write_parquet(d / "part-0.parquet")
    t.slice(4).write_parquet(d / "part-1.parquet")
    loaded = ItemStatsAsOf.from_parquet(d, actions=["rate"])
    restored = pickle.loads(pickle.dumps(loaded))
    for it in ("m1", "m2", "m3", "x"):
        for cut in (0, 15 * S, 26 * S, 100 * S):
            assert loaded.lookup(it, cut) == stats.lookup(it, cut) == restored.lookup(it, cut)
    assert "_slot" not in loaded.__getstate__()


def test_lookups_are_fast() -> None:
    rng = np.random.default_rng(1)
    n, n_items = 100_000, 1_700
    df = pl.DataFrame({
        "member_id": rng.integers(0, 1_000, n).astype(str),
        "item_id": rng.integers(0, n_items, n).astype(str),
        "action": ["rate"] * n,
        "timestamp": rng.integers(0, 10**9, n) * S,   # Int64 epoch microseconds
        "value": rng.integers(1, 6, n).astype(float),
    })
    t0 = time.perf_counter()
    s = ItemStatsAsOf(df)
    items, cuts = rng.integers(0, n_items, 20_000).astype(str), rng.integers(0, 10**9, 20_000) * S
    out = [s.lookup(i, int(c)) for i, c in zip(items, cuts, strict=True)]
    assert time.perf_counter() - t0 < 10.0  # build + 20k lookups; typically well under 1 s
    i, c = items[0], int(cuts[0])
    sel = df.filter((pl.col("item_id") == i) & (pl.col("timestamp") < c))
    assert out[0].n_events == sel.height
    assert out[0].n_members == sel["member_id"].n_unique()


def test_config_on_for_movielens() -> None:
    assert load_config("movielens").promptify.item_stats is True
    assert load_config("movielens").promptify.item_stats_actions == ["rate"]
    assert load_config("local").promptify.item_stats is False
    words = load_config("movielens").promptify.item_stats_words
    assert words is not None and len(words.words) == len(words.edges) + 1
