"""Losses of the three stages, and the module that computes them under FSDP2.

Every loss returns a :class:`LossParts` ``(sum, count)`` rather than a mean. Why: the
training loop divides by the *global* count of the optimizer step (all micro-batches,
all ranks), so the gradient is the same whatever the batch split, the gradient
accumulation and the number of workers (a mean of per-micro-batch means weights a
prompt with 2 answers like one with 20).

* CPT: next-token cross-entropy over all real tokens (:func:`causal_lm_loss`).
* SFT: the same cross-entropy over the answer tokens only (:func:`answer_sft_loss`),
  computed from the hidden states at the cue positions times the full head, so the
  ``[tokens, vocab]`` logits of the whole sequence are never formed.
* Distillation: the SFT loss (weight ``kd_sft_weight``) plus ``kd_weight`` x the KL from
  the teacher's answer distribution to the student's (``components.compress.kd``), the
  teacher's label logits computed on the same batch without gradients.
* Alignment: a pairwise ranking loss on the score ``s = logit_yes - logit_no`` over
  every (positive, negative) candidate pair of the same prompt,
  ``-log sigmoid(s_pos - s_neg)`` (:func:`pairwise_ranking_loss`), plus
  ``sft_weight`` x the SFT loss. The pairwise term only sees differences of ``s``, so it
  is blind to a shift of all scores; the SFT term pins P(yes) to the label rate and
  keeps scores calibrated. (DPO was not chosen: with one-token answers and a fixed
  candidate set it reduces to a pairwise logistic loss on log-ratios against a frozen
  reference, which costs a second model in memory for little difference here.)

Answer logits are computed in fp32 from the two label rows of the LM head
(:func:`label_logits`): the score is a small difference of two large logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from components.train.data import IGNORE_INDEX, Batch, segment_mask


@dataclass
class LossParts:
    """A summed loss and the number of terms it sums (tokens, answers or pairs)."""

    total: torch.Tensor
    count: int

    def mean(self) -> torch.Tensor:
        return self.total / max(self.count, 1)


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> LossParts:
    """Next-token cross-entropy: ``logits[:, t]`` predicts ``labels[:, t + 1]``;
    ``-100`` labels are ignored. ``logits`` [B, T, V], ``labels`` [B, T].

    The labels are shifted, not the logits: slicing ``logits[:, :-1]`` copies the
    [tokens, vocab] tensor and its backward writes a zero-padded copy of the gradient.
    (On an H100 the 0.6B CPT step did not get measurably faster: 72.5k vs 72.7k tokens/s.)"""
    shift_labels = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX).reshape(-1)
    total = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), shift_labels,
                            ignore_index=IGNORE_INDEX, reduction="sum")
    return LossParts(total, int((shift_labels != IGNORE_INDEX).sum()))


class _LinearCrossEntropy(torch.autograd.Function):
    """``sum_i CE(hidden_i @ W.T, t_i)`` without the ``[n, V]`` logits: token chunks are
    projected, reduced to the loss and their gradients (softmax - one-hot) multiplied
    back at once, so only one chunk's logits exist at a time. The gradients are formed
    in the forward and scaled by the incoming gradient in the backward (the loss is a
    scalar), the scheme of Liger Kernel's fused linear cross-entropy."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk, compute_dtype, grad_enabled):
        need_h, need_w = hidden.requires_grad and grad_enabled, weight.requires_grad and grad_enabled
        with torch.autocast(hidden.device.type, enabled=False):
            w = weight.to(compute_dtype)
            grad_h = torch.empty_like(hidden) if need_h else None
            grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device
                                 ) if need_w else None
            total = torch.zeros((), dtype=torch.float32, device=hidden.device)
            for start in range(0, hidden.shape[0], chunk):
                h = hidden[start:start + chunk].to(compute_dtype)
                t = targets[start:start + chunk]
                logits = (h @ w.T).float()
                lse = torch.logsumexp(logits, dim=-1)
                total += (lse - logits.gather(1, t[:, None])[:, 0]).sum()
                if not (need_h or need_w):
                    continue
                probs = logits.sub_(lse[:, None]).exp_()  # softmax, in place
                probs[torch.arange(len(t), device=t.device), t] -= 1.0
                g = probs.to(compute_dtype)
                if need_h:
                    grad_h[start:start + chunk] = (g @ w).to(hidden.dtype)
                if need_w:
                    grad_w += (g.T @ h).float()
        ctx.save_for_backward(grad_h, grad_w)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        gh = grad_h * grad_out.to(grad_h.dtype) if grad_h is not None else None
        gw = (grad_w * grad_out).to(ctx.weight_dtype) if grad_w is not None else None
        return gh, gw, None, None, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         chunk_tokens: int = 2048) -> torch.Tensor:
    """Summed cross-entropy of ``hidden @ weight.T`` ([n, H] x [V, H]) against ``targets``
    [n], chunked (see ``_LinearCrossEntropy``). Matmuls run in the autocast dtype when
    autocast is on (else ``hidden``'s dtype); the softmax and the loss in fp32.

    Why: at 151k vocabulary a 4 x 4,096-token CPT batch has 2.5G logits (10 GB in fp32,
    the same again for their gradient), and the elementwise passes over them took ~17% of
    an H100 step. Why not Liger Kernel itself: it is Triton-only, and the embedded
    default trains on CPU; this runs on both and is tested against ``F.cross_entropy``."""
    if hidden.shape[0] == 0:
        return hidden.sum() * 0.0 + weight.sum() * 0.0
    dev = hidden.device.type
    dtype = (torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else hidden.dtype)
    # under no_grad the weight still requires grad: do not form gradients nobody will read
    return _LinearCrossEntropy.apply(hidden, weight, targets, int(chunk_tokens), dtype,
                                     torch.is_grad_enabled())


def chunked_lm_loss(hidden: torch.Tensor, head_weight: torch.Tensor, labels: torch.Tensor,
                    chunk_tokens: int = 2048) -> LossParts:
    """``causal_lm_loss(hidden @ W.T, labels)`` without the full logits: only the tokens
    that have a next-token target are projected, in chunks."""
    shift = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX).reshape(-1)
    keep = (shift != IGNORE_INDEX).nonzero()[:, 0]
    h = hidden.reshape(-1, hidden.shape[-1])[keep]
    return LossParts(linear_cross_entropy(h, head_weight, shift[keep], chunk_tokens),
                     int(keep.numel()))


def label_logits(hidden: torch.Tensor, head_weight: torch.Tensor, yes_id: int, no_id: int
                 ) -> torch.Tensor:
    """``[n, hidden]`` -> ``[n, 2]`` fp32 (yes, no) logits from two rows of the head."""
    rows = head_weight[[yes_id, no_id]].float()
    return hidden.float() @ rows.T


def score_margin(pair_logits: torch.Tensor) -> torch.Tensor:
    """``s = logit_yes - logit_no``; ``sigmoid(s)`` = P(yes) renormalised over the two."""
    return pair_logits[:, 0] - pair_logits[:, 1]


def answer_sft_loss(vocab_logits: torch.Tensor, targets: torch.Tensor) -> LossParts:
    """Full-vocabulary cross-entropy of the answer token at the cue positions only.

    ``vocab_logits`` [n, V]: the cue hidden states times the whole head (computed inside
    ``RankingLM.forward``, so ``n x V`` rather than ``tokens x V``); ``targets`` [n] ids.
    """
    if targets.numel() == 0:
        return LossParts(vocab_logits.sum() * 0.0, 0)
    return LossParts(F.cross_entropy(vocab_logits.float(), targets, reduction="sum"),
                     int(targets.numel()))


def pairwise_ranking_loss(scores: torch.Tensor, labels: torch.Tensor,
                          groups: torch.Tensor) -> LossParts:
    """``sum -log sigmoid(s_i - s_j)`` over pairs (i positive, j negative, same group).

    Groups with only positives or only negatives contribute no pair. An empty set of
    pairs gives a zero that still depends on ``scores`` (every rank must backpropagate
    through the same parameters under FSDP).
    """
    pos = labels.bool()
    pair = (groups[:, None] == groups[None, :]) & pos[:, None] & ~pos[None, :]
    n_pairs = int(pair.sum())
    if n_pairs == 0:
        return LossParts(scores.sum() * 0.0, 0)
    diff = scores[:, None] - scores[None, :]
    return LossParts(F.softplus(-diff)[pair].sum(), n_pairs)


def count_pairs(labels: torch.Tensor, groups: torch.Tensor) -> int:
    """Number of (positive, negative) same-group pairs (for the global normaliser)."""
    pos = labels.bool()
    return int(((groups[:, None] == groups[None, :]) & pos[:, None] & ~pos[None, :]).sum())


class RankingLM(nn.Module):
    """A causal LM plus the forward passes the stages need.

    Why a wrapper: FSDP2 gathers a module's parameters in that module's ``forward``.
    Reading only the answer rows of the LM head means running the decoder body and then
    touching ``lm_head.weight`` ourselves; making this wrapper the FSDP root puts the
    embedding, final norm and head in its ``forward``, so they are gathered (and their
    gradients reduced) like any other parameter.
    """

    def __init__(self, lm: nn.Module, yes_id: int, no_id: int, lm_loss_chunk: int = 0) -> None:
        super().__init__()
        self.lm = lm
        self.yes_id = int(yes_id)
        self.no_id = int(no_id)
        head = lm.get_output_embeddings()
        # next-token losses through ``chunked_lm_loss`` (no [tokens, vocab] logits); a head
        # with a bias takes the plain path
        self.lm_loss_chunk = int(lm_loss_chunk) if getattr(head, "bias", None) is None else 0
        vocab = head.weight.shape[0]
        for name, tid in (("yes", yes_id), ("no", no_id)):
            if not 0 <= tid < vocab:
                raise ValueError(f"{name} token id {tid} is outside the LM head (vocab {vocab}): "
                                 f"the tokenizer does not match the model")

    def body(self) -> nn.Module:
        """The decoder without the head (``LlamaModel`` inside ``LlamaForCausalLM``)."""
        return self.lm.get_decoder() if hasattr(self.lm, "get_decoder") else self.lm.model

    def _attention_mask(self, batch: Batch, dtype: torch.dtype):
        if self.lm.config._attn_implementation == "flex_attention":
            # Block-sparse: blocks a query may not see (other documents, other candidates)
            # are skipped, not computed and masked. Same rule as the dense mask below.
            from components.model.multi_item import flex_block_mask

            return flex_block_mask(batch.segment_ids)
        if not batch.dense_mask:
            return batch.attention_mask
        # additive float mask: SDPA/eager accept it as is (a bool one is converted per layer)
        mask = segment_mask(batch.segment_ids)
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(
            ~mask, torch.finfo(dtype).min)

    @property
    def moe(self) -> tuple[int, int] | None:
        """``(num_experts, experts_per_token)`` for a Mixtral-style model, else ``None``."""
        c = self.lm.config
        n = getattr(c, "num_local_experts", None)
        return (int(n), int(c.num_experts_per_tok)) if n else None

    def forward(self, batch: Batch, mode: str, router_logits: bool = False,
                lm_labels: torch.Tensor | None = None) -> dict:
        """``mode``: ``"lm"`` -> full logits [B, T, V] (CPT); ``"scores"`` -> the fp32
        label logits [n, 2] at the cues (two rows of the head); ``"cues"`` -> those plus
        the full-vocabulary logits [n, V] at the cues (for the SFT term); ``"cues+lm"``
        -> those plus the full logits. With ``lm_labels`` and ``lm_loss_chunk`` the
        ``lm`` modes return the next-token ``LossParts`` as ``"lm"`` instead of logits.

        Everything that reads the head weight happens here, inside the FSDP root's
        forward, where the weight is gathered."""
        dtype = next(self.lm.parameters()).dtype
        extra = {"output_router_logits": True} if router_logits and self.moe else {}
        body_out = self.body()(input_ids=batch.input_ids,
                               attention_mask=self._attention_mask(batch, dtype),
                               position_ids=batch.position_ids, use_cache=False, **extra)
        hidden = body_out.last_hidden_state
        head = self.lm.get_output_embeddings()
        router = ({"router_logits": body_out.router_logits} if extra else {})
        fused = lm_labels is not None and self.lm_loss_chunk > 0
        if mode == "lm":
            if fused:
                return {"lm": chunked_lm_loss(hidden, head.weight, lm_labels,
                                              self.lm_loss_chunk), **router}
            return {"logits": head(hidden), **router}
        if mode not in ("scores", "cues", "cues+lm"):
            raise ValueError(f"mode={mode!r}: use 'lm', 'scores', 'cues' or 'cues+lm'")
        cue_hidden = hidden[batch.cue_rows, batch.cue_cols]
        w = head.weight
        out = {"pair_logits": label_logits(cue_hidden, w, self.yes_id, self.no_id)}
        if mode in ("cues", "cues+lm"):
            # the SFT term needs the full vocabulary, but only at the n cue positions
            out["vocab_logits"] = cue_hidden.float() @ w.float().T
        if mode == "cues+lm" and fused:
            out["lm"] = chunked_lm_loss(hidden, w, lm_labels, self.lm_loss_chunk)
        elif mode == "cues+lm":
            out["logits"] = head(hidden)
        out.update(router)
        return out


def prompt_lm_labels(batch: Batch) -> torch.Tensor:
    """Targets of the auxiliary next-token loss on prompt text: token t is a target when
    it continues its own segment (so a candidate is never predicted from another one
    it cannot see) and is not an answer (those are the SFT term's)."""
    seg = batch.segment_ids
    same = torch.zeros_like(seg, dtype=torch.bool)
    same[:, 1:] = (seg[:, 1:] == seg[:, :-1]) & (seg[:, 1:] >= 0)
    keep = same & (batch.labels == IGNORE_INDEX)
    return torch.where(keep, batch.input_ids, torch.full_like(batch.input_ids, IGNORE_INDEX))


def router_aux_loss(module: RankingLM, out: dict[str, torch.Tensor], batch: Batch,
                    weight: float) -> LossParts:
    """Switch-Transformer load balancing over every layer's router (real tokens only),
    counted once per micro-batch; ``num_experts * sum_e f_e P_e``, 1.0 x top-k when even."""
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    assert module.moe is not None
    n, k = module.moe
    aux = load_balancing_loss_func(out["router_logits"], n, k, batch.attention_mask)
    return LossParts(aux * weight, 1)


def uses_router_aux(module: RankingLM, router_aux_weight: float) -> bool:
    """The router loss applies to MoE models with a positive weight only."""
    return router_aux_weight > 0 and module.moe is not None


def stage_loss(module: RankingLM, batch: Batch, stage: str, sft_weight: float = 0.5,
               lm_weight: float = 0.0, router_aux_weight: float = 0.0,
               teacher_pair: torch.Tensor | None = None, kd_weight: float = 1.0,
               kd_temperature: float = 1.0) -> dict[str, LossParts]:
    """Run ``module`` on ``batch`` and return the stage's loss terms (summed, counted).

    ``lm_weight`` > 0 (sft/align/distill) adds the auxiliary next-token loss on the prompt
    text (:func:`prompt_lm_labels`) as the ``lm`` term; ``router_aux_weight`` > 0 on an MoE
    model adds the load-balancing term ``router_aux``. ``distill``: ``teacher_pair`` are
    the teacher's ``[n, 2]`` label logits at this batch's cues; ``sft_weight`` weighs the
    label term and ``kd_weight`` the ``kd`` term (0: SFT alone, the ablation)."""
    router = uses_router_aux(module, router_aux_weight)
    if stage == "cpt":
        out = module(batch, "lm", router_logits=router, lm_labels=batch.labels)
        terms = {"lm": out["lm"] if "lm" in out else causal_lm_loss(out["logits"], batch.labels)}
        if router:
            terms["router_aux"] = router_aux_loss(module, out, batch, router_aux_weight)
        return terms
    if stage not in ("sft", "align", "distill"):
        raise ValueError(f"stage={stage!r}: use 'cpt', 'sft', 'align' or 'distill'")
    lm_labels = prompt_lm_labels(batch) if lm_weight > 0 else None
    out = module(batch, "cues+lm" if lm_weight > 0 else "cues", router_logits=router,
                 lm_labels=lm_labels)
    targets = torch.where(batch.cue_labels.bool(), module.yes_id, module.no_id)
    sft = answer_sft_loss(out["vocab_logits"], targets)
    terms = {"sft": sft}
    if stage == "align":
        scores = score_margin(out["pair_logits"])
        terms = {"pairwise": pairwise_ranking_loss(scores, batch.cue_labels, batch.cue_group),
                 "sft": LossParts(sft.total * sft_weight, sft.count)}
    if stage == "distill":
        from components.compress.kd import answer_kd_sum

        terms = {"sft": LossParts(sft.total * sft_weight, sft.count)}
        if kd_weight > 0:
            if teacher_pair is None:
                raise ValueError("stage 'distill' needs the teacher's label logits "
                                 "(teacher_pair): pass a teacher to train()")
            kd = answer_kd_sum(out["pair_logits"], teacher_pair, kd_temperature)
            terms["kd"] = LossParts(kd * kd_weight, sft.count)
    if lm_weight > 0:
        lm = out["lm"] if "lm" in out else causal_lm_loss(out["logits"], lm_labels)
        terms["lm"] = LossParts(lm.total * lm_weight, lm.count)
    if router:
        terms["router_aux"] = router_aux_loss(module, out, batch, router_aux_weight)
    return terms


def stage_counts(batch: Batch, stage: str, lm_weight: float = 0.0,
                 router_aux: bool = False, kd_weight: float = 0.0) -> dict[str, int]:
    """The terms each loss of ``stage_loss`` will count, known before the forward (for
    the global normaliser)."""
    extra = {"router_aux": 1} if router_aux else {}
    if stage == "cpt":
        return {"lm": int((batch.labels[:, 1:] != IGNORE_INDEX).sum()), **extra}
    n = int(batch.cue_labels.numel())
    counts = {"sft": n, **extra}
    if stage == "align":
        counts["pairwise"] = count_pairs(batch.cue_labels, batch.cue_group)
    if stage == "distill" and kd_weight > 0:
        counts["kd"] = n
    if lm_weight > 0:
        counts["lm"] = int((prompt_lm_labels(batch)[:, 1:] != IGNORE_INDEX).sum())
    return counts
