"""Evaluation metrics against hand-computed values and scikit-learn; slices on a tiny frame."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest
from sklearn.metrics import log_loss as sk_log_loss
from sklearn.metrics import ndcg_score, roc_auc_score

from components.evaluate.metrics import (
    bootstrap_auc_ci,
    calibration_curve,
    ece_noise_floor,
    expected_calibration_error,
    flatten_lists,
    group_auc,
    log_loss,
    ndcg_at_k,
    roc_auc,
    summarize,
)
from components.evaluate.slices import (
    CUMULATIVE_ACTIVITY,
    DISJOINT_ACTIVITY,
    candidate_rows,
    metrics_by_slice,
    slice_flags,
    slice_membership,
)


# ---------------------------------------------------------------------------- AUC
def test_auc_hand_values_ties_and_undefined():
    assert roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75
    assert roc_auc([1, 1, 1, 1], [0, 1, 0, 1]) == 0.5  # all tied: one half, not the input order
    assert roc_auc([0.3, 0.3, 0.9], [1, 0, 0]) == 0.25  # (tie 0.5 + loss 0) / 2
    assert math.isnan(roc_auc([0.1, 0.2], [1, 1]))
    assert math.isnan(roc_auc([], []))
    with pytest.raises(ValueError, match="labels"):
        roc_auc([0.1, 0.2], [1])


def test_auc_matches_sklearn_and_the_training_loop():
    from components.train.loop import roc_auc as loop_auc

    rng = np.random.default_rng(0)
    for _ in range(30):
        n = int(rng.integers(2, 80))
        s, y = rng.integers(0, 6, n).astype(float), rng.integers(0, 2, n)
        if y.min() == y.max():
            continue
        assert roc_auc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
        assert roc_auc(s, y) == pytest.approx(loop_auc(s, y), abs=1e-12)


def test_group_auc_is_the_mean_of_per_list_aucs():
    rng = np.random.default_rng(1)
    s, y, g = rng.random(300), rng.integers(0, 2, 300), rng.integers(0, 20, 300)
    s[::7] = 0.5  # ties
    expected = [roc_auc_score(y[g == k], s[g == k]) for k in range(20) if 0 < y[g == k].sum() < (g == k).sum()]
    assert group_auc(s, y, g) == pytest.approx(np.mean(expected), abs=1e-12)
    assert math.isnan(group_auc([1, 2], [1, 1], [0, 0]))


def test_bootstrap_interval_contains_the_point_and_is_deterministic():
    rng = np.random.default_rng(2)
    g = np.repeat(np.arange(200), 5)
    member = rng.normal(size=200)[g]  # a shared per-list effect: rows of a list are correlated
    y = (member + rng.normal(size=g.size) > 0).astype(int)
    s = member + 0.5 * rng.normal(size=g.size)
    a = bootstrap_auc_ci(s, y, g, n=300, seed=3)
    assert a == bootstrap_auc_ci(s, y, g, n=300, seed=3)
    assert a.low < a.auc < a.high and a.n_valid == 300
    assert a.auc == roc_auc(s, y)
    rows = bootstrap_auc_ci(s, y, None, n=300, seed=3)
    assert (a.high - a.low) > (rows.high - rows.low)  # whole lists: honest, wider interval
    nan = bootstrap_auc_ci([0.1, 0.2], [0, 0])
    assert math.isnan(nan.auc) and math.isnan(nan.low) and nan.n_valid == 0


# ---------------------------------------------------------------------------- nDCG
def test_ndcg_hand_value_and_lists_without_positives():
    # list 0: positives at ranks 1 and 3 of 3 -> (1 + 1/2) / (1 + 1/log2 3); list 1 has none
    s = [0.9, 0.5, 0.1, 0.3, 0.2]
    y = [1, 0, 1, 0, 0]
    g = [0, 0, 0, 1, 1]
    expected = (1 + 0.5) / (1 + 1 / math.log2(3))
    assert ndcg_at_k(s, y, g, k=10) == pytest.approx(expected)
    assert ndcg_at_k(s, y, g, k=1) == 1.0
    assert math.isnan(ndcg_at_k([0.1, 0.2], [0, 0], [0, 0]))


def test_ndcg_matches_sklearn_with_ties_per_list():
    rng = np.random.default_rng(4)
    lists_s, lists_y = [], []
    for _ in range(25):
        n = int(rng.integers(2, 30))
        lists_s.append(rng.integers(0, 4, n).astype(float))  # many ties
        lists_y.append(rng.integers(0, 2, n))
    s, g = flatten_lists(lists_s)
    y, _ = flatten_lists(lists_y)
    for k in (1, 5, 10):
        ref = [ndcg_score([yy], [ss], k=k) for ss, yy in zip(lists_s, lists_y, strict=True) if yy.sum() > 0]
        assert ndcg_at_k(s, y, g, k=k) == pytest.approx(np.mean(ref), abs=1e-12)


# ---------------------------------------------------------------------------- calibration
def test_log_loss_matches_sklearn_and_clips():
    rng = np.random.default_rng(5)
    p, y = rng.uniform(0.01, 0.99, 500), rng.integers(0, 2, 500)
    assert log_loss(p, y) == pytest.approx(sk_log_loss(y, p), rel=1e-9)
    assert log_loss([0.0, 1.0], [1, 0]) == pytest.approx(-math.log(1e-7))
    assert math.isfinite(log_loss([0.0, 1.0], [0, 1]))


def test_ece_equal_mass_hand_value():
    # 4 bins of 2 by rank: (0.1, 0.2 | y 0, 0), (0.3, 0.4 | 1, 0), (0.6, 0.7 | 1, 1), (0.8, 0.9 | 1, 1)
    p = [0.9, 0.1, 0.3, 0.8, 0.2, 0.4, 0.6, 0.7]
    y = [1, 0, 1, 1, 0, 0, 1, 1]
    gaps = [abs(0 - 0.15), abs(0.5 - 0.35), abs(1 - 0.65), abs(1 - 0.85)]
    assert expected_calibration_error(p, y, n_bins=4) == pytest.approx(sum(2 * g for g in gaps) / 8)
    curve = calibration_curve(p, y, n_bins=4)
    assert curve["count"].tolist() == [2, 2, 2, 2]
    assert curve["mean_prob"] == pytest.approx([0.15, 0.35, 0.65, 0.85])
    assert curve["frac_pos"] == pytest.approx([0, 0.5, 1, 1])
    assert curve["low"][0] == 0.1 and curve["high"][-1] == 0.9
    assert expected_calibration_error([0.5] * 4, [0, 1, 0, 1], n_bins=1) == 0.0
    assert math.isnan(expected_calibration_error([], []))


def test_ece_noise_floor_is_what_calibrated_labels_score():
    """Labels drawn from the probabilities themselves (a calibrated model) still score an
    ECE near the floor, not near 0; the floor falls as 1/sqrt(N); certain
    probabilities have no noise; a miscalibrated model sits well above the floor."""
    rng = np.random.default_rng(1)
    p = rng.beta(1, 6, 600)  # ranking-like: mean ~0.14, crowded near 0
    floor = ece_noise_floor(p)
    measured = [expected_calibration_error(p, rng.random(p.size) < p) for _ in range(300)]
    assert floor == pytest.approx(np.mean(measured), rel=0.1)
    assert 0.015 < floor < 0.05  # the size of the embedded default's 0.03 gate
    big = rng.beta(1, 6, 9600)
    assert ece_noise_floor(big) == pytest.approx(floor / 4, rel=0.25)  # 16x N -> 1/4
    assert ece_noise_floor(np.r_[np.zeros(50), np.ones(50)]) == 0.0
    assert math.isnan(ece_noise_floor([]))
    assert ece_noise_floor(p, seed=3) == pytest.approx(floor, rel=0.1)
    shifted = np.clip(p + 0.1, 0, 1)  # says +0.1 more than happens
    assert expected_calibration_error(shifted, rng.random(p.size) < p) > 2 * floor


def test_calibration_curve_matches_sklearn_quantile_bins():
    from sklearn.calibration import calibration_curve as sk_curve

    rng = np.random.default_rng(6)
    p = rng.random(1000)
    y = (rng.random(1000) < p).astype(int)
    frac, mean = sk_curve(y, p, n_bins=10, strategy="quantile")
    ours = calibration_curve(p, y, n_bins=10)
    assert ours["frac_pos"] == pytest.approx(frac)
    assert ours["mean_prob"] == pytest.approx(mean)


def test_summarize_has_every_metric():
    rng = np.random.default_rng(7)
    g = np.repeat(np.arange(50), 4)
    p = rng.random(200)
    y = (rng.random(200) < p).astype(int)
    out = summarize(p, y, g, probs=p, n_boot=50)
    assert set(out) == {"n_rows", "n_lists", "n_pos", "pos_rate", "auc", "auc_low", "auc_high",
                        "group_auc", "ndcg@10", "log_loss", "ece", "mean_prob"}
    assert out["n_lists"] == 50 and out["auc"] == roc_auc(p, y)
    assert math.isnan(summarize(p, y, g, n_boot=0)["auc_low"])


# ---------------------------------------------------------------------------- slices
T0 = datetime(2026, 3, 1, tzinfo=UTC)


def _examples() -> pl.DataFrame:
    return pl.DataFrame({
        "example_id": ["a", "b", "c", "d"],
        "member_id": ["m1", "m2", "m3", "m4"],
        "task_id": ["t", "t", "t", "h"],
        "split": ["valid", "valid", "test", "test"],
        "held_out": [False, False, False, True],
        "cutoff": [T0, T0, T0 + timedelta(days=10), T0 + timedelta(days=10)],
        "candidate_item_ids": [["i1", "i2"], ["i1", "i3", "i4"], ["i2"], ["i3", "i5"]],
        "labels": [[1, 0], [0, 1, 0], [1], [0, 1]],
        "n_prior_events": [0, 7, 50, 300],
    })


def _items() -> pl.DataFrame:
    # i1 seen before both cutoffs; i3 first seen between them; i4 only at the first cutoff; i5 never
    return pl.DataFrame({
        "item_id": ["i1", "i2", "i3", "i4", "i5"],
        "first_seen_at": [T0 - timedelta(days=30), T0 - timedelta(days=1), T0 + timedelta(days=2), T0, None],
        "cold": [False, False, True, True, True],
    })


def test_candidate_rows_and_slice_counts():
    rows = candidate_rows(_examples())
    assert rows.height == 8
    assert rows["position"].to_list() == [0, 1, 0, 1, 2, 0, 0, 1]
    assert rows["label"].to_list() == [1, 0, 0, 1, 0, 1, 0, 1]
    flags = slice_flags(rows, _items())
    counts = {c: int(flags[c].sum()) for c in flags.columns if flags[c].dtype == pl.Boolean and c != "held_out"}
    assert counts == {
        "all": 8,
        "activity<=5": 2, "activity<=10": 5, "activity<=100": 6, "activity>100": 2,
        "activity=0-5": 2, "activity=6-10": 3, "activity=11-100": 1, "activity=>100": 2,
        "window=valid": 5, "window=test": 3, "task=held_out": 2, "task=trained": 6,
        # new: i3 and i4 at T0 (i4's first event is AT the cutoff: not before it), i5
        "new_item": 3,
        "cold_item": 4,
    }
    # cumulative buckets nest; the disjoint ones partition the rows
    assert sum(counts[s] for s in DISJOINT_ACTIVITY) == 8
    assert counts[CUMULATIVE_ACTIVITY[2]] + counts[CUMULATIVE_ACTIVITY[3]] == 8
    long = slice_membership(flags)
    assert long.filter(pl.col("slice") == "new_item")["row"].to_list() == [3, 4, 7]
    assert long.height == sum(counts.values())


def test_slices_without_items_and_metrics_by_slice():
    rows = candidate_rows(_examples()).with_columns(pl.Series("score", [0.9, 0.1, 0.2, 0.8, 0.3, 0.5, 0.4, 0.6]))
    flags = slice_flags(rows)
    assert "new_item" not in flags.columns
    table = metrics_by_slice(flags, slices=["all", "window=valid"])
    t_all = table.filter((pl.col("slice") == "all") & (pl.col("task_id") == "t")).row(0, named=True)
    assert t_all["n_rows"] == 6 and t_all["auc"] == 1.0
    with pytest.raises(ValueError, match="n_prior_events"):
        slice_flags(rows.drop("n_prior_events"))
    with pytest.raises(ValueError, match="first_seen_at"):
        slice_flags(rows, _items().drop("first_seen_at"))
