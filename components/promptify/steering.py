"""Labels for instruction-steering tasks, from the synthetic world's hidden model.

360Brew's instructions can tell the model what to weigh ("Focus on skills, location,
and years of experience more than other criteria"). To measure whether a model follows
such an instruction, the labels of a steering task must follow it too: for each task
with ``steering: [criteria]`` the candidate events keep their (member, item, time) but
are relabelled by the synthetic world's utility restricted to the named components:
the top ``top_fraction`` of the task's candidates by that utility are positive
(ties broken by the full utility).
Evaluation can then compare how a model ranks the same candidates under the plain and
the steered instruction.
"""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

from components.config import SyntheticWorldConfig
from components.promptify.tasks import TaskSpec


def steering_relabel(
    labeled: pl.DataFrame,
    tasks: Sequence[TaskSpec],
    members: pl.DataFrame,
    items: pl.DataFrame,
    world: SyntheticWorldConfig,
    top_fraction: float = 0.25,
) -> pl.DataFrame:
    """Replace ``label`` of steering tasks' rows; other rows are returned unchanged."""
    from components.data.synthetic import steering_weights, utility, utility_components

    steer = {t.id: t.steering for t in tasks if t.steering}
    if not steer:
        return labeled
    labeled = labeled.with_row_index("__row")
    parts = [labeled.filter(~pl.col("task_id").is_in(list(steer)))]
    for task_id, criteria in steer.items():
        rows = labeled.filter(pl.col("task_id") == task_id)
        if rows.height == 0:
            continue
        comps = utility_components(members, items, rows.select("__row", "member_id", "item_id", "timestamp"), world)
        # Rank by the named criteria; ties (criteria are often coarse: same city or not)
        # are broken by the full hidden utility, so exactly the top fraction is positive.
        ranked = comps.select(
            "__row",
            utility(comps, steering_weights(criteria)).alias("__steer"),
            utility(comps).alias("__full"),
        ).sort(["__steer", "__full"], descending=True)
        k = round(top_fraction * ranked.height)
        relabel = ranked.select(
            "__row", (pl.int_range(pl.len()) < k).cast(pl.Int8).alias("__new")
        )
        rows = rows.join(relabel, on="__row").with_columns(pl.col("__new").alias("label")).drop("__new")
        parts.append(rows)
    return pl.concat(parts).sort("__row").drop("__row")
