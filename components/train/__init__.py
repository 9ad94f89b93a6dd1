"""Training core: CPT, SFT and alignment of the ranking LM (see docs/training.md).

Plain PyTorch (FSDP2 when a process group exists); no Ray or MLflow here; the Ray Train
adapter is ``pipelines/train_job.py``.

Names are imported lazily (PEP 562): loading a profile imports ``components.train.config``
and must not pay for importing torch.
"""

from __future__ import annotations

from components.lazy import lazy_exports

_EXPORTS = {
    "config": ("Layout", "Stage", "TrainConfig", "TrainDataConfig"),
    "data": ("Batch", "BatchPlan", "CPTStats", "PackedDataset", "PromptDataset",
             "TokenizedPrompt", "TokenizeStats", "TrainDataError", "build_cpt_dataset",
             "collate", "member_documents", "pack_documents", "read_examples",
             "read_member_rows", "tokenize_prompts"),
    "fsdp": ("full_state_dict", "shard_model"),
    "loop": ("TrainResult", "build_tiny_llama", "latest_checkpoint", "load_checkpoint",
             "load_weights", "roc_auc", "save_checkpoint", "save_final_model", "score_prompts",
             "train", "validation_auc"),
    "losses": ("LossParts", "RankingLM", "answer_sft_loss", "causal_lm_loss", "label_logits",
               "pairwise_ranking_loss", "score_margin", "stage_loss"),
}
__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
