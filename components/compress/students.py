"""A distillation step's starting point: the parent pruned to the step's shape, or a fresh
model of that shape. Runnable without Ray (the pipeline stage calls these, then trains).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from components.compress.config import DistillStep


def calibration_batches(examples_dir: Path, tokenizer, n_prompts: int, max_seq_len: int,
                        batch_size: int = 4) -> list:
    """The first ``n_prompts`` training prompts as multi-item batches (the layout the model
    is trained and served with): the activations pruning ranks by. Never validation or
    test prompts (their labels must not choose what is kept)."""
    from components.promptify.tokenizer import answer_token_ids
    from components.train.data import collate, read_examples, tokenize_prompts

    yes_id, no_id = answer_token_ids(tokenizer)
    rows = read_examples(Path(examples_dir), "train", False, n_prompts)
    if rows.height == 0:
        raise ValueError(f"{examples_dir} has no training prompts to calibrate pruning on")
    data = tokenize_prompts(rows, tokenizer, yes_id, no_id, max_seq_len, "multi_item",
                            with_answers=True)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    items = [data[i] for i in range(len(data))]
    return [collate(items[i:i + batch_size], pad) for i in range(0, len(items), batch_size)]


def ranking_forward(yes_id: int, no_id: int):
    """``forward(lm, batch) -> real-token mask`` for ``prune.measure_importance``: the
    model run as training runs it (segment masks, restarted positions)."""
    from components.train.losses import RankingLM

    def forward(lm, batch):
        RankingLM(lm, yes_id, no_id)(batch, "scores")
        return batch.attention_mask.bool()

    return forward


def pruned_student(parent_dir: Path, examples_dir: Path, step: DistillStep, n_prompts: int,
                   max_seq_len: int) -> tuple[Any, Any, dict]:
    """``(model, tokenizer, report)``: the parent pruned to ``step``'s shape by importance
    on calibration prompts (``components.compress.prune.prune_to_shape``)."""
    from components.compress.prune import prune_to_shape
    from components.model.factory import load_model
    from components.promptify.tokenizer import answer_token_ids

    parent, tok = load_model(Path(parent_dir), dtype="float32")
    batches = calibration_batches(examples_dir, tok, n_prompts, max_seq_len)
    yes_id, no_id = answer_token_ids(tok)
    model, report = prune_to_shape(parent, batches, ranking_forward(yes_id, no_id),
                                   num_layers=step.num_layers,
                                   intermediate_size=step.intermediate_size,
                                   num_kv_heads=step.num_kv_heads)
    return model, tok, report


def random_student_config(parent_config: dict[str, Any], step: DistillStep) -> dict[str, Any]:
    """The ``ModelConfig`` fields of a fresh student: the parent's shape with the step's
    overrides (heads follow the KV groups at the parent's query heads per group)."""
    cfg = dict(parent_config)
    if step.hidden_size is not None:
        cfg["hidden_size"] = step.hidden_size
    if step.num_layers is not None:
        cfg["num_layers"] = step.num_layers
    if step.intermediate_size is not None:
        cfg["intermediate_size"] = step.intermediate_size
    if step.num_kv_heads is not None:
        per_group = cfg["num_heads"] // cfg["num_kv_heads"]
        cfg["num_kv_heads"] = step.num_kv_heads
        cfg["num_heads"] = step.num_kv_heads * per_group
    cfg["head_dim"] = None
    cfg["checkpoint"] = None
    return cfg
