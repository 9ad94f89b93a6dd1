"""As-of item statistics: how often an item was rated, and how well, before a cutoff.

A text model cannot look an item id up in an embedding table, so popularity and
quality reach it only if they are written into the candidate's text. The numbers must
be *time-consistent*: for a question asked at ``cutoff`` they count only events with
``timestamp < cutoff`` (strictly before, the same rule as the history), so a prompt
never sees the ratings its own label or any later event contributed.

What is counted (``actions``, config ``promptify.item_stats_actions``, default
``["rate"]``):

* ``n_events``: counted events before the cutoff (the "ratings" of the rendered text);
* ``n_members``: distinct members with a counted event before the cutoff (each
  (member, item) pair counts once, from its first event on);
* ``mean``: mean ``value`` of the counted events before the cutoff that carry a value
  (``None`` without a ``value`` column or without such events).

On MovieLens each (member, movie) pair is rated once, so ``n_events == n_members``.

Lookups are one dict access and two ``np.searchsorted`` over flat arrays (items laid
out one after another, time-sorted within each item, with prefix sums): microseconds
each, no Polars per lookup. Pickling sends only the arrays (the id -> slot dict is
rebuilt on load), so an instance is cheap to ship inside a Ray Data callable class.

Use: ``stats.render(item_id, cutoff_us, style)`` returns the text to append to the
candidate's item text (with the leading separator ``verbalize._fields_expr`` joins
item fields with).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from components.promptify.verbalize import STYLES

if TYPE_CHECKING:
    from components.promptify.config import MeanWords

#: How item fields are joined in each style (as in ``verbalize._fields_expr``).
FIELD_SEPARATOR = {"markdown": "\n", "compact": "; ", "narrative": "; "}


@dataclass(frozen=True)
class ItemStats:
    """An item's statistics as of a cutoff (events strictly before it)."""

    n_events: int
    n_members: int
    mean: float | None


def _to_us(cutoff: int | datetime) -> int:
    if isinstance(cutoff, datetime):
        if cutoff.tzinfo is None:
            raise ValueError(f"cutoff {cutoff!r} has no time zone: pass epoch microseconds "
                             f"or a timezone-aware datetime (UTC)")
        return int(round(cutoff.timestamp() * 1_000_000))
    return int(cutoff)


class ItemStatsAsOf:
    """Answers ``(item_id, cutoff)`` -> :class:`ItemStats` from an interactions table.

    ``interactions``: ``member_id, item_id, action, timestamp`` (Datetime, or Int64
    epoch microseconds) and an optional numeric ``value``; rows whose action is not in
    ``actions`` or whose timestamp is null are ignored. Raises ``ValueError`` naming the
    missing columns or an empty ``actions``.
    """

    def __init__(self, interactions: pl.DataFrame, actions: Sequence[str] = ("rate",),
                 words: MeanWords | None = None) -> None:
        self.words = words
        actions = [str(a) for a in actions]
        if not actions:
            raise ValueError("item stats: actions is empty: list the actions to count "
                             "(promptify.item_stats_actions, e.g. [rate])")
        missing = [c for c in ("member_id", "item_id", "action", "timestamp")
                   if c not in interactions.columns]
        if missing:
            raise ValueError(f"item stats: interactions lack columns {missing} (has "
                             f"{interactions.columns}): pass the canonical interactions table")
        self.actions = tuple(actions)
        self.has_value = "value" in interactions.columns
        ts = pl.col("timestamp")
        if isinstance(interactions.schema["timestamp"], pl.Datetime):
            ts = ts.dt.epoch("us")
        value = pl.col("value").cast(pl.Float64) if self.has_value else pl.lit(None, pl.Float64)
        ev = (
            interactions.lazy()
            .filter(pl.col("action").is_in(self.actions) & pl.col("timestamp").is_not_null())
            .select(pl.col("item_id").cast(pl.Utf8), pl.col("member_id").cast(pl.Utf8),
                    ts.cast(pl.Int64).alias("us"), value.alias("value"))
            .sort("item_id", "us", "member_id")
            # The first counted event of each (member, item) is where a member starts counting.
            .with_columns(pl.int_range(pl.len()).over("item_id", "member_id").eq(0).alias("first"))
            .collect()
        )
        self._ts = ev["us"].to_numpy().astype(np.int64)
        # Distinct members: a separate time-sorted array of each pair's first event.
        firsts = ev.filter("first").select("item_id", "us")
        # One rating per pair (MovieLens): share the array, so pickles hold it once.
        self._first_ts = (self._ts if firsts.height == ev.height
                          else firsts["us"].to_numpy().astype(np.int64))
        vals = ev["value"].to_numpy().astype(np.float64)
        has = ~np.isnan(vals)
        # Prefix sums with a leading 0: sum over flat rows [a, b) is p[b] - p[a].
        self._sum = np.concatenate([[0.0], np.cumsum(np.where(has, vals, 0.0))])
        self._n_valued = np.concatenate([[0], np.cumsum(has.astype(np.int64))])
        self._ids, self._start = self._offsets(ev["item_id"])
        ids_f, self._first_start = self._offsets(firsts["item_id"])
        assert np.array_equal(ids_f, self._ids)  # every item has at least one first event
        self._slot = {it: i for i, it in enumerate(self._ids)}

    @staticmethod
    def _offsets(item_ids: pl.Series) -> tuple[np.ndarray, np.ndarray]:
        """Distinct ids (in order) and segment starts (length n_items + 1) of a sorted column."""
        runs = item_ids.rle()
        lengths = runs.struct.field("len").to_numpy().astype(np.int64)
        return (runs.struct.field("value").to_numpy().astype(object),
                np.concatenate([[0], np.cumsum(lengths)]))

    @classmethod
    def from_parquet(cls, path: str | Path, actions: Sequence[str] = ("rate",),
                     words: MeanWords | None = None) -> ItemStatsAsOf:
        """From an interactions Parquet file or directory (e.g. ``<split_dir>/interactions``)."""
        lf = pl.scan_parquet(Path(path))
        names = lf.collect_schema().names()
        cols = [c for c in ("member_id", "item_id", "action", "timestamp", "value") if c in names]
        return cls(lf.select(cols).collect(), actions, words)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        del state["_slot"]  # rebuilt on load: pickles carry only arrays
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._slot = {it: i for i, it in enumerate(self._ids)}

    def __len__(self) -> int:
        """Number of items with at least one counted event (at any time)."""
        return len(self._ids)

    def lookup(self, item_id: str, cutoff: int | datetime) -> ItemStats:
        """Statistics of ``item_id`` over counted events with ``timestamp < cutoff``.

        ``cutoff``: epoch microseconds (UTC) or a timezone-aware datetime. An item never
        seen gives ``ItemStats(0, 0, None)``.
        """
        slot = self._slot.get(str(item_id))
        if slot is None:
            return ItemStats(0, 0, None)
        cut = _to_us(cutoff)
        a, b = int(self._start[slot]), int(self._start[slot + 1])
        hi = a + int(np.searchsorted(self._ts[a:b], cut, side="left"))  # strictly before
        fa, fb = int(self._first_start[slot]), int(self._first_start[slot + 1])
        n_members = int(np.searchsorted(self._first_ts[fa:fb], cut, side="left"))
        n_valued = int(self._n_valued[hi] - self._n_valued[a])
        mean = float((self._sum[hi] - self._sum[a]) / n_valued) if n_valued else None
        return ItemStats(hi - a, n_members, mean)

    def render(self, item_id: str, cutoff: int | datetime, style: str) -> str:
        """Text to append to the candidate's item text, leading separator included.

        E.g. markdown ``"\\n- Ratings so far: 57, mean 3.8"``, compact
        ``"; ratings_so_far=57; mean_rating_so_far=3.8"``, narrative
        ``"; rated by 57 members so far, mean 3.8"``; with ``words``, the band word after
        the mean (``"mean 3.8 (liked)"``). See :func:`render_item_stats`.
        """
        return FIELD_SEPARATOR[_check_style(style)] + render_item_stats(
            self.lookup(item_id, cutoff), style, self.words)


def _check_style(style: str) -> str:
    if style not in FIELD_SEPARATOR:
        raise ValueError(f"item stats: unknown style {style!r}: use one of {list(STYLES)}")
    return style


def render_item_stats(stats: ItemStats, style: str, words: MeanWords | None = None) -> str:
    """The statistics as one item field in ``style`` (no leading separator).

    Markdown and compact count ratings (``n_events``), narrative counts members
    (``n_members``); on MovieLens they are equal. The mean is shown to one decimal and
    left out when there is none; ``words`` appends its band word to it.
    """
    _check_style(style)
    mean = None if stats.mean is None else f"{stats.mean:.1f}"
    word = None if words is None else words.word(stats.n_events, stats.mean)
    if mean and word:
        mean = f"{mean}; verdict={word}" if style == "compact" else f"{mean} ({word})"
    if stats.n_events == 0:
        return {"markdown": "- Ratings so far: none yet",
                "compact": "ratings_so_far=0",
                "narrative": "not rated by any member yet"}[style]
    if style == "markdown":
        return f"- Ratings so far: {stats.n_events}" + (f", mean {mean}" if mean else "")
    if style == "compact":
        return f"ratings_so_far={stats.n_events}" + (f"; mean_rating_so_far={mean}" if mean else "")
    who = "member" if stats.n_members == 1 else "members"
    return f"rated by {stats.n_members} {who} so far" + (f", mean {mean}" if mean else "")
