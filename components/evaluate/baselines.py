"""ID-based baselines: what the language model has to beat, task by task.

Four baselines, each fitted on the **train split only** and scoring the evaluation
candidate lists of the promptify stage (one score per entry of ``candidate_item_ids``):

* ``popularity``: per task, one point-in-time popularity count of the candidate item
  (that task's positives, all events, or engaged events; all time or the last 1 / 7
  days; or a smoothed positive rate), the variant chosen per task by its AUC on the
  training lists. No learned weights.
* ``lightgbm``: one gradient-boosted tree model per task (the analogue of a
  task-specific production ranker) on engineered features: point-in-time counts and
  rates (member and item enter through these target encodings, not as raw ids unless
  ``lgb_id_features``), recency, item age / expiry, attribute affinities and
  profile-item matches (skills, location, industry, seniority).
* ``lightgbm_ids``: the classic ID model: the same per-task LightGBM on member and item
  ids (categorical) plus the point-in-time count / rate features only
  (:data:`ID_COUNT_FEATURES`; no dates, ages, affinities or profile matches).
* ``sasrec``: a tiny causal transformer over the member's engaged item sequence
  (SASRec; item = id embedding + hashed attribute embeddings, plus the event's action),
  pretrained with next-item BCE, then fine-tuned per task: a learned task embedding
  scales and shifts the sequence representation (FiLM), trained with BCE on the
  training lists of every task, so dismiss / hide tasks get their own sign. An item
  unseen in training scores through its attributes (item type, company, topic, ...).

**Same information as the language model.** A question about (member, candidate) with
cutoff ``c`` sees every event strictly before ``c``, the member's and everybody's, and
nothing at or after it: every count is an as-of join with ``timestamp < c`` (tested:
features and scores do not change when events at or after the cutoff are added).
Training questions are built like the evaluation lists: the training period is cut
into windows as long as the validation window; per (member, task, window) the
candidates are the member's task events in it, the cutoff is the first of them, and
labels come from :func:`components.promptify.examples.label_events` (plus the same
optional ``relabel`` as the prepare stage, for instruction steering). Tasks that
sample negatives get popularity-weighted negatives among items alive at the cutoff,
as promptify samples them. Held-out tasks are trained too: for them the baselines are
the upper bar "trained on that task's data", not a zero-shot result.

Plain Python, Polars, LightGBM and PyTorch; no Ray, no MLflow. Deterministic for a
given ``BaselineConfig.seed``.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import polars as pl
from pydantic import Field

from components.config import StrictModel
from components.evaluate.metrics import roc_auc
from components.promptify.examples import label_events
from components.promptify.negatives import (
    CatalogueSampler,
    NegativeSampler,
    catalogue_pool,
    impression_pool,
)
from components.promptify.tasks import TaskSpec

BASELINES = ("popularity", "lightgbm", "lightgbm_ids", "sasrec")
DAY_US = 86_400_000_000

#: Features of ``lightgbm_ids``: the point-in-time counts and rates of
#: :func:`point_in_time_features` (with their ``_<d>d`` windows), nothing else.
ID_COUNT_FEATURES = ("item_events", "item_engaged", "item_task_pos", "item_task_events",
                     "member_events", "member_engaged", "member_task_pos", "member_task_events",
                     "member_item_events", "item_task_rate", "member_task_rate")

#: Item columns whose values (each element of a list column) SASRec hashes into
#: attribute embeddings, where the items table has them.
SASREC_ATTRIBUTES = ("item_type", "company", "industry", "topic", "location", "workplace",
                     "seniority", "level", "skills", "genres")

#: Ordinal scale of seniorities (synthetic world vocabulary) and the seniority a course
#: level suits; other values give a null distance.
SENIORITY_RANK = {"intern": 0.0, "entry": 1.0, "associate": 2.0, "mid-senior": 3.0,
                  "director": 4.0, "executive": 5.0,
                  "Beginner": 0.5, "Intermediate": 2.5, "Advanced": 4.0}


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


# ============================================================================ point-in-time features
def _counts_before(keys: pl.DataFrame, events: pl.DataFrame, by: list[str], name: str,
                   windows_days: Sequence[float] = (), last: bool = False) -> pl.DataFrame:
    """For each distinct (``by``, cutoff) of ``keys``: events with ``timestamp < cutoff``
    (``name``), those in the last d days (``name_<d>d``) and the latest one's time
    (``name_last``). As-of joins over cumulative counts: no event at/after the cutoff."""
    q = keys.select(*by, "cutoff").unique()
    cum = (
        events.group_by(*by, "timestamp").len("n").sort("timestamp", *by)
        .with_columns(pl.col("n").cum_sum().over(by).alias("__cum"), pl.col("timestamp").alias("__ts"))
        .select(*by, "timestamp", "__ts", "__cum")
    )
    out = q
    for days in (0.0, *windows_days):
        left = q.with_columns((pl.col("cutoff") - timedelta(days=days)).alias("__t")).sort("__t")
        j = left.join_asof(cum, left_on="__t", right_on="timestamp", by=by, strategy="backward",
                           allow_exact_matches=False, check_sortedness=False)
        cols = [pl.col("__cum").fill_null(0).cast(pl.Float64).alias(f"__c{days}")]
        if days == 0.0 and last:
            cols.append(pl.col("__ts").alias(f"{name}_last"))
        out = out.join(j.select(*by, "cutoff", *cols), on=[*by, "cutoff"], how="left", nulls_equal=True)
    exprs = [pl.col("__c0.0").alias(name)]
    exprs += [(pl.col("__c0.0") - pl.col(f"__c{d}")).alias(f"{name}_{d:g}d") for d in windows_days]
    keep = [f"{name}_last"] if last else []
    return out.select(*by, "cutoff", *exprs, *keep)


def _days(a: pl.Expr, b: pl.Expr) -> pl.Expr:
    return (a - b).dt.total_microseconds().cast(pl.Float64) / DAY_US


def _profile_matches(q: pl.DataFrame, members: pl.DataFrame, items: pl.DataFrame,
                     match_fields: dict[str, str] | None = None) -> pl.DataFrame:
    """Profile-item attribute matches: for each (member column, item column) pair of
    ``match_fields`` (default: :func:`components.promptify.matches.shared_fields`, the
    columns both the profile text and the item text show: the same pairs the prompts'
    match hints compare), ``same_<col>`` for scalars (case-insensitive) and
    ``<col>_share`` (share of the item's values the member has) for lists; plus the
    synthetic world's seniority gap, remote flag and item dates where the columns exist."""
    from components.promptify.matches import shared_fields

    pairs = shared_fields(members, items, match_fields)
    mcols = sorted(set(pairs) | {c for c in ("seniority", "open_to_work", "years_experience") if c in members.columns})
    icols = sorted(set(pairs.values()) | {c for c in ("seniority", "level", "workplace", "created_at", "expires_at")
                                          if c in items.columns})
    df = (q.join(members.select("member_id", *[pl.col(c).alias(f"m_{c}") for c in mcols]),
                 on="member_id", how="left")
          .join(items.select("item_id", *[pl.col(c).alias(f"i_{c}") for c in icols]), on="item_id", how="left"))
    feats: list[pl.Expr] = []
    for mc, ic in pairs.items():
        m, i = pl.col(f"m_{mc}"), pl.col(f"i_{ic}")
        if isinstance(members.schema[mc], pl.List):
            if members.schema[mc].inner == pl.String and items.schema[ic].inner == pl.String:
                i, m = i.list.eval(pl.element().str.to_lowercase()), m.list.eval(pl.element().str.to_lowercase())
            n_item = i.list.len()
            shared = i.list.set_intersection(m).list.len()
            # "skill_share" kept as the name of the synthetic world's skills feature
            name = "skill_share" if mc == "skills" else f"{mc}_share"
            feats.append(pl.when(n_item > 0).then(shared / n_item).alias(name))
        elif members.schema[mc] == pl.String and items.schema[ic] == pl.String:
            feats.append((m.str.to_lowercase() == i.str.to_lowercase()).cast(pl.Float64).alias(f"same_{mc}"))
        else:
            feats.append((m == i).cast(pl.Float64).alias(f"same_{mc}"))
    if "workplace" in icols:
        feats.append((pl.col("i_workplace") == "Remote").cast(pl.Float64).alias("item_remote"))
    target = [pl.col(f"i_{c}") for c in ("seniority", "level") if c in icols]
    if "seniority" in mcols and target:
        rank_m = pl.col("m_seniority").replace_strict(SENIORITY_RANK, default=None, return_dtype=pl.Float64)
        rank_i = pl.coalesce(target).replace_strict(SENIORITY_RANK, default=None, return_dtype=pl.Float64)
        feats.append((rank_i - rank_m).alias("seniority_gap"))
    if "open_to_work" in mcols:
        feats.append(pl.col("m_open_to_work").cast(pl.Float64).alias("open_to_work"))
    if "years_experience" in mcols:
        feats.append(pl.col("m_years_experience").cast(pl.Float64).alias("years_experience"))
    if "created_at" in icols:
        feats.append(_days(pl.col("cutoff"), pl.col("i_created_at")).alias("item_age_days"))
    if "expires_at" in icols:
        feats.append(_days(pl.col("i_expires_at"), pl.col("cutoff")).alias("item_expires_in_days"))
    return df.select("__q", *feats)


def point_in_time_features(data: BaselineData, queries: pl.DataFrame, tasks: Sequence[TaskSpec],
                           cfg: BaselineConfig | None = None) -> pl.DataFrame:
    """Features of each (member_id, item_id, task_id, cutoff) query row, from events
    strictly before its cutoff and static profile / item columns.

    Returns ``queries`` (same rows, same order) plus float feature columns; see
    :func:`feature_names`. Raises when a query names a task not in ``tasks``."""
    cfg = cfg or BaselineConfig()
    _require(queries, ["member_id", "item_id", "task_id", "cutoff"], "the query rows",
             "build them with candidate rows of eval examples or training_lists()")
    unknown = set(queries["task_id"].unique().to_list()) - {t.id for t in tasks}
    if unknown:
        raise ValueError(f"tasks {sorted(unknown)} are not in the task registry passed: load the "
                         "registry the examples were built with (promptify.tasks)")
    q = queries.with_row_index("__q")
    ev = data.interactions.select("member_id", "item_id", "surface", "action", "timestamp", "item_type",
                                  "split", *(["value"] if "value" in data.interactions.columns else []))
    labeled = label_events(ev, [t for t in tasks if t.id in set(queries["task_id"].unique().to_list())])
    engaged = ev.filter(~pl.col("action").is_in(cfg.not_engaged_actions))
    rec = cfg.recent_days
    parts = [
        (["item_id"], ev, "item_events", rec, True),
        (["item_id"], engaged, "item_engaged", rec, False),
        (["item_id", "task_id"], labeled.filter(pl.col("label") == 1), "item_task_pos", rec, False),
        (["item_id", "task_id"], labeled, "item_task_events", rec, False),
        (["task_id"], labeled.filter(pl.col("label") == 1), "task_pos", (), False),
        (["task_id"], labeled, "task_events", (), False),
        (["member_id"], ev, "member_events", (), True),
        (["member_id"], engaged, "member_engaged", (), False),
        (["member_id", "task_id"], labeled.filter(pl.col("label") == 1), "member_task_pos", (), False),
        (["member_id", "task_id"], labeled, "member_task_events", (), False),
        (["member_id", "item_id"], ev, "member_item_events", (), False),
    ]
    out = q
    for by, events, name, windows, last in parts:
        out = out.join(_counts_before(q, events, by, name, windows, last), on=[*by, "cutoff"], how="left")
    # the member's engagement with items of the candidate's industry / topic / company
    for attr in (c for c in ("industry", "topic", "company") if c in data.items.columns):
        val = data.items.select("item_id", pl.col(attr).alias("__attr"))
        eng = engaged.join(val, on="item_id", how="inner").filter(pl.col("__attr").is_not_null())
        qa = out.select("__q", "member_id", "item_id", "cutoff").join(val, on="item_id", how="left")
        c = _counts_before(qa.filter(pl.col("__attr").is_not_null()), eng, ["member_id", "__attr"], "__n")
        qa = qa.join(c, on=["member_id", "__attr", "cutoff"], how="left")
        out = out.join(qa.select("__q", pl.col("__n").fill_null(0).alias(f"member_{attr}_engaged")),
                       on="__q", how="left")
    first = ev.group_by("member_id").agg(pl.col("timestamp").min().alias("__first"))
    out = out.join(first, on="member_id", how="left")
    # rates shrink toward the task's positive rate over everybody's events before the cutoff
    prior = (pl.col("task_pos") + 1.0) / (pl.col("task_events") + 2.0)
    a = cfg.rate_prior_strength
    out = out.with_columns(
        _days(pl.col("cutoff"), pl.col("item_events_last")).alias("item_days_since_event"),
        _days(pl.col("cutoff"), pl.col("member_events_last")).alias("member_days_since_event"),
        pl.when(pl.col("__first") < pl.col("cutoff"))
        .then(_days(pl.col("cutoff"), pl.col("__first"))).alias("member_days_active"),
        ((pl.col("item_task_pos") + a * prior) / (pl.col("item_task_events") + a)).alias("item_task_rate"),
        ((pl.col("member_task_pos") + a * prior) / (pl.col("member_task_events") + a)).alias("member_task_rate"),
        *[(pl.col(f"member_{c}_engaged") / pl.col("member_engaged").clip(1)).alias(f"member_{c}_share")
          for c in ("industry", "topic", "company") if c in data.items.columns],
    ).drop("item_events_last", "member_events_last", "__first", "task_pos", "task_events")
    out = out.join(_profile_matches(q.select("__q", "member_id", "item_id", "cutoff"), data.members, data.items,
                                    cfg.match_fields),
                   on="__q", how="left")
    return out.sort("__q").drop("__q")


def feature_names(features: pl.DataFrame, queries_columns: Sequence[str]) -> list[str]:
    """The feature columns of a :func:`point_in_time_features` frame."""
    return [c for c in features.columns if c not in set(queries_columns)]


def id_count_features(names: Sequence[str]) -> list[str]:
    """The :data:`ID_COUNT_FEATURES` among ``names`` (``lightgbm_ids``' inputs besides the ids)."""
    windowed = re.compile(rf"^({'|'.join(ID_COUNT_FEATURES)})(_[0-9.]+d)?$")
    return [n for n in names if windowed.match(n)]


# ============================================================================ models
class Baseline(Protocol):
    """A fitted baseline: one score per candidate row."""

    name: str
    needs_features: bool
    tasks: list[TaskSpec]
    cfg: BaselineConfig | None

    def score_rows(self, data: BaselineData, rows: pl.DataFrame) -> np.ndarray: ...


POPULARITY_VARIANTS = ("item_task_pos", "item_task_pos_1d", "item_task_pos_7d", "item_task_rate",
                       "item_events", "item_events_1d", "item_events_7d",
                       "item_engaged", "item_engaged_1d", "item_engaged_7d")


@dataclass
class PopularityBaseline:
    """Per task, the popularity count whose training AUC was best; ties are ties."""

    variant: dict[str, str]
    train_auc: dict[str, dict[str, float]]
    name: str = "popularity"
    needs_features: bool = True
    tasks: list[TaskSpec] = field(default_factory=list)
    cfg: BaselineConfig | None = None

    def score_rows(self, data: BaselineData, rows: pl.DataFrame) -> np.ndarray:
        out = np.zeros(rows.height)
        task = rows["task_id"].to_numpy()
        for t in np.unique(task):
            sel = task == t
            col = self.variant.get(str(t), "item_task_pos")
            out[sel] = rows[col].fill_null(0).to_numpy()[sel]
        return out


def fit_popularity(train: pl.DataFrame, tasks: Sequence[TaskSpec]) -> PopularityBaseline:
    """Per task, the :data:`POPULARITY_VARIANTS` column with the best AUC on ``train``
    (training lists with their point-in-time features); the first listed wins ties."""
    variant, aucs = {}, {}
    for t in tasks:
        part = train.filter(pl.col("task_id") == t.id)
        y = part["label"].to_numpy()
        scores = {v: roc_auc(part[v].fill_null(0).to_numpy(), y) for v in POPULARITY_VARIANTS if v in part.columns}
        scores = {v: a for v, a in scores.items() if not math.isnan(a)}
        aucs[t.id] = scores
        variant[t.id] = max(scores, key=lambda v: (scores[v], -POPULARITY_VARIANTS.index(v))) if scores \
            else "item_task_pos"
    return PopularityBaseline(variant, aucs)


@dataclass
class LightGBMBaseline:
    """One LightGBM binary classifier per task; a task without both classes in training
    falls back to its item's positive count (recorded in ``fallback``)."""

    boosters: dict[str, object]
    features: list[str]
    member_codes: dict[str, int]
    item_codes: dict[str, int]
    id_features: bool
    fallback: dict[str, str] = field(default_factory=dict)
    name: str = "lightgbm"
    needs_features: bool = True
    tasks: list[TaskSpec] = field(default_factory=list)
    cfg: BaselineConfig | None = None

    def matrix(self, rows: pl.DataFrame) -> np.ndarray:
        x = rows.select([pl.col(f).cast(pl.Float64) for f in self.features]).to_numpy()
        if self.id_features:
            m = rows["member_id"].replace_strict(self.member_codes, default=None, return_dtype=pl.Float64)
            i = rows["item_id"].replace_strict(self.item_codes, default=None, return_dtype=pl.Float64)
            x = np.column_stack([x, m.to_numpy(), i.to_numpy()])
        return x

    def score_rows(self, data: BaselineData, rows: pl.DataFrame) -> np.ndarray:
        out = np.zeros(rows.height)
        task = rows["task_id"].to_numpy()
        for t in np.unique(task):
            sel = np.flatnonzero(task == t)
            booster = self.boosters.get(str(t))
            if booster is None:
                out[sel] = rows["item_task_pos"].fill_null(0).to_numpy()[sel]
            else:
                out[sel] = booster.predict(self.matrix(rows[sel]), num_threads=1)
        return out


def fit_lightgbm(train: pl.DataFrame, features: list[str], tasks: Sequence[TaskSpec],
                 data: BaselineData, cfg: BaselineConfig, id_features: bool | None = None,
                 name: str = "lightgbm") -> LightGBMBaseline:
    """One binary LightGBM per task on ``features`` of ``train`` (training lists with
    point-in-time features), plus categorical member and item ids when ``id_features``
    (default ``cfg.lgb_id_features``; ids without a train-split event are missing);
    scores are probabilities (usable for calibration metrics)."""
    import lightgbm as lgb

    id_features = cfg.lgb_id_features if id_features is None else id_features
    tr = data.interactions.filter(pl.col("split") == "train")
    members = sorted(tr["member_id"].unique().to_list())
    items = sorted(tr["item_id"].unique().to_list())
    model = LightGBMBaseline({}, features, {m: k for k, m in enumerate(members)},
                             {i: k for k, i in enumerate(items)}, id_features, name=name)
    params = {
        "objective": "binary", "learning_rate": cfg.lgb_learning_rate, "num_leaves": cfg.lgb_num_leaves,
        "min_data_in_leaf": cfg.lgb_min_data_in_leaf, "feature_fraction": 0.9, "lambda_l2": 1.0,
        "cat_smooth": 20.0, "cat_l2": 10.0, "min_data_per_group": 50, "max_cat_threshold": 32,
        "seed": cfg.seed, "deterministic": True, "force_row_wise": True,
        "num_threads": cfg.threads, "verbosity": -1,
    }
    n_feat = len(features)
    cats = [n_feat, n_feat + 1] if id_features else []
    for t in tasks:
        part = train.filter(pl.col("task_id") == t.id)
        y = part["label"].to_numpy()
        if part.height < 10 or y.min(initial=1) == y.max(initial=0):
            model.boosters[t.id] = None
            model.fallback[t.id] = f"{part.height} training rows, {int(y.sum())} positive"
            continue
        ds = lgb.Dataset(model.matrix(part), label=y, feature_name=[*features, *(["member", "item"] if cats else [])],
                         categorical_feature=cats, free_raw_data=True, params={"verbosity": -1})
        model.boosters[t.id] = lgb.train(params, ds, num_boost_round=cfg.lgb_rounds)
    return model


# ---------------------------------------------------------------------------- SASRec
def _sasrec_module(n_codes: int, n_actions: int, n_tasks: int, cfg: BaselineConfig):
    import torch
    from torch import nn
    from torch.nn import functional as F

    class Block(nn.Module):
        def __init__(self, dim: int, heads: int, dropout: float):
            super().__init__()
            self.heads = heads
            self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
            self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
            self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
            self.drop = nn.Dropout(dropout)

        def forward(self, x, mask):
            b, n, d = x.shape
            q, k, v = self.qkv(self.ln1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            x = x + self.drop(self.proj(a.transpose(1, 2).reshape(b, n, d)))
            return x + self.drop(self.mlp(self.ln2(x)))

    class SASRec(nn.Module):
        """Left-padded event sequences (item code, attribute tokens, action; code 0 =
        padding) -> one vector per position (causal). ``task_logits`` turns the last vector
        into a task's query by a per-task scale and shift (FiLM) and adds a task bias: at
        their init (1, 0, 0) it is the task-agnostic next-item score."""

        def __init__(self):
            super().__init__()
            d = cfg.sasrec_dim
            self.item = nn.Embedding(n_codes, d, padding_idx=0)
            self.attr = nn.Embedding(cfg.sasrec_attribute_buckets + 1, d, padding_idx=0)
            self.action = nn.Embedding(n_actions + 1, d, padding_idx=0)
            self.pos = nn.Embedding(cfg.sasrec_max_len, d)
            self.blocks = nn.ModuleList(Block(d, cfg.sasrec_heads, cfg.sasrec_dropout)
                                        for _ in range(cfg.sasrec_layers))
            self.ln = nn.LayerNorm(d)
            self.drop = nn.Dropout(cfg.sasrec_dropout)
            self.task_scale = nn.Embedding(n_tasks + 1, d)  # task 0: a task not fitted
            self.task_shift = nn.Embedding(n_tasks + 1, d)
            self.task_bias = nn.Embedding(n_tasks + 1, 1)
            nn.init.ones_(self.task_scale.weight)
            nn.init.zeros_(self.task_shift.weight)
            nn.init.zeros_(self.task_bias.weight)

        def embed(self, codes, attrs):
            """Item vectors: id embedding + mean of the item's attribute embeddings."""
            e = self.item(codes)
            if attrs.shape[-1]:
                e = e + self.attr(attrs).sum(-2) / (attrs != 0).sum(-1, keepdim=True).clamp(min=1)
            return e

        def forward(self, codes, attrs, actions):
            n = codes.shape[1]
            # positions count back from the latest event, so left padding can be trimmed
            back = torch.arange(n - 1, -1, -1, device=codes.device)
            x = self.drop(self.embed(codes, attrs) * math.sqrt(self.item.embedding_dim)
                          + self.action(actions) + self.pos(back))
            causal = torch.ones(n, n, dtype=torch.bool, device=codes.device).tril()
            # a position sees earlier real events and itself (so padded rows stay finite)
            mask = (causal & (codes != 0)[:, None, :]) | torch.eye(n, dtype=torch.bool, device=codes.device)
            for blk in self.blocks:
                x = blk(x, mask[:, None])
            return self.ln(x)

        def task_logits(self, h, task, e):
            z = h * self.task_scale(task) + self.task_shift(task)
            return (z * e).sum(-1) + self.task_bias(task)[..., 0]

    return SASRec()


def _attribute_tokens(items: pl.DataFrame, columns: Sequence[str], buckets: int,
                      max_tokens: int = 16) -> tuple[dict[str, int], np.ndarray]:
    """(item_id -> row, tokens[row]): each item's values of ``columns`` (every element of a
    list column) hashed to 1..buckets, 0-padded, at most ``max_tokens`` per item. Row 0
    has none (an item missing from the table). Hashing needs no fitted vocabulary: an
    item first seen at scoring time gets the embeddings of its attributes."""
    cols = [c for c in columns if c in items.columns]
    ids = items["item_id"].to_list()
    tokens: list[list[int]] = [[] for _ in ids]
    for c in cols:
        for k, v in enumerate(items[c].to_list()):
            for x in (v if isinstance(v, list) else [v]):
                if x is not None:
                    tokens[k].append(zlib.crc32(f"{c}={x}".encode()) % buckets + 1)
    width = min(max_tokens, max((len(t) for t in tokens), default=0))
    out = np.zeros((len(ids) + 1, width), dtype=np.int64)
    for k, t in enumerate(tokens):
        t = t[:width]
        out[k + 1, :len(t)] = t
    return {i: k + 1 for k, i in enumerate(ids)}, out


def _item_inputs(item_ids: pl.Series, codes: dict[str, int], rows: dict[str, int],
                 tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(id codes, attribute tokens) of ``item_ids``: code 1 for an item without its own id."""
    c = item_ids.replace_strict(codes, default=1, return_dtype=pl.Int64).to_numpy()
    r = item_ids.replace_strict(rows, default=0, return_dtype=pl.Int64).to_numpy()
    return np.array(c), tokens[r]  # a copy: torch wants writable arrays


def _histories(events: pl.DataFrame, keys: pl.DataFrame, max_len: int) -> np.ndarray:
    """For each (member_id, cutoff) of ``keys``: row numbers (1-based; 0 = padding) of the
    member's last ``max_len`` ``events`` strictly before the cutoff, left-padded.
    ``events`` are sorted by member and time."""
    ts = events["timestamp"].dt.epoch("us").to_numpy()
    spans = {m: (lo, hi) for m, lo, hi in events.with_row_index("__r").group_by("member_id").agg(
        pl.col("__r").min().alias("lo"), (pl.col("__r").max() + 1).alias("hi")).iter_rows()}
    out = np.zeros((keys.height, max_len), dtype=np.int64)
    for r, (m, cutoff_us) in enumerate(keys.select("member_id", pl.col("cutoff").dt.epoch("us")).iter_rows()):
        if m in spans:
            lo, hi = spans[m]
            end = lo + int(np.searchsorted(ts[lo:hi], cutoff_us, side="left"))  # strictly before
            start = max(lo, end - max_len)
            if end > start:
                out[r, max_len - (end - start):] = np.arange(start, end) + 1
    return out


@dataclass
class _EventTable:
    """Engaged events as model inputs, row 0 = padding: id code, attribute tokens, action."""

    codes: np.ndarray
    attrs: np.ndarray
    actions: np.ndarray

    @classmethod
    def build(cls, events: pl.DataFrame, codes: dict[str, int], rows: dict[str, int],
              tokens: np.ndarray, actions: dict[str, int]) -> _EventTable:
        c, a = _item_inputs(events["item_id"], codes, rows, tokens)
        act = events["action"].replace_strict(actions, default=0, return_dtype=pl.Int64).to_numpy()
        return cls(np.concatenate([[0], c]), np.concatenate([np.zeros((1, a.shape[1]), np.int64), a]),
                   np.concatenate([[0], act]))

    def tensors(self, hist: np.ndarray):
        """(codes, attrs, actions) of left-padded event rows ``hist``, the columns that are
        padding in every row dropped (most histories are far shorter than max_len)."""
        import torch

        real = (hist != 0).any(0)
        hist = hist[:, min(int(real.argmax()) if real.any() else hist.shape[1] - 1, hist.shape[1] - 1):]
        return (torch.from_numpy(self.codes[hist]), torch.from_numpy(self.attrs[hist]),
                torch.from_numpy(self.actions[hist]))


def _engaged_events(data: BaselineData, not_engaged: Sequence[str]) -> pl.DataFrame:
    return (data.interactions.filter(~pl.col("action").is_in(list(not_engaged)))
            .select("member_id", "item_id", "action", "timestamp", "split")
            .sort("member_id", "timestamp", "item_id"))


@dataclass
class SASRecBaseline:
    """Item codes: 0 padding, 1 unknown (unseen or rare in training), 2.. known items; an
    item's vector adds its hashed attribute embeddings, so unknown items differ by those."""

    module: object
    codes: dict[str, int]
    actions: dict[str, int]
    task_index: dict[str, int]
    task_aware: bool
    attributes: list[str]
    attribute_buckets: int
    max_len: int
    not_engaged_actions: list[str]
    name: str = "sasrec"
    needs_features: bool = False
    tasks: list[TaskSpec] = field(default_factory=list)
    cfg: BaselineConfig | None = None

    def score_rows(self, data: BaselineData, rows: pl.DataFrame) -> np.ndarray:
        import torch

        if rows.height == 0:
            return np.zeros(0)
        item_rows, tokens = _attribute_tokens(data.items, self.attributes, self.attribute_buckets)
        ev = _engaged_events(data, self.not_engaged_actions)
        table = _EventTable.build(ev, self.codes, item_rows, tokens, self.actions)
        keys = rows.select("member_id", "cutoff").unique().sort("member_id", "cutoff")
        hist = _histories(ev, keys, self.max_len)
        key_index = rows.join(keys.with_row_index("__k"), on=["member_id", "cutoff"], how="left")["__k"]
        codes, attrs = _item_inputs(rows["item_id"], self.codes, item_rows, tokens)
        task = np.array(rows["task_id"].replace_strict(self.task_index, default=0, return_dtype=pl.Int64).to_numpy())
        module = self.module
        module.eval()
        with torch.no_grad():
            reps = torch.cat([module(*table.tensors(hist[i:i + 512]))[:, -1] for i in range(0, keys.height, 512)])
            h = reps[torch.from_numpy(key_index.to_numpy().astype(np.int64))]
            e = module.embed(torch.from_numpy(codes), torch.from_numpy(attrs))
            scores = (module.task_logits(h, torch.from_numpy(task), e) if self.task_aware
                      else (h * e).sum(-1))
        return scores.double().numpy()


def fit_sasrec(data: BaselineData, cfg: BaselineConfig, lists: pl.DataFrame | None = None,
               task_ids: Sequence[str] = ()) -> SASRecBaseline:
    """Next-item pretraining (``sasrec_epochs``), then, when ``lists`` are given (training
    lists of :func:`training_lists`: ``member_id, task_id, cutoff, item_id, label``) and
    ``cfg.sasrec_task_aware``, per-task BCE on them (``sasrec_task_epochs``).

    Pretraining sequences are each member's engaged events (actions not in
    ``not_engaged_actions``) of the train split, cut into chunks of ``sasrec_max_len + 1``,
    one uniformly drawn item of the items table as the negative per position. A list
    row's sequence is the member's engaged events strictly before its cutoff (as at
    scoring time). Item ids with at least ``sasrec_min_item_count`` train-split events
    (any action) get their own embedding."""
    import torch

    task_aware = cfg.sasrec_task_aware and lists is not None and cfg.sasrec_task_epochs > 0
    train = data.interactions.filter(pl.col("split") == "train")
    counts = train.group_by("item_id").len("n").filter(pl.col("n") >= cfg.sasrec_min_item_count)
    codes = {i: k + 2 for k, i in enumerate(sorted(counts["item_id"].to_list()))}
    item_rows, tokens = _attribute_tokens(data.items, cfg.sasrec_attributes, cfg.sasrec_attribute_buckets)
    ev = _engaged_events(data, cfg.not_engaged_actions)
    actions = {a: k + 1 for k, a in enumerate(sorted(ev.filter(pl.col("split") == "train")["action"].unique()))}
    table = _EventTable.build(ev, codes, item_rows, tokens, actions)
    L = cfg.sasrec_max_len
    chunks = []
    for (_,), g in ev.with_row_index("__r", offset=1).filter(pl.col("split") == "train").group_by(
            "member_id", maintain_order=True):
        r = g["__r"].to_numpy()
        for end in range(r.size, 1, -L):  # targets of consecutive chunks do not overlap
            s = r[max(0, end - L - 1):end]
            row = np.zeros(L + 1, dtype=np.int64)
            row[-s.size:] = s
            chunks.append(row)
    if not chunks and not task_aware:
        raise ValueError("no training sequence of two or more engaged events: SASRec cannot be fitted "
                         "(check BaselineConfig.not_engaged_actions and the train split)")
    task_index = {t: k + 1 for k, t in enumerate(task_ids)}
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        torch.manual_seed(cfg.seed)
        module = _sasrec_module(len(codes) + 2, len(actions), len(task_index), cfg)
        gen = torch.Generator().manual_seed(cfg.seed)
        opt = torch.optim.Adam(module.parameters(), lr=cfg.sasrec_lr)
        if chunks and cfg.sasrec_epochs:
            catalogue = _item_inputs(data.items["item_id"], codes, item_rows, tokens)
            _pretrain_sasrec(module, opt, gen, table, np.stack(chunks), catalogue, cfg)
        if task_aware:
            opt = torch.optim.Adam(module.parameters(), lr=cfg.sasrec_lr)
            _finetune_sasrec(module, opt, gen, table, ev, lists, codes, item_rows, tokens, task_index, cfg)
    finally:
        torch.set_num_threads(threads)
    module.eval()
    return SASRecBaseline(module, codes, actions, task_index, task_aware, list(cfg.sasrec_attributes),
                          cfg.sasrec_attribute_buckets, L, list(cfg.not_engaged_actions))


def _drop_ids(codes, p: float, gen):
    """Training: known ids (>= 2) replaced by the unknown id 1 with probability ``p``."""
    import torch

    if p <= 0:
        return codes
    return torch.where((codes >= 2) & (torch.rand(codes.shape, generator=gen) < p), torch.ones_like(codes), codes)


def _pretrain_sasrec(module, opt, gen, table: _EventTable, chunks: np.ndarray,
                     catalogue: tuple[np.ndarray, np.ndarray], cfg: BaselineConfig) -> None:
    import torch
    from torch.nn import functional as F

    sequences = torch.from_numpy(chunks)
    cat_codes, cat_attrs = torch.from_numpy(catalogue[0]), torch.from_numpy(catalogue[1])
    module.train()
    for _ in range(cfg.sasrec_epochs):
        for idx in torch.randperm(len(sequences), generator=gen).split(cfg.sasrec_batch_size):
            codes, attrs, acts = table.tensors(sequences[idx].numpy())
            codes = _drop_ids(codes, cfg.sasrec_id_dropout, gen)
            h = module(codes[:, :-1], attrs[:, :-1], acts[:, :-1])
            neg = torch.randint(0, len(cat_codes), codes[:, 1:].shape, generator=gen)
            pos_logit = (h * module.embed(codes[:, 1:], attrs[:, 1:])).sum(-1)
            neg_logit = (h * module.embed(cat_codes[neg], cat_attrs[neg])).sum(-1)
            real = ((codes[:, :-1] != 0) & (codes[:, 1:] != 0)).float()
            bce = (F.binary_cross_entropy_with_logits(pos_logit, torch.ones_like(pos_logit), reduction="none")
                   + F.binary_cross_entropy_with_logits(neg_logit, torch.zeros_like(neg_logit), reduction="none"))
            loss = (bce * real).sum() / real.sum().clamp(min=1)
            opt.zero_grad()
            loss.backward()
            opt.step()


def _finetune_sasrec(module, opt, gen, table: _EventTable, events: pl.DataFrame, lists: pl.DataFrame,
                     codes: dict[str, int], item_rows: dict[str, int], tokens: np.ndarray,
                     task_index: dict[str, int], cfg: BaselineConfig) -> None:
    """Per-task BCE on the training lists: the task's FiLM of the member's sequence vector
    before the list's cutoff, dotted with the candidate's vector, plus the task's bias."""
    import torch
    from torch.nn import functional as F

    keys = lists.select("member_id", "cutoff").unique().sort("member_id", "cutoff")
    hist = _histories(events, keys, cfg.sasrec_max_len)
    # rows grouped by their (member, cutoff): a step encodes each sequence once
    lists = lists.join(keys.with_row_index("__k"), on=["member_id", "cutoff"], how="left").sort("__k", maintain_order=True)
    q = lists["__k"].to_numpy().astype(np.int64)
    bounds = np.searchsorted(q, np.arange(keys.height + 1))
    c, a = _item_inputs(lists["item_id"], codes, item_rows, tokens)
    cand_codes, cand_attrs = torch.from_numpy(c), torch.from_numpy(a)
    task = torch.from_numpy(np.array(lists["task_id"].replace_strict(task_index, default=0,
                                                                      return_dtype=pl.Int64).to_numpy()))
    y = torch.from_numpy(lists["label"].to_numpy().astype(np.float32))
    module.train()
    for _ in range(cfg.sasrec_task_epochs):
        for uq in torch.randperm(keys.height, generator=gen).split(cfg.sasrec_task_batch_size):
            uq = uq.numpy()
            idx = torch.from_numpy(np.concatenate([np.arange(bounds[k], bounds[k + 1]) for k in uq]))
            inv = torch.from_numpy(np.repeat(np.arange(uq.size), bounds[uq + 1] - bounds[uq]))
            s_codes, s_attrs, s_acts = table.tensors(hist[uq])
            h = module(_drop_ids(s_codes, cfg.sasrec_id_dropout, gen), s_attrs, s_acts)[:, -1]
            e = module.embed(_drop_ids(cand_codes[idx], cfg.sasrec_id_dropout, gen), cand_attrs[idx])
            loss = F.binary_cross_entropy_with_logits(module.task_logits(h[inv], task[idx], e), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()


# ============================================================================ fit / score
def fit_baselines(data: BaselineData, tasks: Sequence[TaskSpec], cfg: BaselineConfig | None = None,
                  relabel: Callable[[pl.DataFrame, pl.DataFrame, pl.DataFrame], pl.DataFrame] | None = None,
                  ) -> dict[str, Baseline]:
    """Fit the baselines of ``cfg.baselines`` on the train split, every task of ``tasks``."""
    cfg = cfg or BaselineConfig()
    out: dict[str, Baseline] = {}
    with_features = {"popularity", "lightgbm", "lightgbm_ids"} & set(cfg.baselines)
    task_sasrec = "sasrec" in cfg.baselines and cfg.sasrec_task_aware and cfg.sasrec_task_epochs > 0
    if with_features or task_sasrec:
        lists = _cap_lists(training_lists(data, tasks, cfg, relabel), cfg)
    if with_features:
        feats = point_in_time_features(data, lists, tasks, cfg)
        names = feature_names(feats, lists.columns)
        if "popularity" in cfg.baselines:
            out["popularity"] = fit_popularity(feats, tasks)
        if "lightgbm" in cfg.baselines:
            out["lightgbm"] = fit_lightgbm(feats, names, tasks, data, cfg)
        if "lightgbm_ids" in cfg.baselines:
            out["lightgbm_ids"] = fit_lightgbm(feats, id_count_features(names), tasks, data, cfg,
                                               id_features=True, name="lightgbm_ids")
    if "sasrec" in cfg.baselines:
        out["sasrec"] = fit_sasrec(data, cfg, lists if task_sasrec else None, [t.id for t in tasks])
    for model in out.values():
        model.tasks = list(tasks)  # the feature builder needs the registry at scoring time
        model.cfg = cfg
    return {name: out[name] for name in cfg.baselines}


def _cap_lists(lists: pl.DataFrame, cfg: BaselineConfig) -> pl.DataFrame:
    """At most ``max_train_rows_per_task`` rows per task, whole lists drawn at random."""
    sizes = lists.group_by("task_id", "list_id").len().sort("task_id", "list_id")
    rng = np.random.default_rng(cfg.seed)
    sizes = sizes.with_columns(pl.Series("__r", rng.permutation(sizes.height))).sort("task_id", "__r")
    keep = sizes.filter(pl.col("len").cum_sum().over("task_id") <= cfg.max_train_rows_per_task)
    return lists.join(keep.select("list_id"), on="list_id", how="semi")


def eval_candidates(eval_rows: pl.DataFrame) -> pl.DataFrame:
    """Promptify example rows -> one row per candidate (``example_id, position, member_id,
    task_id, cutoff, item_id``)."""
    _require(eval_rows, ["example_id", "member_id", "task_id", "cutoff", "candidate_item_ids"],
             "the evaluation rows", "pass rows of the promptify stage's examples/ Parquet")
    return (
        eval_rows.select("example_id", "member_id", "task_id", "cutoff", "candidate_item_ids")
        .with_columns(pl.int_ranges(0, pl.col("candidate_item_ids").list.len()).alias("position"))
        .explode("candidate_item_ids", "position")
        .rename({"candidate_item_ids": "item_id"})
        .filter(pl.col("item_id").is_not_null())
    )


def score_baselines(baselines: dict[str, Baseline], data: BaselineData,
                    eval_rows: pl.DataFrame) -> pl.DataFrame:
    """Scores of every baseline for every evaluation prompt.

    Returns ``example_id, baseline, scores`` (a list of float64 aligned with the row's
    ``candidate_item_ids``), rows in the order of ``eval_rows`` per baseline."""
    cands = eval_candidates(eval_rows)
    feats_cache: dict[tuple, pl.DataFrame] = {}
    order = eval_rows.select("example_id").with_row_index("__order")
    out = []
    for name, model in baselines.items():
        rows = cands
        if model.needs_features:
            key = (tuple(t.id for t in model.tasks), model.cfg.model_dump_json() if model.cfg else "")
            if key not in feats_cache:
                feats_cache[key] = point_in_time_features(data, cands, model.tasks, model.cfg)
            rows = feats_cache[key]
        scores = model.score_rows(data, rows)
        per = (rows.select("example_id", "position").with_columns(pl.Series("s", scores, dtype=pl.Float64))
               .sort("example_id", "position").group_by("example_id", maintain_order=True)
               .agg(pl.col("s").alias("scores")))
        out.append(order.join(per, on="example_id", how="left").sort("__order")
                   .select("example_id", pl.lit(name).alias("baseline"), "scores"))
    return pl.concat(out)


def score_lists(model: Baseline, data: BaselineData, eval_rows: pl.DataFrame) -> list[np.ndarray]:
    """One model's scores as one array per row of ``eval_rows`` (aligned with candidate_item_ids)."""
    scored = score_baselines({model.name: model}, data, eval_rows)
    return [np.asarray(s if s is not None else [], dtype=np.float64) for s in scored["scores"].to_list()]
