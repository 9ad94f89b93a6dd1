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
"""

from __future__ import annotations

import glob
import gzip
import html
import io
import re
import string
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import polars as pl
import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

# config_base, not components.config: validate.py imports this module and the pipeline
# config may import validate.py's config, so going through the package would be a cycle.
from components.config_base import ConfigError, StrictModel
from components.data.tables import CanonicalTables

PL_TIMESTAMP = pl.Datetime("us", "UTC")
TIMESTAMP_KEYWORDS = ("auto", "iso", "epoch_s", "epoch_ms")
FORMAT_BY_SUFFIX = {
    ".csv": "csv",
    ".tsv": "csv",
    ".txt": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
}
COMPRESSED_SUFFIXES = (".gz", ".gzip")
GZIP_MAGIC = b"\x1f\x8b"
SOURCE_ROWS = "_source_rows"  # provenance: how many source rows one aggregated row merges

# Canonical columns each table must end up with (from `columns` or `constants`).
REQUIRED = {
    "members": ("member_id",),
    "items": ("item_id", "item_type", "title"),
    "interactions": ("member_id", "item_id", "surface", "action", "timestamp"),
}
ID_COLUMNS = {"members": ("member_id",), "items": ("item_id",),
              "interactions": ("member_id", "item_id")}
TEXT_COLUMNS = {"members": (), "items": ("item_type", "title"),
                "interactions": ("surface", "action")}
# The time columns a table's `timestamp` options apply to unless `timestamp.columns` says.
TIME_COLUMNS = {"members": (), "items": ("created_at",), "interactions": ("timestamp",)}
ENTITY_KEY = {"members": "member_id", "items": "item_id"}

_NUMBER = r"^[+-]?\d+(\.\d+)?$"

# Naive layouts `auto` / `iso` read once the text is normalized (date separators '-',
# one space before the time, '.' before fractions, the zone split off). `%.f` also
# matches no fraction at all.
_NAIVE_FORMATS = (
    "%Y-%m-%d %H:%M:%S%.f",
    "%Y-%m-%d %H:%M",
    "%a, %d %b %Y %H:%M:%S",   # RFC 2822 (HTTP, e-mail): "Fri, 12 Dec 2014 20:12:35 GMT"
    "%a, %d %b %Y %H:%M",
    "%d %b %Y %H:%M:%S",
    "%d %b %Y %H:%M",
)
_TIME_TAIL = r"\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?"
# "...20:12:35+01:00", "...20:12:35 -0500", "...20:12:35 UTC+1", "...20:12 GMT+05:30"
_OFFSET_RE = (r"^(?P<body>.*" + _TIME_TAIL + r")\s*(?:(?i:utc|gmt))?\s*"
              r"(?P<sign>[+-])(?P<hh>\d{1,2})(?::?(?P<mm>\d{2}))?$")
# "...20:12:35 UTC", "...20:12:35Z", "2014-12-12 EST", "...10:00 Europe/Paris"
_ZONE_RE = r"^(?P<body>.*\d)\s*(?P<zone>[A-Za-z][A-Za-z_]*(?:/[A-Za-z_+\-]+)*)$"

#: Zone abbreviations `auto` reads as fixed offsets (minutes east of UTC). Ambiguous
#: ones take their most common reading in logs (CST: US Central; IST: India); others
#: (e.g. "ADT") are unparsable: set a strftime pattern or `timezone` instead.
ZONE_ABBREVIATIONS: dict[str, int] = {
    "Z": 0, "UTC": 0, "GMT": 0, "UT": 0, "ZULU": 0, "WET": 0,
    "WEST": 60, "BST": 60, "CET": 60, "MET": 60, "CEST": 120, "MEST": 120,
    "EET": 120, "EEST": 180, "MSK": 180, "IST": 330, "SGT": 480, "HKT": 480,
    "JST": 540, "KST": 540, "AEST": 600, "AEDT": 660, "NZST": 720, "NZDT": 780,
    "EST": -300, "EDT": -240, "CST": -360, "CDT": -300, "MST": -420, "MDT": -360,
    "PST": -480, "PDT": -420, "AKST": -540, "AKDT": -480, "HST": -600,
}


class MappingError(ConfigError):
    """A mapping spec, or a source file, that cannot be used: names the key/file and the fix."""


# --------------------------------------------------------------------------- the spec


def _key_to_str(value: Any) -> Any:
    """YAML turns unquoted ``1`` or ``true`` into numbers/bools; source values are text."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return str(value)
    return value


class TimestampSpec(StrictModel):
    """How the table's time columns are written in the source.

    ``format``: ``auto`` (by type: datetimes are kept, numbers are epoch seconds, text is
    ISO-8601-like or epoch seconds), ``iso``, ``epoch_s``, ``epoch_ms``, or a strftime
    pattern such as ``"%d/%m/%Y %H:%M"``. ``timezone`` is the clock of naive values (an
    IANA name); everything is stored as UTC.
    """

    format: str = Field("auto", description="auto | iso | epoch_s | epoch_ms | strftime pattern")
    timezone: str = Field("UTC", description="IANA time zone of naive (offset-less) values.")
    columns: list[str] | None = Field(
        None,
        description="Canonical (output) columns to parse; default: interactions.timestamp, "
        "items.created_at.",
    )

    @field_validator("format")
    @classmethod
    def _known_format(cls, v: str) -> str:
        if v not in TIMESTAMP_KEYWORDS and "%" not in v:
            raise ValueError(
                f"unknown timestamp format {v!r}: use one of {list(TIMESTAMP_KEYWORDS)} or a "
                f"strftime pattern such as '%Y-%m-%d %H:%M:%S'"
            )
        return v

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r}: use an IANA name such as 'UTC' or "
                             f"'Europe/Paris'") from None
        return v


AggregateHow = Literal["first", "last", "list", "count", "join"]


class AggregateColumn(StrictModel):
    """How one column of several rows per id becomes one value."""

    how: AggregateHow = Field(description="first | last | list | count | join")
    separator: str | None = Field(None, description="join only; default ', '.")

    @model_validator(mode="after")
    def _separator_for_join(self) -> AggregateColumn:
        if self.separator is not None and self.how != "join":
            raise ValueError(f"separator is only used by `how: join`, not `how: {self.how}`: "
                             f"remove it or use join")
        return self


class AggregateSpec(StrictModel):
    """Several source rows per member / item (a profile over many rows) become one row.

    Rows are ordered by ``sort`` (an output column; file order when omitted; nulls count
    as the oldest); ``first`` / ``last`` take the first / last non-null value in that
    order, ``list`` the distinct non-null values in order (lists are flattened),
    ``join`` the same joined by ``separator``, ``count`` the number of non-null values.
    """

    sort: str | None = Field(None, description="Output column that orders the rows of one id.")
    default: Literal["first", "last"] = Field(
        "first", description="How columns not listed under `columns` are merged.")
    columns: dict[str, AggregateHow | AggregateColumn] = Field(
        default_factory=dict, description="Output column -> first | last | list | count | "
        "join, or {how: join, separator: '; '}.")

    def how(self, column: str) -> AggregateColumn:
        spec = self.columns.get(column, self.default)
        return spec if isinstance(spec, AggregateColumn) else AggregateColumn(how=spec)


class DistinctSpec(StrictModel):
    """One row per id, whole rows: the latest row wins (an entity table cut from events)."""

    latest_by: str | None = Field(
        None, description="Output column whose largest value marks the latest row; default: "
        "the last row in file order.")


class TextSpec(StrictModel):
    """Clean-up of text columns that hold markup (job descriptions exported as HTML)."""

    strip_html: list[str] = Field(
        default_factory=list,
        description="Output columns whose HTML tags are removed and entities unescaped.")
    unescape_html: list[str] = Field(
        default_factory=list, description="Output columns whose entities (&amp;) are unescaped.")


def _template_fields(template: str) -> list[str]:
    """Placeholder names of ``"{City}, {State}"``; raises ValueError on a bad template."""
    names = []
    for _, name, spec, conversion in string.Formatter().parse(template):
        if name is None:
            continue
        if not name or spec or conversion:
            raise ValueError(f"template {template!r}: use plain placeholders such as "
                             f"'{{City}}' (no positional '{{}}', format specs or conversions); "
                             f"write '{{{{' for a literal brace")
        names.append(name)
    return names


class TableSource(StrictModel):
    """Where one canonical table comes from and how its columns map."""

    path: str = Field(description="File or glob, relative to the spec file's directory.")
    format: Literal["csv", "parquet", "jsonl", "json"] | None = Field(
        None, description="Inferred from the suffix when omitted (.csv/.tsv, .parquet, .jsonl, "
        ".json, each optionally .gz).")
    separator: str | None = Field(None, description="CSV only; default ',' (tab for .tsv).")
    null_values: list[str] | None = Field(
        None, description="Source text that means missing (e.g. ['NA', '']); default: the "
        "spec's top-level null_values.")
    columns: dict[str, str | list[str]] = Field(
        default_factory=dict, description="Output column -> source column, or a list of source "
        "columns tried in order (the first non-empty value wins: `title: [title, brand]`)."
    )
    keep: list[str] = Field(
        default_factory=list, description="Source columns kept under their own names."
    )
    constants: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="Output column -> constant value."
    )
    derive: dict[str, str] = Field(
        default_factory=dict, description="Output column -> template of source columns, e.g. "
        "'{City}, {State}'.")
    text: TextSpec = TextSpec()
    timestamp: TimestampSpec = TimestampSpec()
    aggregate: AggregateSpec | None = Field(
        None, description="members / items only: merge several rows per id into one.")
    distinct: DistinctSpec | None = Field(
        None, description="members / items only: one row per id, the latest row wins "
        "(true, or {latest_by: column}).")

    @field_validator("columns", mode="before")
    @classmethod
    def _str_sources(cls, v: Any) -> Any:
        return {k: _key_to_str(s) for k, s in v.items()} if isinstance(v, Mapping) else v

    @field_validator("keep", mode="before")
    @classmethod
    def _str_keep(cls, v: Any) -> Any:
        return [_key_to_str(s) for s in v] if isinstance(v, list) else v

    @field_validator("null_values", mode="before")
    @classmethod
    def _str_nulls(cls, v: Any) -> Any:
        return [_key_to_str(s) for s in v] if isinstance(v, list) else v

    @field_validator("distinct", mode="before")
    @classmethod
    def _distinct_flag(cls, v: Any) -> Any:
        if isinstance(v, bool):  # `distinct: true` is the plain form
            return {} if v else None
        return v

    @field_validator("separator")
    @classmethod
    def _one_char(cls, v: str | None) -> str | None:
        if v is not None and len(v.encode()) != 1:
            raise ValueError(f"separator must be one single-byte character, got {v!r}")
        return v

    @field_validator("derive")
    @classmethod
    def _templates(cls, v: dict[str, str]) -> dict[str, str]:
        for out, template in v.items():
            try:
                fields = _template_fields(template)
            except ValueError as exc:
                raise ValueError(f"derive.{out}: {exc}") from None
            if not fields:
                raise ValueError(f"derive.{out}: template {template!r} names no source column: "
                                 f"use placeholders such as '{{City}}, {{State}}', or put a fixed "
                                 f"value under `constants`")
        return v

    def output_columns(self) -> set[str]:
        return {*self.columns, *self.constants, *self.keep, *self.derive}


class InteractionsSource(TableSource):
    """The interactions table, plus the action vocabulary."""

    actions: dict[str, str] = Field(
        default_factory=dict,
        description="Source action value -> canonical action; unmapped values pass through.",
    )
    actions_legal: list[str] | None = Field(
        None, description="The dataset's legal actions; default: the values of `actions`."
    )

    @field_validator("actions", mode="before")
    @classmethod
    def _str_action_keys(cls, v: Any) -> Any:
        return {_key_to_str(k): s for k, s in v.items()} if isinstance(v, Mapping) else v


def _table_problems(table: str, src: TableSource) -> list[str]:
    """Cross-key checks of one table section; each message names the key and the fix."""
    problems: list[str] = []
    named = {"columns": set(src.columns), "constants": set(src.constants),
             "keep": set(src.keep), "derive": set(src.derive)}
    keys = list(named)
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            both = sorted(named[a] & named[b])
            if both:
                problems.append(f"{table}: {both} set both under `{a}` and `{b}`; keep one"
                                + (" (map them under a new name instead)" if "keep" in (a, b)
                                   else ""))
    outputs = src.output_columns()
    unknown_time = sorted(set(src.timestamp.columns or ()) - outputs)
    if unknown_time:
        problems.append(f"{table}.timestamp.columns: {unknown_time} are not output "
                        f"columns of {table}: name columns from `columns` or `keep`")
    for key in ("strip_html", "unescape_html"):
        unknown = sorted(set(getattr(src.text, key)) - outputs)
        if unknown:
            problems.append(f"{table}.text.{key}: {unknown} are not output columns of {table}: "
                            f"name columns from `columns`, `keep` or `derive`")
    if table == "interactions":
        for key in ("aggregate", "distinct"):
            if getattr(src, key) is not None:
                problems.append(f"interactions.{key}: only members and items merge several rows "
                                f"per id; every interaction is an event of its own. Remove it")
        return problems
    key_col = ENTITY_KEY[table]
    if src.aggregate is not None and src.distinct is not None:
        problems.append(f"{table}: set either `aggregate` (merge columns) or `distinct` (the "
                        f"latest whole row wins), not both")
    if src.aggregate is not None:
        agg = src.aggregate
        if agg.sort is not None and agg.sort not in outputs:
            problems.append(f"{table}.aggregate.sort: {agg.sort!r} is not an output column of "
                            f"{table} (have {sorted(outputs)}): map it under `columns` or `keep`")
        unknown = sorted(set(agg.columns) - outputs)
        if unknown:
            problems.append(f"{table}.aggregate.columns: {unknown} are not output columns of "
                            f"{table} (have {sorted(outputs)}): fix the names")
        if key_col in agg.columns:
            problems.append(f"{table}.aggregate.columns.{key_col}: the id is what rows are "
                            f"grouped by; remove it")
    if src.distinct is not None and src.distinct.latest_by is not None \
            and src.distinct.latest_by not in outputs:
        problems.append(f"{table}.distinct.latest_by: {src.distinct.latest_by!r} is not an "
                        f"output column of {table} (have {sorted(outputs)}): map it under "
                        f"`columns` or `keep`")
    return problems


class MappingSpec(StrictModel):
    """A whole column-mapping spec (one YAML file). See docs/datasets.md."""

    name: str | None = Field(None, description="Dataset name, for humans and logs.")
    description: str | None = None
    default_item_type: str | None = Field(
        None,
        description="item_type of items known only from interactions, and of item rows "
        "without one.",
    )
    null_values: list[str] = Field(
        default_factory=list, description="Source text that means missing in every table "
        "(e.g. ['NA', 'NULL', '']); a table's own null_values replace it.")
    interactions: InteractionsSource
    members: TableSource | None = Field(None, description="Default: the ids in interactions.")
    items: TableSource | None = Field(None, description="Default: the ids in interactions.")

    @field_validator("null_values", mode="before")
    @classmethod
    def _str_nulls(cls, v: Any) -> Any:
        return [_key_to_str(s) for s in v] if isinstance(v, list) else v

    @model_validator(mode="after")
    def _complete(self) -> MappingSpec:
        problems: list[str] = []
        for table in ("interactions", "members", "items"):
            src: TableSource | None = getattr(self, table)
            if src is None:
                continue
            problems += _table_problems(table, src)
            have = set(src.columns) | set(src.constants) | set(src.derive)
            if table == "items" and self.default_item_type:
                have.add("item_type")
            for col in REQUIRED[table]:
                if col not in have:
                    hint = "surface: web" if col == "surface" else f"{col}: <value>"
                    problems.append(
                        f"{table}: canonical column '{col}' is not mapped: add `{col}: <source "
                        f"column>` under {table}.columns or `{hint}` under {table}.constants"
                        + (" (or set default_item_type)" if col == "item_type" else "")
                        + (" (or build it: `title: '{name} ({category})'` under items.derive)"
                           if col == "title" else "")
                    )
        if self.items is None and not self.default_item_type:
            problems.append(
                "items: no items table is given, so items are derived from the ids in "
                "interactions and need a type: set `default_item_type: <type>` (e.g. product) "
                "or add an `items:` section"
            )
        legal = self.interactions.actions_legal
        if legal is not None:
            for src_value, action in self.interactions.actions.items():
                if action not in legal:
                    problems.append(
                        f"interactions.actions maps {src_value!r} to {action!r}, which is not in "
                        f"interactions.actions_legal {legal}: fix the spelling or add it there"
                    )
        if problems:
            raise ValueError("\n  - ".join(problems))
        return self

    def tables(self) -> dict[str, TableSource]:
        """The tables given in the spec (interactions always; members/items if present)."""
        out: dict[str, TableSource] = {"interactions": self.interactions}
        if self.members is not None:
            out["members"] = self.members
        if self.items is not None:
            out["items"] = self.items
        return out

    def null_values_of(self, src: TableSource) -> list[str]:
        """The strings read as missing in ``src``: its own list, else the top-level one."""
        return list(src.null_values if src.null_values is not None else self.null_values)


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel]:
    """The model that owns the last key of ``loc`` (for the 'allowed keys' hint)."""
    model: type[BaseModel] = MappingSpec
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        if field is None:
            break
        ann = field.annotation
        candidates = get_args(ann) if get_origin(ann) in (Union, type(int | None)) else (ann,)
        sub = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
        if not sub:
            break
        model = sub[0]
    return model


def format_spec_error(err: ValidationError, source: str) -> str:
    """One line per problem, each naming the YAML key (dotted) and the fix."""
    lines = [f"invalid mapping spec {source}:"]
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "<top level>"
        if e["type"] == "extra_forbidden":
            model = _model_at(e["loc"])
            lines.append(f"  - unknown key '{where}': remove it or fix its spelling "
                         f"(allowed keys here: {', '.join(model.model_fields)})")
        elif e["type"] == "missing":
            lines.append(f"  - missing key '{where}': add it (see docs/datasets.md)")
        else:
            msg = str(e["msg"]).removeprefix("Value error, ")
            if e["type"] == "value_error":  # our own checks: the message names the key
                lines.append(f"  - {msg}" if not e["loc"] else f"  - {where}: {msg}")
            else:
                lines.append(f"  - {where}: {msg} (got {e.get('input')!r})")
    return "\n".join(lines)


def load_mapping_spec(path: Path | str) -> MappingSpec:
    """Load and check a spec; any problem raises :class:`MappingError` naming the key."""
    path = Path(path)
    if not path.is_file():
        raise MappingError(f"mapping spec {path} not found: set data.mapping.spec to an existing "
                           f"YAML file (see docs/datasets.md and examples/mapping/)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise MappingError(f"mapping spec {path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise MappingError(f"mapping spec {path}: the top level must be a mapping with at least "
                           f"an `interactions:` section, got {type(raw).__name__}")
    try:
        return MappingSpec.model_validate(raw)
    except ValidationError as err:
        raise MappingError(format_spec_error(err, str(path))) from None


def legal_actions(spec: MappingSpec) -> tuple[str, ...]:
    """The dataset's action vocabulary: ``actions_legal``, else what ``actions`` maps to.

    A constant ``action`` counts too. Raises when nothing declares it: guessing it from
    the data would make every action legal and the unknown-action check useless.
    """
    inter = spec.interactions
    if inter.actions_legal is not None:
        return tuple(dict.fromkeys(inter.actions_legal))
    vocab = list(dict.fromkeys(inter.actions.values()))
    const = inter.constants.get("action")
    if const is not None and str(const) not in vocab:
        vocab.append(str(const))
    if not vocab:
        raise MappingError(
            "the mapping spec declares no action vocabulary: list it under "
            "interactions.actions_legal (e.g. [view, click, purchase]), map source values "
            "under interactions.actions, or set data.actions in the pipeline profile"
        )
    return tuple(vocab)


# --------------------------------------------------------------------------- reading


def _table_files(src: TableSource, table: str, spec_path: Path) -> list[Path]:
    pattern = str(Path(spec_path).parent / src.path)
    files = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
    if not files:
        raise MappingError(
            f"{spec_path}: {table}.path '{src.path}' matches no file ({pattern}). Fix "
            f"{table}.path: it is a file or glob relative to the spec file's directory"
        )
    return files


def source_files(spec: MappingSpec, spec_path: Path) -> list[Path]:
    """Every source file the spec reads (for caching: a changed file re-runs ingest)."""
    return [f for table, src in spec.tables().items() for f in _table_files(src, table, spec_path)]


def _plain_suffix(path: Path) -> str:
    """The suffix that names the format: ``events.csv.gz`` -> ``.csv``."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSED_SUFFIXES:
        suffixes.pop()
    return suffixes[-1] if suffixes else ""


def _file_format(path: Path, src: TableSource, table: str) -> str:
    if src.format:
        return src.format
    fmt = FORMAT_BY_SUFFIX.get(_plain_suffix(path))
    if fmt is None:
        raise MappingError(
            f"{path}: cannot tell the format from the suffix '{''.join(path.suffixes)}': set "
            f"{table}.format to csv, parquet, jsonl or json"
        )
    return fmt


def _file_bytes(path: Path) -> Path | io.BytesIO:
    """The file itself, or its decompressed bytes when it is gzip (told by its first
    bytes, not its name, so a ``.gz`` suffix that lies cannot break the read)."""
    with path.open("rb") as fh:
        magic = fh.read(2)
    if magic == GZIP_MAGIC:
        with gzip.open(path, "rb") as fh:
            return io.BytesIO(fh.read())
    return path


def _sources(value: str | list[str]) -> list[str]:
    """The source columns a ``columns`` entry names (one, or a fallback list)."""
    return [value] if isinstance(value, str) else list(value)


def _column_expr(dst: str, value: str | list[str]) -> pl.Expr:
    """One output column from its source(s): a fallback list takes, per row, the first
    source whose value is not null and not blank (as text when the sources differ)."""
    names = _sources(value)
    if len(names) == 1:
        return pl.col(names[0]).alias(dst)
    tries = [pl.when(pl.col(n).cast(pl.Utf8).str.strip_chars() != "").then(pl.col(n).cast(pl.Utf8))
             for n in names]
    return pl.coalesce(tries).alias(dst)


def _source_columns(src: TableSource) -> list[tuple[str, str]]:
    """(source column, spec key that names it), in spec order."""
    out = [(s, f"columns.{dst}") for dst, v in src.columns.items() for s in _sources(v)]
    out += [(k, "keep") for k in src.keep]
    return out + [(f, f"derive.{dst}") for dst, t in src.derive.items()
                  for f in dict.fromkeys(_template_fields(t))]


def _read_json(data: Path | io.BytesIO) -> pl.DataFrame:
    """A ``.json`` file: an array of records, or (as many exports are) JSON lines."""
    if isinstance(data, io.BytesIO):
        head = data.getvalue()[:4096]
    else:
        with data.open("rb") as fh:
            head = fh.read(4096)
    if head.lstrip()[:1] == b"[":
        if isinstance(data, io.BytesIO):
            data.seek(0)
        return pl.read_json(data, infer_schema_length=None)
    return pl.read_ndjson(data, infer_schema_length=None)


def _read_source(path: Path, src: TableSource, table: str, nulls: list[str]) -> pl.DataFrame:
    """Read one file. CSV ids (and strftime/ISO time columns) are read as text so that
    leading zeros survive; types are inferred over the whole file so a late odd value
    turns the column to text instead of failing the read; ``nulls`` become null before
    inference, so a numeric column with ``NA`` stays numeric."""
    fmt = _file_format(path, src, table)
    try:
        data = _file_bytes(path)
        if fmt == "csv":
            sep = src.separator or ("\t" if _plain_suffix(path) == ".tsv" else ",")
            header = pl.read_csv(data, separator=sep, n_rows=0).columns
            if isinstance(data, io.BytesIO):
                data.seek(0)
            text_cols = [n for c in ID_COLUMNS[table] if c in src.columns for n in _sources(src.columns[c])]
            if src.timestamp.format not in ("auto", "epoch_s", "epoch_ms"):
                text_cols += [n for c in _time_columns(src, table) if c in src.columns
                              for n in _sources(src.columns[c])]
            _check_columns(path, header, src, table)
            df = pl.read_csv(
                data,
                separator=sep,
                infer_schema_length=None,
                null_values=nulls or None,
                schema_overrides={c: pl.Utf8 for c in text_cols if c in header},
            )
        elif fmt == "parquet":
            df = pl.read_parquet(data)
        elif fmt == "json":
            df = _read_json(data)
        else:
            df = pl.read_ndjson(data, infer_schema_length=None)
    except MappingError:
        raise
    except Exception as exc:  # polars raises several error types for unreadable files
        raise MappingError(
            f"{path}: cannot read it as {fmt} ({type(exc).__name__}: {exc}). Fix the file, or "
            f"set {table}.format if the suffix is misleading"
        ) from exc
    _check_columns(path, df.columns, src, table)
    return _apply_null_values(df, nulls)


def _apply_null_values(df: pl.DataFrame, nulls: list[str]) -> pl.DataFrame:
    """Text equal to a null marker (surrounding blanks ignored) becomes null, in text
    columns and inside lists of text (JSON and Parquet sources; CSV did it on read)."""
    if not nulls:
        return df
    marks = pl.Series(nulls, dtype=pl.Utf8).str.strip_chars().implode()
    exprs = []
    for name, dtype in df.schema.items():
        col = pl.col(name)
        if dtype == pl.Utf8:
            exprs.append(pl.when(col.str.strip_chars().is_in(marks)).then(None)
                         .otherwise(col).alias(name))
        elif dtype == pl.List(pl.Utf8):
            exprs.append(col.list.eval(pl.element().filter(
                ~pl.element().str.strip_chars().is_in(marks) | pl.element().is_null())).alias(name))
    return df.with_columns(exprs) if exprs else df


def _check_columns(path: Path, present: list[str], src: TableSource, table: str) -> None:
    for col, key in _source_columns(src):
        if col not in present:
            raise MappingError(
                f"{path}: source column '{col}' (named by {table}.{key} in the mapping spec) "
                f"is not in the file; its columns are {present}. Fix {table}.{key} or the file"
            )


def _time_columns(src: TableSource, table: str) -> tuple[str, ...]:
    return tuple(src.timestamp.columns) if src.timestamp.columns is not None else TIME_COLUMNS[table]


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


def _epoch(values: pl.Series, unit: str) -> pl.Series:
    """Epoch numbers (ints, floats or numeric text) -> UTC; non-numbers -> null.

    ``unit`` "auto" reads each value by its size: a log from before the year 5138 written
    in seconds stays under 1e11, so larger values are milliseconds (then micro-, nano-):
    JavaScript and Java loggers write milliseconds.
    """
    if values.dtype == pl.Utf8:
        values = values.str.strip_chars().cast(pl.Float64, strict=False)
    x = values.cast(pl.Float64)
    if unit == "auto":
        size = x.abs()
        per = pl.select(
            pl.when(pl.lit(size) >= 1e17).then(pl.lit(1e-3))
            .when(pl.lit(size) >= 1e14).then(pl.lit(1.0))
            .when(pl.lit(size) >= 1e11).then(pl.lit(1e3))
            .otherwise(pl.lit(1e6))
        ).to_series()
        micros = (x * per).round().cast(pl.Int64, strict=False)
    elif values.dtype.is_integer():
        micros = values.cast(pl.Int64) * (1_000_000 if unit == "s" else 1_000)
    else:
        micros = (x * (1_000_000 if unit == "s" else 1_000)).round().cast(pl.Int64, strict=False)
    return pl.from_epoch(micros, time_unit="us").dt.replace_time_zone("UTC").cast(PL_TIMESTAMP)


def _localize(naive: pl.Expr, tz: str) -> pl.Expr:
    """Naive wall-clock times in ``tz`` -> UTC; a time that does not exist there is null."""
    return naive.dt.replace_time_zone(tz, ambiguous="earliest", non_existent="null") \
        .dt.convert_time_zone("UTC")


def _strptime(text: pl.Series, pattern: str, tz: str) -> pl.Series:
    col = pl.lit(text)
    if re.search(r"%[:#]?z", pattern):
        expr = col.str.to_datetime(pattern, strict=False, time_unit="us", time_zone="UTC")
    else:
        expr = _localize(col.str.to_datetime(pattern, strict=False, time_unit="us"), tz)
    return pl.select(expr.cast(PL_TIMESTAMP)).to_series()


def _iana_zone(name: str) -> bool:
    if "/" not in name:  # "EST" or "PM" would also be keys of the tz database or nothing
        return False
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def parse_datetime_text(text: pl.Series, tz: str = "UTC") -> pl.Series:
    """Date-time text as real logs write it -> UTC, row by row (rows may differ).

    Understood: ISO-8601 with ``T`` or a space (``2014-12-12T20:12:35``), ``/`` or ``.``
    date separators when the year comes first, fractional seconds (``.123`` or ``,123``),
    no seconds, date only; a trailing numeric offset (``+01:00``, ``-0500``, ``UTC+1``),
    ``Z`` / ``UTC`` / ``GMT``, a zone abbreviation of :data:`ZONE_ABBREVIATIONS` or an
    IANA name (``Europe/Paris``); RFC 2822 (``Fri, 12 Dec 2014 20:12:35 GMT``). Values
    without a zone are read in ``tz``. Anything else (``12/12/2014``: day or month
    first?) is null: such data needs a strftime pattern.
    """
    t = text.cast(pl.Utf8).str.strip_chars()
    t = (t.str.replace(r"^(\d{4})[/.-](\d{1,2})[/.-](\d{1,2})", "${1}-${2}-${3}")
         .str.replace(r"^(\d{4}-\d{1,2}-\d{1,2})(?:[Tt]\s*|\s+)(\d)", "${1} ${2}")
         .str.replace(r"(\d:\d{2}:\d{2}),(\d)", "${1}.${2}"))
    df = pl.DataFrame({"t": t})
    df = df.with_columns(pl.col("t").str.extract_groups(_OFFSET_RE).alias("o"))
    df = df.with_columns(
        pl.when(pl.col("o").struct.field("body").is_null())
        .then(pl.col("t").str.extract_groups(_ZONE_RE))
        .alias("z")
    )
    sign = pl.when(pl.col("o").struct.field("sign") == "-").then(-1).otherwise(1)
    numeric = sign * (pl.col("o").struct.field("hh").cast(pl.Int32) * 60
                      + pl.col("o").struct.field("mm").cast(pl.Int32).fill_null(0))
    zone = pl.col("z").struct.field("zone")
    abbr = zone.str.to_uppercase().replace_strict(ZONE_ABBREVIATIONS, default=None,
                                                   return_dtype=pl.Int32)
    df = df.select(
        pl.coalesce(pl.col("o").struct.field("body"), pl.col("z").struct.field("body"),
                    pl.col("t")).alias("body"),
        zone.alias("zone"),
        pl.coalesce(numeric, abbr).alias("offset"),
    )
    body = pl.col("body")
    naive = pl.coalesce(
        [body.str.to_datetime(f, strict=False, time_unit="us") for f in _NAIVE_FORMATS]
        + [body.str.to_date("%Y-%m-%d", strict=False).cast(pl.Datetime("us"))]
    )
    as_utc = (naive.dt.replace_time_zone("UTC") - pl.duration(minutes=pl.col("offset")))
    expr = pl.when(pl.col("offset").is_not_null()).then(as_utc.cast(PL_TIMESTAMP))
    zones = [z for z in df.get_column("zone").drop_nulls().unique().sort().to_list()
             if z.upper() not in ZONE_ABBREVIATIONS and _iana_zone(z)]
    for z in zones:
        expr = expr.when(pl.col("zone") == z).then(_localize(naive, z).cast(PL_TIMESTAMP))
    expr = expr.when(pl.col("zone").is_not_null()).then(pl.lit(None, dtype=PL_TIMESTAMP))
    expr = expr.otherwise(_localize(naive, tz).cast(PL_TIMESTAMP))
    return df.select(expr.alias(text.name)).to_series()


def parse_time(s: pl.Series, fmt: str = "auto", tz: str = "UTC") -> tuple[pl.Series, pl.Series | None]:
    """Parse one time column to UTC microseconds.

    Returns (parsed, raw): ``raw`` is only given when the values came as text and holds
    the original text of the rows that failed to parse (null elsewhere), so validation
    can quarantine them as unparsable rather than missing.
    """
    name = s.name
    if s.dtype == pl.Date:
        s = s.cast(pl.Datetime("us"))
    if isinstance(s.dtype, pl.Datetime):
        expr = pl.lit(s)
        expr = _localize(expr, tz) if s.dtype.time_zone is None else expr.dt.convert_time_zone("UTC")
        return pl.select(expr.cast(PL_TIMESTAMP)).to_series().alias(name), None
    if s.dtype == pl.Null:
        return pl.Series(name, [None] * len(s), dtype=PL_TIMESTAMP), None
    if s.dtype.is_numeric() and fmt in ("auto", "epoch_s", "epoch_ms"):
        unit = {"auto": "auto", "epoch_s": "s", "epoch_ms": "ms"}[fmt]
        return _epoch(s, unit).alias(name), None

    original = s if s.dtype == pl.Utf8 else s.cast(pl.Utf8)
    text = original.str.strip_chars()
    if fmt in ("epoch_s", "epoch_ms"):
        parsed = _epoch(text, "ms" if fmt == "epoch_ms" else "s")
    elif fmt == "iso":
        parsed = parse_datetime_text(text, tz)
    elif fmt == "auto":
        numeric = text.str.contains(_NUMBER)
        parsed = pl.select(
            pl.when(pl.lit(numeric)).then(pl.lit(_epoch(text, "auto")))
            .otherwise(pl.lit(parse_datetime_text(text, tz)))
        ).to_series()
    else:
        parsed = _strptime(text, fmt, tz)
    failed = parsed.is_null() & original.is_not_null()
    raw = pl.select(pl.when(pl.lit(failed)).then(pl.lit(original))).to_series()
    return parsed.alias(name), raw.cast(pl.Utf8).alias(f"_raw_{name}")


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


__all__ = [
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
