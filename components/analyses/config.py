"""Config of ``rankbrew analyze`` (context budget, data amount, model size, steering).
Lives next to the code that reads it."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from components.config_base import StrictModel

ANALYSIS_NAMES = ("context_budget", "data_amount", "model_size", "steering")


class ContextBudgetAnalysisConfig(StrictModel):
    """AUC of the trained teacher vs the history token budget (no training: re-render and
    score)."""

    budgets: list[int] = Field(
        [0, 32, 64, 128, 256], min_length=1, description="History token budgets the evaluation "
        "prefixes are re-rendered with; the run's promptify.history_token_budget is always "
        "added. 0: no history lines at all.")
    max_prompts_per_task: int = Field(50, ge=1, description="Evaluation prompts (whole "
                                      "candidate lists) per task, a seeded sample.")

    @model_validator(mode="after")
    def _budgets(self) -> ContextBudgetAnalysisConfig:
        bad = [b for b in self.budgets if b < 0]
        if bad:
            raise ValueError(f"analyses.context_budget.budgets holds negative budgets {bad}: "
                             f"use 0 (no history) or more tokens")
        return self


class SweepTrainingConfig(StrictModel):
    """How each point of the data-amount and model-size sweeps is trained: one process,
    no Ray, answer-token SFT from a random init with the profile's ``train.sft`` settings
    except the ones below. Every point gets the same steps (equal compute per step)."""

    steps: int = Field(150, ge=2, description="Optimizer steps per sweep point (on 1 CPU "
                       "thread a 128-wide, 2-layer model does about 2.5 steps/s).")
    batch_size: int | None = Field(None, ge=1, description="Prompts per step; null: "
                                   "train.sft.batch_size.")
    lr: float | None = Field(None, gt=0, description="Peak learning rate; null: train.sft.lr.")
    valid_prompts_per_task: int = Field(15, ge=1, description="Validation prompts per trained "
                                        "task scored after training (a fixed seeded sample, "
                                        "the same for every point).")


class DataAmountAnalysisConfig(StrictModel):
    """AUC vs the share of the training prompts used, at equal steps."""

    fractions: list[float] = Field(
        [0.003, 0.015, 1.0], min_length=1, description="Shares of the training prompts (nested "
        "seeded subsets). At equal steps a point sees steps x batch_size prompts: a share "
        "smaller than that is repeated (epochs > 1), a larger one is not seen in full.")

    @model_validator(mode="after")
    def _fractions(self) -> DataAmountAnalysisConfig:
        bad = [f for f in self.fractions if not 0.0 < f <= 1.0]
        if bad:
            raise ValueError(f"analyses.data_amount.fractions holds {bad}: each share must be "
                             f"in (0, 1]")
        return self


class ModelSizeAnalysisConfig(StrictModel):
    """AUC vs model width at equal steps: the profile's ``model`` with another
    ``hidden_size`` (head size and the MLP/hidden ratio kept, heads scaled)."""

    hidden_sizes: list[int] = Field([64, 128, 192], min_length=1, description="Widths to "
                                    "train; each must be a multiple of the profile's head size.")
    num_layers: int | None = Field(None, ge=1, description="Layers of every point; null: "
                                   "model.num_layers.")
    data_fraction: float = Field(1.0, gt=0.0, le=1.0, description="Share of the training "
                                 "prompts every point trains on.")

    @model_validator(mode="after")
    def _sizes(self) -> ModelSizeAnalysisConfig:
        bad = [h for h in self.hidden_sizes if h < 8]
        if bad:
            raise ValueError(f"analyses.model_size.hidden_sizes holds {bad}: widths must be >= 8")
        return self


class SteeringAnalysisConfig(StrictModel):
    """Instruction steering: the steering tasks' candidate lists scored under their own
    (steered) instruction and under their base task's instruction."""

    max_prompts_per_task: int = Field(100, ge=1, description="Evaluation prompts per steering "
                                      "task, a seeded sample.")
    base_tasks: dict[str, str] = Field(
        {}, description="steering task id -> the task whose instruction is the unsteered "
        "baseline. Unlisted steering tasks get the registry task that asks the closest "
        "question: same item type, most shared positive / negative actions, same surface.")


class AnalysesConfig(StrictModel):
    """``rankbrew analyze``: analyses of a finished pipeline run, each one MLflow run with a
    CSV table and a plot (see docs/evaluation.md, "Analyses"). Not part of ``rankbrew run``.
    The defaults fit the embedded default on 2 CPU cores (about 10 minutes in all); GPU
    profiles can set larger sweeps."""

    run: list[Literal["context_budget", "data_amount", "model_size", "steering"]] = Field(
        list(ANALYSIS_NAMES), min_length=1, description="Analyses `rankbrew analyze` runs "
        "(--only overrides).")
    split: Literal["valid", "test"] = Field("test", description="Evaluation window of the "
                                            "context_budget and steering analyses.")
    threads: int = Field(2, ge=1, description="torch threads for training and scoring.")
    seed: int = Field(0, description="Prompt samples, data subsets, model init.")
    context_budget: ContextBudgetAnalysisConfig = ContextBudgetAnalysisConfig()
    training: SweepTrainingConfig = SweepTrainingConfig()
    data_amount: DataAmountAnalysisConfig = DataAmountAnalysisConfig()
    model_size: ModelSizeAnalysisConfig = ModelSizeAnalysisConfig()
    steering: SteeringAnalysisConfig = SteeringAnalysisConfig()
