"""Plots of a split dataset, logged to MLflow by the split stage.

What a data scientist checks first when a metric moves: did the traffic over time
change, where do the cutoffs fall, and how many members are cold or heavy.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

ACTIVITY_BUCKETS = ((0, 5, "0-5"), (6, 10, "6-10"), (11, 100, "11-100"), (101, None, ">100"))


def activity_buckets(interactions: pl.DataFrame) -> pl.DataFrame:
    """Members per activity bucket (events per member), the cold-start slices' base."""
    per = interactions.group_by("member_id").len("events")
    expr = pl.lit(">100")
    for lo, hi, name in reversed(ACTIVITY_BUCKETS[:-1]):
        expr = pl.when(pl.col("events").is_between(lo, hi)).then(pl.lit(name)).otherwise(expr)
    order = [b[2] for b in ACTIVITY_BUCKETS]
    counts = per.with_columns(expr.alias("bucket")).group_by("bucket").len("members")
    return pl.DataFrame({"bucket": order}).join(counts, on="bucket", how="left").fill_null(0)


def plot_split(interactions: pl.DataFrame, cutoffs: dict[str, str], out: Path) -> Path:
    """Events per day by split with the cutoffs, and members per activity bucket (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    daily = (
        interactions.group_by(pl.col("timestamp").dt.date().alias("day"), "split").len("events")
        .sort("day")
    )
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4))
    for split, color in (("train", "tab:blue"), ("valid", "tab:orange"), ("test", "tab:green")):
        d = daily.filter(pl.col("split") == split)
        ax1.bar(d["day"].to_list(), d["events"].to_list(), color=color, label=split, width=1.0)
    for name in ("valid_start", "test_start"):
        ax1.axvline(pl.Series([cutoffs[name]]).str.to_datetime().dt.date()[0], color="k", ls="--", lw=1)
    ax1.set_title("events per day by split (dashed: cutoffs)")
    ax1.legend()
    ax1.tick_params(axis="x", labelrotation=30)
    buckets = activity_buckets(interactions)
    ax2.bar(buckets["bucket"].to_list(), buckets["members"].to_list(), color="tab:purple")
    ax2.set_title("members (with any event) by number of events")
    ax2.set_xlabel("events per member")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out
