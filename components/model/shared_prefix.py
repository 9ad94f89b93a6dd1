"""Shared-prefix attention: the multi-item rule computed as two dense pieces, no mask.

In a packed request ``[prefix P][candidate 1]...[candidate N]`` the allowed query-key
pairs (``multi_item`` module docstring) fall into three blocks:

* prefix -> prefix: a plain causal triangle;
* candidates -> prefix: **dense** (every candidate token sees the whole prefix); at
  P = 2,000 and N = 500 x 32 tokens this is 93% of the allowed query-key pairs (32.0M of 34.3M);
* candidate i -> candidate i: N small causal triangles (``I x I`` each).

A mask-driven kernel (FlexAttention's block mask, or SDPA with a dense mask) walks the
whole ``Q x K`` grid and skips or masks blocks; its dense blocks also carry the mask's
bookkeeping. Here the dense block is one maskless attention call (the fused flash
kernel: ``aten._scaled_dot_product_flash_attention`` on CUDA, its CPU twin on CPU) that
also returns each query's log-sum-exp, the triangles are one small batched matmul, and
the two partial softmaxes are merged exactly by their log-sum-exps::

    out = (exp(lse_a) * out_a + exp(lse_b) * out_b) / (exp(lse_a) + exp(lse_b))

which is softmax attention over the union of the two key sets (the same identity
flash-attention uses across its key blocks). The result equals the masked attention up
to float rounding; tests check scores against per-item scoring at 1e-5 in fp32.

Why private aten ops: the public ``scaled_dot_product_attention`` does not return the
log-sum-exp, and FlexAttention's ``return_lse`` goes through the block-sparse kernel we
are replacing. Both ops have had the same schema since torch 2.1 (checked against 2.13);
``math`` below is the fallback and the reference.

Used through transformers' attention registry: ``model.set_attn_implementation(
SHARED_PREFIX)`` and a ``SharedPrefixLayout`` passed as the ``shared_prefix_layout``
forward keyword (it travels to the attention function like FlexAttention's
``kernel_options``). Without a layout the function is plain causal SDPA, so the model
still runs ordinary forwards (the prefix pass of a KV cache, the per-item reference).
Inference only: dropout is not applied.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from components.model.scoring import ScoringError

SHARED_PREFIX = "rankbrew_shared_prefix"


@dataclass(frozen=True)
class SharedPrefixLayout:
    """Where the prefix ends and how the candidate tokens split into candidates.

    ``cand_len`` is set when every candidate has the same length (the triangles are then
    a reshape); otherwise ``index[n, j]`` is the offset (among the candidate tokens) of
    candidate n's token j and ``valid[n, j]`` says whether that token exists (shorter
    candidates are padded to the longest, in the small triangle block only)."""

    prefix_len: int
    num_candidates: int
    cand_len: int | None = None
    index: torch.Tensor | None = None  # [N, L] long
    valid: torch.Tensor | None = None  # [N, L] bool
    flat_valid: torch.Tensor | None = None  # [T] long: positions of valid in [N * L]

    @classmethod
    def from_lengths(cls, prefix_len: int, lengths: Sequence[int] | np.ndarray,
                     device: torch.device | str = "cpu") -> SharedPrefixLayout:
        lens = np.asarray(lengths, dtype=np.int64)
        if prefix_len < 1 or len(lens) == 0 or (lens < 1).any():
            raise ScoringError(f"shared-prefix layout needs a prefix and non-empty candidates "
                               f"(prefix {prefix_len} tokens, candidate lengths {lens.tolist()})")
        if (lens == lens[0]).all():
            return cls(prefix_len, len(lens), cand_len=int(lens[0]))
        width = int(lens.max())
        starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
        j = np.arange(width)
        valid = j[None, :] < lens[:, None]
        index = np.where(valid, starts[:, None] + j[None, :], starts[:, None])
        return cls(prefix_len, len(lens), index=torch.from_numpy(index).to(device),
                   valid=torch.from_numpy(valid).to(device),
                   flat_valid=torch.from_numpy(np.flatnonzero(valid)).to(device))


def attention_with_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Maskless softmax attention and the per-query log-sum-exp of the scaled scores.

    q ``[B, H, Q, D]``; k, v ``[B, Hkv, K, D]`` (grouped-query heads are repeated: the
    keys here are the prefix, small next to the queries). Returns (out ``[B, H, Q, D]`` in
    q's dtype, lse ``[B, H, Q]`` fp32)."""
    groups = q.shape[1] // k.shape[1]
    if groups > 1:
        k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
    if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and q.shape[-1] <= 256:
        res = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, False, False,
                                                                 scale=scale)
        return res[0], res[1].float()
    if q.is_cuda:
        # fp32 on CUDA: the memory-efficient kernel (its lse is padded to 32 queries)
        res = torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, None, True, 0.0,
                                                                     False, scale=scale)
        return res[0], res[1][..., :q.shape[2]].float()
    if q.device.type == "cpu":
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q, k, v, 0.0, False, scale=scale)
        return out, lse.float()
    return math_attention_with_lse(q, k, v, scale)


def math_attention_with_lse(q, k, v, scale: float, mask: torch.Tensor | None = None):
    """The plain formula in fp32 (``mask``: True = attend); reference and fallback."""
    groups = q.shape[1] // k.shape[1]
    if groups > 1:
        k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
    s = (q.float() @ k.float().transpose(-1, -2)) * scale
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    out = torch.exp(s - lse[..., None]) @ v.float()
    return out.to(q.dtype), lse


def own_candidate_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                            layout: SharedPrefixLayout, scale: float
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Each candidate token over the earlier tokens of its own candidate (fp32 math: the
    block is N triangles of I x I, ~1/P of the dense block's work).

    q ``[B, H, T, D]``, k/v ``[B, Hkv, T, D]`` over the T candidate tokens. Returns
    (out ``[B, H, T, D]`` fp32, lse ``[B, H, T]`` fp32)."""
    b, h, t, d = q.shape
    hkv = k.shape[1]
    n = layout.num_candidates
    if layout.cand_len is not None:
        width = layout.cand_len
        if n * width != t:
            raise ScoringError(f"shared-prefix layout: {n} candidates x {width} tokens != {t} "
                               f"candidate tokens in the pass")
        qg = q.reshape(b, hkv, h // hkv, n, width, d)
        kg = k.reshape(b, hkv, 1, n, width, d)
        vg = v.reshape(b, hkv, 1, n, width, d)
    else:
        width = layout.index.shape[1]
        qg = q[:, :, layout.index].reshape(b, hkv, h // hkv, n, width, d)
        kg = k[:, :, layout.index].unsqueeze(2)
        vg = v[:, :, layout.index].unsqueeze(2)
    s = (qg.float() @ kg.float().transpose(-1, -2)) * scale  # [B, Hkv, g, N, L, L]
    allowed = torch.ones(width, width, dtype=torch.bool, device=q.device).tril()
    if layout.valid is not None:
        allowed = allowed & layout.valid[:, None, :]  # [N, L, L]: keys that exist
    s = s.masked_fill(~allowed, float("-inf"))  # every row keeps its own token
    lse = torch.logsumexp(s, dim=-1)
    out = torch.exp(s - lse[..., None]) @ vg.float()
    out, lse = out.reshape(b, h, n * width, d), lse.reshape(b, h, n * width)
    if layout.valid is None:
        return out, lse
    # valid slots in row-major order are the packed order; an index (not a boolean mask)
    # keeps the output shape static for torch.compile
    return out[:, :, layout.flat_valid], lse[:, :, layout.flat_valid]


def shared_prefix_attention(module, query: torch.Tensor, key: torch.Tensor,
                            value: torch.Tensor, attention_mask, scaling: float | None = None,
                            dropout: float = 0.0,
                            shared_prefix_layout: SharedPrefixLayout | None = None, **kwargs):
    """transformers attention function (``AttentionInterface``) for ``SHARED_PREFIX``.

    query ``[B, H, Q, D]``, key/value ``[B, Hkv, K, D]`` with ``K - Q`` tokens from a KV
    cache, which must be none (the whole request in one pass) or exactly the prefix
    (candidates over a cached prefix). Every row of the batch has the same layout.
    Returns (``[B, Q, H, D]``, None) like transformers' own functions."""
    if shared_prefix_layout is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask,
                                      scaling=scaling, dropout=dropout, **kwargs)
    layout = shared_prefix_layout
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    p, q_len, k_len = layout.prefix_len, query.shape[2], key.shape[2]
    cached = k_len - q_len
    if cached not in (0, p):
        raise ScoringError(f"shared-prefix attention: {cached} cached tokens; the cache must "
                           f"be empty or hold exactly the {p}-token prefix")
    kp, vp, kc, vc = key[:, :, :p], value[:, :, :p], key[:, :, p:], value[:, :, p:]
    qc = query[:, :, p - cached:]
    out_a, lse_a = attention_with_lse(qc, kp, vp, scale)
    out_b, lse_b = own_candidate_attention(qc, kc, vc, layout, scale)
    m = torch.maximum(lse_a, lse_b)
    w_a, w_b = torch.exp(lse_a - m), torch.exp(lse_b - m)
    out = ((out_a.float() * w_a[..., None] + out_b * w_b[..., None])
           / (w_a + w_b)[..., None]).to(query.dtype)
    if cached == 0:
        prefix_out = F.scaled_dot_product_attention(
            query[:, :, :p], kp, vp, is_causal=True, scale=scale,
            enable_gqa=query.shape[1] != key.shape[1])
        out = torch.cat([prefix_out, out], dim=2)
    return out.transpose(1, 2).contiguous(), None


def register() -> str:
    """Register ``SHARED_PREFIX`` with transformers (idempotent); returns the name."""
    from transformers import AttentionInterface

    AttentionInterface.register(SHARED_PREFIX, shared_prefix_attention)
    return SHARED_PREFIX


__all__ = ["SHARED_PREFIX", "SharedPrefixLayout", "attention_with_lse", "math_attention_with_lse",
           "own_candidate_attention", "register", "shared_prefix_attention"]
