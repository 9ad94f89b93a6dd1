"""The chain's table: every model of teacher -> students -> quantized side by side, on the
same test candidates as the baselines.

Columns per model: parameters (all, outside embedding and head, and that share of the
teacher's), weight bytes, CPU latency per scored item (one N-candidate request), mean
AUC over trained tasks, members with <= 5 prior events, held-out (zero-shot) tasks, ECE
(trained tasks' candidates pooled, the quantize gate's definition; ``ece_trained_floor``:
what a calibrated model shows on that many candidates), the paired delta vs popularity and vs the teacher (member bootstrap,
95%), and the share of the teacher's lift over popularity it keeps
(``(auc - popularity) / (teacher - popularity)``, trained tasks).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import polars as pl

from components.evaluate.report import (
    HELD_OUT_MEAN,
    TEACHER,
    TRAINED_MEAN,
    EvalRecord,
    paired_delta_table,
)
from components.evaluate.report.tables import _nanmean

#: Evaluation names of the chain's models (``compressed_models`` in pipelines/compress_stages.py).
STUDENT_PREFIX = "student_"
QUANTIZED = "quantized"


def is_chain_model(name: str) -> bool:
    """A model of the compression chain (not the teacher, not a baseline)."""
    return name.startswith(STUDENT_PREFIX) or name == QUANTIZED


def _mean(records: Sequence[EvalRecord], model: str, key: str, held_out: bool) -> float:
    return _nanmean(r.metrics.get(key, math.nan) for r in records
                    if r.model == model and bool(r.held_out) == held_out)


def pooled_ece(scores: pl.DataFrame, model: str, n_bins: int = 10) -> tuple[float, float]:
    """(ECE, its noise floor) of ``model``'s P(yes) over every trained-task candidate.

    Why pooled, not the mean of per-task ECEs: a task holds ~500 test candidates, where a
    perfectly calibrated model already shows an ECE of ~0.03 (``ece_noise_floor``), so the
    per-task mean read 0.05-0.07 for models whose pooled ECE was 0.012-0.029 (2026-12-05
    local run) and could not be compared with the gate's 0.03."""
    from components.evaluate.metrics import ece_noise_floor, expected_calibration_error

    if "prob" not in scores.columns:
        return math.nan, math.nan
    d = scores.filter((pl.col("model") == model) & ~pl.col("held_out") & pl.col("prob").is_not_null())
    if d.height == 0:
        return math.nan, math.nan
    p = d["prob"].to_numpy().astype(float)
    return (float(expected_calibration_error(p, d["label"].to_numpy().astype(float), n_bins)),
            float(ece_noise_floor(p, n_bins)))


def chain_table(records: Sequence[EvalRecord], scores: pl.DataFrame, models: Sequence[str],
                facts: Mapping[str, Mapping[str, float]], n_boot: int = 1000, seed: int = 0,
                baseline: str = "popularity") -> pl.DataFrame:
    """One row per model of ``models`` (the teacher first); see the module docstring."""
    rows = []
    teacher_ne = facts.get(TEACHER, {}).get("non_embedding_parameters", math.nan)
    pop = _mean(records, baseline, "auc", False)
    t_auc = _mean(records, TEACHER, "auc", False)
    for m in models:
        f = facts.get(m, {})
        auc = _mean(records, m, "auc", False)
        ece, floor = pooled_ece(scores, m)
        row = {"model": m, "parameters": f.get("parameters"),
               "non_embedding_parameters": f.get("non_embedding_parameters"),
               "share_of_teacher": f.get("non_embedding_parameters", math.nan) / teacher_ne,
               "weight_mb": f.get("weight_bytes", math.nan) / 1e6,
               "latency_ms_per_item": f.get("latency_ms_per_item"),
               "auc_trained": auc, "auc_le_5_events": _mean(records, m, "auc.activity_le_5", False),
               "auc_held_out": _mean(records, m, "auc", True), "ece_trained": ece,
               "ece_trained_floor": floor,
               "lift_kept": (auc - pop) / (t_auc - pop) if t_auc != pop else math.nan}
        against = [baseline] + ([TEACHER] if m != TEACHER else [])
        deltas = paired_delta_table(scores, teacher=m, baselines=against, n_boot=n_boot, seed=seed)
        for r in deltas.filter(pl.col("is_mean") & (pl.col("task") == TRAINED_MEAN)).iter_rows(named=True):
            name = "vs_" + r["baseline"]
            row.update({f"delta_{name}": r["delta"], f"delta_{name}_low": r["low"],
                        f"delta_{name}_high": r["high"]})
        held = deltas.filter(pl.col("is_mean") & (pl.col("task") == HELD_OUT_MEAN)
                             & (pl.col("baseline") == baseline))
        if held.height:
            row["delta_held_out_vs_popularity"] = held["delta"][0]
        rows.append(row)
    return pl.DataFrame(rows, infer_schema_length=None)


def chain_markdown(table: pl.DataFrame) -> str:
    """The table as the evaluate stage's summary section (readable widths, intervals)."""
    def ci(r, name):
        d = r.get(f"delta_{name}")
        if d is None or (isinstance(d, float) and math.isnan(d)):
            return "-"
        return f"{d:+.3f} [{r[f'delta_{name}_low']:+.3f}, {r[f'delta_{name}_high']:+.3f}]"

    def num(v, fmt):
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)

    head = ("| model | non-emb. params (share) | weights MB | ms / item | AUC trained | <= 5 events | "
            "held-out | ECE (floor) | vs popularity | vs teacher | lift kept |\n|---|---:|---:|---:|---:|---:|---:|"
            "---:|---|---|---:|\n")
    lines = []
    for r in table.iter_rows(named=True):
        lines.append(
            f"| {r['model']} | {num(r['non_embedding_parameters'], ',.0f')} ({num(r['share_of_teacher'], '.2f')}) "
            f"| {num(r['weight_mb'], '.2f')} | {num(r['latency_ms_per_item'], '.3f')} | {num(r['auc_trained'], '.3f')} "
            f"| {num(r['auc_le_5_events'], '.3f')} | {num(r['auc_held_out'], '.3f')} | {num(r['ece_trained'], '.3f')} ({num(r.get('ece_trained_floor'), '.3f')}) "
            f"| {ci(r, 'vs_popularity')} | {ci(r, 'vs_teacher')} | {num(r['lift_kept'], '.0%')} |")
    return head + "\n".join(lines) + "\n"
