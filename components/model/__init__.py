"""Model factory and the multi-item scoring engine (see docs/model.md).

Plain PyTorch + transformers: importable without Ray or MLflow (the GPU machine has
neither). Names are imported lazily (PEP 562): a profile loads ``ModelConfig`` from
``components.model.factory`` without importing torch.
"""

from __future__ import annotations

from components.lazy import lazy_exports

_EXPORTS = {
    "engine": ("DEFAULT_MAX_TOKENS", "ScoringEngine", "tokenize_request"),
    "factory": ("PRESETS", "ModelConfig", "ModelLoadError", "build_model", "count_parameters",
                "load_model", "preset", "save_model"),
    "multi_item": ("pack_candidates", "plan_chunks", "score_multi_item",
                   "score_per_item_reference", "score_requests"),
    "scoring": ("LabelHead", "ScoringError", "label_head", "label_margins",
                "label_probabilities"),
    "upcycle": ("UpcycleError", "expert_spread", "upcycle_to_moe", "upcycled_model_config"),
}
__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
