"""Typed settings of the training stages (no torch import: profiles load them).

``TrainDataConfig`` says where the text comes from and how it becomes token sequences;
``TrainConfig`` is one stage's optimisation. Both are fields of a pipeline profile's
``train`` section, so a typo in YAML fails at load time with the key's path.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SerializerFunctionWrapHandler, model_serializer, model_validator

from components.config_base import StrictModel

Layout = Literal["sequential", "multi_item"]
Stage = Literal["cpt", "sft", "align", "distill"]
#: Ray placement-group strategies for the Train worker group (Ray's names).
Placement = Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"]
#: Today's placement; a profile that leaves it so serializes without the field.
DEFAULT_PLACEMENT: Placement = "PACK"


class TrainDataConfig(StrictModel):
    """Where the training text comes from and how it becomes token sequences."""

    examples_dir: Path | None = Field(
        None, description="sft/align: the promptify stage's examples/ directory (Parquet).")
    member_rows_dir: Path | None = Field(
        None, description="cpt: the prepare stage's member_rows/ directory (Parquet).")
    history_cutoff: datetime | None = Field(
        None, description="cpt: keep history events strictly before this time (set it to the "
        "split's valid_start so CPT never reads the evaluation window).")
    history_column: str = Field("hist_markdown", description="cpt: verbalized history lines.")
    profile_column: str | None = Field("profile_markdown", description="cpt: profile text "
                                       "put before the history (null: history only).")
    max_seq_len: int = Field(1024, ge=8, description="sft/align: tokens per prompt (cap).")
    eval_max_seq_len: int = Field(4096, ge=8, description="Validation prompts' token cap.")
    layout: Layout = "sequential"
    cpt_seq_len: int = Field(512, ge=8, description="cpt: tokens per packed block.")
    document_mask: bool = Field(True, description="cpt: documents in a block do not attend "
                                "to each other (block-diagonal mask, positions restart).")
    max_train_prompts: int | None = Field(None, ge=1, description="Use the first N training "
                                          "prompts (by example_id) only.")
    max_valid_prompts: int | None = Field(200, ge=1, description="Validation prompts scored "
                                          "for valid_auc (first N by example_id).")
    max_report_prompts: int | None = Field(None, ge=1, description="Validation prompts "
                                           "scored by every stage's validation report "
                                           "(valid_report.json: per-task AUC, the Platt fit, "
                                           "the ECE and popularity gates), a random sample "
                                           "(seed 0), the same for every stage so that "
                                           "stage-to-stage deltas are paired. None: "
                                           "max_valid_prompts. An ECE measured on N "
                                           "candidates sits above 0 even for a calibrated "
                                           "model (0.030 at 575 candidates = 300 prompts of "
                                           "the embedded default), so a 0.03 gate needs more "
                                           "than the in-training validation set.")
    include_held_out: bool = Field(False, description="Train on held-out (zero-shot) tasks "
                                   "too; normally they are kept out of training.")

    @model_serializer(mode="wrap")
    def _omit_unset_report_prompts(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # left at None, the field is not written: profiles that do not set it keep the
        # config hash they had before it existed (as placement_strategy below)
        out = handler(self)
        if out.get("max_report_prompts") is None:
            out.pop("max_report_prompts", None)
        return out

    @model_validator(mode="after")
    def _lengths(self) -> TrainDataConfig:
        if self.eval_max_seq_len < self.max_seq_len:
            raise ValueError(f"data.eval_max_seq_len ({self.eval_max_seq_len}) < "
                             f"data.max_seq_len ({self.max_seq_len}): raise eval_max_seq_len")
        return self



class TrainConfig(StrictModel):
    """Optimisation settings of one stage (per worker unless said otherwise)."""

    stage: Stage = "sft"
    max_steps: int = Field(100, ge=0, description="Optimizer steps in total (not per run). 0: the "
                           "pipeline skips the stage: its output model is its input model.")
    batch_size: int = Field(4, ge=1, description="Sequences per micro-batch per worker.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    lr: float = Field(3e-4, gt=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="Cosine floor as a share of lr.")
    warmup_steps: int = Field(10, ge=0)
    weight_decay: float = Field(0.01, ge=0)
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.95, ge=0, lt=1)
    max_grad_norm: float = Field(1.0, ge=0, description="0 disables clipping.")
    seed: int = 0
    checkpoint_every: int = Field(50, ge=0, description="Steps between checkpoints; the last "
                                  "step is always checkpointed. 0: only the last.")
    keep_checkpoints: int = Field(2, ge=1, description="Local checkpoints kept (oldest "
                                  "deleted).")
    eval_every: int = Field(0, ge=0, description="Steps between validation AUCs (0: only at "
                            "the end, if a validation set is given).")
    eval_batch_size: int = Field(2, ge=1)
    keep_best: bool = Field(False, description="End with the weights of the best validation "
                            "evaluation by best_metric (the starting weights, every "
                            "eval_every step and the last step are candidates), not the "
                            "last step's, as transformers' load_best_model_at_end: a short "
                            "re-distillation that lowers a good pruned start then keeps "
                            "the start. Needs a validation set; survives a resume.")
    best_metric: Literal["valid_prompt_auc", "valid_auc"] = Field(
        "valid_prompt_auc", description="keep_best: the validation metric to maximise "
        "(per-prompt mean AUC: the within-list ranking that is served; or pooled AUC).")
    log_every: int = Field(1, ge=1)
    align_sft_weight: float = Field(0.5, ge=0, description="align: weight of the SFT term "
                                    "that keeps P(yes) calibrated.")
    kd_weight: float = Field(1.0, ge=0, description="distill: weight of the KD term (KL "
                             "from the teacher's yes/no distribution to the student's at each "
                             "answer). 0: the student learns from the labels alone (the "
                             "ablation 'SFT alone').")
    kd_temperature: float = Field(2.0, gt=0, description="distill: softmax temperature of "
                                  "the KD term (> 1 softens the teacher's confident answers "
                                  "so their margins still teach); the term is scaled by T^2.")
    kd_sft_weight: float = Field(1.0, ge=0, description="distill: weight of the label (SFT) "
                                 "term beside KD.")
    lm_weight: float = Field(0.0, ge=0, description="sft/align/distill: weight of an auxiliary "
                             "next-token loss on the prompt text (prefix and candidates, not "
                             "the answers): a dense signal that keeps teaching the profile and "
                             "item text while the sparse answer loss teaches ranking.")
    router_aux_weight: float = Field(0.0, ge=0, description="MoE only: weight of the "
                                     "Switch-Transformer load-balancing loss (transformers' "
                                     "load_balancing_loss_func), which keeps every expert in "
                                     "use; ignored for dense models.")
    group_by_length: int = Field(0, ge=0, description="Group micro-batches by prompt "
                                 "length in windows of this many rounds (0: plain shuffle); "
                                 "cuts padding and the wait for the slowest rank.")
    threads: int | None = Field(None, ge=1, description="torch intra-op threads (None: "
                                "leave torch's default).")
    compile: bool = Field(False, description="torch.compile each decoder layer (regional "
                          "compilation: one compiled block reused by every layer). Pays a "
                          "compile per new batch shape; worth it on GPU, not on 2 CPU cores.")
    lm_loss_chunk_tokens: int = Field(0, ge=0, description="Next-token losses (cpt, and "
                                      "the lm term of sft/align) through a chunked linear + "
                                      "cross-entropy of this many tokens per chunk, never "
                                      "forming the [tokens, vocab] logits (memory, and the "
                                      "elementwise passes over them on GPU). 0: plain logits.")
    attention: Literal["auto", "sdpa", "flex_attention"] = Field(
        "auto", description="Attention kernel while training. auto: flex_attention on CUDA "
        "(block-sparse segment masks: packed documents and multi-item prompts skip the "
        "blocks they may not see), sdpa on CPU (dense additive mask).")

    @model_validator(mode="after")
    def _warmup(self) -> TrainConfig:
        if self.warmup_steps >= self.max_steps and self.max_steps > 1:
            raise ValueError(f"train.warmup_steps ({self.warmup_steps}) must be below "
                             f"train.max_steps ({self.max_steps}): lower warmup_steps")
        return self


class TrainingConfig(StrictModel):
    """The teacher's training stages, ``cpt -> sft -> align``, each a Ray Train run.

    ``data`` shapes the token sequences (its directories are filled in by the stages from
    the upstream artifacts: leave them null); ``cpt`` / ``sft`` / ``align`` are each
    stage's optimisation settings (``max_steps: 0`` skips a stage: its output is its
    input model).
    """

    enabled: bool = Field(True, description="false: the pipeline ends after promptify.")
    num_workers: int = Field(2, ge=1, description="Ray Train workers (FSDP2 shards).")
    cpus_per_worker: float | None = Field(
        None, gt=0, description="Ray CPUs per worker (default: fits the cluster, leaving room "
        "for the controller).")
    use_gpu: bool = Field(False, description="One GPU per worker, NCCL, bf16 autocast.")
    max_failures: int = Field(2, ge=0, description="Worker-group restarts from the last "
                              "checkpoint before a stage fails.")
    placement_strategy: Placement = Field(
        DEFAULT_PLACEMENT, description="Where Ray puts the Train workers (ScalingConfig."
        "placement_strategy). PACK: as few nodes as possible (one machine: all of them); "
        "SPREAD: across nodes when it can; STRICT_SPREAD: one worker per node, so FSDP2's "
        "gradients and shards cross the network (needs at least num_workers nodes, else the "
        "stage waits for them). Not in any stage's cache key: placement does not change "
        "what a stage computes.")
    data: TrainDataConfig = TrainDataConfig()
    cpt: TrainConfig = TrainConfig(stage="cpt")
    sft: TrainConfig = TrainConfig(stage="sft")
    align: TrainConfig = TrainConfig(stage="align")
    calibrate: bool = Field(True, description="align: fit a Platt calibration of P(yes) on "
                            "the validation prompts and save it with the teacher (training "
                            "prompts over-sample positives, so raw P(yes) runs high).")
    registered_model_name: str | None = Field(
        "rankbrew-teacher", description="MLflow registry name of the aligned teacher (null: "
        "log the model without registering it).")

    @model_validator(mode="before")
    @classmethod
    def _stage_names(cls, raw: Any) -> Any:
        # ``sft: {max_steps: 300}`` in YAML means a TrainConfig of stage sft.
        if isinstance(raw, dict):
            raw = dict(raw)
            for stage in ("cpt", "sft", "align"):
                if isinstance(raw.get(stage), dict):
                    raw[stage] = {**raw[stage], "stage": stage}
        return raw

    @model_serializer(mode="wrap")
    def _omit_default_placement(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Left at PACK, the field is not written: config_hash of every profile (the
        # rankbrew.config_hash tag, `rankbrew config`) stays what it was before the field
        # existed, and reading the dump back gives PACK again.
        out = handler(self)
        if out.get("placement_strategy") == DEFAULT_PLACEMENT:
            del out["placement_strategy"]
        return out

    @model_validator(mode="after")
    def _no_dirs(self) -> TrainingConfig:
        for name in ("examples_dir", "member_rows_dir", "history_cutoff"):
            if getattr(self.data, name) is not None:
                raise ValueError(f"train.data.{name} is set by the pipeline from the upstream "
                                 f"stages: remove it from the profile")
        return self
