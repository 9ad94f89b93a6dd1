"""Speaking up about quarantined rows: each reason judged against its limit, with its
likely cause, the fix (a guessed ``timestamp.format``, ids written differently,
``aggregate`` for several rows per id) and example rows; see
:mod:`components.data.validate`."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import polars as pl

from components.data.schema import (
    TABLES,
)
from components.data.validate_report import (
    FORMAT_CANDIDATES,
    MARKUP_WARN_SHARE,
    MOSTLY_EMPTY_SHARE,
    NEAR_CONSTANT_SHARE,
    REASON_COLUMN,
    TEXT_CHECK_MIN_ROWS,
    Finding,
    ValidationConfig,
    ValidationReport,
)


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
