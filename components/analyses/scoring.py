"""Scoring shared by the analyses: the serving engine, its logit margins, per-task AUC."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from components.evaluate.metrics import roc_auc


def load_engine(model_or_dir: Any, tokenizer: Any = None):
    """The serving :class:`~components.model.engine.ScoringEngine` of a saved model
    directory, or of an in-memory model and its tokenizer."""
    from components.model.engine import ScoringEngine

    if tokenizer is None:
        return ScoringEngine.from_pretrained(model_or_dir)
    return ScoringEngine(model_or_dir, tokenizer)


def score_margins(engine: Any, prefixes: Sequence[str], candidates: Sequence[Sequence[str]]
                  ) -> list[np.ndarray]:
    """The engine's ``logit_yes - logit_no`` per candidate (P(yes) in fp32 saturates)."""
    lists = engine.score_batch([(p, list(c)) for p, c in zip(prefixes, candidates, strict=True)],
                               margins=True)
    return [np.asarray(x, dtype=np.float64) for x in lists]


def per_task_auc(task_ids: Sequence[str], scores: Sequence[np.ndarray], labels: Sequence[Sequence[int]],
                 keep: Sequence[bool] | None = None) -> dict[str, float]:
    """Pooled AUC per task over its candidates (rows with ``keep`` only); nan with one class."""
    pooled: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {}
    for i, (task, s, y) in enumerate(zip(task_ids, scores, labels, strict=True)):
        if keep is not None and not keep[i]:
            continue
        ss, yy = pooled.setdefault(task, ([], []))
        ss.append(np.asarray(s, dtype=np.float64))
        yy.append(np.asarray(y, dtype=np.int64))
    return {t: roc_auc(np.concatenate(s), np.concatenate(y)) for t, (s, y) in sorted(pooled.items())}


def nanmean(values: Sequence[float] | Any) -> float:
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return float(np.mean(vals)) if vals else math.nan

