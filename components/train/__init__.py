"""Training core: CPT, SFT and alignment of the ranking LM (see docs/training.md).

Plain PyTorch (FSDP2 when a process group exists); no Ray or MLflow here; the Ray Train
adapter is ``pipelines/train_job.py``.
"""

from __future__ import annotations

from components.train.data import (
    Batch,
    BatchPlan,
    CPTStats,
    PackedDataset,
    PromptDataset,
    TokenizedPrompt,
    TokenizeStats,
    TrainDataConfig,
    TrainDataError,
    build_cpt_dataset,
    collate,
    member_documents,
    pack_documents,
    read_examples,
    read_member_rows,
    tokenize_prompts,
)
from components.train.fsdp import full_state_dict, shard_model
from components.train.loop import (
    TrainConfig,
    TrainResult,
    build_tiny_llama,
    latest_checkpoint,
    load_checkpoint,
    load_weights,
    roc_auc,
    save_checkpoint,
    save_final_model,
    score_prompts,
    train,
    validation_auc,
)
from components.train.losses import (
    LossParts,
    RankingLM,
    answer_sft_loss,
    causal_lm_loss,
    label_logits,
    pairwise_ranking_loss,
    score_margin,
    stage_loss,
)

__all__ = [
    "Batch", "BatchPlan", "CPTStats", "LossParts", "PackedDataset", "PromptDataset",
    "RankingLM", "TokenizeStats", "TokenizedPrompt", "TrainConfig", "TrainDataConfig",
    "TrainDataError", "TrainResult", "answer_sft_loss", "build_cpt_dataset",
    "build_tiny_llama", "causal_lm_loss", "collate", "full_state_dict", "label_logits",
    "latest_checkpoint", "load_checkpoint", "load_weights", "member_documents",
    "pack_documents", "pairwise_ranking_loss", "read_examples", "read_member_rows",
    "roc_auc", "save_checkpoint", "save_final_model", "score_margin", "score_prompts",
    "shard_model", "stage_loss", "tokenize_prompts", "train", "validation_auc",
]
