"""What validation decides with: the limits (:class:`ValidationConfig`), the errors it
raises and the row accounting it reports (:class:`ValidationReport`); see
:mod:`components.data.validate`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import polars as pl
from pydantic import Field, field_validator

from components.config_base import StrictModel
from components.data.schema import (
    TABLES,
)

PL_TIMESTAMP = pl.Datetime("us", "UTC")
PROVENANCE_PREFIX = "_"  # columns like `_raw_timestamp` go to quarantine, not to clean output

#: Share of a table's rows one reason may quarantine before the stage fails.
DEFAULT_MAX_SHARE: dict[str, float] = {"members": 0.05, "items": 0.05, "interactions": 0.05}
#: Share of a text column's values that look like HTML before validate warns.
MARKUP_WARN_SHARE = 0.05
#: A text column is "mostly empty" at this share of null / blank values, "nearly constant"
#: when one value holds this share of the non-empty ones; checked from this many rows on.
MOSTLY_EMPTY_SHARE = 0.9
NEAR_CONSTANT_SHARE = 0.95
TEXT_CHECK_MIN_ROWS = 20
SAMPLE_ROWS = 200  # quarantined rows kept per (table, reason) to explain the reason

# Which column a reason is about (the message names it).
REASON_COLUMN = {
    "missing_member_id": "member_id", "duplicate_member_id": "member_id",
    "unknown_member": "member_id", "missing_item_id": "item_id",
    "duplicate_item_id": "item_id", "unknown_item": "item_id",
    "missing_item_type": "item_type", "missing_title": "title",
    "unparsable_created_at": "created_at", "missing_surface": "surface",
    "unknown_action": "action", "missing_timestamp": "timestamp",
    "unparsable_timestamp": "timestamp",
    "duplicate": "member_id, item_id, surface, action, timestamp",
}
UNKNOWN_REFS = ("unknown_member", "unknown_item")

# strftime patterns tried on unparsable time text, to suggest `timestamp.format`.
FORMAT_CANDIDATES = (
    "%d/%m/%Y %H:%M:%S", "%m/%d/%Y %H:%M:%S", "%d/%m/%Y %H:%M", "%m/%d/%Y %H:%M",
    "%m/%d/%Y %I:%M:%S %p", "%m/%d/%Y %I:%M %p", "%d/%m/%Y", "%m/%d/%Y",
    "%d/%m/%y %H:%M", "%m/%d/%y %H:%M", "%d/%m/%y", "%m/%d/%y",
    "%d.%m.%Y %H:%M:%S", "%d.%m.%Y %H:%M", "%d.%m.%Y", "%d-%m-%Y %H:%M:%S", "%d-%m-%Y",
    "%Y%m%d%H%M%S", "%Y%m%dT%H%M%S", "%Y%m%d", "%d-%b-%Y %H:%M:%S", "%d-%b-%Y",
    "%d %b %Y", "%b %d, %Y", "%B %d, %Y", "%b %d %Y %H:%M:%S", "%Y-%m-%d %I:%M:%S %p",
    "%a %b %d %H:%M:%S %Y",
)


class SchemaError(ValueError):
    """A whole-file problem: the message names file, column, expected type and the fix."""


class QuarantineError(ValueError):
    """Too large a share of a table was quarantined for one reason: the data is misread
    (a format, an id column), not dirty. The message names reason, column, fix and
    examples; ``report`` is the full accounting (also in ``report.json``)."""

    def __init__(self, message: str, report: ValidationReport) -> None:
        super().__init__(message)
        self.report = report


class ValidationConfig(StrictModel):
    """When quarantined rows stop the ``validate`` stage instead of being a footnote
    (the profile's ``validation:`` section).

    ``max_quarantine_share`` maps a table (``interactions``) or one reason of it
    (``interactions.unknown_item``) to the share of the table's rows that reason may
    take; tables not named keep :data:`DEFAULT_MAX_SHARE`. 1.0 never fails.
    """

    max_quarantine_share: dict[str, float] = Field(
        default_factory=dict,
        description="table or table.reason -> largest share of rows one reason may "
        "quarantine (default 0.05 per table); above it validate fails.")
    examples: int = Field(3, ge=0, le=50, description="Example rows shown per reason.")

    @field_validator("max_quarantine_share", mode="before")
    @classmethod
    def _flatten(cls, v: object) -> object:
        """``{interactions: {unknown_item: 0.3}}`` (what ``--set validation.max_quarantine_share.
        interactions.unknown_item=0.3`` builds) means ``interactions.unknown_item: 0.3``."""
        if not isinstance(v, Mapping):
            return v
        flat: dict[object, object] = {}
        for key, value in v.items():
            if isinstance(value, Mapping):
                flat.update({f"{key}.{reason}": share for reason, share in value.items()})
            else:
                flat[key] = value
        return flat

    @field_validator("max_quarantine_share")
    @classmethod
    def _known_keys(cls, v: dict[str, float]) -> dict[str, float]:
        for key, share in v.items():
            table = key.split(".", 1)[0]
            if table not in TABLES:
                raise ValueError(f"key {key!r}: start it with a table name ({', '.join(TABLES)}), "
                                 f"optionally followed by .<reason> (e.g. interactions.unknown_item)")
            if not 0.0 <= share <= 1.0:
                raise ValueError(f"key {key!r}: share {share} must be between 0 and 1 "
                                 f"(0.05 = 5% of the table's rows)")
        return v

    def limit(self, table: str, reason: str) -> float:
        """The share of ``table`` that ``reason`` may quarantine."""
        given = self.max_quarantine_share
        return given.get(f"{table}.{reason}", given.get(table, DEFAULT_MAX_SHARE[table]))


@dataclass
class Finding:
    """One (table, reason) share judged against its limit: an error or a warning."""

    table: str
    reason: str
    rows: int
    rows_in: int
    limit: float
    level: Literal["error", "warning"]
    message: str

    @property
    def share(self) -> float:
        return self.rows / self.rows_in if self.rows_in else 0.0


@dataclass
class TableReport:
    """Row accounting of one table; ``balanced`` must always be true.

    ``unknown_refs`` (interactions): rows whose member / item id is not in the kept
    members / items, whatever their quarantine reason. ``samples`` holds up to
    :data:`SAMPLE_ROWS` quarantined rows per reason, for the messages only.
    """

    table: str
    rows_in: int = 0
    rows_kept: int = 0
    quarantined: dict[str, int] = field(default_factory=dict)
    files: int = 0
    unknown_refs: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    examples: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    samples: dict[str, pl.DataFrame] = field(default_factory=dict, repr=False)
    markup: dict[str, list] = field(default_factory=dict, repr=False)
    # per text column: [rows, empty (null or blank), Counter of the most frequent values]
    text_stats: dict[str, list] = field(default_factory=dict, repr=False)

    @property
    def rows_quarantined(self) -> int:
        return sum(self.quarantined.values())

    @property
    def balanced(self) -> bool:
        return self.rows_in == self.rows_kept + self.rows_quarantined

    def add(self, other: TableReport) -> None:
        self.rows_in += other.rows_in
        self.rows_kept += other.rows_kept
        self.files += other.files
        for reason, n in other.quarantined.items():
            self.quarantined[reason] = self.quarantined.get(reason, 0) + n
        for ref, n in other.unknown_refs.items():
            self.unknown_refs[ref] = self.unknown_refs.get(ref, 0) + n

    def share(self, reason: str) -> float:
        return self.quarantined.get(reason, 0) / self.rows_in if self.rows_in else 0.0

    def to_dict(self) -> dict:
        out = {
            "table": self.table, "rows_in": self.rows_in, "rows_kept": self.rows_kept,
            "quarantined": dict(self.quarantined), "files": self.files,
            "rows_quarantined": self.rows_quarantined, "balanced": self.balanced,
            "quarantined_share": {r: round(self.share(r), 6) for r in sorted(self.quarantined)},
            "warnings": list(self.warnings), "examples": self.examples,
        }
        if self.unknown_refs:
            out["unknown_refs"] = dict(self.unknown_refs)
        return out


@dataclass
class ValidationReport:
    """Accounting for a whole dataset; written as ``report.json`` next to the output."""

    tables: dict[str, TableReport]
    findings: list[Finding] = field(default_factory=list)

    @property
    def balanced(self) -> bool:
        return all(t.balanced for t in self.tables.values())

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "error"]

    @property
    def warnings(self) -> list[str]:
        """Every warning line (quarantine shares under their limit, markup in text)."""
        return [w for t in self.tables.values() for w in t.warnings]

    def to_dict(self) -> dict:
        return {name: t.to_dict() for name, t in self.tables.items()}

    def metrics(self) -> dict[str, float]:
        """Flat numbers for MLflow (``interactions.rows_in``, ``interactions.q.unknown_action``,
        ``interactions.q_share.unknown_action``, ``interactions.unknown_member``, ``warnings``)."""
        out: dict[str, float] = {}
        for name, t in self.tables.items():
            out[f"{name}.rows_in"] = t.rows_in
            out[f"{name}.rows_kept"] = t.rows_kept
            out[f"{name}.rows_quarantined"] = t.rows_quarantined
            for reason, n in t.quarantined.items():
                out[f"{name}.q.{reason}"] = n
                out[f"{name}.q_share.{reason}"] = t.share(reason)
            for ref, n in t.unknown_refs.items():
                out[f"{name}.{ref}"] = n
            out[f"{name}.warnings"] = len(t.warnings)
        out["warnings"] = len(self.warnings)
        return out

    def summary_lines(self) -> list[str]:
        lines = []
        for name, t in self.tables.items():
            reasons = ", ".join(f"{r}={n} ({t.share(r):.1%})"
                                for r, n in sorted(t.quarantined.items())) or "none"
            lines.append(
                f"{name}: in={t.rows_in} kept={t.rows_kept} quarantined={t.rows_quarantined} "
                f"({reasons}) balanced={t.balanced}"
            )
            if t.unknown_refs:
                refs = ", ".join(f"{r}={n} ({n / t.rows_in if t.rows_in else 0:.1%})"
                                 for r, n in t.unknown_refs.items())
                lines.append(f"{name}: rows pointing at ids missing from the entity tables "
                             f"(whatever else is wrong with them): {refs}")
        lines += [f"WARNING {w}" for w in self.warnings]
        return lines
