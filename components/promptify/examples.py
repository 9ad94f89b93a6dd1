"""Training and evaluation examples: (member, task, cutoff) -> prefix, candidates, labels.

Two steps, so that the expensive part scales out:

1. :func:`prepare_member_table` (Polars, vectorized): label every event for every task
   it answers (a join against the task table, not a loop), verbalize every event and
   item once, and group everything by member into list columns. One row = one member's
   whole story, so any batching of rows (Ray Data blocks) keeps members whole.
2. :class:`PromptBuilder` (called per batch of member rows, e.g. by Ray Data
   ``map_batches``): cut each question's history at its cutoff (strictly earlier
   events only), fit it to the token budget, and assemble the prompt text.

Leakage rule: an example's history holds only events with ``timestamp < cutoff``, and
its cutoff is the time of its earliest question. Nothing at or after it can appear.
"""

from __future__ import annotations

import shutil
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

from components.config import PromptifyConfig
from components.promptify.budget import count_tokens, fit_to_budget
from components.promptify.negatives import (
    CatalogueSampler,
    NegativeSampler,
    catalogue_pool,
    impression_pool,
)
from components.promptify.tasks import TaskSpec
from components.promptify.verbalize import (
    NO_PROFILE,
    STYLES,
    PromptPieces,
    event_lines,
    item_texts,
    profile_texts,
    render_candidate,
    render_history,
    render_prefix,
)

SPLITS = ("train", "valid", "test")


def task_action_table(tasks: Sequence[TaskSpec]) -> pl.DataFrame:
    """One row per (task, action that it labels): role pos/neg, surface filter, value rule."""
    rows = []
    for t in tasks:
        for a in t.positive_actions:
            rows.append((t.id, t.item_type, t.surface, a, "pos",
                         t.label_value.at_least if t.label_value else None,
                         t.label_value.at_most if t.label_value else None))
        for a in t.negative_actions:
            rows.append((t.id, t.item_type, t.surface, a, "neg", None, None))
    return pl.DataFrame(
        rows,
        schema={"task_id": pl.Utf8, "item_type": pl.Utf8, "task_surface": pl.Utf8,
                "action": pl.Utf8, "role": pl.Utf8, "at_least": pl.Float64, "at_most": pl.Float64},
        orient="row",
    )


def new_surfaces(tasks: Sequence[TaskSpec]) -> set[tuple[str, str]]:
    """(item type, surface) pairs that only held-out tasks name: a zero-shot "new surface".

    Every event there is kept out of trained tasks' learning labels, else a trained task
    with ``surface: null`` (e.g. ``job_engage_any``) would teach exactly the held-out
    task's labels under another instruction."""
    trained = {(t.item_type, t.surface) for t in tasks if not t.held_out and t.surface}
    return {(t.item_type, t.surface) for t in tasks
            if t.held_out and t.surface and (t.item_type, t.surface) not in trained}


def label_events(events: pl.DataFrame, tasks: Sequence[TaskSpec], keep_held_out_apart: bool = True,
                 with_event_keys: bool = False) -> pl.DataFrame:
    """Every (event, task) pair the event answers, with its 0/1 label.

    ``events`` needs member_id, item_id, item_type, surface, action, timestamp, split and
    optionally value. Value-rule tasks (ratings) label by the rule, others by role.

    ``keep_held_out_apart`` (default; the rule that makes zero-shot tasks unseen): outside
    the test split, an event is not a label of any trained task when a held-out task
    labels it positive, or when it lies on a (item type, surface) that only held-out tasks
    name (:func:`new_surfaces`). The train split is what models learn from and the valid
    split fits calibration and picks checkpoints, so neither may carry a held-out task's
    answers; test lists stay as they are. A new action's *negatives* (e.g. feed views for
    ``post_share_feed``) are the same impressions trained tasks rank and stay theirs.
    ``with_event_keys`` adds ``surface, action`` (for checks on the labelled events).
    """
    table = task_action_table(tasks)
    j = events.with_row_index("__ev").join(table, on=["item_type", "action"], how="inner").filter(
        pl.col("task_surface").is_null() | (pl.col("task_surface") == pl.col("surface"))
    )
    value = pl.col("value") if "value" in j.columns else pl.lit(None, dtype=pl.Float64)
    rule = (
        (pl.col("at_least").is_null() | (value >= pl.col("at_least")))
        & (pl.col("at_most").is_null() | (value <= pl.col("at_most")))
    )
    has_rule = pl.col("at_least").is_not_null() | pl.col("at_most").is_not_null()
    label = pl.when(has_rule).then(rule.fill_null(False)).otherwise(pl.col("role") == "pos")
    j = j.with_columns(label.cast(pl.Int8).alias("label"))
    held = [t.id for t in tasks if t.held_out]
    if keep_held_out_apart and held:
        answers = j.filter(pl.col("task_id").is_in(held) & (pl.col("label") == 1)).select("__ev").unique()
        fresh = new_surfaces(tasks)
        on_new = pl.lit(False)
        for itype, surface in fresh:
            on_new = on_new | ((pl.col("item_type") == itype) & (pl.col("surface") == surface))
        j = j.with_columns(pl.col("__ev").is_in(answers["__ev"].implode()).alias("__answer"))
        j = j.filter(pl.col("task_id").is_in(held) | (pl.col("split") == "test")
                     | ~(pl.col("__answer") | on_new))
    keys = ["surface", "action"] if with_event_keys else []
    return j.select("member_id", "task_id", "item_id", "timestamp", "split", *keys, "label")


@dataclass(frozen=True)
class PreparedData:
    """Where :func:`prepare_member_table` wrote its outputs."""

    members_dir: Path      # member rows with list columns (input of the Ray Data job)
    items_text: Path       # item_id, item_type, full_<style>
    item_pools: Path       # negatives' pool: the catalogue or the impressions (negatives.py)
    item_events: Path | None = None  # events behind as-of item statistics (item_stats.py)
    # MatchHints by member partition (matches.PartitionedMatchHints), with promptify.match_hints
    match_hints: Path | None = None

    @classmethod
    def from_dir(cls, out_dir: Path) -> PreparedData:
        """The outputs :func:`prepare_member_table` wrote under ``out_dir``."""
        out_dir = Path(out_dir)
        events, hints = out_dir / "item_events.parquet", out_dir / "match_hints"
        if not hints.exists():  # written before prepare partitioned: one pickle
            hints = out_dir / "match_hints.pkl"
        return cls(out_dir / "member_rows", out_dir / "items_text.parquet", out_dir / "item_pools.parquet",
                   events if events.exists() else None, hints if hints.exists() else None)


def example_accounting(examples: pl.LazyFrame | pl.DataFrame, prepare_stats: dict[str, float]) -> dict[str, float]:
    """Where every labeled event went: a question, or a counted reason. Must balance.

    labeled events = held-out events in train (never trained) + events in prompts
    + events of training prompts left out by ``max_prompts_per_member_task``
    + events of negative-only training chunks dropped (``negative_only_prompt_rate``);
    events in prompts = logged questions + merged into the same item's question
    + over ``max_eval_candidates`` + negatives subsampled out.
    """
    agg = examples.lazy().select(
        (pl.col("labels").list.len() - pl.col("n_sampled_negatives")).sum().alias("questions_logged"),
        pl.col("n_sampled_negatives").sum().alias("questions_sampled"),
        pl.col("n_task_events").sum().alias("events_in_prompts"),
        pl.col("n_merged_same_item").sum().alias("dropped.merged_same_item"),
        pl.col("n_over_candidate_cap").sum().alias("dropped.over_candidate_cap"),
        pl.col("n_negatives_subsampled").sum().alias("dropped.negatives_subsampled"),
        pl.col("n_events_in_capped_prompts").sum().alias("dropped.prompts_over_member_task_cap"),
        pl.col("n_events_in_negative_only_prompts").sum().alias("dropped.negative_only_prompts"),
    ).collect().row(0, named=True)
    out = {k: float(v or 0) for k, v in agg.items()}
    out["dropped.held_out_train"] = prepare_stats["prepare.labeled_events_held_out_train"]
    in_prompts = (out["questions_logged"] + out["dropped.merged_same_item"]
                  + out["dropped.over_candidate_cap"] + out["dropped.negatives_subsampled"])
    total = (out["dropped.held_out_train"] + out["events_in_prompts"]
             + out["dropped.prompts_over_member_task_cap"] + out["dropped.negative_only_prompts"])
    out["labeled_events"] = prepare_stats["prepare.labeled_events"]
    out["balanced"] = float(in_prompts == out["events_in_prompts"] and total == out["labeled_events"])
    return out


#: Seed of the member partition hash (:func:`member_block`).
PARTITION_SEED = 7


def member_block(member_ids: pl.Expr | pl.Series, blocks: int) -> pl.Expr | pl.Series:
    """The member partition of ``member_ids`` (a String column): ``hash(seed=7) % blocks``.

    The one definition ``prepare`` partitions by and promptify workers look members up
    with (match hints per partition); Polars' hash is stable for a Polars version, and
    the stage cache keys on the installed packages' code, not on Polars, so a Polars
    upgrade needs ``prepare`` rerun with ``promptify`` (``--force``)."""
    return member_ids.hash(seed=PARTITION_SEED) % blocks


def member_blocks(cfg: PromptifyConfig, members: int) -> int:
    """How many member partitions ``prepare`` writes: ``promptify.blocks``, raised so that
    none holds more than about ``promptify.members_per_block`` members."""
    return max(cfg.blocks, -(-members // cfg.members_per_block))


def partition_by_member(table_dir: Path, dest: Path, blocks: int) -> None:
    """Stream a split table into ``dest/__block=<b>/*.parquet`` by :func:`member_block`.

    One streaming pass over the log (bounded memory, row order kept), so that each
    partition then reads only its own rows: scanning the whole log once per partition
    would cost partitions x log, which grows as the square of the members."""
    (pl.scan_parquet(Path(table_dir))
     .with_columns(member_block(pl.col("member_id"), blocks).alias("__block"))
     .sink_parquet(pl.PartitionBy(dest, key="__block", include_key=False), mkdir=True))


def _read_partition(dest: Path, block: int, schema: pl.Schema) -> pl.DataFrame:
    """Rows of one partition written by :func:`partition_by_member` (empty: none)."""
    files = sorted((Path(dest) / f"__block={block}").glob("*.parquet"))
    if not files:
        return pl.DataFrame(schema=schema)
    return pl.read_parquet(files, hive_partitioning=False)


@dataclass(frozen=True)
class RankedRelabel:
    """A relabel by rank over every member, streamed by member partition.

    For each of ``tasks``, the top ``top_fraction`` of its labelled rows (all partitions
    together) by ``score`` are positive, the others negative: instruction steering's rule
    (steering.py). ``score(rows, task_id, members, items)`` gets one task's rows of one
    partition and that partition's members and returns two float arrays aligned with the
    rows: rank by the first, ties by the second, both descending (NaN ranks first, as in
    a Polars descending sort). Two passes: the scores of every partition give each task's
    threshold (two floats per row held, not the rows), then each partition is labelled
    against it. Rows tied exactly at the threshold are all positive."""

    tasks: tuple[str, ...]
    score: Callable[[pl.DataFrame, str, pl.DataFrame, pl.DataFrame], tuple[np.ndarray, np.ndarray]]
    top_fraction: float = 0.25

    def _keys(self, rows: pl.DataFrame, task_id: str, members: pl.DataFrame,
              items: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        first, second = self.score(rows, task_id, members, items)
        return (np.nan_to_num(np.asarray(first, dtype=np.float64), nan=np.inf),
                np.nan_to_num(np.asarray(second, dtype=np.float64), nan=np.inf))

    def thresholds(self, partitions: Iterable[tuple[pl.DataFrame, pl.DataFrame]],
                   items: pl.DataFrame) -> dict[str, tuple[float, float] | None]:
        """Each task's (first, second) key of its last positive (None: no positive), from
        ``(labelled rows, members)`` of every partition."""
        keys: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {t: [] for t in self.tasks}
        for labeled, members in partitions:
            for t in self.tasks:
                rows = labeled.filter(pl.col("task_id") == t)
                if rows.height:
                    keys[t].append(self._keys(rows, t, members, items))
        out: dict[str, tuple[float, float] | None] = {}
        for t, parts in keys.items():
            first = np.concatenate([a for a, _ in parts]) if parts else np.empty(0)
            second = np.concatenate([b for _, b in parts]) if parts else np.empty(0)
            k = round(self.top_fraction * len(first))
            if k == 0:
                out[t] = None
                continue
            at = np.lexsort((-second, -first))[k - 1]
            out[t] = (float(first[at]), float(second[at]))
        return out

    def apply(self, labeled: pl.DataFrame, members: pl.DataFrame, items: pl.DataFrame,
              thresholds: Mapping[str, tuple[float, float] | None]) -> pl.DataFrame:
        """One partition's labelled rows, ``tasks``' labels replaced (same rows, same order)."""
        labeled = labeled.with_row_index("__row")
        parts = [labeled.filter(~pl.col("task_id").is_in(list(self.tasks)))]
        for t in self.tasks:
            rows = labeled.filter(pl.col("task_id") == t)
            if not rows.height:
                continue
            first, second = self._keys(rows, t, members, items)
            thr = thresholds.get(t)
            pos = (np.zeros(rows.height, dtype=bool) if thr is None
                   else (first > thr[0]) | ((first == thr[0]) & (second >= thr[1])))
            parts.append(rows.with_columns(pl.Series("label", pos.astype(np.int8), dtype=pl.Int8)))
        return pl.concat(parts).sort("__row").drop("__row")


def prepare_member_table(
    split_dir: Path,
    tasks: Sequence[TaskSpec],
    cfg: PromptifyConfig,
    out_dir: Path,
    relabel: Callable[[pl.DataFrame, pl.DataFrame, pl.DataFrame], pl.DataFrame] | RankedRelabel | None = None,
    relabel_tasks: Sequence[str] | None = None,
) -> tuple[PreparedData, dict[str, float]]:
    """Vectorized preparation: labels, verbalized events and items, one row per member.

    Streams by member partition (:func:`member_block`, :func:`member_blocks` of them):
    the log is split into partitions in one streaming pass, then each partition is
    labelled, verbalized, grouped and written (``member_rows/part-<b>.parquet``, its
    ``match_hints/part-<b>.pkl``) before the next is read, so memory follows the largest
    partition, not the log. Catalogue-sized outputs (item texts, negative pools) are
    built once, their log aggregates computed by streaming. The stats are sums over
    partitions.

    ``relabel`` may rewrite labels (instruction steering). A :class:`RankedRelabel` is
    streamed (two passes over the partitions, memory bounded). A callable
    ``relabel(labeled, members, items)`` may rank across members, so it sees every
    partition's labelled rows of ``relabel_tasks`` at once (the whole members table too)
    and must return the same rows in the same order; ``relabel_tasks=None``: every
    task's rows, i.e. the whole labelled log. Those rows grow with the log (1.3 per
    event for the five steering tasks): prefer a :class:`RankedRelabel`.
    """
    split_dir, out_dir = Path(split_dir), Path(out_dir)
    items = pl.read_parquet(split_dir / "items")
    item_types = items.select("item_id", "item_type")
    members_scan = pl.scan_parquet(split_dir / "members")
    inter_scan = pl.scan_parquet(split_dir / "interactions")
    members_in = members_scan.select(pl.len()).collect().item()
    blocks = member_blocks(cfg, members_in)
    itext = item_texts(items, max_field_words=cfg.max_field_words)
    scratch = out_dir / "_by_member"
    shutil.rmtree(scratch, ignore_errors=True)
    for table in ("members", "interactions"):
        partition_by_member(split_dir / table, scratch / table, blocks)
    schemas = {"members": members_scan.collect_schema(), "interactions": inter_scan.collect_schema()}

    def partition(b: int) -> tuple[pl.DataFrame, pl.DataFrame]:
        members = _read_partition(scratch / "members", b, schemas["members"])
        inter = _read_partition(scratch / "interactions", b, schemas["interactions"]).join(
            item_types, on="item_id", how="left")
        return members, inter

    relabelled = thresholds = None
    if isinstance(relabel, RankedRelabel):
        thresholds = relabel.thresholds(((label_events(inter, tasks), members)
                                         for members, inter in map(partition, range(blocks))), items)
    elif relabel is not None:
        relabelled = _relabel_all_partitions(partition, blocks, tasks, relabel, relabel_tasks,
                                             split_dir, items)

    mdir = out_dir / "member_rows"
    mdir.mkdir(parents=True, exist_ok=True)
    for old in mdir.glob("part-*.parquet"):  # a rerun with another partition count
        old.unlink()
    hints_dir = hints = None
    if cfg.match_hints:
        from components.promptify.matches import MatchHints, PartitionedMatchHints

        hints_dir = out_dir / "match_hints"
        hints = MatchHints.catalogue(pl.DataFrame(schema=schemas["members"]), items,
                                     cfg.match_fields, cfg.match_history_fields)
        PartitionedMatchHints.write_catalogue(hints_dir, hints, blocks)
    held = [t.id for t in tasks if t.held_out]
    count = dict.fromkeys(("members_with_questions", "events_in", "history_events", "labeled_events",
                           "kept_apart", "held_out_train"), 0)
    for b in range(blocks):
        members, inter = partition(b)
        prof = profile_texts(members, max_field_words=cfg.max_field_words)
        hist = inter.filter(~pl.col("action").is_in(cfg.history_exclude_actions))
        keep = ["member_id", "item_id", "action", "timestamp"] + (["value"] if "value" in hist.columns else [])
        lines = event_lines(hist.select(keep), itext).sort(["member_id", "timestamp", "item_id"])
        hist_lists = lines.group_by("member_id", maintain_order=True).agg(
            pl.col("timestamp").alias("hist_time"),
            pl.col("action").alias("hist_action"),
            *[pl.col(f"line_{s}").alias(f"hist_{s}") for s in STYLES],
        )
        del lines
        labeled = label_events(inter, tasks)
        count["kept_apart"] += label_events(inter, tasks, keep_held_out_apart=False).height - labeled.height
        if thresholds is not None:
            labeled = relabel.apply(labeled, members, items, thresholds)
        elif relabelled is not None:
            mine = relabelled.pop(b, None)
            if mine is None:
                mine = labeled.clear() if relabel_tasks is None else labeled.filter(pl.lit(False))
            labeled = mine if relabel_tasks is None else pl.concat(
                [labeled.filter(~pl.col("task_id").is_in(list(relabel_tasks))), mine])
        labeled = labeled.sort(["member_id", "task_id", "timestamp", "item_id"])
        cand_lists = labeled.group_by("member_id", maintain_order=True).agg(
            pl.col("task_id").alias("cand_task"),
            pl.col("item_id").alias("cand_item"),
            pl.col("timestamp").alias("cand_time"),
            pl.col("split").alias("cand_split"),
            pl.col("label").alias("cand_label"),
        )
        table = (prof.join(cand_lists, on="member_id", how="inner")  # no question, no prompt
                 .join(hist_lists, on="member_id", how="left").sort("member_id"))
        if table.height:
            table.write_parquet(mdir / f"part-{b:05d}.parquet")
        if hints is not None:
            PartitionedMatchHints.write_part(
                hints_dir, b, hints.with_members(members, items, hist.select("member_id", "item_id", "timestamp")))
        count["members_with_questions"] += table.height
        count["events_in"] += inter.height
        count["history_events"] += hist.height
        count["labeled_events"] += labeled.height
        count["held_out_train"] += labeled.filter(
            (pl.col("split") == "train") & pl.col("task_id").is_in(held)).height
        del members, inter, prof, hist, hist_lists, labeled, cand_lists, table
    shutil.rmtree(scratch, ignore_errors=True)

    itext_path = out_dir / "items_text.parquet"
    itext.select("item_id", "item_type", *[f"full_{s}" for s in STYLES]).write_parquet(itext_path)
    # the pool sampled negatives come from (see negatives.py)
    pools_path = out_dir / "item_pools.parquet"
    if cfg.negative_pool == "catalogue":
        # each item's first event is all the catalogue pool reads of the log: aggregate it streaming
        first = inter_scan.select("item_id", "timestamp").group_by("item_id").agg(
            pl.col("timestamp").min()).collect(engine="streaming")
        catalogue_pool(items, first).write_parquet(pools_path)
    else:  # one row per logged event: written streaming, never held
        impression_pool(inter_scan, items.lazy()).sink_parquet(pools_path)
    events_path = None
    if cfg.item_stats:
        events_path = out_dir / "item_events.parquet"
        inter_scan.select("member_id", "item_id", "action", "timestamp",
                          *(["value"] if "value" in schemas["interactions"] else [])).sink_parquet(events_path)
    stats = {
        "prepare.members_in": float(members_in),
        "prepare.members_with_questions": float(count["members_with_questions"]),
        "prepare.members_without_task_events": float(members_in - count["members_with_questions"]),
        "prepare.events_in": float(count["events_in"]),
        "prepare.history_events": float(count["history_events"]),
        "prepare.history_excluded_events": float(count["events_in"] - count["history_events"]),
        "prepare.labeled_events": float(count["labeled_events"]),
        # events a held-out task answers, kept out of trained tasks' train/valid labels
        "prepare.labels_kept_apart_for_zero_shot": float(count["kept_apart"]),
        "prepare.labeled_events_held_out_train": float(count["held_out_train"]),
    }
    return PreparedData(mdir, itext_path, pools_path, events_path, hints_dir), stats


def _relabel_all_partitions(
    partition: Callable[[int], tuple[pl.DataFrame, pl.DataFrame]],
    blocks: int,
    tasks: Sequence[TaskSpec],
    relabel: Callable[[pl.DataFrame, pl.DataFrame, pl.DataFrame], pl.DataFrame],
    relabel_tasks: Sequence[str] | None,
    split_dir: Path,
    items: pl.DataFrame,
) -> dict[int, pl.DataFrame]:
    """``relabel`` over the labelled rows of ``relabel_tasks`` of every partition at once,
    returned by partition.

    A first pass over the partitions: steering ranks a task's candidates across all
    members (its top quarter is positive), so relabelling each partition alone would
    change the labels. Only those tasks' rows are held (a few tasks of the registry)."""
    rows = []
    for b in range(blocks):
        _, inter = partition(b)
        labeled = label_events(inter, tasks)
        if relabel_tasks is not None:
            labeled = labeled.filter(pl.col("task_id").is_in(list(relabel_tasks)))
        rows.append(labeled)
        del inter
    labeled = pl.concat(rows)
    del rows
    out = relabel(labeled, pl.read_parquet(split_dir / "members"), items)
    if out.height != labeled.height:
        raise ValueError(f"relabel returned {out.height} rows for {labeled.height}: it may rewrite "
                         f"labels only, keeping every row")
    parts = out.with_columns(member_block(pl.col("member_id"), blocks).alias("__block")).partition_by(
        "__block", as_dict=True, include_key=False, maintain_order=True)
    return {int(k[0]): v for k, v in parts.items()}


OUTPUT_SCHEMA = pa.schema([
    ("example_id", pa.string()),
    ("member_id", pa.string()),
    ("task_id", pa.string()),
    ("split", pa.string()),
    ("held_out", pa.bool_()),
    ("cutoff", pa.timestamp("us", tz="UTC")),
    ("style", pa.string()),
    ("prefix", pa.string()),
    ("candidates", pa.list_(pa.string())),
    ("candidate_item_ids", pa.list_(pa.string())),
    ("labels", pa.list_(pa.int8())),
    ("n_prior_events", pa.int32()),
    ("n_history_kept", pa.int32()),
    ("history_tokens", pa.int32()),
    ("n_sampled_negatives", pa.int32()),
    ("n_task_events", pa.int32()),
    ("n_merged_same_item", pa.int32()),
    ("n_over_candidate_cap", pa.int32()),
    ("n_negatives_subsampled", pa.int32()),
    ("n_events_in_capped_prompts", pa.int32()),
    ("n_events_in_negative_only_prompts", pa.int32()),
])


class PromptBuilder:
    """Builds the prompts of a batch of member rows; a Ray Data callable class.

    Holds the tokenizer, item texts and negative-sampling pools, loaded once per worker.
    Every random choice uses a generator seeded by (seed, member id), so the output does
    not depend on how members are batched or how many workers run.
    """

    def __init__(self, tokenizer_dir: str, prepared: PreparedData, tasks: Sequence[TaskSpec],
                 cfg: PromptifyConfig):
        from components.promptify.tokenizer import load_tokenizer

        self.tok = load_tokenizer(Path(tokenizer_dir))
        self.cfg = cfg
        self.tasks = {t.id: t for t in tasks}
        it = pl.read_parquet(prepared.items_text)
        self.item_type = dict(zip(it["item_id"], it["item_type"], strict=True))
        self.item_text = {s: dict(zip(it["item_id"], it[f"full_{s}"], strict=True)) for s in STYLES}
        self.negatives = (CatalogueSampler.from_parquet(prepared.item_pools) if cfg.negative_pool == "catalogue"
                          else NegativeSampler.from_parquet(prepared.item_pools, cfg.negative_window_days))
        self.item_stats = None
        if cfg.item_stats:
            from components.promptify.item_stats import ItemStatsAsOf

            if prepared.item_events is None:
                raise ValueError("promptify.item_stats is on but the prepare stage wrote no item "
                                 "events: rerun prepare with the same promptify config")
            self.item_stats = ItemStatsAsOf.from_parquet(prepared.item_events, cfg.item_stats_actions,
                                                          cfg.item_stats_words)
        self.match_hints = None
        if cfg.match_hints:
            if prepared.match_hints is None:
                raise ValueError("promptify.match_hints is on but the prepare stage wrote no match "
                                 "hints: rerun prepare with the same promptify config")
            from components.promptify.matches import load_match_hints

            self.match_hints = load_match_hints(Path(prepared.match_hints))

    # ------------------------------------------------------------------ one member
    def _member_examples(self, row: dict) -> list[dict]:
        cfg = self.cfg
        mid = row["member_id"]
        rng = np.random.default_rng([cfg.seed, zlib.crc32(mid.encode())])
        hist_time = np.array(
            [t.timestamp() * 1e6 for t in row["hist_time"] or []], dtype=np.float64
        ).astype(np.int64)
        hist_action = row["hist_action"] or []
        token_cache: dict[str, np.ndarray] = {}
        # Many tasks ask about the same impression, so they share (style, cutoff): the
        # budgeted history is computed once per member and (style, number of prior events).
        history_cache: dict[tuple[str, int], tuple[str, int, int]] = {}
        seen_items = set(row["cand_item"])  # never sample a "negative" the member engaged with
        out: list[dict] = []

        # group the member's labeled events by (task, split), keeping time order
        groups: dict[tuple[str, str], list[int]] = {}
        for i, (task_id, split) in enumerate(zip(row["cand_task"], row["cand_split"], strict=True)):
            groups.setdefault((task_id, split), []).append(i)

        ctx = (rng, hist_time, hist_action, token_cache, history_cache, seen_items)
        fallback: tuple[TaskSpec, str, list[int]] | None = None
        neg_only_dropped = 0
        for (task_id, split), idx in sorted(groups.items()):
            task = self.tasks[task_id]
            if split == "train" and task.held_out:
                continue  # zero-shot tasks never train
            chunks, n_chunk_capped, dropped = self._question_sets(rng, split, idx, row)
            neg_only_dropped += sum(len(c) for c in dropped)
            if fallback is None and dropped:
                fallback = (task, split, dropped[0])
            for qi, chunk in enumerate(chunks):
                out.append(self._example(row, task, split, chunk, qi, ctx,
                                         n_chunk_capped if qi == 0 else 0))
        if not out and fallback is not None:
            # a member whose every labeled event is in a dropped negative-only chunk still
            # gets one prompt, so the count of dropped events has a row to live on
            task, split, chunk = fallback
            neg_only_dropped -= len(chunk)
            out.append(self._example(row, task, split, chunk, 0, ctx, 0))
        if out:
            out[0]["n_events_in_negative_only_prompts"] = neg_only_dropped
        return out

    def _example(self, row: dict, task: TaskSpec, split: str, chunk: list[int], qi: int,
                 ctx: tuple, n_chunk_capped: int) -> dict:
        """One prompt: the questions of ``chunk`` (indices into the member's events)."""
        rng, hist_time, hist_action, token_cache, history_cache, seen_items = ctx
        cfg = self.cfg
        mid = row["member_id"]
        task_id = task.id
        cutoff = row["cand_time"][chunk[0]]
        items, labels, n_merged, n_capped = self._dedupe(chunk, row)
        n_neg_dropped = 0
        if split == "train":
            items, labels, n_neg_dropped = self._balance(rng, items, labels)
        cutoff_us = int(cutoff.timestamp() * 1e6)
        n_sampled = 0
        if task.negatives != "logged" and cfg.sampled_negatives:
            if isinstance(self.negatives, CatalogueSampler):
                neg = self.negatives.sample(rng, task.item_type, self._anchors(chunk, row, items, labels),
                                            seen_items | set(items), cfg.sampled_negatives)
            else:
                neg = self.negatives.sample(
                    rng, task.item_type, task.surface if cfg.hard_negatives else None,
                    cutoff_us, seen_items | set(items), cfg.sampled_negatives)
            items, labels = items + neg, labels + [0] * len(neg)
            n_sampled = len(neg)
        style = str(rng.choice(cfg.styles)) if split == "train" else cfg.eval_style
        prefix, n_prior, kept, used = self.prefix_at(row, task.instruction, task.question, cutoff, style,
                                                     hist_time, hist_action, token_cache, history_cache)
        return {
            "example_id": f"{mid}:{task_id}:{split}:{qi}",
            "member_id": mid,
            "task_id": task_id,
            "split": split,
            "held_out": task.held_out,
            "cutoff": cutoff,
            "style": style,
            "prefix": prefix,
            "candidates": self.candidate_texts(items, style, cutoff_us, mid, task.item_type, task.question),
            "candidate_item_ids": items,
            "labels": labels,
            "n_prior_events": n_prior,
            "n_history_kept": kept,
            "history_tokens": used,
            "n_sampled_negatives": n_sampled,
            # accounting: n_task_events = logged questions + merged + capped + dropped
            "n_task_events": len(chunk),
            "n_merged_same_item": n_merged,
            "n_over_candidate_cap": n_capped,
            "n_negatives_subsampled": n_neg_dropped,
            "n_events_in_capped_prompts": n_chunk_capped,
            "n_events_in_negative_only_prompts": 0,
        }

    def prefix_at(self, row: dict, instruction: str, question: str, cutoff, style: str,
                  hist_time: np.ndarray, hist_action: list[str], token_cache: dict[str, np.ndarray],
                  history_cache: dict[tuple[str, int], tuple[str, int, int]]) -> tuple[str, int, int, int]:
        """A member row's prompt prefix at ``cutoff`` (a datetime): (text, events before the
        cutoff, history lines kept, history tokens). The offline examples and the Serve app's
        ``member_id`` requests both call this, so one request scores as its test prompt did."""
        cutoff_us = int(cutoff.timestamp() * 1e6)
        n_prior = int(np.searchsorted(hist_time, cutoff_us, side="left"))
        if (style, n_prior) not in history_cache:
            history_cache[(style, n_prior)] = self.history_section(
                row, style, n_prior, hist_action, token_cache)
        history, kept, used = history_cache[(style, n_prior)]
        pieces = PromptPieces(instruction, row[f"profile_{style}"] or NO_PROFILE, (), (), question,
                              today=cutoff.strftime("%Y-%m-%d"))
        return render_prefix(pieces, history, style), n_prior, kept, used

    def candidate_texts(self, items: Sequence[str], style: str, cutoff_us: int, member_id: str | None,
                        item_type: str, question: str) -> list[str]:
        """The rendered candidate segments of ``items`` (ids of the catalogue) at the cutoff."""
        q = question if self.cfg.question_in_candidates else None
        return [render_candidate(self._item_text(it, style, cutoff_us, member_id),
                                 self.item_type.get(it, item_type), style, q) for it in items]

    def _question_sets(self, rng, split: str, idx: list[int], row: dict
                       ) -> tuple[list[list[int]], int, list[list[int]]]:
        """Train: chunks of consecutive questions. A chunk without a positive is kept with
        probability ``negative_only_prompt_rate`` (the others are returned as dropped: a
        ranking prompt needs a positive to rank); then at most ``max_prompts_per_member_task``
        chunks, those with a positive first (returns the events of the chunks left out by
        that cap too). Eval: one list."""
        if split != "train":
            return [idx], 0, []
        size = self.cfg.questions_per_prompt
        chunks = [idx[i:i + size] for i in range(0, len(idx), size)]
        has_pos = [any(row["cand_label"][i] for i in c) for c in chunks]
        keep_neg = rng.random(len(chunks)) < self.cfg.negative_only_prompt_rate
        dropped = [c for c, p, k in zip(chunks, has_pos, keep_neg, strict=True) if not (p or k)]
        kept = [(c, p) for c, p, k in zip(chunks, has_pos, keep_neg, strict=True) if p or k]
        capped = 0
        cap = self.cfg.max_prompts_per_member_task
        if len(kept) > cap:
            pos = [i for i, (_, p) in enumerate(kept) if p]
            neg = [i for i, (_, p) in enumerate(kept) if not p]
            order = [pos[i] for i in rng.permutation(len(pos))] + [neg[i] for i in rng.permutation(len(neg))]
            pick = set(order[:cap])
            capped = sum(len(c) for i, (c, _) in enumerate(kept) if i not in pick)
            kept = [x for i, x in enumerate(kept) if i in pick]
        return [c for c, _ in kept], capped, dropped

    def _item_text(self, item_id: str, style: str, cutoff_us: int, member_id: str | None) -> str:
        """A candidate's text; with ``item_stats``, plus its statistics strictly before the
        cutoff; with ``match_hints``, plus what it shares with the member (matches.py)."""
        text = self.item_text[style].get(item_id, item_id)
        if self.item_stats is not None:
            text += self.item_stats.render(item_id, cutoff_us, style)
        if self.match_hints is not None and member_id is not None:  # None: a member not in the tables
            text += self.match_hints.render(member_id, item_id, cutoff_us, style)
        return text

    @staticmethod
    def _anchors(chunk: list[int], row: dict, items: list[str], labels: list[int]) -> list[tuple[int, str]]:
        """(time in µs, item) of the positives' first events in ``chunk`` (all questions'
        when none is positive): the times and items sampled negatives are matched to."""
        first: dict[str, int] = {}
        for i in chunk:
            it, t = row["cand_item"][i], int(row["cand_time"][i].timestamp() * 1e6)
            first[it] = min(first.get(it, t), t)
        pos = [it for it, y in zip(items, labels, strict=True) if y == 1] or items
        return [(first[it], it) for it in pos if it in first]

    def _dedupe(self, chunk: list[int], row: dict) -> tuple[list[str], list[int], int, int]:
        """One question per item (positive if any of its events is), at most
        ``max_eval_candidates``; returns items, labels, events merged, events over the cap."""
        label: dict[str, int] = {}
        count: dict[str, int] = {}
        for i in chunk:
            it = row["cand_item"][i]
            label[it] = max(label.get(it, 0), int(row["cand_label"][i]))
            count[it] = count.get(it, 0) + 1
        items = list(label)
        kept = items[: self.cfg.max_eval_candidates]
        over = sum(count[i] for i in items[len(kept):])
        merged = sum(count[i] - 1 for i in kept)
        return kept, [label[i] for i in kept], merged, over

    def _balance(self, rng, items: list[str], labels: list[int]) -> tuple[list[str], list[int], int]:
        """Keep every positive and at most ``negatives_per_positive`` negatives per positive."""
        pos = [i for i, y in enumerate(labels) if y == 1]
        neg = [i for i, y in enumerate(labels) if y == 0]
        cap = max(1, int(round(self.cfg.negatives_per_positive * max(1, len(pos)))))
        dropped = 0
        if len(neg) > cap:
            dropped = len(neg) - cap
            neg = sorted(rng.choice(neg, cap, replace=False).tolist())
        keep = sorted(pos + neg)
        return [items[i] for i in keep], [labels[i] for i in keep], dropped

    def history_section(self, row: dict, style: str, n_prior: int, hist_action: list[str],
                 token_cache: dict[str, np.ndarray]) -> tuple[str, int, int]:
        """The history section of the ``n_prior`` earliest events, cut to the token budget:
        (text, lines kept, tokens)."""
        lines = row[f"hist_{style}"] or []
        if style not in token_cache:
            sep = "\n" if style != "narrative" else " "
            token_cache[style] = count_tokens(self.tok, [ln + sep for ln in lines])
        line_tokens = token_cache[style][:n_prior]
        prior_lines, prior_actions = lines[:n_prior], hist_action[:n_prior]

        def render(k: int) -> str:
            return render_history(prior_lines[n_prior - k:] if k else [],
                                  prior_actions[n_prior - k:] if k else [], style)

        kept, used = fit_to_budget(line_tokens, self.cfg.history_token_budget, render, self.tok)
        return render(kept), kept, used

    def __call__(self, batch: pa.Table) -> pa.Table:
        members = batch.to_pylist()
        order: Sequence[int] = range(len(members))
        if hasattr(self.match_hints, "locate") and members:
            # Match hints are stored by member partition and a batch may span several: build
            # partition by partition (each loaded once per batch), output in the batch's order.
            blocks = self.match_hints.locate([m["member_id"] for m in members])
            order = sorted(order, key=blocks.__getitem__)
        built: list[list[dict]] = [[] for _ in members]
        for i in order:
            built[i] = self._member_examples(members[i])
        return pa.Table.from_pylist([ex for rows in built for ex in rows], schema=OUTPUT_SCHEMA)
