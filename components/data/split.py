"""Temporal train / validation / test split, with cold members and items marked.

Why by time and not at random: a ranker is always asked about the future. A random
split lets a model see a member's later taste while it is scored on their earlier
events, which flatters ID-based models most. Everything at or after the validation
cutoff is held out of training; a member or item whose first event falls at or after
it is *cold* (the model has never seen it in training), the slice where 360Brew's
text-reading model is expected to win most.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from components.config import SplitConfig
from components.data.tables import read_table, write_table


@dataclass(frozen=True)
class Cutoffs:
    """``train``: t < valid_start; ``valid``: valid_start <= t < test_start; ``test``: t >= test_start."""

    valid_start: datetime
    test_start: datetime

    def to_dict(self) -> dict[str, str]:
        return {"valid_start": self.valid_start.isoformat(), "test_start": self.test_start.isoformat()}


def _utc(d: datetime) -> datetime:
    return d.replace(tzinfo=UTC) if d.tzinfo is None else d.astimezone(UTC)


def compute_cutoffs(timestamps: pl.Series, cfg: SplitConfig) -> Cutoffs:
    """Cutoffs from the config: explicit dates, or quantiles of event time."""
    if cfg.method == "date":
        assert cfg.valid_start is not None and cfg.test_start is not None
        return Cutoffs(_utc(cfg.valid_start), _utc(cfg.test_start))
    if timestamps.len() == 0:
        raise ValueError("cannot split an empty interactions table: check the validation report")
    ts = timestamps.sort()
    n = ts.len()

    def at(frac: float) -> datetime:
        return _utc(ts[min(n - 1, int(n * frac))])

    test_start = at(1.0 - cfg.test_fraction)
    valid_start = at(1.0 - cfg.test_fraction - cfg.valid_fraction) if cfg.valid_fraction else test_start
    return Cutoffs(valid_start, test_start)


def assign_splits(interactions: pl.DataFrame, cutoffs: Cutoffs) -> pl.DataFrame:
    """Add ``split``, ``member_prior_events``, ``member_cold`` and ``item_cold``.

    ``member_prior_events`` counts the member's events strictly before this one (of any
    action, on any surface): the activity level used for cold-start slices.
    Output is sorted by (member_id, timestamp) so histories read in order.
    """
    v, t = cutoffs.valid_start, cutoffs.test_start
    df = interactions.sort(["member_id", "timestamp", "item_id"]).with_columns(
        pl.when(pl.col("timestamp") < v)
        .then(pl.lit("train"))
        .when(pl.col("timestamp") < t)
        .then(pl.lit("valid"))
        .otherwise(pl.lit("test"))
        .alias("split"),
        (pl.col("timestamp").rank("min").over("member_id") - 1)
        .cast(pl.Int64)
        .alias("member_prior_events"),
        (pl.col("timestamp").min().over("member_id") >= v).alias("member_cold"),
        (pl.col("timestamp").min().over("item_id") >= v).alias("item_cold"),
    )
    return df


def first_seen(interactions: pl.DataFrame, key: str, valid_start: datetime) -> pl.DataFrame:
    """Per entity: first event time and whether it is cold (first seen at/after the cutoff)."""
    return (
        interactions.group_by(key)
        .agg(pl.col("timestamp").min().alias("first_seen_at"))
        .with_columns((pl.col("first_seen_at") >= valid_start).alias("cold"))
    )


def split_dataset(in_dir: Path, out_dir: Path, cfg: SplitConfig) -> dict[str, float]:
    """Read validated tables from ``in_dir``, write split tables and ``cutoffs.json``.

    Members/items with no interaction at all keep ``first_seen_at`` null and are cold.
    """
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    inter = read_table(in_dir, "interactions")
    cutoffs = compute_cutoffs(inter.get_column("timestamp"), cfg)
    inter = assign_splits(inter, cutoffs)
    write_table(inter, out_dir / "interactions")
    for table, key in (("members", "member_id"), ("items", "item_id")):
        ent = read_table(in_dir, table).join(
            first_seen(inter, key, cutoffs.valid_start), on=key, how="left"
        ).with_columns(pl.col("cold").fill_null(True))
        write_table(ent, out_dir / table)
    (out_dir / "cutoffs.json").write_text(json.dumps(cutoffs.to_dict(), indent=2))
    counts = inter.group_by("split").len()
    metrics: dict[str, float] = {f"rows.{s}": n for s, n in counts.iter_rows()}
    members_cold = inter.filter(pl.col("split") == "test").select(
        pl.col("member_cold").mean()
    ).item()
    metrics["test.share_rows_cold_member"] = float(members_cold or 0.0)
    return metrics
