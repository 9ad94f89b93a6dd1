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

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

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
        pairs = shared_fields(members, items, fields)
        mcols = sorted(set(pairs))
        hf = tuple(c for c in (HISTORY_FIELDS if history_fields is None else history_fields)
                   if c in items.columns)
        icols = sorted(set(pairs.values()) | set(hf))

        def values(df: pl.DataFrame, key: str, cols: Iterable[str]) -> dict[str, dict[str, object]]:
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

        hints = cls(pairs, values(members, "member_id", mcols), values(items, "item_id", icols), hf)
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
