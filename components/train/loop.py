"""The training loop shared by CPT, SFT and alignment: one process or one Ray Train worker.

A plain loop, readable top to bottom (``train``): AdamW, linear warmup then cosine decay,
gradient accumulation, gradient clipping, a checkpoint every ``checkpoint_every`` steps
and at the end, a validation AUC every ``eval_every`` steps. It knows nothing of Ray:
when a ``torch.distributed`` process group exists (Ray Train, torchrun) it shards the
model with FSDP2 and synchronises counts; hooks (``on_checkpoint``, ``on_log``,
``on_step``) let an adapter report to Ray or MLflow.

Determinism and resume: the batches of step ``s`` are a pure function of (seed, s)
(``data.BatchPlan``), and a checkpoint holds the weights (safetensors), the optimizer and
scheduler state, the step, the metrics history and each rank's RNG state. A run resumed
from step ``s`` therefore continues exactly as the uninterrupted run would have (tested:
same losses to float tolerance).

Checkpoint directory (``<run_dir>/checkpoints/step_000040``)::

    model.safetensors     full weights, HF key names (tied head stored once)
    optimizer.pt          full optimizer state keyed by parameter name (torch.save of
                          tensors and numbers only; loaded with weights_only=True)
    scheduler.pt          LR scheduler state
    rng_rank{r}.pt        python / numpy / torch RNG state of rank r
    best/model.safetensors  keep_best only, when the best evaluation so far is not this
                          step: its weights (trainer_state.json's "best" names its step)
    trainer_state.json    step, history, config; written last = the checkpoint is complete
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from components.train.config import TrainConfig
from components.train.data import (
    BatchPlan,
    PackedDataset,
    PromptDataset,
    collate,
    eval_shards,
)
from components.train.fsdp import (
    decoder_layers,
    full_optimizer_state,
    full_state_dict,
    is_distributed,
    load_full_optimizer_state,
    load_full_state_dict,
    load_full_state_dict_from_rank0,
    rank_and_world,
    set_gradient_sync,
    shard_model,
)
from components.train.losses import (
    RankingLM,
    score_margin,
    stage_counts,
    stage_loss,
    uses_router_aux,
)

STATE_FILE = "trainer_state.json"
WEIGHTS_FILE = "model.safetensors"
BEST_DIR = "best"


def build_tiny_llama(vocab_size: int, hidden_size: int = 64, num_layers: int = 2,
                     num_heads: int = 4, num_kv_heads: int = 2, intermediate_size: int = 128,
                     max_position_embeddings: int = 4096, num_experts: int = 0,
                     experts_per_token: int = 2, tie_word_embeddings: bool = True,
                     seed: int = 0, pad_token_id: int | None = None,
                     eos_token_id: int | None = None) -> nn.Module:
    """A small randomly initialised decoder for tests and CPU runs: a Llama, or a Mixtral
    (top-k routed experts) when ``num_experts > 0``.

    Kept as one isolated function on purpose: ``components.model.factory.build_model``
    will replace it. The same ``seed`` gives the same weights on every rank.
    """
    from transformers import LlamaConfig, LlamaForCausalLM, MixtralConfig, MixtralForCausalLM

    common = dict(vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_layers,
                  num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
                  intermediate_size=intermediate_size,
                  max_position_embeddings=max_position_embeddings,
                  tie_word_embeddings=tie_word_embeddings, pad_token_id=pad_token_id,
                  eos_token_id=eos_token_id, attn_implementation="sdpa")
    torch.manual_seed(seed)
    if num_experts > 0:
        cfg = MixtralConfig(num_local_experts=num_experts,
                            num_experts_per_tok=experts_per_token, **common)
        return MixtralForCausalLM(cfg)
    return LlamaForCausalLM(LlamaConfig(**common))


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (dropout-free models need it only for init)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def lr_factor(step: int, warmup_steps: int, max_steps: int, min_ratio: float) -> float:
    """Linear warmup to 1 (the first step already has lr/warmup), then cosine to
    ``min_ratio`` at ``max_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, max_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def make_optimizer(module: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW; no weight decay on norms and biases (1-D parameters)."""
    decay = [p for p in module.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in module.parameters() if p.requires_grad and p.ndim < 2]
    # fused: one kernel for all parameters instead of a few per tensor (CUDA only)
    fused = all(p.is_cuda for p in decay + no_decay) or None
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=1e-8, fused=fused)


def attention_for(cfg: TrainConfig, device: torch.device) -> str:
    """``cfg.attention`` resolved: ``auto`` is flex_attention on CUDA, sdpa elsewhere."""
    if cfg.attention != "auto":
        return cfg.attention
    return "flex_attention" if device.type == "cuda" else "sdpa"


def autocast_for(device: torch.device, sharded: bool):
    """bf16 autocast for one unsharded CUDA model; FSDP2's ``MixedPrecisionPolicy`` does
    the same for sharded ones, and CPU trains in fp32 (its bf16 matmuls are slower)."""
    if device.type == "cuda" and not sharded:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig
                   ) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, cfg.warmup_steps, cfg.max_steps, cfg.min_lr_ratio))


# ------------------------------------------------------------------------- metrics


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve by ranks (Mann-Whitney U), ties at average rank.

    ``nan`` when only one class is present (AUC is undefined there, not 0.5)."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    uniq, inv, counts = np.unique(scores, return_inverse=True, return_counts=True)
    first_rank = np.cumsum(counts) - counts + 1
    avg_rank = first_rank + (counts - 1) / 2.0
    ranks = avg_rank[inv]
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


@torch.no_grad()
def score_prompts(module: RankingLM, dataset: PromptDataset, pad_id: int, batch_size: int = 2,
                  device: torch.device | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scores ``logit_yes - logit_no`` (fp32) at every cue of ``dataset``.

    Returns ``(scores, labels, prompt_index)`` over all ranks (a collective when
    distributed: every rank runs the same number of forwards)."""
    rank, world = rank_and_world()
    device = device or torch.device("cpu")
    was_training = module.training
    module.eval()
    rows: list[tuple[int, np.ndarray, np.ndarray]] = []
    for idx, keep in eval_shards(len(dataset), batch_size, rank, world):
        batch = collate([dataset[i] for i in idx], pad_id).to(device)
        s = score_margin(module(batch, "scores")["pair_logits"]).cpu().numpy()
        cue_rows = batch.cue_rows.cpu().numpy()
        labels = batch.cue_labels.cpu().numpy()
        for r, (i, k) in enumerate(zip(idx, keep, strict=True)):
            if k:
                sel = cue_rows == r
                rows.append((i, s[sel], labels[sel]))
    if world > 1:
        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, rows)
        rows = [x for part in gathered for x in part]
    module.train(was_training)
    rows.sort(key=lambda x: x[0])
    if not rows:
        empty = np.zeros(0)
        return empty, empty, empty
    scores = np.concatenate([x[1] for x in rows])
    labels = np.concatenate([x[2] for x in rows])
    prompt = np.concatenate([np.full(len(x[1]), x[0]) for x in rows])
    return scores, labels, prompt


def answer_base_rate_entropy(dataset: PromptDataset) -> float:
    """Binary entropy (nats) of the share of positive answers in ``dataset``: the answer
    loss of a model that predicts only that share. nan without answers."""
    labels = [p.answer_labels for p in dataset.prompts] if getattr(dataset, "with_answers", False) else []
    n = sum(len(x) for x in labels)
    if n == 0:
        return math.nan
    p = float(sum(int(x.sum()) for x in labels)) / n
    if p <= 0 or p >= 1:
        return 0.0
    return float(-(p * math.log(p) + (1 - p) * math.log(1 - p)))


def validation_auc(module: RankingLM, dataset: PromptDataset, pad_id: int, batch_size: int = 2,
                   device: torch.device | None = None) -> dict[str, float]:
    """``valid_auc`` (all candidates pooled) and ``valid_prompt_auc`` (mean over prompts
    with both classes: the per-member ranking quality)."""
    scores, labels, prompt = score_prompts(module, dataset, pad_id, batch_size, device)
    per_prompt = [roc_auc(scores[prompt == p], labels[prompt == p]) for p in np.unique(prompt)]
    per_prompt = [a for a in per_prompt if not math.isnan(a)]
    return {"valid_auc": roc_auc(scores, labels),
            "valid_prompt_auc": float(np.mean(per_prompt)) if per_prompt else float("nan"),
            "valid_candidates": float(len(scores))}


# --------------------------------------------------------------------- checkpoints


def _tied_head(lm: nn.Module) -> bool:
    return bool(getattr(lm.config, "tie_word_embeddings", False))


def save_checkpoint(module: RankingLM, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, state: dict[str, Any],
                    ckpt_dir: Path, best_weights: dict[str, torch.Tensor] | None = None) -> Path:
    """Write a checkpoint (see the module docstring). A collective: call on every rank;
    rank 0 writes the shared files, every rank its RNG state. ``best_weights`` (rank 0's
    full state of the best evaluation, keep_best) go to ``best/`` beside the step's own."""
    from safetensors.torch import save_file

    rank, _ = rank_and_world()
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    weights = full_state_dict(module.lm)
    optim = full_optimizer_state(module, optimizer)
    torch.save({"python": random.getstate(), "numpy": _numpy_state(),
                "torch": torch.get_rng_state()}, ckpt_dir / f"rng_rank{rank}.pt")
    if rank == 0:
        if _tied_head(module.lm):
            weights.pop("lm_head.weight", None)  # the same tensor as the embedding
        save_file({k: v.contiguous() for k, v in weights.items()}, str(ckpt_dir / WEIGHTS_FILE))
        if best_weights:
            (ckpt_dir / BEST_DIR).mkdir(exist_ok=True)
            save_file({k: v.contiguous() for k, v in best_weights.items()
                       if not (k == "lm_head.weight" and _tied_head(module.lm))},
                      str(ckpt_dir / BEST_DIR / WEIGHTS_FILE))
        torch.save(optim, ckpt_dir / "optimizer.pt")
        torch.save(scheduler.state_dict(), ckpt_dir / "scheduler.pt")
        tmp = ckpt_dir / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(state, indent=1, default=str))
        tmp.rename(ckpt_dir / STATE_FILE)  # last: a directory with this file is complete
    if is_distributed():
        dist.barrier()
    return ckpt_dir


def _numpy_state() -> tuple:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return (name, keys.tolist(), int(pos), int(has_gauss), float(cached))


def load_weights(lm: nn.Module, ckpt_dir: Path) -> dict[str, torch.Tensor]:
    """The checkpoint's full weights with HF key names (the tied head restored)."""
    from safetensors.torch import load_file

    path = Path(ckpt_dir) / WEIGHTS_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: {ckpt_dir} is not a complete rankbrew "
                                f"checkpoint (look for a step_* directory with {STATE_FILE})")
    weights = load_file(str(path))
    if _tied_head(lm) and "lm_head.weight" not in weights:
        weights["lm_head.weight"] = weights["model.embed_tokens.weight"]
    return weights


def load_checkpoint(module: RankingLM, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, ckpt_dir: Path
                    ) -> dict[str, Any]:
    """Restore everything ``save_checkpoint`` wrote; returns the trainer state."""
    ckpt_dir = Path(ckpt_dir)
    if not (ckpt_dir / STATE_FILE).exists():
        raise FileNotFoundError(f"{ckpt_dir / STATE_FILE} is missing: resume from a complete "
                                f"checkpoint directory (latest_checkpoint(run_dir) finds one)")
    rank, _ = rank_and_world()
    load_full_state_dict(module.lm, load_weights(module.lm, ckpt_dir))
    load_full_optimizer_state(module, optimizer,
                              torch.load(ckpt_dir / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(ckpt_dir / "scheduler.pt", weights_only=True))
    rng = ckpt_dir / f"rng_rank{rank}.pt"
    if rng.exists():
        st = torch.load(rng, weights_only=True)
        random.setstate(st["python"])
        name, keys, pos, has_gauss, cached = st["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
        torch.set_rng_state(st["torch"])
    return json.loads((ckpt_dir / STATE_FILE).read_text())


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The complete checkpoint with the highest step under ``run_dir/checkpoints``."""
    root = Path(run_dir) / "checkpoints"
    done = sorted(p for p in root.glob("step_*") if (p / STATE_FILE).exists())
    return done[-1] if done else None


def save_final_model(module: RankingLM, tokenizer, out_dir: Path) -> Path | None:
    """``save_pretrained`` of the trained LM (safetensors) + tokenizer on rank 0; a
    collective (the full state is gathered from every rank). Returns the directory on
    rank 0, ``None`` elsewhere."""
    rank, _ = rank_and_world()
    weights = full_state_dict(module.lm)
    if rank != 0:
        return None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # A fresh unsharded copy: save_pretrained inspects the module's own parameters,
    # which are DTensor shards under FSDP.
    lm = module.lm
    fresh = type(lm)(lm.config)
    fresh.load_state_dict(weights, strict=True)
    fresh.save_pretrained(out_dir)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
    if not any(out_dir.glob("*.safetensors")):
        raise RuntimeError(f"save_pretrained wrote no .safetensors file to {out_dir}")
    return out_dir


# ---------------------------------------------------------------------------- loop


@dataclass
class TrainResult:
    """What ``train`` leaves behind: the module (sharded if distributed), the metrics
    history (one dict per logged step, restored across resumes), the last checkpoint."""

    module: RankingLM
    history: list[dict[str, float]]
    step: int
    last_checkpoint: Path | None
    resumed_from_step: int | None = None
    evals: list[dict[str, float]] = field(default_factory=list)
    #: keep_best: ``{"step", "metric", "value"}`` of the evaluation whose weights the
    #: module holds at the end (None without keep_best)
    best: dict[str, Any] | None = None


Hook = Callable[..., None]


def train(lm: nn.Module, train_set: PromptDataset | PackedDataset, cfg: TrainConfig,
          run_dir: Path, *, yes_id: int, no_id: int, pad_id: int,
          valid_set: PromptDataset | None = None, resume_from: Path | None = None,
          device: torch.device | str | None = None,
          on_checkpoint: Hook | None = None, on_log: Hook | None = None,
          on_step: Hook | None = None, teacher: nn.Module | None = None) -> TrainResult:
    """Train ``lm`` for ``cfg.max_steps`` optimizer steps (in total: a resumed run does the
    remaining ones).

    ``train_set``: a ``PromptDataset`` with answers (sft/align) or a ``PackedDataset``
    (cpt). With a process group, the model is sharded with FSDP2 and every rank must call
    this with the same config and data. Hooks (called on every rank):
    ``on_step(step, metrics)`` after each optimizer step, ``on_log(metrics)`` on logged
    steps, ``on_checkpoint(ckpt_dir, metrics)`` after a checkpoint is written.

    ``cfg.keep_best``: the starting weights and each evaluation are candidates; the
    module ends with the best one's weights (``TrainResult.best`` says which). The last
    checkpoint still holds the last step (a resume continues the same trajectory), plus
    the best weights under ``best/`` when they differ.

    ``teacher`` (stage ``distill``): a causal LM with the same tokenizer; it scores every
    micro-batch under ``no_grad`` (label logits only) for the KD term. It is not sharded:
    each rank holds a full copy in eval mode (the teacher here is at most the size of
    the student's parent, and its forward is inference only).
    """
    rank, world = rank_and_world()
    device = torch.device(device) if device is not None else torch.device("cpu")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.stage == "cpt" and not isinstance(train_set, PackedDataset):
        raise TypeError("train.stage='cpt' needs a PackedDataset (data.build_cpt_dataset)")
    if cfg.stage != "cpt" and not (isinstance(train_set, PromptDataset)
                                   and train_set.with_answers):
        raise TypeError(f"train.stage={cfg.stage!r} needs a PromptDataset tokenized with "
                        f"answers (data.tokenize_prompts(..., with_answers=True))")
    distill_kd = cfg.stage == "distill" and cfg.kd_weight > 0
    if cfg.keep_best and valid_set is None:
        raise ValueError("train.keep_best needs a validation set to choose by: give "
                         "valid_set (the pipeline: train.data.max_valid_prompts > 0) or "
                         "set keep_best: false")
    if distill_kd and teacher is None:
        raise TypeError("train.stage='distill' with kd_weight > 0 needs a teacher model")
    seed_everything(cfg.seed + rank)
    run_dir = Path(run_dir)
    lm.set_attn_implementation(attention_for(cfg, device))
    module = RankingLM(lm, yes_id, no_id, cfg.lm_loss_chunk_tokens).to(device)
    sharded = world > 1
    if sharded:
        shard_model(module, device=device)
    if cfg.compile:
        for layer in decoder_layers(module.lm):
            layer.compile()
    amp = autocast_for(device, sharded)
    teacher_module = None
    if distill_kd:
        assert teacher is not None
        teacher.set_attn_implementation(attention_for(cfg, device))
        teacher_module = RankingLM(teacher, yes_id, no_id).to(device).eval()
        teacher_module.requires_grad_(False)
    module.train()
    optimizer = make_optimizer(module, cfg)
    scheduler = make_scheduler(optimizer, cfg)

    start, history, evals, tokens_seen = 0, [], [], 0
    resumed_from = None
    best: dict[str, Any] | None = None
    best_weights: dict[str, torch.Tensor] | None = None  # rank 0's copy; {} elsewhere
    if resume_from is not None:
        state = load_checkpoint(module, optimizer, scheduler, Path(resume_from))
        start = resumed_from = int(state["step"])
        history, evals = state.get("history", []), state.get("evals", [])
        tokens_seen = int(state.get("tokens_seen", 0))
        best = state.get("best") if cfg.keep_best else None
        if best is not None:
            saved = Path(resume_from) / BEST_DIR
            best_weights = (load_weights(module.lm, saved) if (saved / WEIGHTS_FILE).exists()
                            else _weights_copy(module))  # the best was this very step
            if rank != 0:
                best_weights = {}

    def consider(ev: dict[str, float]) -> None:
        """keep_best: remember these weights if ``ev`` beats the best so far (a collective)."""
        nonlocal best, best_weights
        value = ev.get(cfg.best_metric, math.nan)
        if not cfg.keep_best or math.isnan(value) or (best is not None and value <= best["value"]):
            return
        best = {"step": int(ev["step"]), "metric": cfg.best_metric, "value": float(value)}
        best_weights = _weights_copy(module)

    if cfg.keep_best and resume_from is None:
        assert valid_set is not None
        ev0 = {"step": 0, **validation_auc(module, valid_set, pad_id, cfg.eval_batch_size, device)}
        evals.append(ev0)
        if on_log is not None:
            on_log(ev0)
        consider(ev0)

    # the answer loss of a model that knows only the positive rate: a run whose loss_sft
    # stays near it has learned the base rate, not the member-candidate match (issue 14)
    base_entropy = answer_base_rate_entropy(train_set) if cfg.stage != "cpt" else math.nan
    lengths = ([len(train_set[i]) for i in range(len(train_set))]
               if cfg.group_by_length else None)
    plan = BatchPlan(len(train_set), cfg.batch_size, cfg.seed, rank, world,
                     lengths=lengths, group_batches=cfg.group_by_length)
    grad_scale = world if sharded else 1  # FSDP averages gradients over ranks
    router_aux = uses_router_aux(module, cfg.router_aux_weight)
    last_ckpt: Path | None = None
    train_seconds = 0.0
    window_tokens, window_seconds = 0, 0.0
    for step in range(start, cfg.max_steps):
        t0 = time.perf_counter()
        micro = [collate([train_set[i] for i in plan.indices(step * cfg.grad_accum + a)],
                         pad_id).to(device) for a in range(cfg.grad_accum)]
        local_counts: dict[str, int] = {}
        for b in micro:
            for k, v in stage_counts(b, cfg.stage, cfg.lm_weight, router_aux,
                                     cfg.kd_weight).items():
                local_counts[k] = local_counts.get(k, 0) + v
        names = sorted(local_counts)
        counts = torch.tensor([local_counts[k] for k in names] + [sum(b.n_tokens for b in micro)],
                              dtype=torch.float64)
        if is_distributed():
            dist.all_reduce(counts)
        global_counts = dict(zip(names, counts[:-1].tolist(), strict=True))
        step_tokens = int(counts[-1])

        term_values = dict.fromkeys(names, 0.0)
        for a, b in enumerate(micro):
            set_gradient_sync(module, a == len(micro) - 1)
            with amp:
                teacher_pair = None
                if teacher_module is not None:
                    with torch.no_grad():  # once per micro-batch, no graph kept
                        teacher_pair = teacher_module(b, "scores")["pair_logits"]
                sft_weight = cfg.kd_sft_weight if cfg.stage == "distill" else cfg.align_sft_weight
                parts = stage_loss(module, b, cfg.stage, sft_weight, cfg.lm_weight,
                                   cfg.router_aux_weight, teacher_pair, cfg.kd_weight,
                                   cfg.kd_temperature)
            loss = sum(p.total / max(global_counts[k], 1.0) for k, p in parts.items())
            (loss * grad_scale).backward()
            for k, p in parts.items():
                term_values[k] += float(p.total.detach()) / max(global_counts[k], 1.0)
        grad_norm = _clip(module, cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        values = torch.tensor([term_values[k] for k in names], dtype=torch.float64)
        if is_distributed():
            dist.all_reduce(values)
        dt = time.perf_counter() - t0
        train_seconds += dt
        window_tokens += step_tokens
        window_seconds += dt
        tokens_seen += step_tokens
        done = step + 1
        metrics: dict[str, float] = {"step": done, "loss": float(values.sum()),
                                     "lr": scheduler.get_last_lr()[0], "grad_norm": grad_norm,
                                     "tokens_seen": tokens_seen}
        metrics.update({f"loss_{k}": float(v) for k, v in zip(names, values.tolist(),
                                                               strict=True)})
        if on_step is not None:
            on_step(done, metrics)
        if done % cfg.log_every == 0 or done == cfg.max_steps:
            if "loss_sft" in metrics and base_entropy > 0:
                metrics["base_rate_entropy"] = base_entropy
                metrics["answer_loss_over_base_rate"] = metrics["loss_sft"] / base_entropy
            metrics["tokens_per_s"] = window_tokens / max(window_seconds, 1e-9)
            metrics["tokens_per_s_per_worker"] = metrics["tokens_per_s"] / world
            window_tokens, window_seconds = 0, 0.0
            history.append(metrics)
            if on_log is not None:
                on_log(metrics)
        eval_now = valid_set is not None and (
            (cfg.eval_every and done % cfg.eval_every == 0) or done == cfg.max_steps)
        if eval_now:
            ev = {"step": done, **validation_auc(module, valid_set, pad_id,
                                                 cfg.eval_batch_size, device)}
            evals.append(ev)
            metrics.update(ev)
            if on_log is not None:
                on_log(ev)
            consider(ev)
        ckpt_now = (cfg.checkpoint_every and done % cfg.checkpoint_every == 0) or \
            done == cfg.max_steps
        if ckpt_now:
            state = {"step": done, "history": history, "evals": evals,
                     "tokens_seen": tokens_seen, "world_size": world,
                     "config": cfg.model_dump(mode="json"), "best": best}
            last_ckpt = save_checkpoint(
                module, optimizer, scheduler, state, run_dir / "checkpoints" / f"step_{done:06d}",
                best_weights if best is not None and best["step"] != done else None)
            _prune(run_dir / "checkpoints", cfg.keep_checkpoints)
            if on_checkpoint is not None:
                on_checkpoint(last_ckpt, metrics)
    final = max(start, cfg.max_steps)
    if best is not None and best["step"] != final:
        assert best_weights is not None
        load_full_state_dict_from_rank0(module.lm, best_weights)  # a collective
    return TrainResult(module, history, final, last_ckpt, resumed_from, evals, best)


def _weights_copy(module: RankingLM) -> dict[str, torch.Tensor]:
    """The full weights on rank 0 as a copy (``{}`` elsewhere; a collective). Unsharded,
    ``get_model_state_dict`` returns the live parameters themselves, which the next
    optimizer step would change in place."""
    return {k: v.detach().clone() for k, v in full_state_dict(module.lm).items()}


def _clip(module: nn.Module, max_norm: float) -> float:
    """Clip the global gradient norm (DTensor-aware); returns the norm before clipping."""
    params = [p for p in module.parameters() if p.grad is not None]
    if not params:
        return 0.0
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
    if hasattr(norm, "full_tensor"):
        norm = norm.full_tensor()
    return float(norm)


def _prune(ckpt_root: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` complete checkpoints (rank 0 writes them)."""
    done = sorted(p for p in ckpt_root.glob("step_*") if (p / STATE_FILE).exists())
    for old in done[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
