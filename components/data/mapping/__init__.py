"""Column-mapping adapter: onboard CSV / Parquet / JSON logs with a YAML spec, not code.

A new dataset should cost one YAML file: which files hold each table, which source
column becomes which canonical column, which constants fill the gaps (``surface: web``),
how timestamps are written and how source action names map onto the canonical ones.
Real logs need a little more, and the spec says it instead of a script: which strings
mean "missing" (``null_values: [NA]``), how several rows per member or item become one
(``aggregate`` / ``distinct``), columns built from others (``derive: {location:
"{City}, {State}"}``) and HTML to strip from text (``text.strip_html``). The spec is a
strict pydantic model, so a typo (``colums:``) stops the run with the key's path and
the fix instead of silently producing an empty column.

Like every adapter this one renames and converts but drops no row: a value that cannot
be converted becomes null and validation quarantines the row with a reason. A timestamp
that came as text and failed to parse also keeps its text in ``_raw_<column>``
(``_raw_timestamp`` for interactions), a provenance column validation shows in the
quarantine table. The one deliberate exception is ``aggregate`` / ``distinct``, which
merge the rows of one id: each merged row says in ``_source_rows`` how many source rows
it stands for, so source rows = sum of ``_source_rows`` and the accounting still adds
up. Whole-file problems (no file matches a path, a mapped source column is missing, an
unreadable file) raise :class:`MappingError` naming the file, the column and the spec
key to fix. The format is documented in ``docs/datasets.md``.

Layout: :mod:`.spec` (the spec models, ``load_mapping_spec``, ``legal_actions``),
:mod:`.readers` (files, formats, reading), :mod:`.timestamps` (``parse_time``) and
:mod:`.convert` (renaming, derive, text clean-up, merging rows, ``read_mapped``).
"""

from __future__ import annotations

from components.data.mapping.convert import (
    HTML_ENTITY,
    HTML_TAG,
    derive_column,
    merge_rows,
    read_mapped,
    read_table_source,
    strip_html,
    unescape_entities,
)
from components.data.mapping.readers import (
    COMPRESSED_SUFFIXES,
    FORMAT_BY_SUFFIX,
    GZIP_MAGIC,
    source_files,
)
from components.data.mapping.spec import (
    ENTITY_KEY,
    ID_COLUMNS,
    REQUIRED,
    SOURCE_ROWS,
    TEXT_COLUMNS,
    TIME_COLUMNS,
    TIMESTAMP_KEYWORDS,
    AggregateColumn,
    AggregateSpec,
    DistinctSpec,
    InteractionsSource,
    MappingError,
    MappingSpec,
    TableSource,
    TextSpec,
    TimestampSpec,
    format_spec_error,
    legal_actions,
    load_mapping_spec,
)
from components.data.mapping.timestamps import (
    PL_TIMESTAMP,
    ZONE_ABBREVIATIONS,
    parse_datetime_text,
    parse_time,
)

__all__ = [
    "COMPRESSED_SUFFIXES",
    "ENTITY_KEY",
    "FORMAT_BY_SUFFIX",
    "GZIP_MAGIC",
    "HTML_ENTITY",
    "HTML_TAG",
    "ID_COLUMNS",
    "PL_TIMESTAMP",
    "REQUIRED",
    "SOURCE_ROWS",
    "TEXT_COLUMNS",
    "TIMESTAMP_KEYWORDS",
    "TIME_COLUMNS",
    "ZONE_ABBREVIATIONS",
    "AggregateColumn",
    "AggregateSpec",
    "DistinctSpec",
    "InteractionsSource",
    "MappingError",
    "MappingSpec",
    "TableSource",
    "TextSpec",
    "TimestampSpec",
    "derive_column",
    "format_spec_error",
    "legal_actions",
    "load_mapping_spec",
    "merge_rows",
    "parse_datetime_text",
    "parse_time",
    "read_mapped",
    "read_table_source",
    "source_files",
    "strip_html",
    "unescape_entities",
]
