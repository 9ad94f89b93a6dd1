"""The ``lightgbm`` and ``lightgbm_ids`` baselines: one LightGBM binary classifier per task."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from components.evaluate.baselines.data import BaselineConfig, BaselineData
from components.promptify.tasks import TaskSpec


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
