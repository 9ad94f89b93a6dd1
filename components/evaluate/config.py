"""Config of the evaluation fan-out (split, prompts per task, baselines, bootstrap,
opposite tasks). Lives next to the code that reads it."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from components.config_base import StrictModel


class EvaluateConfig(StrictModel):
    """The evaluation stage: the teacher and the ID-based baselines on one evaluation
    split, per task and per slice, one MLflow run per (model, task); see
    docs/evaluation.md."""

    enabled: bool = Field(True, description="false: no evaluation stage after the teacher.")
    split: Literal["valid", "test"] = Field("test", description="Evaluation window to report.")
    max_prompts_per_task: int | None = Field(
        None, ge=1, description="Prompts (candidate lists) per task, a seeded sample; null: all. "
        "Bounds the teacher's CPU time (local profile: 150).")
    tasks: list[str] | None = Field(None, description="Task ids to evaluate; null: every task "
                                    "of the split, held-out ones included.")
    model: str | None = Field(
        None, description="Evaluate this model instead of training a teacher: a model directory, "
        "models:/<name>/<version> or models:/<name>@<alias>, runs:/<run id>/<path>, or a pipeline "
        "run id (its registered teacher). Tasks it was not trained on are reported as zero-shot "
        "(components/tracking/models.py). null: this run's teacher.")
    baselines: list[Literal["popularity", "lightgbm", "lightgbm_ids", "sasrec"]] = Field(
        ["popularity", "lightgbm", "lightgbm_ids", "sasrec"], description="ID-based baselines "
        "fitted on the train split (components/evaluate/baselines/).")
    opposite_tasks: list[list[str]] | None = Field(
        None, description="Pairs [A, B] of tasks that should rank in opposite orders; A's "
        "prompts are scored again asked as B (components/evaluate/opposites.py). null: derived "
        "from the registry (apply vs dismiss, like vs hide, rate >= 4 vs <= 2).")
    opposite_max_prompts: int = Field(
        30, ge=0, description="Prompts of A per opposite pair scored with B's question; 0: no "
        "opposite-task check.")
    bootstrap_samples: int = Field(1000, ge=0, description="Bootstrap replicates of each AUC "
                                   "interval (whole lists resampled); 0: no interval.")
    ece_bins: int = Field(10, ge=1, description="Equal-mass bins of the ECE and the calibration plot.")
    seed: int = 0
