"""Sampled negatives: items that were being shown around the question's time.

Why impressions and not the catalog: a negative drawn from every item created before the
cutoff is often an expired job or a week-old post, which any model that reads dates
tells apart from the real engagement without learning anything about the member (an
item's age alone scored AUC 0.975-0.994 on the ``*_sampled`` tasks that way). Drawing
uniformly among the impressions logged in the window before the cutoff gives items that
were alive, fresh and exposed as often as the surfaces showed them: the negatives a
production system would have had. Only events strictly before the cutoff are used.

Shared by promptify (the LLM's examples) and the ID-based baselines, so both rank the
same kind of lists.
"""

from __future__ import annotations

import numpy as np
import polars as pl

DAY_US = 86_400_000_000
POOL_COLUMNS = ("item_id", "item_type", "surface", "timestamp")


def impression_pool(interactions: pl.DataFrame, items: pl.DataFrame) -> pl.DataFrame:
    """The events negatives are drawn from: ``item_id, item_type, surface, timestamp``,
    sorted by time (every logged event counts as an impression of its item)."""
    return (
        interactions.select("item_id", pl.col("surface").fill_null(""), "timestamp")
        .join(items.select("item_id", "item_type"), on="item_id", how="inner")
        .select(*POOL_COLUMNS)
        .sort("timestamp", "item_id")
    )


class NegativeSampler:
    """Draws ``k`` negatives for a (item type, surface, cutoff).

    ``window_days``: impressions in ``[cutoff - window, cutoff)``; when they hold fewer
    than ``k`` usable items the window widens 4x, up to three times, then falls back to
    every earlier impression.
    """

    def __init__(self, pool: pl.DataFrame, window_days: float = 3.0) -> None:
        missing = [c for c in POOL_COLUMNS if c not in pool.columns]
        if missing:
            raise ValueError(f"negative pool lacks columns {missing} (has {pool.columns}): "
                             f"build it with impression_pool(interactions, items)")
        self.window_us = int(window_days * DAY_US)
        self.pools: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
        pool = pool.sort("timestamp", "item_id").with_columns(
            pl.col("timestamp").dt.epoch("us").alias("__us"))
        for (itype,), g in pool.group_by("item_type", maintain_order=True):
            self.pools[(str(itype), "")] = (g["item_id"].to_numpy(), g["__us"].to_numpy())
        for (itype, surface), g in pool.filter(pl.col("surface") != "").group_by(
                "item_type", "surface", maintain_order=True):
            self.pools[(str(itype), str(surface))] = (g["item_id"].to_numpy(), g["__us"].to_numpy())

    @classmethod
    def from_parquet(cls, path, window_days: float = 3.0) -> NegativeSampler:
        return cls(pl.read_parquet(path), window_days)

    def sample(self, rng: np.random.Generator, item_type: str, surface: str | None,
               cutoff_us: int, exclude: set[str], k: int) -> list[str]:
        """Up to ``k`` distinct item ids not in ``exclude``, shown before ``cutoff_us``
        (on ``surface`` when given and known, else on any surface)."""
        if k <= 0:
            return []
        pool = (self.pools.get((item_type, surface)) if surface else None) \
            or self.pools.get((item_type, ""))
        if pool is None:
            return []
        ids, ts = pool
        hi = int(np.searchsorted(ts, cutoff_us, side="left"))  # strictly before the cutoff
        window = self.window_us
        for attempt in range(5):
            lo = 0 if attempt == 4 else int(np.searchsorted(ts, cutoff_us - window, side="left"))
            if hi > lo:
                picks = rng.integers(lo, hi, size=8 * k)  # with replacement: exposure-weighted
                out: list[str] = []
                seen: set[str] = set()
                for i in picks:
                    it = str(ids[i])
                    if it not in exclude and it not in seen:
                        seen.add(it)
                        out.append(it)
                        if len(out) == k:
                            return out
                if len(out) == k or attempt == 4:
                    return out
            window *= 4
        return []
