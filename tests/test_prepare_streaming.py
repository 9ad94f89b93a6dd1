"""prepare by member partition == prepare of the whole log (rows, part files, stats, hints).

The reference is a verbatim copy of ``prepare_member_table`` as it was before it
streamed by partition (commit 116d627, ``_prepare_whole_log`` below): it read the whole
split into memory and wrote one pickle of every member's match hints. The new code must
write the same ``member_rows`` part files, item texts, negative pools and stats for the
embedded default's promptify config (8 partitions, match hints, steering relabel), and
the same rows and hints when the partition count grows with the members.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Sequence
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from polars.testing import assert_frame_equal

from components.config import PromptifyConfig, load_config
from components.data.split import split_dataset
from components.data.synthetic import ALL_ACTIONS, generate_world
from components.data.validate import validate_dataset
from components.promptify.examples import (
    PreparedData,
    PromptBuilder,
    RankedRelabel,
    label_events,
    member_blocks,
    prepare_member_table,
)
from components.promptify.matches import MatchHints, PartitionedMatchHints, load_match_hints
from components.promptify.negatives import catalogue_pool, impression_pool
from components.promptify.steering import steering_relabel
from components.promptify.tasks import TaskSpec, load_tasks
from components.promptify.tokenizer import train_bpe_tokenizer
from components.promptify.verbalize import STYLES, event_lines, item_texts, profile_texts
from pipelines.stages import steering_by_partition

MEMBERS = 600


def _prepare_whole_log(split_dir: Path, tasks: Sequence[TaskSpec], cfg: PromptifyConfig, out_dir: Path,
                       relabel: Callable | None = None) -> tuple[PreparedData, dict[str, float]]:
    """``prepare_member_table`` at commit 116d627 (whole log in memory), copied as it was
    (two comments dropped, the MatchHints import moved to the top). ``MatchHints.build``
    is today's: the same code split into its catalogue and member halves."""
    split_dir, out_dir = Path(split_dir), Path(out_dir)
    members = pl.read_parquet(split_dir / "members")
    items = pl.read_parquet(split_dir / "items")
    inter = pl.read_parquet(split_dir / "interactions").join(
        items.select("item_id", "item_type"), on="item_id", how="left"
    )
    itext = item_texts(items, max_field_words=cfg.max_field_words)
    prof = profile_texts(members, max_field_words=cfg.max_field_words)

    hist = inter.filter(~pl.col("action").is_in(cfg.history_exclude_actions))
    keep = ["member_id", "item_id", "action", "timestamp"] + (["value"] if "value" in hist.columns else [])
    lines = event_lines(hist.select(keep), itext).sort(["member_id", "timestamp", "item_id"])
    hist_lists = lines.group_by("member_id", maintain_order=True).agg(
        pl.col("timestamp").alias("hist_time"),
        pl.col("action").alias("hist_action"),
        *[pl.col(f"line_{s}").alias(f"hist_{s}") for s in STYLES],
    )
    labeled = label_events(inter, tasks)
    kept_apart = label_events(inter, tasks, keep_held_out_apart=False).height - labeled.height
    if relabel is not None:
        labeled = relabel(labeled, members, items)
    labeled = labeled.sort(["member_id", "task_id", "timestamp", "item_id"])
    cand_lists = labeled.group_by("member_id", maintain_order=True).agg(
        pl.col("task_id").alias("cand_task"),
        pl.col("item_id").alias("cand_item"),
        pl.col("timestamp").alias("cand_time"),
        pl.col("split").alias("cand_split"),
        pl.col("label").alias("cand_label"),
    )
    table = (
        prof.join(cand_lists, on="member_id", how="inner")  # no question, no prompt
        .join(hist_lists, on="member_id", how="left")
        .with_columns(
            (pl.col("member_id").hash(seed=7) % cfg.blocks).alias("__block")
        )
    )
    mdir = out_dir / "member_rows"
    mdir.mkdir(parents=True, exist_ok=True)
    for b in range(cfg.blocks):
        part = table.filter(pl.col("__block") == b).drop("__block").sort("member_id")
        if part.height:
            part.write_parquet(mdir / f"part-{b:05d}.parquet")
    itext_path = out_dir / "items_text.parquet"
    itext.select("item_id", "item_type", *[f"full_{s}" for s in STYLES]).write_parquet(itext_path)
    pools = catalogue_pool(items, inter) if cfg.negative_pool == "catalogue" else impression_pool(inter, items)
    pools_path = out_dir / "item_pools.parquet"
    pools.write_parquet(pools_path)
    events_path = None
    match_path = None
    if cfg.match_hints:
        match_path = out_dir / "match_hints.pkl"
        hints = MatchHints.build(members, items, hist.select("member_id", "item_id", "timestamp"),
                                 cfg.match_fields, cfg.match_history_fields)
        with match_path.open("wb") as f:
            pickle.dump(hints, f, protocol=pickle.HIGHEST_PROTOCOL)
    if cfg.item_stats:
        events_path = out_dir / "item_events.parquet"
        inter.select("member_id", "item_id", "action", "timestamp",
                     *(["value"] if "value" in inter.columns else [])).write_parquet(events_path)
    held = {t.id for t in tasks if t.held_out}
    stats = {
        "prepare.members_in": float(members.height),
        "prepare.members_with_questions": float(table.height),
        "prepare.members_without_task_events": float(members.height - table.height),
        "prepare.events_in": float(inter.height),
        "prepare.history_events": float(hist.height),
        "prepare.history_excluded_events": float(inter.height - hist.height),
        "prepare.labeled_events": float(labeled.height),
        "prepare.labels_kept_apart_for_zero_shot": float(kept_apart),
        "prepare.labeled_events_held_out_train": float(
            labeled.filter((pl.col("split") == "train") & pl.col("task_id").is_in(list(held))).height
        ),
    }
    return PreparedData(mdir, itext_path, pools_path, events_path, match_path), stats


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The embedded default's world shape and promptify config, at 600 members."""
    root = tmp_path_factory.mktemp("stream")
    default = load_config("local")
    wcfg = default.data.synthetic.model_copy(update={"members": MEMBERS})
    generate_world(wcfg, root / "world")
    validate_dataset(root / "world", root / "clean", ALL_ACTIONS)
    split_dataset(root / "clean", root / "split", default.split)
    tasks = load_tasks().for_domain("professional")
    steered = [t.id for t in tasks if t.steering]
    assert steered, "the registry lost its steering tasks: this test no longer covers the relabel"

    def relabel(labeled, members, items):
        return steering_relabel(labeled, tasks, members, items, wcfg)

    cfg = default.promptify
    assert cfg.match_hints and member_blocks(cfg, MEMBERS) == cfg.blocks
    old, old_stats = _prepare_whole_log(root / "split", tasks, cfg, root / "old", relabel)
    streamed = steering_by_partition(default.model_copy(update={"data": default.data.model_copy(
        update={"synthetic": wcfg})}), tasks)
    assert isinstance(streamed, RankedRelabel) and set(streamed.tasks) == set(steered)
    return {"root": root, "tasks": tasks, "cfg": cfg, "relabel": relabel, "steered": steered,
            "streamed": streamed, "old": old, "old_stats": old_stats}


def _hints_equal(old: MatchHints, new: PartitionedMatchHints) -> None:
    parts = [new.part(m) for m in {m: None for m in old.member_values}]  # loads every partition
    assert new.catalogue.fields == old.fields and new.catalogue.item_values == old.item_values
    members: dict = {}
    times: dict = {}
    for b in range(new.blocks):
        with (new.directory / f"part-{b:05d}.pkl").open("rb") as f:
            mv, ht = pickle.load(f)
        assert not (members.keys() & mv.keys()), "a member in two partitions"
        members.update(mv)
        times.update(ht)
    assert members == old.member_values
    assert times.keys() == old.history_times.keys()
    assert all((times[k] == v).all() for k, v in old.history_times.items())
    assert parts


@pytest.mark.timeout(300)
def test_embedded_default_writes_the_same_files_and_stats(world, tmp_path):
    """The pipeline's path: steering streamed by partition (RankedRelabel)."""
    new, stats = prepare_member_table(world["root"] / "split", world["tasks"], world["cfg"], tmp_path / "new",
                                      relabel=world["streamed"])
    old = world["old"]
    assert stats == world["old_stats"]
    names = sorted(p.name for p in old.members_dir.glob("*.parquet"))
    assert names == sorted(p.name for p in new.members_dir.glob("*.parquet"))
    assert len(names) == world["cfg"].blocks
    for name in names:
        assert_frame_equal(pl.read_parquet(new.members_dir / name), pl.read_parquet(old.members_dir / name))
    for f in ("items_text.parquet", "item_pools.parquet"):
        assert_frame_equal(pl.read_parquet(tmp_path / "new" / f), pl.read_parquet(old.members_dir.parent / f))
    assert not (tmp_path / "new" / "_by_member").exists(), "the partition scratch is left behind"
    with old.match_hints.open("rb") as f:
        _hints_equal(pickle.load(f), load_match_hints(new.match_hints))
    # the steering relabel did change labels (else this would not test that it sees all partitions)
    unsteered, _ = prepare_member_table(world["root"] / "split", world["tasks"],
                                        world["cfg"].model_copy(update={"match_hints": False}), tmp_path / "plain")
    cand = pl.read_parquet(new.members_dir).select("member_id", "cand_label").explode("cand_label")
    plain = pl.read_parquet(unsteered.members_dir).select("member_id", "cand_label").explode("cand_label")
    assert not cand.equals(plain)


@pytest.mark.timeout(300)
def test_more_partitions_same_rows_and_hints_and_prompts_across_partitions(world, tmp_path):
    """12 partitions; steering through the gathered callable (steering_relabel itself)."""
    cfg = world["cfg"].model_copy(update={"members_per_block": 50})
    blocks = member_blocks(cfg, MEMBERS)
    assert blocks == 12
    new, stats = prepare_member_table(world["root"] / "split", world["tasks"], cfg, tmp_path / "new",
                                      relabel=world["relabel"], relabel_tasks=world["steered"])
    streamed, _ = prepare_member_table(world["root"] / "split", world["tasks"],
                                       cfg.model_copy(update={"match_hints": False}), tmp_path / "streamed",
                                       relabel=world["streamed"])
    for f in sorted(new.members_dir.glob("*.parquet")):
        assert_frame_equal(pl.read_parquet(streamed.members_dir / f.name), pl.read_parquet(f))
    assert stats == world["old_stats"]
    assert len(list(new.members_dir.glob("*.parquet"))) == blocks
    rows = pl.read_parquet(new.members_dir).sort("member_id")
    assert_frame_equal(rows, pl.read_parquet(world["old"].members_dir).sort("member_id"))
    hints = load_match_hints(new.match_hints)
    with world["old"].match_hints.open("rb") as f:
        whole = pickle.load(f)
    _hints_equal(whole, hints)

    # prompts from a batch that mixes every partition: the same as with the whole-log hints
    texts = [x for lines in rows["hist_markdown"].head(200).to_list() for x in (lines or [])[-20:]]
    tok = train_bpe_tokenizer(texts + [t.instruction for t in world["tasks"]], 600, tmp_path / "tok")
    # five members of each partition, in member order: neighbours are in different partitions
    batch = pa.concat_tables([pq.read_table(f).slice(0, 5) for f in sorted(new.members_dir.glob("*.parquet"))])
    batch = batch.sort_by("member_id")
    located = hints.locate(batch.column("member_id").to_pylist())
    assert len(set(located)) == blocks and sum(a != b for a, b in zip(located[:-1], located[1:], strict=True)) > 20
    mixed = PromptBuilder(str(tok), new, world["tasks"], cfg)
    mixed.match_hints.keep = 1  # every change of partition reloads one: order must not matter
    reference = PromptBuilder(str(tok), world["old"], world["tasks"], cfg)
    assert isinstance(reference.match_hints, MatchHints)
    out = pl.from_arrow(mixed(batch))
    assert out.height > 100
    assert_frame_equal(out, pl.from_arrow(reference(batch)))
    assert out["candidates"].explode().str.contains("Matches your profile").any()


@pytest.mark.timeout(300)
def test_item_stats_and_impression_pool_stream_the_same_tables(world, tmp_path):
    cfg = world["cfg"].model_copy(update={"item_stats": True, "negative_pool": "impressions",
                                          "match_hints": False, "members_per_block": 200})
    old, old_stats = _prepare_whole_log(world["root"] / "split", world["tasks"], cfg, tmp_path / "old")
    new, stats = prepare_member_table(world["root"] / "split", world["tasks"], cfg, tmp_path / "new")
    assert stats == old_stats
    assert_frame_equal(pl.read_parquet(new.item_pools), pl.read_parquet(old.item_pools))
    key = ["member_id", "item_id", "timestamp", "action"]
    assert_frame_equal(pl.read_parquet(new.item_events).sort(key), pl.read_parquet(old.item_events).sort(key))
    assert new.match_hints is None and not (tmp_path / "new" / "match_hints").exists()


def test_partitions_grow_with_members_and_keep_the_configured_floor():
    cfg = PromptifyConfig(blocks=8, members_per_block=20_000)
    assert member_blocks(cfg, 2_000) == 8
    assert member_blocks(cfg, 100_000) == 8
    assert member_blocks(cfg, 1_000_000) == 50
    assert member_blocks(cfg, 1_000_001) == 51
