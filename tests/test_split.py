"""Temporal splits: no leakage across the cutoffs, cold members and items marked."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl

from components.config import SplitConfig
from components.data.split import assign_splits, compute_cutoffs, split_dataset
from components.data.tables import read_table, write_table

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _interactions(n_members: int = 40, days: int = 100) -> pl.DataFrame:
    rows = []
    for m in range(n_members):
        start = m * days // n_members  # later members join later: some only in the test window
        for d in range(start, days, 3):
            item = f"i{(m + d) % 25}" if d < 90 else f"late{m % 5}"  # late items are cold
            rows.append((f"m{m}", item, "feed", "view",
                         T0 + timedelta(days=d, hours=m % 7)))
    return pl.DataFrame(rows, schema=["member_id", "item_id", "surface", "action", "timestamp"],
                        orient="row")


def test_no_training_event_at_or_after_the_cutoff():
    inter = _interactions()
    cut = compute_cutoffs(inter["timestamp"], SplitConfig(valid_fraction=0.1, test_fraction=0.2))
    out = assign_splits(inter, cut)
    train, valid, test = (out.filter(pl.col("split") == s) for s in ("train", "valid", "test"))
    assert train["timestamp"].max() < cut.valid_start <= valid["timestamp"].min()
    assert valid["timestamp"].max() < cut.test_start <= test["timestamp"].min()
    assert train.height + valid.height + test.height == inter.height
    # the fractions are honoured to within one timestamp tie group
    assert abs(test.height / inter.height - 0.2) < 0.02


def test_cold_members_and_items_are_first_seen_after_the_cutoff():
    inter = _interactions()
    cut = compute_cutoffs(inter["timestamp"], SplitConfig())
    out = assign_splits(inter, cut)
    first = out.group_by("member_id").agg(pl.col("timestamp").min(), pl.col("member_cold").first())
    assert first.filter(pl.col("member_cold"))["timestamp"].min() >= cut.valid_start
    assert first.filter(~pl.col("member_cold"))["timestamp"].max() < cut.valid_start
    assert first["member_cold"].any() and not first["member_cold"].all()
    first_item = out.group_by("item_id").agg(pl.col("timestamp").min(), pl.col("item_cold").first())
    assert (first_item["item_cold"] == (first_item["timestamp"] >= cut.valid_start)).all()
    assert first_item["item_cold"].any()


def test_prior_events_count_strictly_earlier_events():
    inter = _interactions(n_members=3)
    out = assign_splits(inter, compute_cutoffs(inter["timestamp"], SplitConfig()))
    for _, g in out.group_by("member_id"):
        assert g["member_prior_events"].to_list() == list(range(g.height))


def test_date_method_and_written_tables(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    inter = _interactions()
    write_table(inter, src / "interactions")
    write_table(pl.DataFrame({"member_id": [f"m{i}" for i in range(41)]}), src / "members")
    write_table(pl.DataFrame({"item_id": ["i0"], "item_type": ["post"], "title": ["x"]}), src / "items")
    cfg = SplitConfig(method="date", valid_start=datetime(2026, 3, 1), test_start=datetime(2026, 3, 20))
    metrics = split_dataset(src, dst, cfg)
    out = read_table(dst, "interactions")
    assert out.filter(pl.col("split") == "train")["timestamp"].max() < datetime(2026, 3, 1, tzinfo=UTC)
    assert sum(v for k, v in metrics.items() if k.startswith("rows.")) == inter.height
    members = read_table(dst, "members")
    assert members.filter(pl.col("member_id") == "m40")["cold"].to_list() == [True]  # no events
