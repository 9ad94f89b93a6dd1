"""Per-(model, task) evaluation records, their metrics and the names every table shares;
``results.json`` read back."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from components.evaluate.metrics import (
    bootstrap_auc_ci,
    expected_calibration_error,
    group_auc,
    log_loss,
    ndcg_at_k,
    roc_auc,
)

TEACHER = "teacher"
#: Canonical column order of the baselines (others follow in name order).
BASELINE_ORDER = ("popularity", "lightgbm", "lightgbm_ids", "sasrec")

#: Slices measured per (model, task) -> their MLflow metric suffix (MLflow names cannot
#: hold '<' or '>'). The activity buckets are cumulative, as in 360Brew's cold-start figure.
SLICE_METRIC_NAMES = {
    "activity<=5": "activity_le_5",
    "activity<=10": "activity_le_10",
    "activity<=100": "activity_le_100",
    "activity>100": "activity_gt_100",
    "new_item": "new_item",
    "cold_item": "cold_item",
}
ACTIVITY_SLICES = ("activity_le_5", "activity_le_10", "activity_le_100", "activity_gt_100")
#: Rows of the cold-start table: overall, the activity buckets, candidates new at the cutoff.
COLD_START_ROWS = ("all", *ACTIVITY_SLICES, "new_item")
COLD_START_LABELS = {"all": "all", "activity_le_5": "<=5", "activity_le_10": "<=10",
                     "activity_le_100": "<=100", "activity_gt_100": ">100", "new_item": "new item"}

TRAINED_MEAN = "mean over trained tasks"
HELD_OUT_MEAN = "mean over held-out tasks"
#: Per-list metric shown beside the pooled AUC (columns ``group_auc.<model>``).
PER_LIST_METRIC = "group_auc"
#: Columns of the tables that are not models.
FIXED_COLUMNS = frozenset({"task", "slice", "bucket", "held_out", "is_mean", "tasks", "prompts",
                           "candidates", "positives", "best_baseline", "gain_vs_best_baseline",
                           "tasks_group", "runs"})


@dataclass(frozen=True)
class EvalRecord:
    """What one (model, task) evaluation produced: flat metrics as logged to MLflow."""

    model: str
    task_id: str
    held_out: bool
    metrics: Mapping[str, float]


# ============================================================================ per (model, task)
def model_task_metrics(rows: pl.DataFrame, score_col: str = "score", prob_col: str | None = None,
                       n_boot: int = 1000, ece_bins: int = 10, seed: int = 0, k: int = 10
                       ) -> dict[str, float]:
    """Metrics of one model on one task's candidate rows.

    ``rows``: one row per (prompt, candidate) with ``example_id``, ``label``, the score
    column and the slice flags of :func:`components.evaluate.slices.slice_flags` (slices
    of :data:`SLICE_METRIC_NAMES` that are absent are skipped). ``prob_col`` names
    probabilities (log loss, ECE, mean probability are added only then).

    Returns ``n_prompts, n_candidates, n_positives, pos_rate, auc, auc_ci_low,
    auc_ci_high`` (bootstrap over whole prompts), ``group_auc``, ``ndcg_at_{k}``,
    [``log_loss, ece, mean_prob``] and per slice ``auc.<slice>``,
    ``n_candidates.<slice>``, ``n_positives.<slice>``."""
    missing = [c for c in ("example_id", "label", score_col, *([prob_col] if prob_col else []))
               if c not in rows.columns]
    if missing:
        raise ValueError(f"the scored rows lack column(s) {missing}: add one score per candidate "
                         f"row next to example_id and label")
    s = rows[score_col].to_numpy().astype(np.float64)
    y = rows["label"].to_numpy().astype(np.float64)
    g = rows["example_id"].to_numpy()
    ci = bootstrap_auc_ci(s, y, g, n=n_boot, seed=seed)
    out = {
        "n_prompts": float(rows["example_id"].n_unique()),
        "n_candidates": float(rows.height),
        "n_positives": float((y > 0).sum()),
        "pos_rate": float((y > 0).mean()) if rows.height else math.nan,
        "auc": ci.auc,
        "auc_ci_low": ci.low,
        "auc_ci_high": ci.high,
        "group_auc": group_auc(s, y, g),
        f"ndcg_at_{k}": ndcg_at_k(s, y, g, k=k),
    }
    if prob_col is not None:
        p = rows[prob_col].to_numpy().astype(np.float64)
        out.update({"log_loss": log_loss(p, y), "ece": expected_calibration_error(p, y, ece_bins),
                    "mean_prob": float(p.mean()) if p.size else math.nan})
    for slice_name, suffix in SLICE_METRIC_NAMES.items():
        if slice_name not in rows.columns:
            continue
        part = rows.filter(pl.col(slice_name))
        ys = part["label"].to_numpy().astype(np.float64)
        out[f"auc.{suffix}"] = roc_auc(part[score_col].to_numpy(), ys) if part.height else math.nan
        out[f"n_candidates.{suffix}"] = float(part.height)
        out[f"n_positives.{suffix}"] = float((ys > 0).sum())
    return out


def load_records(stage_dir: Path) -> list[EvalRecord]:
    """The stage's per-(model, task) records from its ``results.json``."""
    raw = json.loads((Path(stage_dir) / "results.json").read_text())
    return [EvalRecord(r["model"], r["task_id"], r["held_out"],
                       {k: math.nan if v is None else float(v) for k, v in r["metrics"].items()})
            for r in raw["records"]]
