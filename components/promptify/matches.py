"""Match hints: what a candidate shares with the member's profile and history, in words.

Why: a small model trained from scratch has to *grow* the attention that compares a
candidate's words with the profile's, far away in the prompt, before its answers depend
on the member at all; on the embedded default (0.85M parameters, ~15 minutes of CPU) it
often does not, and learns only the base rate (issue 14: 0.518 mean AUC, popularity
0.513). A hint line in the candidate's own text ("Matches your profile: industry, location,
skills 2/4") turns that comparison into a word the answer token can
read next to it. It adds no information: every hint is a function of the profile and
history already in the prompt, the same comparisons the LightGBM baseline gets as
features (``baselines._profile_matches``, ``member_<attr>_engaged``). The evaluation's
equal-information rule therefore still holds; docs/promptify.md says how to turn it off
(``promptify.match_hints: false``), e.g. for a pretrained checkpoint that reads the
comparison itself.

Two kinds of hint, from the columns the tables share (nothing here names the synthetic
world's columns; ``promptify.match_fields`` narrows or renames them):

* **profile**: for each column present in both the members and items tables (e.g.
  ``industry``, ``location``, ``skills``, ``seniority``), whether the values agree:
  equality for scalars (case-insensitive), the shared elements for list columns;
* **history**: for each item column in ``history_fields`` (default ``company``,
  ``industry``, ``topic``, where present), how many of the member's history events
  strictly before the question's cutoff were on items with the candidate's value.

Lookups are dict accesses plus one ``np.searchsorted`` per (member, attribute value):
microseconds per candidate, cheap enough for the Ray Data map.
"""

from __future__ import annotations

import pickle
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

#: Columns never compared (ids, dates, free text).
SKIP = frozenset({"member_id", "item_id", "item_type", "created_at", "expires_at", "name", "title",
                  "headline", "about", "description", "summary", "text", "timestamp"})
#: Item columns counted in the member's history when the items table has them.
HISTORY_FIELDS = ("company", "industry", "topic")
#: How hint fields are joined to the item text in each style (as ``verbalize._fields_expr``).
SEPARATOR = {"markdown": "\n", "compact": "; ", "narrative": "; "}


def _norm(v: object) -> object:
    if isinstance(v, str):
        return v.strip().lower()
    return v


def shared_fields(members: pl.DataFrame, items: pl.DataFrame,
                  fields: Mapping[str, str] | None = None) -> dict[str, str]:
    """``{member column: item column}`` compared by the profile hint.

    ``fields`` given: those pairs, each checked to exist. Default: every non-id, non-date,
    non-free-text column present in both tables with a compatible type."""
    if fields is not None:
        for m, i in fields.items():
            if m not in members.columns:
                raise ValueError(f"promptify.match_fields: member column {m!r} is not in the members "
                                 f"table (columns: {members.columns}); fix the key or drop it")
            if i not in items.columns:
                raise ValueError(f"promptify.match_fields: item column {i!r} (for member column {m!r}) "
                                 f"is not in the items table (columns: {items.columns})")
        return dict(fields)
    from components.promptify.verbalize import ITEM_SKIP, MEMBER_SKIP, text_columns

    shown = set(text_columns(items, ITEM_SKIP))
    out = {}
    for c in text_columns(members, MEMBER_SKIP):
        if c in SKIP or c not in shown:
            continue
        mt, it = members.schema[c], items.schema[c]
        if isinstance(mt, pl.List) != isinstance(it, pl.List):
            continue
        out[c] = c
    return out


def _values(df: pl.DataFrame, key: str, cols: Iterable[str]) -> dict[str, dict[str, object]]:
    """``{key: {column: normalised value}}`` (a frozenset for list columns; nulls left out)."""
    cols = list(cols)
    out: dict[str, dict[str, object]] = {}
    for row in df.select(key, *cols).iter_rows(named=True):
        vals = {}
        for c in cols:
            v = row[c]
            if v is None:
                continue
            vals[c] = frozenset(_norm(x) for x in v if x is not None) if isinstance(v, list) else _norm(v)
        out[row[key]] = vals
    return out


@dataclass
class MatchHints:
    """Profile and history matches of (member, candidate, cutoff); see the module docstring."""

    fields: dict[str, str]                      # member column -> item column
    member_values: dict[str, dict[str, object]]  # member -> column -> value (set for lists)
    item_values: dict[str, dict[str, object]]    # item -> column -> value (set for lists)
    history_fields: tuple[str, ...] = ()
    # (member, history field, value) -> sorted event times (µs)
    history_times: dict[tuple[str, str, object], np.ndarray] = field(default_factory=dict)

    @classmethod
    def build(cls, members: pl.DataFrame, items: pl.DataFrame, history: pl.DataFrame | None,
              fields: Mapping[str, str] | None = None,
              history_fields: Sequence[str] | None = None) -> MatchHints:
        """From the split's members and items and the history events (``member_id``,
        ``item_id``, ``timestamp``: the events the prompt's history is drawn from)."""
        return cls.catalogue(members, items, fields, history_fields).with_members(members, items, history)

    @classmethod
    def catalogue(cls, members: pl.DataFrame, items: pl.DataFrame,
                  fields: Mapping[str, str] | None = None,
                  history_fields: Sequence[str] | None = None) -> MatchHints:
        """The member-independent half: the compared fields and every item's values, no
        member yet (``members`` is read for its columns only). Catalogue-sized, so it is
        built once however many member partitions follow (:meth:`with_members`)."""
        pairs = shared_fields(members, items, fields)
        hf = tuple(c for c in (HISTORY_FIELDS if history_fields is None else history_fields)
                   if c in items.columns)
        icols = sorted(set(pairs.values()) | set(hf))
        return cls(pairs, {}, _values(items, "item_id", icols), hf)

    def with_members(self, members: pl.DataFrame, items: pl.DataFrame,
                     history: pl.DataFrame | None) -> MatchHints:
        """These hints for ``members`` (a whole table or one member partition) and their
        ``history`` events; shares the catalogue half with ``self``."""
        hints = MatchHints(self.fields, _values(members, "member_id", sorted(set(self.fields))),
                           self.item_values, self.history_fields)
        hf = self.history_fields
        if hf and history is not None and history.height:
            ev = (history.select("member_id", "item_id", pl.col("timestamp").dt.epoch("us").alias("t"))
                  .join(items.select("item_id", *hf), on="item_id", how="inner"))
            for c in hf:
                col = ev.select("member_id", "t", pl.col(c).alias("v"))
                if isinstance(items.schema[c], pl.List):
                    col = col.explode("v")
                col = col.filter(pl.col("v").is_not_null()).sort("member_id", "v", "t")
                for (mid, v), g in col.group_by("member_id", "v", maintain_order=True):
                    hints.history_times[(mid, c, _norm(v))] = g["t"].to_numpy()
        return hints

    # ------------------------------------------------------------------ lookups
    def profile_matches(self, member_id: str, item_id: str) -> list[tuple[str, object]]:
        """``[(member column, what matched)]``: True for an equal scalar, the sorted shared
        elements (non-empty) with the item's count for a list column."""
        m, i = self.member_values.get(member_id, {}), self.item_values.get(item_id, {})
        out: list[tuple[str, object]] = []
        for mc, ic in self.fields.items():
            a, b = m.get(mc), i.get(ic)
            if a is None or b is None:
                continue
            if isinstance(a, frozenset):
                shared = sorted(str(x) for x in a & b)  # type: ignore[operator]
                if shared:
                    out.append((mc, (shared, len(b))))  # type: ignore[arg-type]
            elif a == b:
                out.append((mc, True))
        return out

    def history_counts(self, member_id: str, item_id: str, cutoff_us: int) -> list[tuple[str, int]]:
        """``[(item column, n)]``: the member's history events strictly before ``cutoff_us``
        on items sharing the candidate's value of that column (n > 0 only)."""
        vals = self.item_values.get(item_id, {})
        out = []
        for c in self.history_fields:
            v = vals.get(c)
            if v is None:
                continue
            n = 0
            for x in (v if isinstance(v, frozenset) else (v,)):
                times = self.history_times.get((member_id, c, x))
                if times is not None:
                    n += int(np.searchsorted(times, cutoff_us, side="left"))
            if n:
                out.append((c, n))
        return out

    def render(self, member_id: str, item_id: str, cutoff_us: int, style: str) -> str:
        """The hint fields to append to a candidate's item text, leading separator included.

        markdown ``"\\n- Matches your profile: industry, location, skills 2/4\\n- In your
        history: company 3, industry 5"``; compact ``"; matches=industry,location,skills 2/4;
        history=company 3, industry 5"``; narrative ``"; matches your industry, location and
        2 of 4 skills; your history has 3 with this company, 5 in this industry"``. "none" when nothing matches, so every candidate has
        the same fields."""
        if style not in SEPARATOR:
            raise ValueError(f"match hints: unknown style {style!r}: use one of {list(SEPARATOR)}")
        prof = []
        for col, what in self.profile_matches(member_id, item_id):
            if what is True:
                prof.append(col)
            else:
                # counts only: the shared names are in the profile and the item already
                shared, total = what  # type: ignore[misc]
                if style == "narrative":
                    prof.append(f"{len(shared)} of {total} {col}")
                else:
                    prof.append(f"{col} {len(shared)}/{total}")
        hist = self.history_counts(member_id, item_id, cutoff_us)
        sep = SEPARATOR[style]
        if style == "markdown":
            p = ", ".join(prof) or "none"
            h = ", ".join(f"{c} {n}" for c, n in hist) or "none"
            parts = [f"- Matches your profile: {p}"]
            if self.history_fields:
                parts.append(f"- In your history: {h}")
        elif style == "compact":
            parts = [f"matches={','.join(prof) or 'none'}"]
            if self.history_fields:
                parts.append("history=" + (", ".join(f"{c} {n}" for c, n in hist) or "none"))
        else:
            p = (", ".join(prof[:-1]) + " and " + prof[-1]) if len(prof) > 1 else (prof[0] if prof else "")
            parts = [f"matches your {p}" if prof else "matches nothing in your profile"]
            if self.history_fields:
                parts.append(("your history has " + ", ".join(f"{n} with this {c}" for c, n in hist))
                             if hist else "nothing like it in your history")
        return sep + sep.join(parts)


class PartitionedMatchHints:
    """:class:`MatchHints` stored by member partition, loaded by the partition asked for.

    Why: the member half (profile values, history times) grows with the log; one pickle
    of it for every member was loaded whole by every promptify worker. ``prepare`` writes
    the catalogue half once (``catalogue.pkl``, with the partition count) and one
    ``part-XXXXX.pkl`` per member partition, the same partitions as ``member_rows``
    (:func:`components.promptify.examples.member_block`). A lookup finds the member's
    partition by that hash, so any mix of members works (a Ray Data batch spanning
    partitions, a Serve request); at most ``keep`` partitions stay in memory.
    """

    CATALOGUE = "catalogue.pkl"

    def __init__(self, directory: Path, keep: int = 2) -> None:
        self.directory = Path(directory)
        path = self.directory / self.CATALOGUE
        if not path.exists():
            raise FileNotFoundError(f"match hints: {path} is missing; rerun the prepare stage "
                                    f"with promptify.match_hints on")
        with path.open("rb") as f:
            self.blocks, self.catalogue = pickle.load(f)
        self.keep = max(1, int(keep))
        self._parts: OrderedDict[int, MatchHints] = OrderedDict()
        self._block_of: dict[str, int] = {}

    @staticmethod
    def write_catalogue(directory: Path, catalogue: MatchHints, blocks: int) -> None:
        """Write the catalogue half and the partition count (before any partition)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for old in directory.glob("part-*.pkl"):  # a rerun with another partition count
            old.unlink()
        with (directory / PartitionedMatchHints.CATALOGUE).open("wb") as f:
            pickle.dump((blocks, catalogue), f, protocol=pickle.HIGHEST_PROTOCOL)

    @staticmethod
    def write_part(directory: Path, block: int, hints: MatchHints) -> None:
        """Write one partition's member half (``hints`` from :meth:`MatchHints.with_members`)."""
        with (Path(directory) / f"part-{block:05d}.pkl").open("wb") as f:
            pickle.dump((hints.member_values, hints.history_times), f, protocol=pickle.HIGHEST_PROTOCOL)

    def locate(self, member_ids: Sequence[str]) -> list[int]:
        """The partition of each member (vectorised; remembered for :meth:`render`)."""
        from components.promptify.examples import member_block

        if len(self._block_of) > 1_000_000:  # a long-lived builder: bound the memo
            self._block_of.clear()
        out = member_block(pl.Series(list(member_ids), dtype=pl.String), self.blocks).to_list()
        self._block_of.update(zip(member_ids, out, strict=True))
        return out

    def part(self, member_id: str) -> MatchHints:
        """The hints of ``member_id``'s partition (loaded on first use, least recent evicted)."""
        b = self._block_of.get(member_id)
        if b is None:
            b = self.locate([member_id])[0]
        hints = self._parts.get(b)
        if hints is None:
            path = self.directory / f"part-{b:05d}.pkl"
            member_values, history_times = {}, {}
            if path.exists():  # no file: a partition without members
                with path.open("rb") as f:
                    member_values, history_times = pickle.load(f)
            c = self.catalogue
            hints = MatchHints(c.fields, member_values, c.item_values, c.history_fields, history_times)
            self._parts[b] = hints
            while len(self._parts) > self.keep:
                self._parts.popitem(last=False)
        else:
            self._parts.move_to_end(b)
        return hints

    def render(self, member_id: str, item_id: str, cutoff_us: int, style: str) -> str:
        """:meth:`MatchHints.render` for ``member_id``, from its partition."""
        return self.part(member_id).render(member_id, item_id, cutoff_us, style)


def load_match_hints(path: Path) -> MatchHints | PartitionedMatchHints:
    """What ``prepare`` wrote: a directory of partitions, or one pickle (outputs of
    ``prepare`` before it partitioned, still read)."""
    path = Path(path)
    if path.is_dir():
        return PartitionedMatchHints(path)
    with path.open("rb") as f:
        return pickle.load(f)
