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

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

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


# ---------------------------------------------------------------------------- paired bootstrap
class _AucPlan(NamedTuple):
    """One scorer's rows sorted by score, with the start of every block of tied scores:
    enough to compute its AUC under any row weights without sorting again."""

    order: np.ndarray
    pos: np.ndarray  # label > 0, in sorted order
    starts: np.ndarray


def _auc_plan(s: np.ndarray, y: np.ndarray) -> _AucPlan:
    order = np.argsort(s, kind="stable")
    ss = s[order]
    new = np.ones(ss.size, dtype=bool)
    new[1:] = ss[1:] != ss[:-1]
    return _AucPlan(order, y[order] > 0, np.flatnonzero(new))


def _auc_replicates(plan: _AucPlan, weights: np.ndarray) -> np.ndarray:
    """Weighted AUC (ties one half) under each row of ``weights`` (replicates x rows, in
    the rows' original order); ``nan`` where a replicate weighs one class only."""
    if plan.order.size == 0:
        return np.full(weights.shape[0], np.nan)
    w = weights[:, plan.order]
    wp = w * plan.pos
    wn = w - wp
    p = np.add.reduceat(wp, plan.starts, axis=1)
    q = np.add.reduceat(wn, plan.starts, axis=1)
    below = np.cumsum(q, axis=1) - q
    num = (p * (below + 0.5 * q)).sum(axis=1)
    den = p.sum(axis=1) * q.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


class PairedDelta(NamedTuple):
    """AUC(a) - AUC(b) on the same rows and its percentile interval over paired replicates
    (``n_valid``: replicates where the delta is defined)."""

    delta: float
    low: float
    high: float
    n_valid: int


@dataclass(frozen=True)
class PairedDeltas:
    """What :func:`paired_bootstrap_auc_delta` found: per task and per named mean of tasks."""

    tasks: list                         # task ids, sorted
    per_task: dict[Any, PairedDelta]    # task -> delta of its pooled AUCs
    auc_a: dict[Any, float]             # task -> point AUC of scorer a
    auc_b: dict[Any, float]
    means: dict[str, PairedDelta]       # name -> mean over its tasks of the per-task delta
    mean_tasks: dict[str, list]         # name -> the tasks that mean averages (delta defined)
    n: int                              # replicates drawn


def paired_bootstrap_auc_delta(scores_a, scores_b, labels, members, tasks=None,
                               means: Mapping[str, Sequence] | None = None, n: int = 1000,
                               alpha: float = 0.05, seed: int = 0,
                               max_cells: int = 4_000_000) -> PairedDeltas:
    """Paired cluster bootstrap of the AUC difference of two scorers on the same rows.

    ``scores_a``, ``scores_b``, ``labels``, ``members`` and ``tasks`` have one entry per
    row (candidate); ``tasks=None`` is one task. Each replicate resamples **member ids**
    with replacement (multinomial counts, one draw shared by every task) and keeps all
    their rows, as weights: both scorers' pooled AUCs of each task are recomputed on the
    same weighted rows, so the interval is that of the *difference* (the two scorers'
    errors are correlated, their separate intervals say little about it), and rows of a
    member (correlated within a list and across tasks) move together.

    ``means`` names groups of tasks (default ``{"mean": every task}``); a group's delta is
    the mean over its tasks of the per-task delta, computed inside every replicate from
    the same draw, so a member present in several tasks counts once per replicate. A
    group averages the tasks whose point delta is defined; a replicate in which a task's
    AUC is undefined (no positive or no negative of it drawn) averages the others.

    Percentile interval ``[alpha/2, 1 - alpha/2]``; deterministic for a given ``seed``.
    Cost: O(``n`` x rows), replicates in chunks of at most ``max_cells`` weights."""
    a, y = _check(scores_a, labels, "scores_a")
    b, _ = _check(scores_b, labels, "scores_b")
    m = np.asarray(members).ravel()
    if m.size != a.size:
        raise ValueError(f"members has {m.size} entries but there are {a.size} scores: one member id per row")
    t = np.zeros(a.size, dtype=np.int64) if tasks is None else np.asarray(tasks).ravel()
    if t.size != a.size:
        raise ValueError(f"tasks has {t.size} entries but there are {a.size} scores: one task id per row")
    if n < 1:
        raise ValueError(f"n={n}: draw at least one replicate")
    _, mcode = np.unique(m, return_inverse=True)
    n_members = int(mcode.max()) + 1 if mcode.size else 0
    task_ids = sorted(np.unique(t).tolist())
    rows = {k: np.flatnonzero(t == k) for k in task_ids}
    plans = {k: (_auc_plan(a[r], y[r]), _auc_plan(b[r], y[r])) for k, r in rows.items()}
    auc_a = {k: roc_auc(a[r], y[r]) for k, r in rows.items()}
    auc_b = {k: roc_auc(b[r], y[r]) for k, r in rows.items()}
    point = {k: auc_a[k] - auc_b[k] for k in task_ids}
    means = {"mean": task_ids} if means is None else {name: list(ts) for name, ts in means.items()}
    unknown = sorted({str(x) for ts in means.values() for x in ts} - {str(x) for x in task_ids})
    if unknown:
        raise ValueError(f"means name tasks {unknown} that have no rows: name tasks of `tasks`")
    reps = np.full((n, len(task_ids)), np.nan)
    if n_members:
        rng = np.random.default_rng(seed)
        widest = max([n_members, *(r.size for r in rows.values())])
        chunk = max(1, min(n, max_cells // max(1, widest)))
        uniform = np.full(n_members, 1.0 / n_members)
        for lo in range(0, n, chunk):
            c = min(chunk, n - lo)
            counts = rng.multinomial(n_members, uniform, size=c).astype(np.float64)
            for j, k in enumerate(task_ids):
                if math.isnan(point[k]):
                    continue
                w = counts[:, mcode[rows[k]]]
                pa, pb = plans[k]
                reps[lo:lo + c, j] = _auc_replicates(pa, w) - _auc_replicates(pb, w)
    col = {k: j for j, k in enumerate(task_ids)}

    def interval(d: float, r: np.ndarray) -> PairedDelta:
        r = r[~np.isnan(r)]
        if math.isnan(d) or r.size == 0:
            return PairedDelta(d, math.nan, math.nan, int(r.size))
        low, high = np.quantile(r, [alpha / 2.0, 1.0 - alpha / 2.0])
        return PairedDelta(float(d), float(low), float(high), int(r.size))

    per_task = {k: interval(point[k], reps[:, col[k]]) for k in task_ids}
    out_means, mean_tasks = {}, {}
    for name, ts in means.items():
        keep = [k for k in task_ids if k in set(ts) and not math.isnan(point[k])]
        mean_tasks[name] = keep
        if not keep:
            out_means[name] = PairedDelta(math.nan, math.nan, math.nan, 0)
            continue
        sub = reps[:, [col[k] for k in keep]]
        with warnings.catch_warnings():  # all-nan replicates stay nan and are dropped
            warnings.simplefilter("ignore", RuntimeWarning)
            rep_mean = np.nanmean(sub, axis=1)
        out_means[name] = interval(float(np.mean([point[k] for k in keep])), rep_mean)
    return PairedDeltas(task_ids, per_task, auc_a, auc_b, out_means, mean_tasks, n)


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


def ece_noise_floor(probs, n_bins: int = 10, n_sim: int = 200, seed: int = 0) -> float:
    """The ECE a perfectly calibrated model shows on this sample: the mean ECE of ``probs``
    against labels drawn from them (``Bernoulli(p)``, ``n_sim`` draws); ``nan`` if empty.

    Why: ECE is biased upwards at finite N (each bin's |mean label - mean prob| is at
    least its sampling noise). On the embedded default's 575 gate candidates the floor was
    0.030, so a 0.03 gate there failed a calibrated model half the time. Read a measured
    ECE against this, not against 0; shrink the floor with more candidates (it falls as
    1/sqrt(N))."""
    p = np.asarray(probs, dtype=np.float64).ravel()
    if p.size == 0:
        return float("nan")
    b = _equal_mass_bins(p, n_bins)  # the bins depend on p only: one assignment for all draws
    rng = np.random.default_rng(seed)
    pb = np.bincount(b, p, minlength=n_bins)
    draws = rng.random((n_sim, p.size)) < p
    gaps = [np.abs(np.bincount(b, d, minlength=n_bins) - pb).sum() / p.size for d in draws]
    return float(np.mean(gaps))


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
