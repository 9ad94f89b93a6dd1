"""Validation of the canonical tables, with a quarantine instead of silent drops.

Two kinds of problems, two behaviours:

* a *whole-file* problem (unreadable Parquet, a required column missing, a column of a
  type no row could be converted from) stops the run with :class:`SchemaError` naming
  the file, the column, the expected type and the fix: no row of such a file can be
  trusted, and guessing would hide a broken upstream job;
* a *row* problem (missing id, unknown action, unparsable timestamp, duplicate, a
  pointer to an unknown member or item) sends that row to a quarantine table with a
  ``reason`` column, so nothing is lost: rows in = rows kept + rows quarantined, and the
  report proves it.

A quarantine must not be a silent sink, though: when every timestamp fails to parse,
"balanced" is true and useless. So each (table, reason) share is checked against
:class:`ValidationConfig` limits (default 5%): above its limit the stage fails with
:class:`QuarantineError`, whose message names the reason, the column, example rows and
the likely fix (a guessed ``timestamp.format``, ids in another format, ``aggregate``
for several rows per id); below it, a warning in the report, the console and the
metrics. Rows pointing at unknown members / items are counted whatever else is wrong
with them, so fixing one problem does not reveal the next one a run later. Text that
looks like HTML is warned about too: markup in a prompt wastes tokens.

Quarantined rows keep every original column, cast to text (so part files with slightly
different source types still read back as one table), plus ``reason``,
``source_file`` and ``source_row``.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field, field_validator

from components.config_base import StrictModel
from components.data.mapping import HTML_ENTITY, HTML_TAG, parse_datetime_text
from components.data.schema import (
    FREE_COLUMN_FAMILIES,
    INTERACTIONS,
    ITEMS,
    MEMBERS,
    TABLES,
    TableSchema,
    type_family,
)
from components.data.tables import table_files, write_table

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


# --------------------------------------------------------------------------- file checks


def check_file_schema(path: Path, table: TableSchema) -> pa.Schema:
    """Fail fast on a file no row of which can be validated; returns its Arrow schema."""
    try:
        schema = pq.read_schema(path)
    except Exception as exc:  # pyarrow raises several types for a corrupt footer
        raise SchemaError(
            f"{path}: not a readable Parquet file ({type(exc).__name__}: {exc}). "
            f"Fix: re-export table '{table.name}' or remove the file from {path.parent}"
        ) from exc
    for col in table.required:
        if col not in schema.names:
            raise SchemaError(
                f"{path}: required column '{col}' of table '{table.name}' is missing "
                f"(expected type: {' or '.join(table.accepts[col])}; found columns: "
                f"{schema.names}). Fix: add or rename the column in the source, or map it "
                f"with a column-mapping spec (docs/datasets.md)"
            )
        fam = type_family(schema.field(col).type)
        if fam not in table.accepts[col] and fam != "null":
            raise SchemaError(
                f"{path}: column '{col}' of table '{table.name}' has type "
                f"{schema.field(col).type}, expected {' or '.join(table.accepts[col])}. "
                f"Fix: cast the column in the source or in the mapping spec"
            )
    for name, dtype in zip(schema.names, schema.types, strict=True):
        if name in table.required or name.startswith(PROVENANCE_PREFIX):
            continue
        fam = type_family(dtype)
        expected = table.optional.get(name)
        if expected is not None:
            ok = fam in ("null", type_family(expected)) or (
                name == "created_at" and fam in ("string", "integer")
            ) or (name == "value" and fam == "integer")
            if not ok:
                raise SchemaError(
                    f"{path}: column '{name}' of table '{table.name}' has type {dtype}, "
                    f"expected {expected}. Fix: cast it in the source or mapping spec"
                )
        elif fam not in FREE_COLUMN_FAMILIES and fam != "null":
            raise SchemaError(
                f"{path}: free column '{name}' of table '{table.name}' has type {dtype}, "
                f"which cannot be verbalized; expected one of {FREE_COLUMN_FAMILIES}. Fix: "
                f"convert it to text, drop it, or prefix it with '_' to keep it as provenance"
            )
    return schema


# --------------------------------------------------------------------------- row checks


def _as_id(col: str) -> pl.Expr:
    return pl.col(col).cast(pl.Utf8).str.strip_chars()


def _parse_timestamp(df: pl.DataFrame, col: str) -> tuple[pl.Series, pl.Series]:
    """(parsed UTC timestamps, raw non-null mask): ints are epoch seconds, strings
    date-time text as :func:`components.data.mapping.parse_datetime_text` reads it.

    Naive timestamps are taken as UTC: the canonical tables have one clock.
    """
    s = df.get_column(col)
    fam = type_family(s.to_arrow().type)
    present = s.is_not_null()
    if fam == "timestamp":
        if s.dtype == pl.Date:
            s = s.cast(pl.Datetime("us"))
        parsed = (
            s.dt.replace_time_zone("UTC") if s.dtype.time_zone is None else s.dt.convert_time_zone("UTC")
        ).cast(PL_TIMESTAMP)
    elif fam == "integer":
        parsed = pl.from_epoch(s, time_unit="s").dt.replace_time_zone("UTC").cast(PL_TIMESTAMP)
    elif fam == "string":
        parsed = parse_datetime_text(s.cast(pl.Utf8), "UTC")
    else:  # all-null column
        parsed = pl.Series(col, [None] * len(s), dtype=PL_TIMESTAMP)
    return parsed.alias(col), present


def _first_reason(conditions: Iterable[tuple[pl.Expr, str]]) -> pl.Expr:
    """The first failing check names the row's reason (checks are ordered by severity)."""
    expr: pl.Expr | pl.When | pl.Then | None = None
    for cond, reason in conditions:
        expr = (pl.when(cond) if expr is None else expr.when(cond)).then(pl.lit(reason))
    assert expr is not None
    return expr.otherwise(pl.lit(None, dtype=pl.Utf8))


def _quarantine_frame(df: pl.DataFrame, source: Path) -> pl.DataFrame:
    cols = [c for c in df.columns if c not in ("reason", "__row")]
    return df.select(
        *[
            (pl.col(c).cast(pl.List(pl.Utf8)).list.join("|") if isinstance(df.schema[c], pl.List)
             else pl.col(c).cast(pl.Utf8)).alias(c)
            for c in cols
        ],
        pl.col("reason"),
        pl.lit(str(source)).alias("source_file"),
        pl.col("__row").alias("source_row"),
    )


def _split_rows(
    df: pl.DataFrame, reason: pl.Expr, source: Path, report: TableReport
) -> tuple[pl.DataFrame, pl.DataFrame]:
    df = df.with_columns(reason.alias("reason"))
    bad = df.filter(pl.col("reason").is_not_null())
    good = df.filter(pl.col("reason").is_null()).drop("reason")
    for r, n in bad.group_by("reason").len().iter_rows():
        report.quarantined[r] = report.quarantined.get(r, 0) + n
    report.rows_kept += good.height
    bad = _quarantine_frame(bad, source)
    _keep_samples(bad, report)
    return good, bad


def _keep_samples(bad: pl.DataFrame, report: TableReport) -> None:
    """Up to SAMPLE_ROWS quarantined rows per reason, the first ones seen."""
    for (reason,), rows in bad.partition_by("reason", as_dict=True).items():
        have = report.samples.get(reason)
        room = SAMPLE_ROWS - (have.height if have is not None else 0)
        if room <= 0:
            continue
        rows = rows.drop([c for c in rows.columns if c.startswith("__")]).head(room)
        report.samples[reason] = rows if have is None else pl.concat(
            [have, rows], how="diagonal_relaxed")


def _count_markup(good: pl.DataFrame, skip: Iterable[str], report: TableReport) -> None:
    """Count, per text column, the values that look like HTML (tags or entities)."""
    pattern = f"{HTML_TAG}|{HTML_ENTITY}"
    for name, dtype in good.schema.items():
        if name in skip or name.startswith("_"):
            continue
        if dtype == pl.List(pl.Utf8):
            s = good.get_column(name).list.join(" ")
        elif dtype == pl.Utf8:
            s = good.get_column(name)
        else:
            continue
        # per item type on a mixed catalogue: a job-only field is not "mostly empty" on posts
        groups = (good.get_column("item_type") if "item_type" in good.columns
                  else pl.Series([None] * good.height, dtype=pl.Utf8))
        for (group,), part in pl.DataFrame({"g": groups, "v": s}).group_by("g"):
            v = part.get_column("v")
            filled = v.drop_nulls().filter(v.drop_nulls().str.strip_chars() != "")
            if group is not None and filled.len() == 0:
                continue  # the field does not exist for this item type
            key = name if group is None else f"{name} ({group})"
            stats = report.text_stats.setdefault(key, [0, 0, Counter()])
            stats[0] += v.len()
            stats[1] += v.len() - filled.len()
            for value, count in filled.value_counts(sort=True).head(20).iter_rows():
                stats[2][value] += count
        s = s.drop_nulls()
        hits = s.filter(s.str.contains(pattern))
        seen = report.markup.setdefault(name, [0, 0, None])
        seen[0] += s.len()
        seen[1] += hits.len()
        if seen[2] is None and hits.len():
            seen[2] = hits[0]


def _read_with_rows(path: Path) -> pl.DataFrame:
    return pl.read_parquet(path).with_row_index("__row")


def _finish(good: pl.DataFrame) -> pl.DataFrame:
    drop = [c for c in good.columns if c.startswith(PROVENANCE_PREFIX)]
    return good.drop(drop)


def validate_entities(
    files: list[Path], table: TableSchema, quarantine_dir: Path, out_dir: Path
) -> tuple[pl.DataFrame, TableReport]:
    """Validate ``members`` or ``items``: ids present and unique (first occurrence kept).

    The report's ``samples`` keep quarantined rows for the messages; its ``markup``
    counts the text values that look like HTML, per column.
    """
    report = TableReport(table.name)
    id_col = table.key[0]
    frames = []
    for path in files:
        check_file_schema(path, table)
        raw = _read_with_rows(path)
        report.rows_in += raw.height
        report.files += 1
        df = raw.with_columns(_as_id(id_col).alias(id_col))
        if table is ITEMS:
            df = df.with_columns(pl.col("item_type").cast(pl.Utf8).str.strip_chars())
            if "created_at" in df.columns:
                present = pl.col("created_at").is_not_null()
                if "_raw_created_at" in df.columns:  # the adapter already failed to parse it
                    present = present | pl.col("_raw_created_at").is_not_null()
                df = df.with_columns(
                    _parse_timestamp(df, "created_at")[0].alias("__created"),
                    present.alias("__created_present"),
                )
        frames.append((path, df))

    # Duplicates are decided across all files at once: an id is one entity.
    seen: set[str] = set()
    quarantined = []
    for path, df in frames:
        checks = [
            (pl.col(id_col).is_null() | (pl.col(id_col) == ""), f"missing_{id_col}"),
        ]
        if table is ITEMS:
            checks += [
                (pl.col("item_type").is_null() | (pl.col("item_type") == ""), "missing_item_type"),
                (pl.col("title").is_null(), "missing_title"),
            ]
            if "__created" in df.columns:
                checks.append(
                    (pl.col("__created_present") & pl.col("__created").is_null(), "unparsable_created_at")
                )
        # Duplicates only among otherwise valid rows, so a broken first copy does not
        # push a good second copy into quarantine.
        df = df.with_columns(_first_reason(checks).alias("__pre"))
        dup = pl.col("__pre").is_null() & (
            pl.col(id_col).is_in(pl.Series(list(seen), dtype=pl.Utf8).implode())
            | ~pl.struct(id_col, "__pre").is_first_distinct()
        )
        reason = pl.when(dup).then(pl.lit(f"duplicate_{id_col}")).otherwise(pl.col("__pre"))
        good, bad = _split_rows(df, reason, path, report)
        good = good.drop("__pre")
        seen.update(good.get_column(id_col).to_list())
        if "__created" in good.columns:
            good = good.with_columns(pl.col("__created").alias("created_at")).drop(
                "__created", "__created_present"
            )
        quarantined.append(bad.drop([c for c in bad.columns if c.startswith("__")]))
        frames_out = _finish(good.drop("__row"))
        _count_markup(frames_out, (id_col, "item_type"), report)
        write_table(frames_out, out_dir / table.name, part=len(quarantined) - 1)
    _write_quarantine(quarantined, quarantine_dir / table.name)
    kept_ids = pl.DataFrame({id_col: sorted(seen)}, schema={id_col: pl.Utf8})
    return kept_ids, report


def validate_interactions(
    files: list[Path],
    legal_actions: Iterable[str],
    member_ids: pl.DataFrame,
    item_ids: pl.DataFrame,
    quarantine_dir: Path,
    out_dir: Path,
) -> TableReport:
    """Validate interactions file by file; duplicates are found across all files.

    Memory: one input file plus the id sets and one 64-bit hash per kept row, so a
    dataset of many part files validates without holding all rows at once.
    """
    report = TableReport(INTERACTIONS.name, unknown_refs={r: 0 for r in UNKNOWN_REFS})
    legal = sorted(set(legal_actions))
    members = member_ids.get_column("member_id")
    items = item_ids.get_column("item_id")
    seen_keys = pl.Series("h", [], dtype=pl.UInt64)
    quarantined = []
    for part, path in enumerate(files):
        check_file_schema(path, INTERACTIONS)
        raw = _read_with_rows(path)
        report.rows_in += raw.height
        report.files += 1
        ts, ts_present = _parse_timestamp(raw, "timestamp")
        if "_raw_timestamp" in raw.columns:  # adapter already failed to parse a string
            ts_present = ts_present | raw.get_column("_raw_timestamp").is_not_null()
        df = raw.with_columns(
            _as_id("member_id").alias("member_id"),
            _as_id("item_id").alias("item_id"),
            pl.col("surface").cast(pl.Utf8).str.strip_chars(),
            pl.col("action").cast(pl.Utf8).str.strip_chars(),
            ts.alias("__ts"),
            ts_present.alias("__ts_present"),
        )
        if "value" in df.columns:
            df = df.with_columns(pl.col("value").cast(pl.Float64))
        # Dangling ids counted on their own: the first-reason rule would hide them behind
        # another reason (e.g. every timestamp unparsable).
        dangling = df.select(
            unknown_member=(pl.col("member_id").is_not_null() & (pl.col("member_id") != "")
                            & ~pl.col("member_id").is_in(members.implode())).sum(),
            unknown_item=(pl.col("item_id").is_not_null() & (pl.col("item_id") != "")
                          & ~pl.col("item_id").is_in(items.implode())).sum(),
        ).row(0, named=True)
        for ref, n in dangling.items():
            report.unknown_refs[ref] += int(n)
        key_hash = pl.struct("member_id", "item_id", "surface", "action", "__ts").hash(seed=0)
        checks = [
            (pl.col("member_id").is_null() | (pl.col("member_id") == ""), "missing_member_id"),
            (pl.col("item_id").is_null() | (pl.col("item_id") == ""), "missing_item_id"),
            (pl.col("surface").is_null() | (pl.col("surface") == ""), "missing_surface"),
            (pl.col("action").is_null() | ~pl.col("action").is_in(legal), "unknown_action"),
            (~pl.col("__ts_present"), "missing_timestamp"),
            (pl.col("__ts").is_null(), "unparsable_timestamp"),
            (~pl.col("member_id").is_in(members.implode()), "unknown_member"),
            (~pl.col("item_id").is_in(items.implode()), "unknown_item"),
        ]
        reason = _first_reason(checks)
        df = df.with_columns(reason.alias("__pre"), key_hash.alias("__h"))
        # Duplicates only among rows that are otherwise valid: the first copy is kept.
        valid_mask = pl.col("__pre").is_null()
        dup = valid_mask & (
            pl.col("__h").is_in(seen_keys.implode())
            | ~pl.struct("__h", "__pre").is_first_distinct()
        )
        reason = pl.when(dup).then(pl.lit("duplicate")).otherwise(pl.col("__pre"))
        good, bad = _split_rows(df, reason, path, report)
        seen_keys = pl.concat([seen_keys, good.get_column("__h")])
        good = good.with_columns(pl.col("__ts").alias("timestamp")).drop(
            "__ts", "__ts_present", "__pre", "__h", "__row"
        )
        quarantined.append(bad.drop([c for c in bad.columns if c.startswith("__")]))
        write_table(_finish(good), out_dir / INTERACTIONS.name, part=part)
    _write_quarantine(quarantined, quarantine_dir / INTERACTIONS.name)
    return report


def _write_quarantine(frames: list[pl.DataFrame], qdir: Path) -> None:
    qdir.mkdir(parents=True, exist_ok=True)
    frames = [f for f in frames if f.height]
    df = pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame(
        schema={"reason": pl.Utf8, "source_file": pl.Utf8, "source_row": pl.UInt32}
    )
    write_table(df, qdir)


# --------------------------------------------------------------------------- speaking up


def guess_time_formats(values: Iterable[str]) -> list[str]:
    """strftime patterns of :data:`FORMAT_CANDIDATES` that read every one of ``values``.

    More than one means the values cannot tell (``03/04/2014``: day or month first?).
    """
    sample = pl.Series([v.strip() for v in values if v and v.strip()], dtype=pl.Utf8).unique()
    if sample.is_empty():
        return []
    hits = []
    for fmt in FORMAT_CANDIDATES:
        parsed = sample.str.to_datetime(fmt, strict=False, time_unit="us")
        if parsed.null_count() == 0:
            hits.append(fmt)
    return hits


def _short(value: object, width: int = 60) -> str:
    text = "" if value is None else str(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def _example_rows(table: str, rows: pl.DataFrame, column: str, n: int) -> list[dict[str, str]]:
    """The first ``n`` rows of a reason, with the columns that explain it."""
    wanted = [*TABLES[table].required, *[c.strip() for c in column.split(",")], f"_raw_{column}"]
    # Entity tables have few required columns: a few profile columns give the row a face.
    wanted += [c for c in rows.columns if not c.startswith("_")
               and c not in ("reason", "source_file", "source_row")][:6]
    cols = [c for c in dict.fromkeys([*wanted, "source_file", "source_row"]) if c in rows.columns]
    out = []
    for row in rows.head(n).select(cols).iter_rows(named=True):
        if "source_file" in row and row["source_file"]:
            row["source_file"] = Path(row["source_file"]).name
        out.append({k: _short(v) for k, v in row.items() if v is not None})
    return out


def _norm_ids(s: pl.Series) -> pl.Series:
    """Ids without the usual format noise: case, leading zeros, a '.0' from a float."""
    return (s.cast(pl.Utf8).str.strip_chars().str.to_lowercase()
            .str.replace(r"\.0+$", "").str.replace(r"^0+(\d)", "${1}"))


@dataclass
class _Context:
    """What the explanations need besides the report."""

    legal_actions: list[str]
    member_ids: pl.DataFrame
    item_ids: pl.DataFrame
    entity_quarantine: dict[str, pl.DataFrame]  # table -> quarantined rows (id, reason)


def _values(rows: pl.DataFrame, column: str) -> list[str]:
    raw = f"_raw_{column}"
    col = raw if raw in rows.columns and rows.get_column(raw).null_count() < rows.height else column
    if col not in rows.columns:
        return []
    return [v for v in rows.get_column(col).cast(pl.Utf8).to_list() if v is not None]


def _explain(table: str, reason: str, rows: pl.DataFrame, ctx: _Context) -> str:
    """The likely cause and fix of one reason, from its sampled rows (one or two lines)."""
    column = REASON_COLUMN.get(reason, "?")
    spec = "in the mapping spec (docs/datasets.md)"
    if reason in ("unparsable_timestamp", "unparsable_created_at"):
        values = _values(rows, column)
        looks = ", ".join(f"`{_short(v, 40)}`" for v in list(dict.fromkeys(values))[:3]) \
            or "(no text kept)"
        key = f"{table}.timestamp.format"
        formats = guess_time_formats(values)
        if formats:
            fix = f"set `{key}: \"{formats[0]}\"` {spec}"
            if len(formats) > 1:
                fix += (f"; these values also read as {', '.join(repr(f) for f in formats[1:3])}: "
                        f"check which one the source uses")
        else:
            fix = (f"set `{key}` {spec} to a strftime pattern that matches them "
                   f"(`auto` reads ISO-8601 with `T` or a space, fractions, `Z`/`UTC`/offsets/zone "
                   f"names, RFC 2822 and epoch numbers)")
        return f"{column} values look like {looks}: {fix}, or write ISO-8601 upstream"
    if reason == "missing_timestamp":
        return (f"the timestamp is empty: check `{table}.columns.timestamp` names the time "
                f"column; if the source writes missing values as text (`NA`, `-`), list them "
                f"under `null_values` so they count as missing on purpose")
    if reason in ("unknown_member", "unknown_item"):
        entity, id_col = ("members", "member_id") if reason == "unknown_member" else ("items", "item_id")
        kept = (ctx.member_ids if entity == "members" else ctx.item_ids).get_column(id_col)
        unknown = pl.Series(_values(rows, id_col), dtype=pl.Utf8).unique()
        looks = ", ".join(f"`{v}`" for v in unknown.head(3).to_list())
        known = ", ".join(f"`{v}`" for v in kept.head(3).to_list()) or "(none)"
        hints = []
        bad = ctx.entity_quarantine.get(entity)
        if bad is not None and bad.height and unknown.len():
            hit = bad.filter(pl.col(id_col).is_in(unknown.implode()))
            if hit.height:
                why = ", ".join(sorted(set(hit.get_column("reason").to_list())))
                hints.append(f"{hit.get_column(id_col).n_unique()} of the {unknown.len()} sampled "
                             f"ids are in the {entity} quarantine ({why}): fix those rows first")
        if unknown.len() and kept.len():
            same = _norm_ids(unknown).is_in(_norm_ids(kept).implode()).sum()
            if same:
                hints.append(f"{same} of the {unknown.len()} sampled ids match a {entity} id "
                             f"once case, leading zeros or '.0' are ignored: the two id columns "
                             f"are written differently; read both as text the same way")
        derive = ("drop the `members:` section to derive members from the interactions"
                  if entity == "members" else
                  "derive items from the event columns (`items.distinct`, docs/datasets.md) or "
                  "drop the `items:` section")
        hints.append(f"check that `{entity}.columns.{id_col}` and `interactions.columns.{id_col}` "
                     f"name the same id, or {derive}")
        return (f"{id_col} values such as {looks} are not in the kept {entity} "
                f"({kept.len()} ids, e.g. {known}): " + "; ".join(hints))
    if reason == "unknown_action":
        counts = (pl.Series(_values(rows, "action"), dtype=pl.Utf8).value_counts(sort=True)
                  .head(5).iter_rows())
        seen = ", ".join(f"`{v}` ({n})" for v, n in counts)
        return (f"actions such as {seen} (in the sampled rows) are not in the legal vocabulary "
                f"{ctx.legal_actions}: map them under `interactions.actions` (source value: "
                f"canonical action), or add them to `interactions.actions_legal` / `data.actions`")
    if reason in ("duplicate_member_id", "duplicate_item_id"):
        entity = "members" if reason == "duplicate_member_id" else "items"
        return (f"several rows share one {column}: if the source spreads a profile over many rows "
                f"(one per job, degree, ...), merge them with `{entity}.aggregate` (first, last, "
                f"list, count, join) or keep the latest with `{entity}.distinct` {spec}")
    if reason == "duplicate":
        return ("rows repeat another row's (member_id, item_id, surface, action, timestamp): a log "
                "exported twice, or timestamps too coarse (date only) to tell events apart")
    if reason == "missing_title":
        return (f"items have no title: map `items.columns.title`, or build one with "
                f"`items.derive.title: \"{{name}} ({{category}})\"` {spec}")
    if reason == "missing_item_type":
        return f"items have no type: map `items.columns.item_type` or set `default_item_type` {spec}"
    if reason.startswith("missing_"):
        return (f"{column} is empty: check `{table}.columns.{column}` names the right source "
                f"column (or set it under `constants`); text such as `NA` is read as a value "
                f"unless listed under `null_values`")
    return f"see {table} quarantine rows with reason {reason}"


def _judge(report: ValidationReport, cfg: ValidationConfig, ctx: _Context) -> None:
    """Turn every quarantine reason into an error (above its limit) or a warning."""
    for name, t in report.tables.items():
        for reason, n in sorted(t.quarantined.items(), key=lambda kv: -kv[1]):
            rows = t.samples.get(reason, pl.DataFrame())
            column = REASON_COLUMN.get(reason, "?")
            t.examples[reason] = _example_rows(name, rows, column, cfg.examples)
            limit = cfg.limit(name, reason)
            level: Literal["error", "warning"] = "error" if t.share(reason) > limit else "warning"
            head = (f"{name}: {n:,} of {t.rows_in:,} rows ({t.share(reason):.1%}) quarantined as "
                    f"{reason} (limit {limit:.1%}; column '{column}')")
            why = _explain(name, reason, rows, ctx)
            finding = Finding(name, reason, n, t.rows_in, limit, level, f"{head}. {why}")
            report.findings.append(finding)
            if level == "warning":
                t.warnings.append(f"{head}: {why}")
        for ref, n in t.unknown_refs.items():
            counted = t.quarantined.get(ref, 0)
            if n > counted:  # hidden behind another reason: say so now, not next run
                t.warnings.append(
                    f"{name}: {n:,} rows ({n / t.rows_in:.1%}) point at ids missing from the "
                    f"{'members' if ref == 'unknown_member' else 'items'} table ({ref}), "
                    f"{n - counted:,} of them quarantined for another reason first")
        for col, (rows, empty, common) in t.text_stats.items():
            filled = rows - empty
            if rows >= TEXT_CHECK_MIN_ROWS and empty / rows >= MOSTLY_EMPTY_SHARE:
                t.warnings.append(
                    f"{name}.{col}: {empty:,} of {rows:,} values ({empty / rows:.0%}) are empty: the "
                    f"prompts will rarely show it; map another source column (a fallback list "
                    f"`{col}: [a, b]` under {name}.columns) or drop it")
            elif filled >= TEXT_CHECK_MIN_ROWS and common:
                value, n = common.most_common(1)[0]
                if n / filled >= NEAR_CONSTANT_SHARE:
                    t.warnings.append(
                        f"{name}.{col}: {n:,} of {filled:,} non-empty values ({n / filled:.0%}) are "
                        f"`{_short(value)}`: a nearly constant field tells the model nothing; check "
                        f"the source column or drop it")
        for col, (total, hits, example) in t.markup.items():
            if total and hits / total >= MARKUP_WARN_SHARE:
                t.warnings.append(
                    f"{name}.{col}: {hits:,} of {total:,} values ({hits / total:.0%}) look like "
                    f"HTML (e.g. `{_short(example)}`): markup wastes prompt tokens; set "
                    f"`{name}.text.strip_html: [{col}]` in the mapping spec (docs/datasets.md)")


def _error_message(report: ValidationReport, out_dir: Path) -> str:
    lines = [f"validate: too many rows quarantined for one reason; the data is probably misread, "
             f"not dirty (report: {out_dir / 'report.json'}, rows: {out_dir / 'quarantine'}/):"]
    for f in sorted(report.errors, key=lambda f: -f.share):
        lines.append(f"  - {f.message}")
        for ex in report.tables[f.table].examples.get(f.reason, []):
            row = ", ".join(f"{k}={v!r}" for k, v in ex.items()
                            if k not in ("source_file", "source_row"))
            lines.append(f"      e.g. {ex.get('source_file', '?')} row {ex.get('source_row', '?')}: "
                         f"{row}")
    if report.warnings:
        lines.append("  also:")
        lines += [f"  - {w}" for w in report.warnings]
    keys = ", ".join(f'"{f.table}.{f.reason}": {min(1.0, round(f.share + 0.005, 2))}'
                     for f in report.errors)
    lines.append(f"  If these rows really are bad, accept them in the profile: validation: "
                 f"{{max_quarantine_share: {{{keys}}}}}")
    return "\n".join(lines)


def validate_dataset(
    in_dir: Path,
    out_dir: Path,
    legal_actions: Iterable[str],
    config: ValidationConfig | Mapping[str, float] | None = None,
) -> ValidationReport:
    """Validate ``in_dir`` (canonical tables) into ``out_dir``.

    Writes ``out_dir/{members,items,interactions}/`` (clean), ``out_dir/quarantine/<table>/``
    and ``out_dir/report.json`` (with warnings and example rows per reason). Raises
    :class:`SchemaError` on a whole-file problem and, after writing all of that,
    :class:`QuarantineError` when a reason quarantines more of a table than ``config``
    allows (default :data:`DEFAULT_MAX_SHARE`). A plain mapping is taken as
    ``max_quarantine_share`` (``{"interactions": 0.2}``).
    """
    cfg = config if isinstance(config, ValidationConfig) else ValidationConfig(
        max_quarantine_share=dict(config or {}))
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    qdir = out_dir / "quarantine"
    legal = sorted(set(legal_actions))
    member_ids, m_rep = validate_entities(table_files(in_dir, "members"), MEMBERS, qdir, out_dir)
    item_ids, i_rep = validate_entities(table_files(in_dir, "items"), ITEMS, qdir, out_dir)
    x_rep = validate_interactions(
        table_files(in_dir, "interactions"), legal, member_ids, item_ids, qdir, out_dir
    )
    report = ValidationReport({"members": m_rep, "items": i_rep, "interactions": x_rep})
    if not report.balanced:  # a bug in this module, never a data problem
        raise AssertionError(f"row accounting does not add up: {report.to_dict()}")
    # Quarantined member / item ids explain interactions that point at them.
    entity_q = {
        rep.table: pl.read_parquet(qdir / rep.table).select(key, "reason")
        for rep, key in ((m_rep, "member_id"), (i_rep, "item_id")) if rep.rows_quarantined
    }
    _judge(report, cfg, _Context(legal, member_ids, item_ids, entity_q))
    (out_dir / "report.json").write_text(json.dumps(report.to_dict(), indent=2))
    if report.errors:
        raise QuarantineError(_error_message(report, out_dir), report)
    return report
