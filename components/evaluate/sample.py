"""The evaluation prompts: one split of the promptify examples, a seeded sample of whole
lists per task."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import polars as pl

#: Columns of the promptify examples the evaluation reads.
EXAMPLE_COLUMNS = ("example_id", "member_id", "task_id", "split", "held_out", "cutoff", "prefix",
                   "candidates", "candidate_item_ids", "labels", "n_prior_events")


def select_eval_rows(examples_dir: Path, split: str, max_per_task: int | None = None, seed: int = 0,
                     tasks: list[str] | None = None) -> pl.DataFrame:
    """The evaluation prompts of ``split``: per task at most ``max_per_task`` rows, drawn
    with a generator seeded by (``seed``, task id), so a task's sample does not depend on
    which other tasks are evaluated. Sorted by (task_id, example_id)."""
    ex = (pl.read_parquet(examples_dir, columns=list(EXAMPLE_COLUMNS))
          .filter(pl.col("split") == split).sort("task_id", "example_id"))
    if ex.height == 0:
        raise ValueError(f"no '{split}' prompts in {examples_dir}: set evaluate.split to a split "
                         f"the promptify stage wrote (valid or test)")
    present = sorted(ex["task_id"].unique().to_list())
    if tasks is not None:
        unknown = sorted(set(tasks) - set(present))
        if unknown:
            raise ValueError(f"evaluate.tasks names {unknown}, which have no '{split}' prompts; "
                             f"tasks with prompts: {present}")
        ex = ex.filter(pl.col("task_id").is_in(tasks))
    if max_per_task is None:
        return ex
    parts = []
    for (task_id,), part in ex.group_by("task_id", maintain_order=True):
        if part.height > max_per_task:
            rng = np.random.default_rng([seed, zlib.crc32(str(task_id).encode())])
            part = part[np.sort(rng.choice(part.height, size=max_per_task, replace=False))]
        parts.append(part)
    return pl.concat(parts)
