"""Sampled negatives for tasks whose logs hold no negatives (``negatives: sampled``).

Two pools (``PromptifyConfig.negative_pool``):

* ``catalogue`` (default, :class:`CatalogueSampler`): per positive, at the positive's own
  time, an item of the same type that is live then (created before it, not expired) and
  was created close to the positive's item (nearest in ``created_at`` order). So the age
  of negatives matches the age of positives, and items nobody has touched yet are drawn
  as often as they are engaged with: neither an item's age nor "is it new" tells the
  classes apart. Why not what was done before: negatives drawn once at a list's first
  cutoff while positives span the whole window made newer items positives (LightGBM
  0.999, popularity 0.896 on those tasks), and drawing only among items someone had
  interacted with meant a new item was never a negative (on a views-only log, a "new
  item" flag alone scored AUC 0.846).
* ``impressions`` (:class:`NegativeSampler`): items logged in the window before the
  list's cutoff, exposure-weighted, on the task's surface; kept for comparison.

Shared by promptify (the LLM's examples) and the ID-based baselines, so both rank the
same kind of lists.
"""

from __future__ import annotations

import numpy as np
import polars as pl

DAY_US = 86_400_000_000
POOL_COLUMNS = ("item_id", "item_type", "surface", "timestamp")
CATALOGUE_COLUMNS = ("item_id", "item_type", "created_at", "expires_at")
NEGATIVE_POOLS = ("catalogue", "impressions")


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


def catalogue_pool(items: pl.DataFrame, interactions: pl.DataFrame | None = None) -> pl.DataFrame:
    """The catalogue negatives are drawn from: ``item_id, item_type, created_at,
    expires_at, first_event_at`` (null ``created_at``: always live; null ``expires_at``:
    never expires; ``first_event_at``: anyone's first event with the item, null: none)."""
    ts = pl.Datetime("us", "UTC")
    cols = [pl.col("item_id"), pl.col("item_type")]
    for c in ("created_at", "expires_at"):
        cols.append(pl.col(c).cast(ts) if c in items.columns else pl.lit(None, dtype=ts).alias(c))
    out = items.select(cols)
    if interactions is not None:
        first = interactions.group_by("item_id").agg(pl.col("timestamp").min().cast(ts).alias("first_event_at"))
        out = out.join(first, on="item_id", how="left")
    elif "first_event_at" in items.columns:
        out = out.with_columns(items["first_event_at"].cast(ts))
    else:
        out = out.with_columns(pl.lit(None, dtype=ts).alias("first_event_at"))
    return out.sort("item_type", "created_at", "item_id", nulls_last=False)


class CatalogueSampler:
    """Age-matched negatives from the live catalogue (see the module docstring).

    ``sample(rng, item_type, anchors, exclude, k)``: ``anchors`` are (time in µs, item id)
    of the list's positives (or its questions when it has none); each of the ``k``
    negatives takes an anchor in turn (in a random order) and is drawn uniformly among
    the ``width`` live items nearest to the anchor item in creation order that are as new
    as it (nobody's event before the anchor time, or some), widened when none is usable;
    if no live item is as new, the newness match is dropped for that draw. Matching
    newness matters as much as age: uniform catalogue draws were "new" 4x as often as
    engaged items (13.6% vs 3.3%, synthetic world), a shortcut the other way round.
    """

    def __init__(self, catalogue: pl.DataFrame, width: int = 16) -> None:
        missing = [c for c in ("item_id", "item_type") if c not in catalogue.columns]
        if missing:
            raise ValueError(f"negative catalogue lacks columns {missing} (has {catalogue.columns}): "
                             f"build it with catalogue_pool(items)")
        cat = catalogue_pool(catalogue)
        self.width = int(width)
        self.pools: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}
        self.created: dict[str, int] = {}
        self.first: dict[str, int] = {}
        lo, hi = np.iinfo(np.int64).min, np.iinfo(np.int64).max
        for (itype,), g in cat.group_by("item_type", maintain_order=True):
            ids = g["item_id"].to_numpy()
            created = g["created_at"].dt.epoch("us").fill_null(lo).to_numpy().astype(np.int64)
            expires = g["expires_at"].dt.epoch("us").fill_null(hi).to_numpy().astype(np.int64)
            first = g["first_event_at"].dt.epoch("us").fill_null(hi).to_numpy().astype(np.int64)
            self.pools[str(itype)] = (ids, created, expires, first)
            self.created.update(zip(ids.tolist(), created.tolist(), strict=True))
            self.first.update(zip(ids.tolist(), first.tolist(), strict=True))

    @classmethod
    def from_parquet(cls, path) -> CatalogueSampler:
        return cls(pl.read_parquet(path))

    def sample(self, rng: np.random.Generator, item_type: str, anchors: list[tuple[int, str]],
               exclude: set[str], k: int) -> list[str]:
        """Up to ``k`` distinct item ids not in ``exclude``, each live at its anchor's time."""
        return [it for it, _ in self.draw(rng, item_type, anchors, exclude, k)]

    def draw(self, rng: np.random.Generator, item_type: str, anchors: list[tuple[int, str]],
             exclude: set[str], k: int) -> list[tuple[str, int]]:
        """As :meth:`sample`, with each negative's anchor time: ``[(item id, time µs)]``."""
        pool = self.pools.get(item_type)
        if k <= 0 or pool is None or not anchors:
            return []
        ids, created, expires, first = pool
        never = np.iinfo(np.int64).max
        order = rng.permutation(len(anchors))
        picks = [anchors[order[i % len(anchors)]] for i in range(k)]
        out: list[tuple[str, int]] = []
        taken: set[str] = set()
        for t_us, anchor_item in picks:
            hi = int(np.searchsorted(created, t_us, side="left"))  # created strictly before
            if hi == 0:
                continue
            c = self.created.get(anchor_item, int(t_us))
            at = min(int(np.searchsorted(created, c, side="left")), hi - 1)
            anchor_new = self.first.get(anchor_item, never) >= t_us
            for match_newness in (True, False):
                width, got = self.width, None
                while got is None:
                    lo_i, hi_i = max(0, at - width // 2), min(hi, at + width // 2 + 1)
                    cand = np.arange(lo_i, hi_i)
                    live = expires[cand] > t_us
                    if match_newness:
                        live &= (first[cand] >= t_us) == anchor_new
                    ok = [i for i in cand[live].tolist() if ids[i] not in exclude and ids[i] not in taken]
                    if ok:
                        got = str(ids[ok[int(rng.integers(len(ok)))]])
                    elif lo_i == 0 and hi_i == hi:
                        break  # no usable live item at that time
                    width *= 4
                if got is not None:
                    taken.add(got)
                    out.append((got, int(t_us)))
                    break
        return out
