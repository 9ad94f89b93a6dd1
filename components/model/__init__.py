"""Model factory and the multi-item scoring engine (see docs/model.md).

Plain PyTorch + transformers: importable without Ray or MLflow (the GPU machine has
neither). transformers is imported on first use, so ``import components.model``
costs only the torch import.
"""

from __future__ import annotations

from components.model.engine import DEFAULT_MAX_TOKENS, ScoringEngine, tokenize_request
from components.model.factory import (
    PRESETS,
    ModelConfig,
    ModelLoadError,
    build_model,
    count_parameters,
    load_model,
    preset,
    save_model,
)
from components.model.multi_item import (
    pack_candidates,
    plan_chunks,
    score_multi_item,
    score_per_item_reference,
    score_requests,
)
from components.model.scoring import (
    LabelHead,
    ScoringError,
    label_head,
    label_margins,
    label_probabilities,
)

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "PRESETS",
    "LabelHead",
    "ModelConfig",
    "ModelLoadError",
    "ScoringEngine",
    "ScoringError",
    "build_model",
    "count_parameters",
    "label_head",
    "label_margins",
    "label_probabilities",
    "load_model",
    "pack_candidates",
    "plan_chunks",
    "preset",
    "save_model",
    "score_multi_item",
    "score_per_item_reference",
    "score_requests",
    "tokenize_request",
]
