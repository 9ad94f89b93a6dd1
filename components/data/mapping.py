"""Column-mapping adapter: onboard CSV / Parquet / JSON-lines logs with a YAML spec, not code.

A new dataset should cost one YAML file: which files hold each table, which source
column becomes which canonical column, which constants fill the gaps (``surface: web``),
how timestamps are written and how source action names map onto the canonical ones.
The spec is a strict pydantic model, so a typo (``colums:``) stops the run with the
key's path and the fix instead of silently producing an empty column.

Like every adapter this one renames and converts but drops no row: a value that cannot
be converted becomes null and validation quarantines the row with a reason. A timestamp
that came as text and failed to parse also keeps its text in ``_raw_<column>``
(``_raw_timestamp`` for interactions), a provenance column validation shows in the
quarantine table. Whole-file problems (no file matches a path, a mapped source column
is missing, an unreadable file) raise :class:`MappingError` naming the file, the column
and the spec key to fix. The format is documented in ``docs/datasets.md``.
"""

from __future__ import annotations

import glob
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import polars as pl
import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from components.config import ConfigError, StrictModel
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
}

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

_ISO_AWARE = ("%Y-%m-%dT%H:%M:%S%.f%z", "%Y-%m-%d %H:%M:%S%.f%z")
_ISO_NAIVE = ("%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M")
_NUMBER = r"^[+-]?\d+(\.\d+)?$"


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
    ISO-8601 or epoch seconds), ``iso``, ``epoch_s``, ``epoch_ms``, or a strftime pattern
    such as ``"%d/%m/%Y %H:%M"``. ``timezone`` is the clock of naive values (an IANA name);
    everything is stored as UTC.
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


class TableSource(StrictModel):
    """Where one canonical table comes from and how its columns map."""

    path: str = Field(description="File or glob, relative to the spec file's directory.")
    format: Literal["csv", "parquet", "jsonl"] | None = Field(
        None, description="Inferred from the suffix when omitted (.csv/.tsv, .parquet, .jsonl)."
    )
    separator: str | None = Field(None, description="CSV only; default ',' (tab for .tsv).")
    columns: dict[str, str] = Field(
        default_factory=dict, description="Output column -> source column."
    )
    keep: list[str] = Field(
        default_factory=list, description="Source columns kept under their own names."
    )
    constants: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="Output column -> constant value."
    )
    timestamp: TimestampSpec = TimestampSpec()

    @field_validator("columns", mode="before")
    @classmethod
    def _str_sources(cls, v: Any) -> Any:
        return {k: _key_to_str(s) for k, s in v.items()} if isinstance(v, Mapping) else v

    @field_validator("keep", mode="before")
    @classmethod
    def _str_keep(cls, v: Any) -> Any:
        return [_key_to_str(s) for s in v] if isinstance(v, list) else v

    @field_validator("separator")
    @classmethod
    def _one_char(cls, v: str | None) -> str | None:
        if v is not None and len(v.encode()) != 1:
            raise ValueError(f"separator must be one single-byte character, got {v!r}")
        return v

    def output_columns(self) -> set[str]:
        return {*self.columns, *self.constants, *self.keep}


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


class MappingSpec(StrictModel):
    """A whole column-mapping spec (one YAML file). See docs/datasets.md."""

    name: str | None = Field(None, description="Dataset name, for humans and logs.")
    description: str | None = None
    default_item_type: str | None = Field(
        None,
        description="item_type of items known only from interactions, and of item rows "
        "without one.",
    )
    interactions: InteractionsSource
    members: TableSource | None = Field(None, description="Default: the ids in interactions.")
    items: TableSource | None = Field(None, description="Default: the ids in interactions.")

    @model_validator(mode="after")
    def _complete(self) -> MappingSpec:
        problems: list[str] = []
        for table in ("interactions", "members", "items"):
            src: TableSource | None = getattr(self, table)
            if src is None:
                continue
            both = sorted(set(src.columns) & set(src.constants))
            if both:
                problems.append(f"{table}: {both} set both under `columns` and `constants`; "
                                f"keep one")
            clash = sorted(set(src.keep) & (set(src.columns) | set(src.constants)))
            if clash:
                problems.append(f"{table}.keep: {clash} are also output names in `columns`/"
                                f"`constants`; map them under a new name instead")
            have = set(src.columns) | set(src.constants)
            unknown_time = sorted(set(src.timestamp.columns or ()) - src.output_columns())
            if unknown_time:
                problems.append(f"{table}.timestamp.columns: {unknown_time} are not output "
                                f"columns of {table}: name columns from `columns` or `keep`")
            if table == "items" and self.default_item_type:
                have.add("item_type")
            for col in REQUIRED[table]:
                if col not in have:
                    hint = "surface: web" if col == "surface" else f"{col}: <value>"
                    problems.append(
                        f"{table}: canonical column '{col}' is not mapped: add `{col}: <source "
                        f"column>` under {table}.columns or `{hint}` under {table}.constants"
                        + (" (or set default_item_type)" if col == "item_type" else "")
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


def _file_format(path: Path, src: TableSource, table: str) -> str:
    if src.format:
        return src.format
    fmt = FORMAT_BY_SUFFIX.get(path.suffix.lower())
    if fmt is None:
        raise MappingError(
            f"{path}: cannot tell the format from the suffix '{path.suffix}': set "
            f"{table}.format to csv, parquet or jsonl"
        )
    return fmt


def _source_columns(src: TableSource) -> list[tuple[str, str]]:
    """(source column, spec key that names it), in spec order."""
    out = [(s, f"columns.{dst}") for dst, s in src.columns.items()]
    return out + [(k, "keep") for k in src.keep]


def _read_source(path: Path, src: TableSource, table: str) -> pl.DataFrame:
    """Read one file. CSV ids (and strftime/ISO time columns) are read as text so that
    leading zeros survive; types are inferred over the whole file so a late odd value
    turns the column to text instead of failing the read."""
    fmt = _file_format(path, src, table)
    try:
        if fmt == "csv":
            sep = src.separator or ("\t" if path.suffix.lower() == ".tsv" else ",")
            header = pl.read_csv(path, separator=sep, n_rows=0).columns
            text_cols = [src.columns[c] for c in ID_COLUMNS[table] if c in src.columns]
            if src.timestamp.format not in ("auto", "epoch_s", "epoch_ms"):
                text_cols += [src.columns[c] for c in _time_columns(src, table)
                              if c in src.columns]
            _check_columns(path, header, src, table)
            return pl.read_csv(
                path,
                separator=sep,
                infer_schema_length=None,
                schema_overrides={c: pl.Utf8 for c in text_cols if c in header},
            )
        if fmt == "parquet":
            df = pl.read_parquet(path)
        else:
            df = pl.read_ndjson(path, infer_schema_length=None)
    except MappingError:
        raise
    except Exception as exc:  # polars raises several error types for unreadable files
        raise MappingError(
            f"{path}: cannot read it as {fmt} ({type(exc).__name__}: {exc}). Fix the file, or "
            f"set {table}.format if the suffix is misleading"
        ) from exc
    _check_columns(path, df.columns, src, table)
    return df


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


def _epoch(values: pl.Series, unit: str) -> pl.Series:
    """Epoch numbers (ints, floats or numeric text) -> UTC; non-numbers -> null."""
    if values.dtype == pl.Utf8:
        values = values.str.strip_chars().cast(pl.Float64, strict=False)
    per_unit = 1_000_000 if unit == "s" else 1_000
    if values.dtype.is_integer():
        micros = values.cast(pl.Int64) * per_unit
    else:
        micros = (values.cast(pl.Float64) * per_unit).round().cast(pl.Int64, strict=False)
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


def _iso(text: pl.Series, tz: str) -> pl.Series:
    """ISO-8601 row by row: each row may use its own variant (offset, 'Z', naive, date)."""
    text = text.str.replace(r"(?i)z$", "+00:00")
    col = pl.lit(text)
    parsed = [col.str.to_datetime(f, strict=False, time_unit="us", time_zone="UTC")
              for f in _ISO_AWARE]
    parsed += [_localize(col.str.to_datetime(f, strict=False, time_unit="us"), tz)
               for f in _ISO_NAIVE]
    parsed.append(_localize(col.str.to_date("%Y-%m-%d", strict=False).cast(pl.Datetime("us")), tz))
    return pl.select(pl.coalesce([p.cast(PL_TIMESTAMP) for p in parsed])).to_series()


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
        return _epoch(s, "ms" if fmt == "epoch_ms" else "s").alias(name), None

    original = s if s.dtype == pl.Utf8 else s.cast(pl.Utf8)
    text = original.str.strip_chars()
    if fmt in ("epoch_s", "epoch_ms"):
        parsed = _epoch(text, "ms" if fmt == "epoch_ms" else "s")
    elif fmt == "iso":
        parsed = _iso(text, tz)
    elif fmt == "auto":
        numeric = text.str.contains(_NUMBER)
        parsed = pl.select(
            pl.when(pl.lit(numeric)).then(pl.lit(_epoch(text, "s"))).otherwise(pl.lit(_iso(text, tz)))
        ).to_series()
    else:
        parsed = _strptime(text, fmt, tz)
    failed = parsed.is_null() & original.is_not_null()
    raw = pl.select(pl.when(pl.lit(failed)).then(pl.lit(original))).to_series()
    return parsed.alias(name), raw.cast(pl.Utf8).alias(f"_raw_{name}")


def _convert(df: pl.DataFrame, src: TableSource, table: str, spec: MappingSpec) -> pl.DataFrame:
    """Rename, add constants, cast canonical columns, map actions, parse times."""
    out = df.select(
        *[pl.col(s).alias(dst) for dst, s in src.columns.items()],
        *[pl.col(k) for k in src.keep],
    )
    out = out.with_columns(
        *[pl.lit(v, dtype=pl.Utf8 if isinstance(v, str) else None).alias(k)
          for k, v in src.constants.items()]
    )
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


def read_table_source(
    src: TableSource, table: str, spec: MappingSpec, spec_path: Path
) -> pl.DataFrame:
    """All files of one table, converted and concatenated (columns unioned)."""
    frames = [
        _convert(_read_source(path, src, table), src, table, spec)
        for path in _table_files(src, table, spec_path)
    ]
    return frames[0] if len(frames) == 1 else pl.concat(frames, how="diagonal_relaxed")


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
    "InteractionsSource",
    "MappingError",
    "MappingSpec",
    "TableSource",
    "TimestampSpec",
    "format_spec_error",
    "legal_actions",
    "load_mapping_spec",
    "parse_time",
    "read_mapped",
    "read_table_source",
    "source_files",
]
