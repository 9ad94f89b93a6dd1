"""The ``popularity`` baseline: per task, the point-in-time popularity count with the best
training AUC."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from components.evaluate.baselines.data import BaselineConfig, BaselineData
from components.evaluate.metrics import roc_auc
from components.promptify.tasks import TaskSpec

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
