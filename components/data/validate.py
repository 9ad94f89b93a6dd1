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

Layout: this module reads and checks the tables; :mod:`components.data.validate_report`
holds the config, the errors and the report, :mod:`components.data.validate_messages`
the judging and the messages. Every name stays importable from here.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from components.data.mapping import HTML_ENTITY, HTML_TAG, parse_datetime_text
from components.data.schema import (
    FREE_COLUMN_FAMILIES,
    INTERACTIONS,
    ITEMS,
    MEMBERS,
    TableSchema,
    type_family,
)
from components.data.tables import table_files, write_table
from components.data.validate_messages import (
    _Context,
    _error_message,
    _judge,
    guess_time_formats,
)
from components.data.validate_report import (
    DEFAULT_MAX_SHARE,
    FORMAT_CANDIDATES,
    MARKUP_WARN_SHARE,
    MOSTLY_EMPTY_SHARE,
    NEAR_CONSTANT_SHARE,
    PL_TIMESTAMP,
    PROVENANCE_PREFIX,
    REASON_COLUMN,
    SAMPLE_ROWS,
    TEXT_CHECK_MIN_ROWS,
    UNKNOWN_REFS,
    Finding,
    QuarantineError,
    SchemaError,
    TableReport,
    ValidationConfig,
    ValidationReport,
)

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


__all__ = [
    "DEFAULT_MAX_SHARE",
    "FORMAT_CANDIDATES",
    "Finding",
    "MARKUP_WARN_SHARE",
    "MOSTLY_EMPTY_SHARE",
    "NEAR_CONSTANT_SHARE",
    "PL_TIMESTAMP",
    "PROVENANCE_PREFIX",
    "QuarantineError",
    "REASON_COLUMN",
    "SAMPLE_ROWS",
    "SchemaError",
    "TEXT_CHECK_MIN_ROWS",
    "TableReport",
    "UNKNOWN_REFS",
    "ValidationConfig",
    "ValidationReport",
    "check_file_schema",
    "guess_time_formats",
    "validate_dataset",
    "validate_entities",
    "validate_interactions",
]
