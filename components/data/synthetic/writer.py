"""The chunked writer: the world's canonical tables as Parquet part files, one chunk at a time.

Why chunks: memory must not grow with the number of members, so members are generated
``cfg.members_per_file`` at a time (one members and one interactions part file each)
with a generator seeded from ``(cfg.seed, chunk)``; the catalog is one items file.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from components.config import SyntheticWorldConfig
from components.data.synthetic.entities import build_catalog, generate_members
from components.data.synthetic.events import generate_interactions
from components.data.synthetic.latents import _SALT_CHUNK, _seed_key
from components.data.synthetic.vocabulary import (
    _ACTION_CODE,
    ACTIONS,
    ALL_ACTIONS,
    ITEM_TYPES,
    POSITIVE_ACTIONS,
)
from components.data.tables import TABLE_NAMES, write_table

ACTIVITY_BUCKETS = (("0-5", 0, 5), ("6-10", 6, 10), ("11-100", 11, 100), (">100", 101, None))


def _clear_parts(out_dir: Path) -> None:
    """Remove part files of an earlier run: a smaller world must not inherit its parts."""
    for t in TABLE_NAMES:
        for p in (out_dir / t).glob("part-*.parquet"):
            p.unlink()


def generate_world(
    cfg: SyntheticWorldConfig, out_dir: Path, progress: bool = False
) -> dict[str, Any]:
    """Write the world's canonical tables under ``out_dir`` and return a summary.

    ``out_dir/{members,items,interactions}/part-*.parquet``: one items file, and one
    members and one interactions file per chunk of ``cfg.members_per_file`` members.
    Earlier part files in those directories are removed. The summary has row counts
    (``rows``), members per activity bucket, action counts per item type and seconds.
    """
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    _clear_parts(out_dir)
    catalog = build_catalog(cfg)
    write_table(catalog.items, out_dir / "items", part=0)
    n_chunks = math.ceil(cfg.members / cfg.members_per_file)
    buckets = dict.fromkeys((b[0] for b in ACTIVITY_BUCKETS), 0)
    action_counts = np.zeros((len(ITEM_TYPES), len(ALL_ACTIONS)), dtype=np.int64)
    n_inter = 0

    bar = None
    if progress:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        bar = Progress(
            TextColumn("synthetic world"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("chunks, {task.fields[rows]:,} interactions"),
            TimeRemainingColumn(),
        )
        task = bar.add_task("chunks", total=n_chunks, rows=0)
        bar.start()
    try:
        for chunk in range(n_chunks):
            first = chunk * cfg.members_per_file
            n = min(cfg.members_per_file, cfg.members - first)
            rng = np.random.default_rng([_seed_key(cfg.seed), _SALT_CHUNK, chunk])
            members = generate_members(cfg, catalog, first, n, rng)
            inter, per_member, type_action = generate_interactions(cfg, catalog, members, rng)
            write_table(members, out_dir / "members", part=chunk)
            write_table(inter, out_dir / "interactions", part=chunk)
            n_inter += inter.height
            for name, lo, hi in ACTIVITY_BUCKETS:
                buckets[name] += int(
                    ((per_member >= lo) & (per_member <= (hi if hi is not None else np.inf))).sum()
                )
            np.add.at(action_counts, (type_action[:, 0], type_action[:, 1]), 1)
            del members, inter, per_member, type_action
            if bar is not None:
                bar.update(task, advance=1, rows=n_inter)
    finally:
        if bar is not None:
            bar.stop()

    actions = {
        t: {a: int(action_counts[k, _ACTION_CODE[a]]) for a in ACTIONS[t]}
        for k, t in enumerate(ITEM_TYPES)
    }
    return {
        "rows": {"members": cfg.members, "items": catalog.items.height, "interactions": n_inter},
        "items_by_type": {t: s.stop - s.start for t, s in catalog.type_slices.items()},
        "members_by_activity": buckets,
        "actions": actions,
        "positive_rate": {
            t: round(
                sum(actions[t][a] for a in POSITIVE_ACTIONS[t]) / max(sum(actions[t].values()), 1),
                4,
            )
            for t in ITEM_TYPES
        },
        "files": {"members": n_chunks, "items": 1, "interactions": n_chunks},
        "seconds": round(time.perf_counter() - t0, 2),
    }
