"""Ranking and calibration metrics over candidate lists, vectorized numpy.

Every function takes flat arrays: one entry per candidate, with ``groups`` naming the
list (prompt, member) each candidate belongs to. :func:`flatten_lists` turns per-list
arrays (the shape scorers return) into that form.

Undefined is ``nan``, never a made-up value: an AUC with one class present, an nDCG
with no list holding a positive, a calibration metric of nothing. Ties in scores are
averaged (AUC ranks, nDCG discounts), so a constant scorer gets AUC 0.5 and the nDCG
of a random order in expectation, not the flattering order of the input.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np


def flatten_lists(lists: Sequence[Sequence[float]]) -> tuple[np.ndarray, np.ndarray]:
    """Per-list arrays -> (flat float64 values, int64 list index of each value)."""
    sizes = np.fromiter((len(x) for x in lists), dtype=np.int64, count=len(lists))
    if sizes.sum() == 0:
        return np.zeros(0), np.zeros(0, dtype=np.int64)
    values = np.concatenate([np.asarray(x, dtype=np.float64) for x in lists])
    return values, np.repeat(np.arange(len(lists), dtype=np.int64), sizes)


def _check(scores, labels, name: str = "scores") -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=np.float64).ravel()
    if s.shape != y.shape:
        raise ValueError(f"{name} has {s.size} entries but labels has {y.size}: pass one label per score")
    if np.isnan(s).any():
        raise ValueError(f"{name} holds {int(np.isnan(s).sum())} nan values: score every candidate")
    return s, y


def _group_codes(groups, n: int) -> tuple[np.ndarray, int]:
    if groups is None:
        return np.zeros(n, dtype=np.int64), 1
    g = np.asarray(groups).ravel()
    if g.size != n:
        raise ValueError(f"groups has {g.size} entries but there are {n} scores: one group id per candidate")
    uniq, codes = np.unique(g, return_inverse=True)
    return codes.astype(np.int64), len(uniq)


# ---------------------------------------------------------------------------- AUC
def _auc_weighted(inv_pos, w_pos, inv_neg, w_neg, n_unique: int) -> float:
    """Weighted Mann-Whitney AUC: P(score_pos > score_neg) + 0.5 P(tie).

    ``inv_*`` index the distinct score values in increasing order."""
    wn = np.bincount(inv_neg, w_neg, minlength=n_unique)
    wp = np.bincount(inv_pos, w_pos, minlength=n_unique)
    den = wp.sum() * wn.sum()
    if den <= 0:
        return float("nan")
    below = np.cumsum(wn) - wn
    return float((wp * (below + 0.5 * wn)).sum() / den)


def roc_auc(scores, labels) -> float:
    """Area under the ROC curve (ties count one half); ``nan`` with one class only.

    Same value as ``components.train.loop.roc_auc`` and ``sklearn.metrics.roc_auc_score``."""
    s, y = _check(scores, labels)
    pos = y > 0
    uniq, inv = np.unique(s, return_inverse=True)
    return _auc_weighted(inv[pos], np.ones(pos.sum()), inv[~pos], np.ones((~pos).sum()), len(uniq))


def _within_group_order(s: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Order by (group, score descending), each entry's 0-based position in its group,
    and a tie-block id (same group and same score)."""
    order = np.lexsort((-s, g))
    gs, ss = g[order], s[order]
    n = s.size
    new_group = np.ones(n, dtype=bool)
    new_group[1:] = gs[1:] != gs[:-1]
    starts = np.flatnonzero(new_group)
    pos = np.arange(n) - np.repeat(starts, np.diff(np.append(starts, n)))
    new_block = new_group.copy()
    new_block[1:] |= ss[1:] != ss[:-1]
    return order, pos, np.cumsum(new_block) - 1


def group_auc(scores, labels, groups) -> float:
    """Mean of the per-list AUCs over lists holding both classes (unweighted); ``nan`` if none.

    Unlike the pooled :func:`roc_auc`, it never compares candidates of different lists,
    so a scorer cannot gain by ranking whole members above others."""
    s, y = _check(scores, labels)
    if s.size == 0:
        return float("nan")
    g, n_groups = _group_codes(groups, s.size)
    order, pos, block = _within_group_order(-s, g)  # ascending scores: rank 1 = lowest
    rank = pos + 1.0
    avg_rank = (np.bincount(block, rank) / np.bincount(block))[block]
    ys, gs = (y[order] > 0), g[order]
    n_pos = np.bincount(gs, ys, minlength=n_groups)
    n_all = np.bincount(gs, minlength=n_groups)
    n_neg = n_all - n_pos
    rank_sum = np.bincount(gs, avg_rank * ys, minlength=n_groups)
    ok = (n_pos > 0) & (n_neg > 0)
    if not ok.any():
        return float("nan")
    auc = (rank_sum[ok] - n_pos[ok] * (n_pos[ok] + 1) / 2.0) / (n_pos[ok] * n_neg[ok])
    return float(auc.mean())


class AucInterval(NamedTuple):
    """Point AUC and a percentile bootstrap interval (``n_valid``: replicates with both classes)."""

    auc: float
    low: float
    high: float
    n_valid: int


def bootstrap_auc_ci(scores, labels, groups=None, n: int = 1000, alpha: float = 0.05,
                     seed: int = 0) -> AucInterval:
    """Percentile bootstrap confidence interval of the pooled AUC.

    With ``groups`` whole lists are resampled (candidates of one member/prompt are not
    independent; resampling rows would make the interval too narrow); without, rows.
    Each replicate is a weighted AUC (weight = times a list was drawn), so no data is
    copied. Deterministic for a given ``seed``."""
    s, y = _check(scores, labels)
    point = roc_auc(s, y)
    if np.isnan(point) or n <= 0:
        return AucInterval(point, float("nan"), float("nan"), 0)
    if groups is None:
        g, n_groups = np.arange(s.size, dtype=np.int64), s.size
    else:
        g, n_groups = _group_codes(groups, s.size)
    uniq, inv = np.unique(s, return_inverse=True)
    pos = y > 0
    inv_pos, inv_neg, g_pos, g_neg = inv[pos], inv[~pos], g[pos], g[~pos]
    rng = np.random.default_rng(seed)
    reps = np.empty(n)
    for b in range(n):
        counts = rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups)).astype(np.float64)
        reps[b] = _auc_weighted(inv_pos, counts[g_pos], inv_neg, counts[g_neg], len(uniq))
    reps = reps[~np.isnan(reps)]
    if reps.size == 0:
        return AucInterval(point, float("nan"), float("nan"), 0)
    low, high = np.quantile(reps, [alpha / 2.0, 1.0 - alpha / 2.0])
    return AucInterval(point, float(low), float(high), int(reps.size))


# ---------------------------------------------------------------------------- nDCG
def ndcg_at_k(scores, labels, groups, k: int = 10) -> float:
    """nDCG@k per list (gain = label, discount 1/log2(rank+1)), averaged over the lists
    with at least one positive; ``nan`` if there is none.

    Tied scores share the average discount of the positions they occupy (as
    ``sklearn.metrics.ndcg_score`` with ``ignore_ties=False``)."""
    if k < 1:
        raise ValueError(f"k={k}: nDCG needs k >= 1")
    s, y = _check(scores, labels)
    if s.size == 0:
        return float("nan")
    g, n_groups = _group_codes(groups, s.size)
    order, pos, block = _within_group_order(s, g)
    disc = np.where(pos < k, 1.0 / np.log2(pos + 2.0), 0.0)
    avg_disc = (np.bincount(block, disc) / np.bincount(block))[block]
    dcg = np.bincount(g[order], y[order] * avg_disc, minlength=n_groups)
    ideal_order, ideal_pos, _ = _within_group_order(y, g)
    ideal_disc = np.where(ideal_pos < k, 1.0 / np.log2(ideal_pos + 2.0), 0.0)
    idcg = np.bincount(g[ideal_order], y[ideal_order] * ideal_disc, minlength=n_groups)
    ok = idcg > 0
    if not ok.any():
        return float("nan")
    return float((dcg[ok] / idcg[ok]).mean())


# ---------------------------------------------------------------------------- calibration
def log_loss(probs, labels, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy, probabilities clipped to [eps, 1 - eps]; ``nan`` if empty."""
    p, y = _check(probs, labels, "probs")
    if p.size == 0:
        return float("nan")
    p = np.clip(p, eps, 1.0 - eps)
    return float(-(y * np.log(p) + (1.0 - y) * np.log1p(-p)).mean())


def _equal_mass_bins(p: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin of each entry: ranks by probability cut into ``n_bins`` near-equal counts
    (tied probabilities may straddle a boundary: bins are by count, not by value)."""
    if n_bins < 1:
        raise ValueError(f"n_bins={n_bins}: use at least one bin")
    rank = np.empty(p.size, dtype=np.int64)
    rank[np.argsort(p, kind="stable")] = np.arange(p.size)
    return rank * n_bins // p.size


def calibration_curve(probs, labels, n_bins: int = 10) -> dict[str, np.ndarray]:
    """Reliability-diagram data over equal-mass bins.

    Returns arrays of length ``n_bins`` (fewer when there are fewer entries): ``mean_prob``
    (mean prediction), ``frac_pos`` (observed positive rate), ``count``, ``low`` and
    ``high`` (the bin's probability range)."""
    p, y = _check(probs, labels, "probs")
    if p.size == 0:
        empty = np.zeros(0)
        return {"mean_prob": empty, "frac_pos": empty, "count": empty.astype(np.int64),
                "low": empty, "high": empty}
    b = _equal_mass_bins(p, n_bins)
    count = np.bincount(b, minlength=n_bins)
    used = count > 0
    low = np.full(n_bins, np.inf)
    high = np.full(n_bins, -np.inf)
    np.minimum.at(low, b, p)
    np.maximum.at(high, b, p)
    return {
        "mean_prob": (np.bincount(b, p, minlength=n_bins)[used] / count[used]),
        "frac_pos": (np.bincount(b, y, minlength=n_bins)[used] / count[used]),
        "count": count[used],
        "low": low[used],
        "high": high[used],
    }


def expected_calibration_error(probs, labels, n_bins: int = 10) -> float:
    """ECE over equal-mass bins: sum_b (n_b / N) |mean label_b - mean prob_b|; ``nan`` if empty.

    Equal mass rather than equal width: ranking probabilities crowd near 0, where
    equal-width bins would put almost everything into one bin."""
    p, y = _check(probs, labels, "probs")
    if p.size == 0:
        return float("nan")
    b = _equal_mass_bins(p, n_bins)
    gap = np.bincount(b, y, minlength=n_bins) - np.bincount(b, p, minlength=n_bins)
    return float(np.abs(gap).sum() / p.size)


# ---------------------------------------------------------------------------- summary
def summarize(scores, labels, groups, probs=None, k: int = 10, n_boot: int = 1000,
              alpha: float = 0.05, seed: int = 0) -> dict[str, float]:
    """Every metric of one scorer on one set of candidate lists, as a flat dict.

    Keys: ``n_rows, n_lists, n_pos, pos_rate, auc, auc_low, auc_high`` (bootstrap over
    lists), ``group_auc``, ``ndcg@k``; with ``probs`` also ``log_loss``, ``ece`` and
    ``mean_prob``. ``n_boot=0`` skips the interval (``auc_low``/``auc_high`` nan)."""
    s, y = _check(scores, labels)
    g, n_groups = _group_codes(groups, s.size)
    ci = bootstrap_auc_ci(s, y, g, n=n_boot, alpha=alpha, seed=seed)
    out = {
        "n_rows": float(s.size),
        "n_lists": float(n_groups if s.size else 0),
        "n_pos": float((y > 0).sum()),
        "pos_rate": float((y > 0).mean()) if s.size else float("nan"),
        "auc": ci.auc,
        "auc_low": ci.low,
        "auc_high": ci.high,
        "group_auc": group_auc(s, y, g),
        f"ndcg@{k}": ndcg_at_k(s, y, g, k=k),
    }
    if probs is not None:
        p, _ = _check(probs, y, "probs")
        out.update({
            "log_loss": log_loss(p, y),
            "ece": expected_calibration_error(p, y),
            "mean_prob": float(p.mean()) if p.size else float("nan"),
        })
    return out
