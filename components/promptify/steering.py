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
from typing import TYPE_CHECKING

import polars as pl

from components.config import SyntheticWorldConfig
from components.promptify.tasks import TaskSpec

if TYPE_CHECKING:
    from components.promptify.examples import RankedRelabel

#: The fraction of a steering task's candidates that are positive.
TOP_FRACTION = 0.25


def _steering_scores(comps: pl.DataFrame, criteria: Sequence[str]) -> tuple[pl.Series, pl.Series]:
    """(utility by the named criteria, full utility): rank by the first, ties by the second
    (criteria are often coarse: same city or not)."""
    from components.data.synthetic import steering_weights, utility

    return utility(comps, steering_weights(criteria)), utility(comps)


def steering_ranked_relabel(tasks: Sequence[TaskSpec], world: SyntheticWorldConfig,
                            top_fraction: float = TOP_FRACTION) -> RankedRelabel | None:
    """:func:`steering_relabel`'s rule as a :class:`RankedRelabel`, which ``prepare`` streams
    by member partition (the same labels, without gathering every partition's rows); None
    when no task steers."""
    from components.data.synthetic import utility_components
    from components.promptify.examples import RankedRelabel

    criteria = {t.id: t.steering for t in tasks if t.steering}
    if not criteria:
        return None

    def score(rows, task_id, members, items):
        comps = utility_components(members, items, rows.select("member_id", "item_id", "timestamp"), world)
        steer, full = _steering_scores(comps, criteria[task_id])
        return steer.to_numpy(), full.to_numpy()

    return RankedRelabel(tuple(criteria), score, top_fraction=top_fraction)


def steering_relabel(
    labeled: pl.DataFrame,
    tasks: Sequence[TaskSpec],
    members: pl.DataFrame,
    items: pl.DataFrame,
    world: SyntheticWorldConfig,
    top_fraction: float = TOP_FRACTION,
) -> pl.DataFrame:
    """Replace ``label`` of steering tasks' rows; other rows are returned unchanged."""
    from components.data.synthetic import utility_components

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
        # Rank by the named criteria, ties by the full hidden utility, so exactly the top
        # fraction is positive.
        steer_u, full_u = _steering_scores(comps, criteria)
        ranked = comps.select(
            "__row", steer_u.alias("__steer"), full_u.alias("__full"),
        ).sort(["__steer", "__full"], descending=True)
        k = round(top_fraction * ranked.height)
        relabel = ranked.select(
            "__row", (pl.int_range(pl.len()) < k).cast(pl.Int8).alias("__new")
        )
        rows = rows.join(relabel, on="__row").with_columns(pl.col("__new").alias("label")).drop("__new")
        parts.append(rows)
    return pl.concat(parts).sort("__row").drop("__row")
