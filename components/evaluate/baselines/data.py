"""Baseline settings, the split stage's tables and the training lists (train split only)."""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import polars as pl
from pydantic import Field

from components.config import StrictModel
from components.promptify.examples import label_events
from components.promptify.negatives import (
    CatalogueSampler,
    NegativeSampler,
    catalogue_pool,
    impression_pool,
)
from components.promptify.tasks import TaskSpec

BASELINES = ("popularity", "lightgbm", "lightgbm_ids", "sasrec")
#: The per-task LightGBM baselines (P(yes) where a task has a booster; a count fallback otherwise).
LIGHTGBM_BASELINES = ("lightgbm", "lightgbm_ids")
DAY_US = 86_400_000_000

#: Item columns whose values (each element of a list column) SASRec hashes into
#: attribute embeddings, where the items table has them.
SASREC_ATTRIBUTES = ("item_type", "company", "industry", "topic", "location", "workplace",
                     "seniority", "level", "skills", "genres")


class BaselineConfig(StrictModel):
    """Settings of the ID-based baselines (defaults fit the local world in about a minute)."""

    baselines: list[Literal["popularity", "lightgbm", "lightgbm_ids", "sasrec"]] = list(BASELINES)
    seed: int = 0
    threads: int = Field(1, ge=1, description="CPU threads for LightGBM and torch (1: a shared "
                         "2-core machine ran SASRec 20x slower with 2 threads).")
    train_window_days: float | None = Field(
        None, gt=0, description="Length of a training list's window; default: the validation window's.")
    sampled_negatives: int = Field(4, ge=0, description="Sampled negatives per training list "
                                   "of tasks with negatives: sampled (promptify's default).")
    negative_pool: Literal["catalogue", "impressions"] = Field(
        "catalogue", description="As promptify.negative_pool (the evaluation stage passes the "
        "run's): age-matched live catalogue items, or recent impressions.")
    hard_negatives: bool = Field(True, description="impressions pool: sample among items shown on the task's surface.")
    negative_window_days: float = Field(3.0, gt=0, description="As promptify: negatives are items "
                                        "shown in this many days before the cutoff.")
    not_engaged_actions: list[str] = Field(
        ["impression", "dismiss", "hide"],
        description="Actions that are not engagement: left out of engaged counts, "
        "attribute affinities and SASRec sequences.")
    recent_days: list[float] = Field([1.0, 7.0], description="Windows of the recent counts.")
    rate_prior_strength: float = Field(20.0, ge=0, description="Pseudo-events of the smoothed rate.")
    max_train_rows_per_task: int = Field(150_000, ge=100)
    # lightgbm
    lgb_rounds: int = Field(200, ge=1)
    lgb_num_leaves: int = Field(15, ge=2)
    lgb_learning_rate: float = Field(0.05, gt=0)
    lgb_min_data_in_leaf: int = Field(20, ge=1)
    lgb_id_features: bool = Field(
        False, description="lightgbm: raw member and item ids as categorical features as well "
        "(lightgbm_ids always has them). Off: the ids "
        "enter through point-in-time target encodings (per-item and per-member task counts and "
        "rates); raw categorical ids overfit (local world, valid: mean AUC 0.807 vs 0.814 on "
        "trained tasks, 0.694 vs 0.732 on held-out ones).")
    # sasrec
    sasrec_dim: int = Field(32, ge=4)
    match_fields: dict[str, str] | None = Field(
        None, description="lightgbm: {member column: item column} pairs its profile-item match "
        "features compare (as promptify.match_fields, which the evaluation stage passes); null: "
        "the columns both the profile and the item text show.")
    sasrec_max_len: int = Field(50, ge=2)
    sasrec_layers: int = Field(1, ge=1)
    sasrec_heads: int = Field(1, ge=1)
    sasrec_dropout: float = Field(0.1, ge=0, lt=1)
    sasrec_epochs: int = Field(20, ge=0, description="Next-item pretraining epochs.")
    sasrec_batch_size: int = Field(128, ge=1)
    sasrec_lr: float = Field(2e-2, gt=0, description="Adam learning rate of pretraining and of "
                             "the fine-tuning (a fresh Adam); local world, valid: 2e-3 underfits "
                             "(mean AUC 0.61 vs 0.63 on trained tasks).")
    sasrec_min_item_count: int = Field(
        2, ge=1, description="Items with fewer train-split events (any action) share the unknown "
        "id embedding; their attribute embeddings still tell them apart.")
    sasrec_task_aware: bool = Field(
        True, description="Fine-tune per task on the training lists (task FiLM + per-task BCE). "
        "Off: the task-agnostic next-item model, score = sequence vector . item vector.")
    sasrec_task_epochs: int = Field(12, ge=0, description="Epochs over the training lists.")
    sasrec_task_batch_size: int = Field(
        256, ge=1, description="(member, cutoff) sequences per fine-tuning step, each with all "
        "its training-list rows.")
    sasrec_attributes: list[str] = Field(
        list(SASREC_ATTRIBUTES), description="Item columns hashed into attribute embeddings "
        "added to the id embedding (those the items table lacks are skipped); []: ids only.")
    sasrec_attribute_buckets: int = Field(4096, ge=1, description="Hash buckets of the attribute tokens.")
    sasrec_id_dropout: float = Field(
        0.1, ge=0, lt=1, description="Training: share of known item ids replaced by the unknown id, "
        "so the attribute embeddings learn to stand alone for unseen items.")


# ============================================================================ data
def _require(df: pl.DataFrame, cols: Sequence[str], what: str, fix: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ValueError(f"{what} lacks column(s) {missing}: {fix}")


@dataclass(frozen=True)
class BaselineData:
    """The split stage's canonical tables; ``interactions`` carries ``item_type``."""

    members: pl.DataFrame
    items: pl.DataFrame
    interactions: pl.DataFrame

    @classmethod
    def from_frames(cls, members: pl.DataFrame, items: pl.DataFrame,
                    interactions: pl.DataFrame) -> BaselineData:
        fix = "pass the split stage's tables (split/<key>/{members,items,interactions})"
        _require(members, ["member_id"], "the members table", fix)
        _require(items, ["item_id", "item_type"], "the items table", fix)
        _require(interactions, ["member_id", "item_id", "surface", "action", "timestamp", "split"],
                 "the interactions table", fix)
        if "item_type" not in interactions.columns:
            interactions = interactions.join(items.select("item_id", "item_type"), on="item_id", how="left")
        return cls(members, items, interactions.sort("member_id", "timestamp", "item_id"))

    @classmethod
    def from_split_dir(cls, split_dir: Path | str) -> BaselineData:
        split_dir = Path(split_dir)
        for t in ("members", "items", "interactions"):
            if not (split_dir / t).is_dir():
                raise FileNotFoundError(
                    f"{split_dir / t} is missing: point split_dir at a split stage output "
                    f"(runs/<profile>/artifacts/split/<key>)")
        return cls.from_frames(*(pl.read_parquet(split_dir / t) for t in ("members", "items", "interactions")))

    def window_bounds(self) -> tuple[int, int | None]:
        """(start of the validation window, its length) in µs since the epoch."""
        b = self.interactions.group_by("split").agg(pl.col("timestamp").min().dt.epoch("us"))
        start = dict(b.iter_rows())
        if "valid" not in start:
            raise ValueError("the interactions have no 'valid' rows: set BaselineConfig.train_window_days "
                             "or split with a validation fraction")
        length = start["test"] - start["valid"] if "test" in start else None
        return int(start["valid"]), (int(length) if length else None)


# ============================================================================ training lists
def _sample_negatives(rows: pl.DataFrame, data: BaselineData, tasks: dict[str, TaskSpec],
                      cfg: BaselineConfig, labeled_items: dict[str, set[str]]) -> pl.DataFrame:
    """Sampled negatives (label 0) for the lists of tasks that sample negatives, drawn
    like promptify's (:mod:`components.promptify.negatives`): ``rows`` carry ``__t``, each
    item's first event time in its list (the catalogue pool's anchor times)."""
    sampling = [t for t in tasks.values() if t.negatives != "logged"]
    if not sampling or cfg.sampled_negatives == 0:
        return rows.clear()
    catalogue = cfg.negative_pool == "catalogue"
    sampler = (CatalogueSampler(catalogue_pool(data.items, data.interactions)) if catalogue
               else NegativeSampler(impression_pool(data.interactions, data.items), cfg.negative_window_days))
    lists = (rows.filter(pl.col("task_id").is_in([t.id for t in sampling]))
             .sort("list_id", "__t", "item_id")
             .group_by("list_id", "member_id", "task_id", "cutoff", maintain_order=True)
             .agg(pl.col("item_id"), pl.col("label"), pl.col("__t").dt.epoch("us"))
             .with_columns(pl.col("cutoff").dt.epoch("us").alias("cutoff_us")))
    out = []
    for list_id, member, task_id, cutoff, items, labels, times, cutoff_us in lists.iter_rows():
        task = tasks[task_id]
        rng = np.random.default_rng([cfg.seed, zlib.crc32(list_id.encode())])
        exclude = labeled_items.get(member, set()) | set(items)
        if catalogue:
            anchors = [(t, it) for t, it, y in zip(times, items, labels, strict=True) if y == 1] \
                or list(zip(times, items, strict=True))
            neg = sampler.sample(rng, task.item_type, anchors, exclude, cfg.sampled_negatives)
        else:
            neg = sampler.sample(rng, task.item_type, task.surface if cfg.hard_negatives else None,
                                 cutoff_us, exclude, cfg.sampled_negatives)
        out += [(list_id, member, task_id, cutoff, it, 0, cutoff) for it in neg]
    return pl.DataFrame(out, schema=rows.schema, orient="row")


def training_lists(data: BaselineData, tasks: Sequence[TaskSpec], cfg: BaselineConfig | None = None,
                   relabel: Callable[[pl.DataFrame, pl.DataFrame, pl.DataFrame], pl.DataFrame] | None = None,
                   ) -> pl.DataFrame:
    """Training questions from the train split, shaped like the evaluation lists.

    Returns ``list_id, member_id, task_id, cutoff, item_id, label`` (one row per
    (list, item); an item's label is 1 if any of its events in the list is positive).
    ``relabel(labeled, members, items)`` rewrites labels as in the prepare stage."""
    cfg = cfg or BaselineConfig()
    by_id = {t.id: t for t in tasks}
    labeled = label_events(data.interactions, tasks)
    if relabel is not None:
        labeled = relabel(labeled, data.members, data.items)
    labeled_items = {m: set(v) for m, v in labeled.group_by("member_id").agg(pl.col("item_id").unique()).iter_rows()}
    valid_start, valid_len = data.window_bounds()
    window_us = int(cfg.train_window_days * DAY_US) if cfg.train_window_days else valid_len
    if not window_us:
        raise ValueError("cannot derive the training window from the splits (no 'test' rows): "
                         "set BaselineConfig.train_window_days")
    train = labeled.filter(pl.col("split") == "train").with_columns(
        ((valid_start - pl.col("timestamp").dt.epoch("us") - 1) // window_us).alias("__w")
    )
    rows = (
        train.with_columns(pl.col("timestamp").min().over("member_id", "task_id", "__w").alias("cutoff"))
        .group_by("member_id", "task_id", "__w", "cutoff", "item_id")
        .agg(pl.col("label").max(), pl.col("timestamp").min().alias("__t"))
        .with_columns(pl.format("{}:{}:train:{}", "member_id", "task_id", "__w").alias("list_id"))
        .select("list_id", "member_id", "task_id", "cutoff", "item_id", pl.col("label").cast(pl.Int8), "__t")
        .sort("list_id", "item_id")
    )
    neg = _sample_negatives(rows, data, by_id, cfg, labeled_items)
    return pl.concat([rows, neg]).drop("__t").sort("list_id", "label", "item_id", descending=[False, True, False])


# ============================================================================ models
class Baseline(Protocol):
    """A fitted baseline: one score per candidate row."""

    name: str
    needs_features: bool
    tasks: list[TaskSpec]
    cfg: BaselineConfig | None

    def score_rows(self, data: BaselineData, rows: pl.DataFrame) -> np.ndarray: ...
