"""Config of the "go small" chain: distillation steps (each prunes or re-initialises its
parent to a smaller shape, then distils from it) and quantization with its gate. Lives
next to the code that reads it."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from components.compress.quantize import QuantRecipe
from components.config_base import StrictModel
from components.train.config import TrainConfig


class DistillStep(StrictModel):
    """One step of the chain: a student shape, how it starts, how it is trained."""

    name: str = Field(..., pattern=r"^[a-z0-9_]+$", description="Stage name suffix: the "
                      "stage is distill_<name>, the evaluated model student_<name>.")
    init: Literal["pruned", "random"] = Field(
        "pruned", description="pruned: the parent pruned to this shape by importance on "
        "calibration prompts (whole layers, KV groups, MLP channels; components/compress/"
        "prune.py), then distilled: structured pruning followed by re-distillation. random: "
        "a fresh model of this shape (hidden_size may change), distilled from scratch.")
    num_layers: int | None = Field(None, ge=1, description="Decoder layers (null: the parent's).")
    intermediate_size: int | None = Field(None, ge=1, description="MLP channels per layer "
                                          "(null: the parent's).")
    num_kv_heads: int | None = Field(None, ge=1, description="KV groups per layer, each with "
                                     "its query heads (null: the parent's).")
    hidden_size: int | None = Field(None, ge=8, description="init random only: model width "
                                    "(null: the parent's).")
    train: TrainConfig = TrainConfig(stage="distill", max_steps=200, lr=1e-3, warmup_steps=20)

    @model_validator(mode="before")
    @classmethod
    def _stage(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and isinstance(raw.get("train"), dict):
            raw = {**raw, "train": {**raw["train"], "stage": "distill"}}
        return raw

    @model_validator(mode="after")
    def _shape(self) -> DistillStep:
        if self.init == "pruned" and self.hidden_size is not None:
            raise ValueError(f"compress.chain[{self.name}].hidden_size is for init: random "
                             f"(pruning keeps the width of the residual stream): remove it")
        return self


class QuantizeConfig(StrictModel):
    """The quantization stage and its acceptance gate."""

    enabled: bool = Field(True, description="false: the chain ends at the last student.")
    recipe: QuantRecipe = QuantRecipe()
    max_auc_drop: float = Field(0.005, ge=0, description="Gate: validation mean task AUC "
                                "(trained tasks) may fall at most this much below the "
                                "unquantized parent's on the same prompts.")
    max_ece: float = Field(0.03, ge=0, description="Gate: validation ECE (calibrated P(yes), "
                           "trained tasks) at most this.")
    head_ablation: bool = Field(True, description="Also score the validation prompts with the "
                                "LM head quantized too (not registered): does calibration "
                                "collapse?")


class CompressConfig(StrictModel):
    """Teacher -> distillation chain -> quantization, every model evaluated; the model that
    passes the gate is registered as ``registered_model_name@champion`` (what serving loads)."""

    enabled: bool = Field(False, description="Run the chain after the teacher.")
    chain: list[DistillStep] = Field(default_factory=list, description="Students in order; "
                                     "each distils from the one before (the first from the "
                                     "teacher).")
    calibration_prompts: int = Field(64, ge=1, description="Training prompts whose activations "
                                     "rank layers, groups and channels for pruning.")
    quantize: QuantizeConfig = QuantizeConfig()
    latency_candidates: int = Field(100, ge=1, description="N of the CPU latency probe: one "
                                    "request with this many candidates, scored per model.")
    latency_threads: int = Field(1, ge=1, description="torch threads of the latency probe.")
    registered_model_name: str | None = Field(
        "rankbrew-ranker", description="MLflow registry name of the final model that passes "
        "the gate (alias champion). null: not registered.")

    @model_validator(mode="after")
    def _names(self) -> CompressConfig:
        names = [s.name for s in self.chain]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"compress.chain: step names {dup} repeat: give each step its own name")
        if self.enabled and not self.chain and not self.quantize.enabled:
            raise ValueError("compress.enabled with an empty chain and quantize disabled does "
                             "nothing: add a chain step or enable compress.quantize")
        return self
