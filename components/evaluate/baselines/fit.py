"""Fit every configured baseline on the train split; score evaluation candidate lists."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import polars as pl

from components.evaluate.baselines.data import (
    Baseline,
    BaselineConfig,
    BaselineData,
    _require,
    training_lists,
)
from components.evaluate.baselines.features import (
    feature_names,
    id_count_features,
    point_in_time_features,
)
from components.evaluate.baselines.lightgbm import fit_lightgbm
from components.evaluate.baselines.popularity import fit_popularity
from components.evaluate.baselines.sasrec import fit_sasrec
from components.promptify.tasks import TaskSpec


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
