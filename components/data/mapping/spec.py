"""The mapping spec: its strict pydantic models, the cross-key checks, loading a
spec file with errors that name the key to fix, and the action vocabulary."""

from __future__ import annotations

import string
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

# config_base, not components.config: validate.py imports this module and the pipeline
# config may import validate.py's config, so going through the package would be a cycle.
from components.config_base import ConfigError, StrictModel

TIMESTAMP_KEYWORDS = ("auto", "iso", "epoch_s", "epoch_ms")
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
