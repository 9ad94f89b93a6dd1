"""Canonical tables of rankbrew: members, items, interactions.

Every dataset (synthetic world, MovieLens-100K, any mapped log) is turned into these
three Parquet tables so that everything downstream (promptify, baselines, evaluation)
is written once. Only the columns listed as *required* are fixed; any other column of
``members`` and ``items`` is a free profile/text field (string, number, or list of
strings) that promptification verbalizes as-is.

Ids are strings everywhere: datasets disagree on id types, strings never lose
information, and "m123" vs 123 mix-ups become impossible.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

#: Timestamps are stored as UTC microseconds: Parquet, Arrow and Polars agree on it.
TIMESTAMP_TYPE = pa.timestamp("us", tz="UTC")


@dataclass(frozen=True)
class TableSchema:
    """Required columns of one canonical table and which type families they accept.

    ``accepts`` lists, per required column, the Arrow type predicates a *source* file
    may use (e.g. a timestamp may arrive as int epoch seconds or an ISO string and is
    parsed row by row, with unparsable rows quarantined). ``canonical`` is the type
    written out after validation.
    """

    name: str
    canonical: pa.Schema
    key: tuple[str, ...]
    accepts: dict[str, tuple[str, ...]] = field(default_factory=dict)
    optional: dict[str, pa.DataType] = field(default_factory=dict)

    @property
    def required(self) -> list[str]:
        return list(self.canonical.names)


MEMBERS = TableSchema(
    name="members",
    canonical=pa.schema([("member_id", pa.string())]),
    key=("member_id",),
    accepts={"member_id": ("string", "integer")},
)

ITEMS = TableSchema(
    name="items",
    canonical=pa.schema(
        [
            ("item_id", pa.string()),
            ("item_type", pa.string()),
            ("title", pa.string()),
        ]
    ),
    key=("item_id",),
    accepts={
        "item_id": ("string", "integer"),
        "item_type": ("string",),
        "title": ("string",),
    },
    optional={"created_at": TIMESTAMP_TYPE},
)

INTERACTIONS = TableSchema(
    name="interactions",
    canonical=pa.schema(
        [
            ("member_id", pa.string()),
            ("item_id", pa.string()),
            ("surface", pa.string()),
            ("action", pa.string()),
            ("timestamp", TIMESTAMP_TYPE),
        ]
    ),
    key=("member_id", "item_id", "surface", "action", "timestamp"),
    accepts={
        "member_id": ("string", "integer"),
        "item_id": ("string", "integer"),
        "surface": ("string",),
        "action": ("string",),
        "timestamp": ("timestamp", "integer", "string"),
    },
    optional={"value": pa.float64()},
)

TABLES: dict[str, TableSchema] = {t.name: t for t in (MEMBERS, ITEMS, INTERACTIONS)}

# Types a free profile / text column may have (anything promptify can verbalize).
FREE_COLUMN_FAMILIES = ("string", "integer", "floating", "boolean", "list_of_string", "timestamp")


def type_family(dtype: pa.DataType) -> str:
    """Name the family of an Arrow type, as used in ``TableSchema.accepts``."""
    if pa.types.is_string(dtype) or pa.types.is_large_string(dtype) or pa.types.is_dictionary(dtype) and pa.types.is_string(dtype.value_type):
        return "string"
    if pa.types.is_integer(dtype):
        return "integer"
    if pa.types.is_floating(dtype):
        return "floating"
    if pa.types.is_boolean(dtype):
        return "boolean"
    if pa.types.is_timestamp(dtype) or pa.types.is_date(dtype):
        return "timestamp"
    if (pa.types.is_list(dtype) or pa.types.is_large_list(dtype)) and (
        pa.types.is_string(dtype.value_type) or pa.types.is_large_string(dtype.value_type)
    ):
        return "list_of_string"
    if pa.types.is_null(dtype):
        return "null"
    return str(dtype)
