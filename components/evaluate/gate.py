"""The popularity gate: is a trained teacher better than counting, on validation?

A teacher that learned only the base rate (SFT's answer loss at the label entropy) still
trains, registers and serves without complaint. The gate makes that visible before the
model is promoted: on the validation prompts the align stage already scores, the
popularity baseline (fitted on the train split, the same candidates) is scored too, and
the teacher passes only when the paired member-bootstrap interval of the task-mean AUC
delta over **trained** tasks lies above zero. Held-out tasks are reported, never gated
(their labels must not choose a model).

Plain Python (Polars, numpy); no Ray, no MLflow.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import polars as pl

from components.evaluate.baselines import BaselineConfig, BaselineData, fit_baselines, score_lists
from components.evaluate.metrics import paired_bootstrap_auc_delta
from components.promptify.tasks import TaskSpec

NOT_BETTER = "not better than popularity"
BETTER = "better than popularity"


@dataclass(frozen=True)
class GateResult:
    """The gate's verdict and the numbers behind it."""

    passed: bool
    verdict: str            # BETTER or NOT_BETTER
    delta: float            # teacher - popularity, mean over trained tasks of per-task AUC
    low: float              # paired 95% member-bootstrap interval of ``delta``
    high: float
    tasks_above: int        # trained tasks with a positive point delta (descriptive)
    tasks: int              # trained tasks with a defined delta
    held_out_delta: float   # the same mean over held-out tasks (reported, not gated)

    def line(self, model: str = "teacher") -> str:
        held = "" if math.isnan(self.held_out_delta) else f"; held-out tasks {self.held_out_delta:+.3f}"
        return (f"{model} {self.verdict} on validation: task-mean AUC delta {self.delta:+.3f} "
                f"[{self.low:+.3f}, {self.high:+.3f}] (95% paired member bootstrap), above on "
                f"{self.tasks_above}/{self.tasks} trained tasks{held}")

    def as_metrics(self, prefix: str = "gate.") -> dict[str, float]:
        d = asdict(self)
        d.pop("verdict")
        return {f"{prefix}{k}": float(v) for k, v in d.items()}


def popularity_gate(teacher_probs: Sequence[np.ndarray], rows: pl.DataFrame, data: BaselineData,
                    tasks: Sequence[TaskSpec], cfg: BaselineConfig | None = None,
                    relabel: Callable | None = None, n_boot: int = 1000, seed: int = 0) -> GateResult:
    """Gate the teacher against popularity on ``rows`` (validation prompts with
    ``example_id, member_id, task_id, held_out, cutoff, candidate_item_ids, labels``);
    ``teacher_probs`` holds one score array per row, aligned with its candidates."""
    need = ["example_id", "member_id", "task_id", "held_out", "cutoff", "candidate_item_ids", "labels"]
    missing = [c for c in need if c not in rows.columns]
    if missing:
        raise ValueError(f"the gate's validation rows lack {missing}: read them from the promptify "
                         f"stage's examples with those columns")
    if len(teacher_probs) != rows.height:
        raise ValueError(f"{len(teacher_probs)} teacher score arrays for {rows.height} rows: one per row")
    used = set(rows["task_id"].unique().to_list())
    task_list = [t for t in tasks if t.id in used]
    cfg = (cfg or BaselineConfig()).model_copy(update={"baselines": ["popularity"]})
    pop = fit_baselines(data, task_list, cfg, relabel=relabel)["popularity"]
    pop_scores = score_lists(pop, data, rows)
    lens = rows["labels"].list.len().to_numpy()
    teacher = np.concatenate([np.asarray(p, dtype=np.float64) for p in teacher_probs]) if rows.height else np.zeros(0)
    base = np.concatenate(pop_scores) if rows.height else np.zeros(0)
    labels = np.concatenate([np.asarray(y, dtype=np.float64) for y in rows["labels"]]) if rows.height else np.zeros(0)
    members = np.repeat(rows["member_id"].to_numpy(), lens)
    task_of = np.repeat(rows["task_id"].to_numpy(), lens)
    held = set(rows.filter(pl.col("held_out"))["task_id"].unique().to_list())
    trained = sorted(used - held)
    means = {"trained": trained, **({"held_out": sorted(held)} if held else {})}
    res = paired_bootstrap_auc_delta(teacher, base, labels, members, task_of, means=means, n=n_boot, seed=seed)
    m = res.means["trained"]
    defined = [t for t in res.mean_tasks["trained"]]
    above = sum(res.per_task[t].delta > 0 for t in defined)
    passed = bool(not math.isnan(m.low) and m.low > 0)
    held_delta = res.means["held_out"].delta if "held_out" in res.means else math.nan
    return GateResult(passed, BETTER if passed else NOT_BETTER, m.delta, m.low, m.high, int(above),
                      len(defined), held_delta)
