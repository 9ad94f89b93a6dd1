"""Converting what was read: renaming, fallback columns, derived columns, text clean-up
(HTML), id and text casts, action mapping, time parsing, and merging several rows per
id (``aggregate`` / ``distinct``); :func:`read_mapped` puts it all together."""

from __future__ import annotations

import html
import string
from pathlib import Path

import polars as pl

from components.data.mapping.readers import _column_expr, _read_source, _table_files, _time_columns
from components.data.mapping.spec import (
    ENTITY_KEY,
    ID_COLUMNS,
    REQUIRED,
    SOURCE_ROWS,
    TEXT_COLUMNS,
    AggregateColumn,
    InteractionsSource,
    MappingError,
    MappingSpec,
    TableSource,
    load_mapping_spec,
)
from components.data.mapping.timestamps import parse_time
from components.data.tables import CanonicalTables


def _as_id(s: pl.Series) -> pl.Series:
    """Ids as text; integral floats (ids read from a column with nulls) lose the '.0'."""
    if s.dtype.is_float():
        integral = s.is_not_null() & s.is_finite() & (s == s.round())
        as_int = pl.select(
            pl.when(integral).then(s.cast(pl.Int64, strict=False).cast(pl.Utf8))
            .otherwise(s.cast(pl.Utf8))
        ).to_series()
        return as_int.alias(s.name)
    if isinstance(s.dtype, pl.List | pl.Struct | pl.Array):
        return pl.Series(s.name, [None if v is None else str(v) for v in s.to_list()], pl.Utf8)
    return s.cast(pl.Utf8).str.strip_chars()


def _as_text(s: pl.Series) -> pl.Series:
    """Any source value as template text: ids' rules, lists joined with ', '."""
    if s.dtype == pl.List(pl.Utf8):
        return s.list.join(", ").alias(s.name)
    if isinstance(s.dtype, pl.List) and not isinstance(s.dtype.inner, pl.List | pl.Struct):
        return s.cast(pl.List(pl.Utf8)).list.join(", ").alias(s.name)
    return _as_id(s)


def derive_column(df: pl.DataFrame, template: str, name: str) -> pl.Series:
    """Fill ``template`` ("{City}, {State}") from the source columns of ``df``.

    A missing value leaves its place empty; separators (``, ; | /``), blanks and empty
    brackets left dangling by it are trimmed, and a row with no value at all is null:
    "Springfield" beats "Springfield, " or ", " in a prompt.
    """
    parts: list[pl.Series | str] = []
    present = pl.Series(name, [False] * df.height)
    for literal, field, _, _ in string.Formatter().parse(template):
        if literal:
            parts.append(literal)
        if field is not None:
            value = _as_text(df.get_column(field))
            present = present | (value.is_not_null() & (value != ""))
            parts.append(value.fill_null(""))
    text = pl.select(pl.concat_str([pl.lit(p) for p in parts])).to_series()
    tidy = (text.str.replace_all(r"\(\s*\)|\[\s*\]", "")
            .str.replace_all(r"\s*([,;|/])(?:\s*[,;|/])+", "$1")
            .str.replace_all(r"\s+", " ")
            .str.strip_chars(" ,;|/"))
    out = pl.select(pl.when(pl.lit(present) & (pl.lit(tidy) != "")).then(pl.lit(tidy))).to_series()
    return out.cast(pl.Utf8).alias(name)


_BLOCK_TAGS = ("p", "br", "div", "li", "ul", "ol", "h[1-6]", "tr", "td", "th", "table",
               "section", "article", "header", "footer", "blockquote", "pre", "hr", "dd", "dt",
               "dl")
_HTML_DROP = r"(?is)<!--.*?-->|<script\b.*?</script\s*>|<style\b.*?</style\s*>"
_HTML_BLOCK = r"(?i)</?(?:" + "|".join(_BLOCK_TAGS) + r")\b[^<>]*>"
#: A tag starts with a letter (or '/', '!'), so "a < b" or "<3" is left alone.
HTML_TAG = r"</?[A-Za-z][A-Za-z0-9:-]*(?:\s[^<>]*)?/?>"
HTML_ENTITY = r"&(?:[A-Za-z]{2,8}|#\d{2,6}|#[xX][0-9A-Fa-f]{2,5});"


def unescape_entities(s: pl.Series) -> pl.Series:
    """``&amp;`` -> ``&`` and friends (Python's html rules), once per distinct value."""
    if s.dtype != pl.Utf8:
        return s
    todo = s.filter(s.str.contains(HTML_ENTITY)).unique().to_list()
    if not todo:
        return s
    return s.replace({v: html.unescape(v) for v in todo})


def strip_html(s: pl.Series) -> pl.Series:
    """Markup -> plain text: scripts, styles and comments dropped, block tags become a
    space and inline tags nothing, entities unescaped, blanks collapsed. Done twice
    around the unescape, because exports often escape the markup itself (``&lt;p&gt;``)."""
    if s.dtype != pl.Utf8:
        return s
    def tags(x: pl.Series) -> pl.Series:
        return (x.str.replace_all(_HTML_DROP, " ").str.replace_all(_HTML_BLOCK, " ")
                .str.replace_all(HTML_TAG, ""))
    out = tags(unescape_entities(tags(s)))
    return out.str.replace_all(r"\s+", " ").str.strip_chars().alias(s.name)


def _clean_text(out: pl.DataFrame, src: TableSource, table: str) -> pl.DataFrame:
    for key, fn in (("strip_html", strip_html), ("unescape_html", unescape_entities)):
        for col in getattr(src.text, key):
            s = out.get_column(col)
            if s.dtype == pl.Null:
                continue
            if s.dtype == pl.List(pl.Utf8):  # e.g. bullet points: clean each element
                cleaned = [None if v is None else fn(pl.Series(v, dtype=pl.Utf8)).to_list()
                           for v in s.to_list()]
                out = out.with_columns(pl.Series(col, cleaned, dtype=pl.List(pl.Utf8)))
            elif s.dtype == pl.Utf8:
                out = out.with_columns(fn(s).alias(col))
            else:
                raise MappingError(f"{table}.text.{key}: column '{col}' holds {s.dtype}, not text: "
                                   f"remove it from {table}.text.{key}")
    return out


def _convert(df: pl.DataFrame, src: TableSource, table: str, spec: MappingSpec) -> pl.DataFrame:
    """Rename, derive, add constants, clean text, cast canonical columns, map actions,
    parse times."""
    out = df.select(
        *[_column_expr(dst, v) for dst, v in src.columns.items()],
        *[pl.col(k) for k in src.keep],
    )
    out = out.with_columns(
        *[derive_column(df, template, dst) for dst, template in src.derive.items()],
        *[pl.lit(v, dtype=pl.Utf8 if isinstance(v, str) else None).alias(k)
          for k, v in src.constants.items()],
    )
    out = _clean_text(out, src, table)
    if table == "items" and spec.default_item_type:
        if "item_type" in out.columns:
            out = out.with_columns(pl.col("item_type").cast(pl.Utf8)
                                   .fill_null(pl.lit(spec.default_item_type)))
        else:
            out = out.with_columns(pl.lit(spec.default_item_type).alias("item_type"))
    out = out.with_columns(
        *[_as_id(out.get_column(c)) for c in ID_COLUMNS[table] if c in out.columns],
        *[pl.col(c).cast(pl.Utf8).str.strip_chars() for c in TEXT_COLUMNS[table]
          if c in out.columns],
    )
    if table == "interactions":
        assert isinstance(src, InteractionsSource)
        if src.actions:
            out = out.with_columns(pl.col("action").replace(src.actions))
        if "value" in out.columns:
            out = out.with_columns(pl.col("value").cast(pl.Float64, strict=False))
    for col in _time_columns(src, table):
        if col not in out.columns:
            continue
        parsed, raw = parse_time(out.get_column(col), src.timestamp.format, src.timestamp.timezone)
        out = out.with_columns(parsed)
        if raw is not None:
            out = out.with_columns(raw)
    first = [c for c in (*REQUIRED[table], "value", "created_at") if c in out.columns]
    return out.select(*first, *[c for c in out.columns if c not in first])


def _merge_expr(col: str, dtype: pl.DataType, how: AggregateColumn) -> pl.Expr:
    c = pl.col(col)
    if how.how in ("first", "last"):
        return (c.drop_nulls().first() if how.how == "first" else c.drop_nulls().last()).alias(col)
    if how.how == "count":
        return c.count().cast(pl.Int64).alias(col)
    if isinstance(dtype, pl.List):
        c = c.list.explode(keep_nulls=False, empty_as_null=False)
    values = c.drop_nulls().cast(pl.Utf8).unique(maintain_order=True)
    if how.how == "list":
        return values.alias(col)
    joined = values.str.join(how.separator if how.separator is not None else ", ")
    return pl.when(joined != "").then(joined).alias(col)


def merge_rows(df: pl.DataFrame, src: TableSource, table: str) -> pl.DataFrame:
    """One row per id under ``aggregate`` / ``distinct`` (members and items only).

    Rows without an id are left alone: merging them would hide them from validation,
    which quarantines them as ``missing_<id>``. Every returned row says in
    ``_source_rows`` how many source rows it merges, so the accounting adds up. Output
    order: by each id's first appearance in the source.
    """
    if table not in ENTITY_KEY or (src.aggregate is None and src.distinct is None):
        return df
    key = ENTITY_KEY[table]
    df = df.with_row_index("__order")
    columns = df.drop("__order").columns
    sort = src.distinct.latest_by if src.distinct is not None else src.aggregate.sort  # type: ignore[union-attr]
    if sort is not None:  # nulls first: a row with no date is the oldest
        df = df.sort([sort, "__order"], nulls_last=False, maintain_order=True)
    others = [c for c in columns if c != key]
    if src.distinct is not None:
        exprs = [pl.col(c).last() for c in others]  # the whole latest row
    else:
        assert src.aggregate is not None
        exprs = [_merge_expr(c, df.schema[c], src.aggregate.how(c)) for c in others]
    exprs += [pl.col("__order").min(), pl.len().cast(pl.UInt32).alias(SOURCE_ROWS)]
    merged = (df.filter(pl.col(key).is_not_null())
              .group_by(key, maintain_order=True).agg(*exprs))
    # Keyless rows each form their own group, so their columns get the same types.
    keyless = (df.filter(pl.col(key).is_null())
               .group_by("__order", maintain_order=True).agg(pl.col(key).first(), *exprs[:-2],
                                                             pl.len().cast(pl.UInt32)
                                                             .alias(SOURCE_ROWS)))
    out = pl.concat([merged, keyless.select(merged.columns)])
    return out.sort("__order").select(*columns, SOURCE_ROWS)


def read_table_source(
    src: TableSource, table: str, spec: MappingSpec, spec_path: Path
) -> pl.DataFrame:
    """All files of one table, converted and concatenated (columns unioned), then merged
    per id when the spec says ``aggregate`` / ``distinct`` (ids span files)."""
    nulls = spec.null_values_of(src)
    frames = [
        _convert(_read_source(path, src, table, nulls), src, table, spec)
        for path in _table_files(src, table, spec_path)
    ]
    df = frames[0] if len(frames) == 1 else pl.concat(frames, how="diagonal_relaxed")
    return merge_rows(df, src, table)


def read_mapped(spec_path: Path) -> CanonicalTables:
    """Read every source a spec names into the canonical tables (unvalidated).

    Members and items that the spec does not give are derived from the ids seen in
    interactions: members with only ``member_id``; items with ``default_item_type`` and
    their id as title (a table of real titles makes far better prompts).
    """
    spec_path = Path(spec_path)
    spec = load_mapping_spec(spec_path)
    interactions = read_table_source(spec.interactions, "interactions", spec, spec_path)
    if spec.members is not None:
        members = read_table_source(spec.members, "members", spec, spec_path)
    else:
        members = (
            interactions.select("member_id").drop_nulls().unique().sort("member_id")
        )
    if spec.items is not None:
        items = read_table_source(spec.items, "items", spec, spec_path)
    else:
        assert spec.default_item_type is not None  # enforced by MappingSpec
        items = (
            interactions.select("item_id").drop_nulls().unique().sort("item_id")
            .with_columns(pl.lit(spec.default_item_type).alias("item_type"),
                          pl.col("item_id").alias("title"))
        )
    return CanonicalTables(members=members, items=items, interactions=interactions)
