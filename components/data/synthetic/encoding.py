"""Members and items as arrays: what the hidden model reads from the tables' columns.

The encoders take rows of the canonical tables (as generated, or as read back from
Parquet) and turn the text columns into codes and skill bitmasks; the hidden taste and
popularity are re-derived from the ids and the seed (:mod:`.latents`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import polars as pl

from components.data.synthetic.latents import item_popularity, member_interests
from components.data.synthetic.vocabulary import (
    CITY_INDEX,
    ID_PREFIX,
    INDUSTRY_INDEX,
    ITEM_TYPE_INDEX,
    ITEM_TYPES,
    LEVEL_INDEX,
    LEVEL_TARGET,
    SENIORITY_INDEX,
    SKILL_INDEX,
    SKILL_WORDS,
    TOPIC_INDEX,
)


def _skill_mask(rows: np.ndarray, skill_ids: np.ndarray, n: int) -> np.ndarray:
    """(n, SKILL_WORDS) uint64 bitmasks from (row, skill id) pairs."""
    mask = np.zeros((n, SKILL_WORDS), dtype=np.uint64)
    bits = np.left_shift(np.uint64(1), (skill_ids % 64).astype(np.uint64))
    np.bitwise_or.at(mask, (rows, skill_ids // 64), bits)
    return mask


@dataclass
class MemberArrays:
    """Members as arrays: what the utility reads (from the text columns + hidden taste)."""

    index: np.ndarray  # 0-based global index (member_id "m0000001" -> 0)
    industry: np.ndarray  # int16, -1 unknown
    city: np.ndarray  # int16, -1 unknown
    seniority: np.ndarray  # float64, nan unknown
    skills: np.ndarray  # (n, SKILL_WORDS) uint64
    open_to_work: np.ndarray  # bool
    interest1: np.ndarray  # int16 hidden
    interest2: np.ndarray  # int16 hidden


@dataclass
class ItemArrays:
    """Items of all types as arrays, in the order of the items table."""

    type: np.ndarray  # int8 into ITEM_TYPES
    index: np.ndarray  # 0-based index within the type ("j000001" -> 0)
    industry: np.ndarray  # int16
    topic: np.ndarray  # int16, -1 none (jobs)
    city: np.ndarray  # int16, -1 none (courses)
    remote: np.ndarray  # bool
    target_seniority: np.ndarray  # float64, nan when not applicable (posts)
    skills: np.ndarray  # (n, SKILL_WORDS) uint64
    n_skills: np.ndarray  # int64
    popularity: np.ndarray  # float64 z-score, hidden
    created_us: np.ndarray  # int64
    expires_us: np.ndarray  # int64 (max int64 when the item does not expire)


def _index_from_ids(ids: pl.Series, prefix_ok: Iterable[str], what: str) -> np.ndarray:
    """0-based indices from ids like "m0000042"; an error names the id format."""
    try:
        num = ids.str.slice(1).cast(pl.Int64, strict=True).to_numpy()
    except Exception as exc:
        raise ValueError(
            f"{what}: ids must look like {'/'.join(prefix_ok)}0000001 (a type letter and a "
            f"number) to re-derive the hidden latents; got e.g. {ids.head(3).to_list()}. "
            f"Fix: pass rows of a world written by components.data.synthetic"
        ) from exc
    return num - 1


def _lookup(s: pl.Series, mapping: Mapping[str, int]) -> np.ndarray:
    return s.cast(pl.Utf8).replace_strict(mapping, default=-1, return_dtype=pl.Int16).to_numpy()


def _encode_skills(df: pl.DataFrame) -> np.ndarray:
    flat = (
        df.select(pl.int_range(pl.len(), dtype=pl.Int64).alias("row"), pl.col("skills"))
        .explode("skills")
        .drop_nulls("skills")
        .with_columns(
            pl.col("skills").replace_strict(SKILL_INDEX, default=-1, return_dtype=pl.Int64)
        )
        .filter(pl.col("skills") >= 0)
        .unique()
    )
    return _skill_mask(flat["row"].to_numpy(), flat["skills"].to_numpy(), df.height)


def encode_members(members: pl.DataFrame, seed: int) -> MemberArrays:
    """Members table rows -> :class:`MemberArrays` (missing columns read as unknown)."""
    n = members.height
    need = {"member_id", "industry", "location", "seniority", "skills"}
    missing = need - set(members.columns)
    if missing:
        raise ValueError(
            f"members: columns {sorted(missing)} are missing; the utility reads "
            f"{sorted(need)} (plus optional open_to_work). Fix: pass the synthetic members table"
        )
    index = _index_from_ids(members["member_id"], ["m"], "members.member_id")
    sen = _lookup(members["seniority"], SENIORITY_INDEX).astype(np.float64)
    sen[sen < 0] = np.nan
    i1, i2 = member_interests(seed, index)
    otw = (
        members["open_to_work"].fill_null(False).to_numpy().astype(bool)
        if "open_to_work" in members.columns
        else np.zeros(n, dtype=bool)
    )
    return MemberArrays(
        index=index,
        industry=_lookup(members["industry"], INDUSTRY_INDEX),
        city=_lookup(members["location"], CITY_INDEX),
        seniority=sen,
        skills=_encode_skills(members),
        open_to_work=otw,
        interest1=i1,
        interest2=i2,
    )


def encode_items(items: pl.DataFrame, seed: int) -> ItemArrays:
    """Items table rows -> :class:`ItemArrays` (popularity re-derived from the ids)."""
    n = items.height
    cols = set(items.columns)
    need = {"item_id", "item_type", "created_at", "industry", "skills"}
    if need - cols:
        raise ValueError(
            f"items: columns {sorted(need - cols)} are missing; the utility reads {sorted(need)} "
            f"(plus topic, location, workplace, seniority, level). Fix: pass the synthetic items table"
        )

    def col(name: str, dtype: pl.DataType = pl.Utf8) -> pl.Series:
        return items[name] if name in cols else pl.Series(name, [None] * n, dtype=dtype)

    types = _lookup(items["item_type"], ITEM_TYPE_INDEX).astype(np.int8)
    if (types < 0).any():
        bad = items.filter(pl.Series(types < 0))["item_type"].unique().head(5).to_list()
        raise ValueError(f"items.item_type: unknown types {bad}; expected one of {ITEM_TYPES}")
    index = _index_from_ids(items["item_id"], list(ID_PREFIX.values()), "items.item_id")
    target = np.full(n, np.nan)
    job_sen = _lookup(col("seniority"), SENIORITY_INDEX).astype(np.float64)
    lvl = _lookup(col("level"), LEVEL_INDEX)
    is_job, is_course = types == ITEM_TYPE_INDEX["job"], types == ITEM_TYPE_INDEX["course"]
    target[is_job & (job_sen >= 0)] = job_sen[is_job & (job_sen >= 0)]
    ok = is_course & (lvl >= 0)
    target[ok] = np.asarray(LEVEL_TARGET)[lvl[ok]]
    skills = _encode_skills(items)
    created = items["created_at"].cast(pl.Datetime("us", "UTC")).dt.epoch("us").to_numpy()
    expires = col("expires_at", pl.Datetime("us", "UTC"))
    exp_us = expires.cast(pl.Datetime("us", "UTC")).dt.epoch("us").fill_null(np.iinfo(np.int64).max)
    return ItemArrays(
        type=types,
        index=index,
        industry=_lookup(items["industry"], INDUSTRY_INDEX),
        topic=_lookup(col("topic"), TOPIC_INDEX),
        city=_lookup(col("location"), CITY_INDEX),
        remote=(col("workplace") == "Remote").fill_null(False).to_numpy().astype(bool),
        target_seniority=target,
        skills=skills,
        n_skills=np.bitwise_count(skills).sum(axis=1).astype(np.int64),
        popularity=item_popularity(seed, types, index),
        created_us=created.astype(np.int64),
        expires_us=exp_us.to_numpy().astype(np.int64),
    )
