"""Multi-item scoring: N candidates after one shared prefix, in one forward pass.

A request is ``[prefix][candidate 1]...[candidate N]`` packed into one sequence. Per
token we keep a *segment id* (0 = prefix, i = candidate i, -1 = batch padding) and a
*position id*. The attention rule is

    token q may attend to token k  iff  k <= q  and  (seg[k] == 0  or  seg[k] == seg[q])

so every candidate token sees the whole prefix and the earlier tokens of its own
candidate, never another candidate; and candidate token j gets position ``P + j`` (P =
prefix length), exactly the position it would have if the candidate were scored alone.
With the same attended set and the same RoPE positions, each candidate's hidden states
equal those of the per-item forward ``prefix + candidate`` (up to float rounding), so
the score at its last token (the ``Answer:`` cue) is the per-item score. Padding tokens
attend to the prefix and themselves (a row with nothing to attend to would be NaN).

Cost: per-item scoring runs ``N (P + I)`` tokens; one packed pass runs ``P + N I``.

Two attention paths, one rule:

* CPU (and any SDPA/eager model): a dense boolean ``[B, 1, Q, K]`` mask passed as the
  model's ``attention_mask``. transformers 5 (``masking_utils._preprocess_mask_arguments``)
  hands a 4D mask to the attention function unchanged, and the explicit
  ``position_ids`` go to RoPE. Memory is ``B Q K`` bytes, so passes are bounded by
  ``max_tokens_per_pass``.
* CUDA: a FlexAttention ``BlockMask`` built by ``create_block_mask`` from a ``mask_mod``
  that reads the segment ids; blocks that are entirely masked (candidate i vs candidate
  j) are skipped, so the attention cost follows the useful pairs.
* Shared-prefix (``shared_prefix`` module, either device, one request per pass): no
  mask at all; the dense candidates -> prefix block is one maskless flash-attention call
  and the per-candidate triangles a small matmul, merged by log-sum-exp.

``score_per_item_reference`` is the plain implementation (each candidate alone after
the prefix, the model's own full forward) that the fast paths are tested against.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from components.model.scoring import (
    LabelHead,
    ScoringError,
    decoder_body,
    final_hidden_states,
    full_forward_probabilities,
    label_margins,
)
from components.model.shared_prefix import SHARED_PREFIX, SharedPrefixLayout

PREFIX_SEGMENT = 0
PAD_SEGMENT = -1
FLEX_BLOCK = 128  # FlexAttention's default sparse block size
MASKED_ATTENTION = ("sdpa", "eager", "flex_attention")


@dataclass(frozen=True)
class PackedSequence:
    """One prefix and some of its candidates, packed; ``candidates`` are request indices.

    int64 numpy arrays, not lists: a 500-candidate request is 18,000 tokens; packing and
    collating it as Python lists took 9-17 ms of host time on a 2-core VM, now under 1 ms
    (on an H100 the request's wall time did not move measurably, docs/benchmarks.md)."""

    input_ids: np.ndarray
    segment_ids: np.ndarray
    position_ids: np.ndarray
    answer_index: np.ndarray  # position in the packed sequence of each candidate's last token
    candidates: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)


def pack_candidates(
    prefix_ids: Sequence[int], candidate_ids: Sequence[Sequence[int]],
    candidates: Sequence[int] | None = None,
) -> PackedSequence:
    """Pack ``prefix + candidate_ids[c] for c in candidates`` with segments and positions."""
    candidates = list(range(len(candidate_ids))) if candidates is None else list(candidates)
    p = len(prefix_ids)
    if p == 0:
        raise ScoringError("prefix has no tokens: multi-item scoring needs a shared prefix "
                           "(at least the instruction)")
    lens = np.fromiter((len(candidate_ids[c]) for c in candidates), dtype=np.int64,
                       count=len(candidates))
    if (lens == 0).any():
        c = candidates[int(np.flatnonzero(lens == 0)[0])]
        raise ScoringError(f"candidate {c} has no tokens: each candidate must end with "
                           f"the answer cue ('Answer:')")
    total = p + int(lens.sum())
    ids = np.fromiter(itertools.chain(prefix_ids, *(candidate_ids[c] for c in candidates)),
                      dtype=np.int64, count=total)
    seg = np.repeat(np.arange(len(candidates) + 1, dtype=np.int64),  # prefix 0, candidate k
                    np.concatenate([[p], lens]))
    ends = p + np.cumsum(lens)  # one past each candidate's last token
    # positions: 0..p-1 for the prefix, then p, p+1, ... restarting for every candidate
    pos = np.arange(total, dtype=np.int64)
    pos[p:] -= np.repeat(ends - lens - p, lens)
    return PackedSequence(ids, seg, pos, ends - 1, candidates)


def plan_chunks(prefix_len: int, candidate_lens: Sequence[int], max_tokens: int | None,
                max_chunk_tokens: int | None = None) -> list[list[int]]:
    """Split candidates (in order) into chunks with ``prefix_len + sum(chunk) <= max_tokens``
    and ``sum(chunk) <= max_chunk_tokens`` (a chunk always holds at least one candidate).

    Raises when even one candidate does not fit beside the prefix: that request cannot
    be scored within the budget, and silently truncating it would change its score.
    """
    n = len(candidate_lens)
    if n == 0:
        return []
    limit = None if max_tokens is None else max_tokens - prefix_len
    if limit is not None and max(candidate_lens) > limit:
        raise ScoringError(
            f"prefix ({prefix_len} tokens) + longest candidate ({max(candidate_lens)}) exceeds "
            f"max_tokens_per_pass={max_tokens}: raise max_tokens_per_pass to at least "
            f"{prefix_len + max(candidate_lens)} or shorten the prompt "
            f"(promptify.history_token_budget)"
        )
    if max_chunk_tokens is not None:
        limit = max_chunk_tokens if limit is None else min(limit, max_chunk_tokens)
    chunks: list[list[int]] = []
    used = 0
    for i, length in enumerate(candidate_lens):
        if chunks and (limit is None or used + length <= limit):
            chunks[-1].append(i)
            used += length
        else:
            chunks.append([i])
            used = length
    return chunks


@dataclass
class PaddedBatch:
    """Right-padded packed sequences as tensors on one device."""

    input_ids: torch.Tensor  # [B, T]
    segment_ids: torch.Tensor  # [B, T], PAD_SEGMENT on padding
    position_ids: torch.Tensor  # [B, T]
    answer_rows: torch.Tensor  # [n]
    answer_cols: torch.Tensor  # [n]


def collate(packs: Sequence[PackedSequence], pad_id: int, device: torch.device | str
            ) -> PaddedBatch:
    """Right-pad ``packs`` to the longest; answers are listed in pack order."""
    t = max(len(p) for p in packs)
    b = len(packs)
    ids = torch.full((b, t), pad_id, dtype=torch.long)
    seg = torch.full((b, t), PAD_SEGMENT, dtype=torch.long)
    pos = torch.zeros((b, t), dtype=torch.long)
    rows, cols = [], []
    for r, p in enumerate(packs):
        n = len(p)
        ids[r, :n] = torch.from_numpy(p.input_ids)
        seg[r, :n] = torch.from_numpy(p.segment_ids)
        pos[r, :n] = torch.from_numpy(p.position_ids)
        rows += [r] * len(p.answer_index)
        cols += p.answer_index.tolist()
    return PaddedBatch(
        ids.to(device), seg.to(device), pos.to(device),
        torch.tensor(rows, dtype=torch.long, device=device),
        torch.tensor(cols, dtype=torch.long, device=device),
    )


def dense_mask(segment_ids: torch.Tensor, q_offset: int = 0) -> torch.Tensor:
    """Boolean ``[B, 1, K - q_offset, K]`` mask (True = attend) from ``[B, K]`` segments.

    Queries are the last ``K - q_offset`` tokens (``q_offset`` tokens come from a KV cache).
    """
    k_len = segment_ids.shape[1]
    k_idx = torch.arange(k_len, device=segment_ids.device)
    q_idx = k_idx[q_offset:]
    seg_q = segment_ids[:, q_offset:, None]
    seg_k = segment_ids[:, None, :]
    causal = k_idx[None, :] <= q_idx[:, None]
    same = (seg_k == PREFIX_SEGMENT) | (seg_k == seg_q)
    return (causal[None] & same)[:, None]


def flex_block_mask(segment_ids: torch.Tensor, q_offset: int = 0,
                    compile_mask: bool | None = None):
    """FlexAttention ``BlockMask`` with the same rule as ``dense_mask``.

    ``compile_mask`` (default: on CUDA) builds the block table with a compiled kernel
    instead of materialising the ``Q x K`` boolean grid (18k x 18k for a 500-candidate
    request); the first call per shape pays a compile.
    """
    from torch.nn.attention.flex_attention import create_block_mask

    b, k_len = segment_ids.shape
    # Kernels may evaluate mask_mod on the padded tail of the last block: keep indices
    # in range by padding the lookup table (the padded scores are discarded anyway).
    padded = -(-k_len // FLEX_BLOCK) * FLEX_BLOCK + FLEX_BLOCK
    seg = torch.nn.functional.pad(segment_ids, (0, padded - k_len), value=PAD_SEGMENT - 1)

    def mask_mod(bi, hi, qi, ki):
        qa = qi + q_offset
        sk = seg[bi, ki]
        return (ki <= qa) & ((sk == PREFIX_SEGMENT) | (sk == seg[bi, qa]))

    if compile_mask is None:
        compile_mask = segment_ids.is_cuda
    return create_block_mask(mask_mod, B=b, H=None, Q_LEN=k_len - q_offset, KV_LEN=k_len,
                             device=segment_ids.device, _compile=compile_mask)


def attention_mask_for(model, segment_ids: torch.Tensor, q_offset: int = 0):
    """The mask in the form the model's attention implementation expects."""
    impl = model.config._attn_implementation
    if impl == "flex_attention":
        return flex_block_mask(segment_ids, q_offset)
    if impl in ("sdpa", "eager"):
        # Additive float mask, built once per pass: SDPA would otherwise turn a boolean
        # mask into this in every layer (8% of a CPU pass), and eager attention adds it.
        mask = dense_mask(segment_ids, q_offset)
        dtype = next(model.parameters()).dtype
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(
            ~mask, torch.finfo(dtype).min)
    raise ScoringError(
        f"multi-item scoring needs a custom attention mask, which attn_implementation={impl!r} "
        f"does not take: call model.set_attn_implementation('sdpa') (CPU) or "
        f"'flex_attention' (CUDA), or use ScoringEngine(attention='shared_prefix')"
    )


def shared_prefix_layout(model, pack: PackedSequence, device) -> SharedPrefixLayout | None:
    """The ``SharedPrefixLayout`` of one packed request (prefix length, candidate lengths)
    when ``model`` runs shared-prefix attention, else None (the other paths use masks)."""
    if model.config._attn_implementation != SHARED_PREFIX:
        return None
    prefix_len = int((pack.segment_ids == PREFIX_SEGMENT).sum())
    ends = np.asarray(pack.answer_index) + 1
    lengths = np.diff(np.concatenate([[prefix_len], ends]))
    return SharedPrefixLayout.from_lengths(prefix_len, lengths, device)


def check_sliding_window(model, max_position: int) -> None:
    """Our masks are full-causal; a model with an active sliding window would see more
    context here than in its own forward once positions exceed the window."""
    cfg = model.config
    window = getattr(cfg, "sliding_window", None)
    if getattr(cfg, "use_sliding_window", True) is False:
        window = None
    if window is not None and max_position >= window:
        raise ScoringError(
            f"{cfg.model_type} uses sliding-window attention (sliding_window={window}) and this "
            f"request reaches position {max_position}: multi-item masks do not implement "
            f"sliding windows; shorten the prompt below {window} tokens"
        )


def forward_margins(model, batch: PaddedBatch, head: LabelHead, past_key_values=None,
                    q_offset: int = 0, model_kwargs: dict | None = None,
                    layout: SharedPrefixLayout | None = None) -> torch.Tensor:
    """One forward pass; ``logit_yes - logit_no`` (fp32) at every answer position.

    With ``past_key_values`` (a cache of the first ``q_offset`` tokens), ``batch`` holds
    the whole sequence but only tokens from ``q_offset`` on are run. ``model_kwargs`` go
    to the body's forward (e.g. FlexAttention ``kernel_options``). ``layout`` (one row,
    shared-prefix attention) replaces the mask.
    """
    model_kwargs = dict(model_kwargs or {})
    if batch.input_ids.shape[0] == 1 and len(batch.answer_rows) == 1:
        mask = None  # one candidate, no padding: the rule is plain causal; let the kernel know
    elif model.config._attn_implementation == SHARED_PREFIX:
        if layout is None or batch.input_ids.shape[0] != 1:
            raise ScoringError("shared-prefix attention scores one request per pass and needs "
                               "its layout (multi_item.shared_prefix_layout)")
        mask = None
        model_kwargs["shared_prefix_layout"] = layout
    else:
        mask = attention_mask_for(model, batch.segment_ids, q_offset)
    inputs = dict(
        input_ids=batch.input_ids[:, q_offset:],
        position_ids=batch.position_ids[:, q_offset:],
        attention_mask=mask,
    )
    if past_key_values is not None:
        inputs.update(past_key_values=past_key_values, use_cache=True)
    else:
        inputs["use_cache"] = False
    inputs.update(model_kwargs)
    hidden = final_hidden_states(model, **inputs)
    picked = hidden[batch.answer_rows, batch.answer_cols - q_offset]
    return label_margins(picked, head)


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


def score_requests(
    model,
    requests: Sequence[tuple[Sequence[int], Sequence[Sequence[int]]]],
    head: LabelHead,
    pad_id: int,
    max_tokens_per_pass: int | None = None,
    reuse_prefix_cache: bool = True,
    candidate_tokens_per_pass: int | None = None,
    model_kwargs: dict | None = None,
) -> list[torch.Tensor]:
    """Score many ``(prefix_ids, candidate_ids)`` requests; one fp32 margin tensor each.

    * A request that fits the budget is one packed sequence; such sequences from different
      requests share a padded batch while ``batch_size x longest <= max_tokens_per_pass``
      (longest first, so rows have similar lengths and little padding).
    * A request that does not fit is split into candidate chunks of at most
      ``max_tokens_per_pass`` tokens including the prefix. With ``reuse_prefix_cache``
      the prefix runs once and each chunk attends to its cached keys/values; otherwise
      every chunk re-runs the prefix. Either way the scores are those of one pass.
    * ``candidate_tokens_per_pass`` (with ``reuse_prefix_cache``) switches to *prefix-first*
      scoring for every request: the prefix runs alone (a plain causal pass, which the
      kernel computes as a triangle) and the candidates follow over its cache in chunks
      of at most this many tokens. With a dense mask the kernel computes every query-key
      pair, masked or not: one packed pass spends the full square on the prefix and
      ~(N I)^2 / 2 pairs on candidates that may not see each other. On CPU this mode
      scored 500 candidates 2.3x faster than one pass (see docs/benchmarks.md).
      FlexAttention skips masked blocks, so on CUDA leave it unset.
    * ``model_kwargs`` go to every forward of the body (e.g. ``kernel_options``).
    """
    device = _model_device(model)
    out: list[torch.Tensor | None] = [None] * len(requests)
    singles: list[tuple[int, PackedSequence]] = []
    cached: list[tuple[int, list[list[int]]]] = []
    prefix_first = reuse_prefix_cache and candidate_tokens_per_pass is not None
    chunk_cap = candidate_tokens_per_pass if prefix_first else None
    for r, (prefix, cands) in enumerate(requests):
        if len(cands) == 0:
            out[r] = torch.empty(0)
            continue
        lens = [len(c) for c in cands]
        check_sliding_window(model, len(prefix) + max(lens))
        chunks = plan_chunks(len(prefix), lens, max_tokens_per_pass, chunk_cap)
        # One candidate is one plain causal pass; a prefix pass first would only add a pass.
        if (prefix_first and len(cands) > 1) or (len(chunks) > 1 and reuse_prefix_cache):
            cached.append((r, chunks))
        else:
            singles += [(r, pack_candidates(prefix, cands, ch)) for ch in chunks]
            out[r] = torch.empty(len(cands))

    shared = model.config._attn_implementation == SHARED_PREFIX
    with torch.no_grad():
        singles.sort(key=lambda rp: -len(rp[1]))
        i = 0
        while i < len(singles):
            longest, j = len(singles[i][1]), i + 1
            while not shared and j < len(singles) and (
                    max_tokens_per_pass is None or (j - i + 1) * longest <= max_tokens_per_pass):
                j += 1
            group = singles[i:j]
            margins = forward_margins(model, collate([p for _, p in group], pad_id, device),
                                      head, model_kwargs=model_kwargs,
                                      layout=shared_prefix_layout(model, group[0][1], device)
                                      if shared else None).cpu()
            k = 0
            for r, pack in group:
                n = len(pack.candidates)
                out[r][pack.candidates] = margins[k:k + n]
                k += n
            i = j

        for r, chunks in cached:
            prefix, cands = requests[r]
            out[r] = _score_with_prefix_cache(model, prefix, cands, chunks, head, pad_id, device,
                                              model_kwargs)
    return out  # type: ignore[return-value]


def _score_with_prefix_cache(model, prefix, cands, chunks, head, pad_id, device,
                             model_kwargs: dict | None = None) -> torch.Tensor:
    """Run the prefix once, then each chunk of candidates against a copy of its KV cache.

    Runs eagerly even when the layers are compiled (``ScoringEngine(compile=True)``): a
    cache makes every layer's graph depend on its own ``layer_idx``, one recompile per
    layer, which would exhaust dynamo's recompile limit and leave the layers eager anyway.
    """
    with torch.compiler.set_stance("force_eager"):
        return _prefix_cache_passes(model, prefix, cands, chunks, head, pad_id, device,
                                    model_kwargs)


def _prefix_cache_passes(model, prefix, cands, chunks, head, pad_id, device, model_kwargs
                         ) -> torch.Tensor:
    p = len(prefix)
    prefix_ids = torch.tensor([list(prefix)], dtype=torch.long, device=device)
    body_out = decoder_body(model)(input_ids=prefix_ids, use_cache=True, **(model_kwargs or {}))
    prefix_cache = body_out.past_key_values
    result = torch.empty(len(cands))
    for chunk in chunks:
        pack = pack_candidates(prefix, cands, chunk)
        batch = collate([pack], pad_id, device)
        # The forward appends the chunk's keys/values to the cache: give it a copy so the
        # next chunk starts from the prefix alone (copying P tokens of K/V is cheap next to
        # recomputing them; crop() changed meaning across transformers 5.x releases).
        cache = copy.deepcopy(prefix_cache)
        result[chunk] = forward_margins(model, batch, head, cache, q_offset=p,
                                        model_kwargs=model_kwargs,
                                        layout=shared_prefix_layout(model, pack, device)).cpu()
    return result


def score_multi_item(model, prefix_ids: Sequence[int], candidate_ids: Sequence[Sequence[int]],
                     head: LabelHead, pad_id: int = 0, max_tokens_per_pass: int | None = None,
                     reuse_prefix_cache: bool = True,
                     candidate_tokens_per_pass: int | None = None) -> torch.Tensor:
    """Probabilities P(yes) for each candidate of one request (fp32, CPU tensor)."""
    (margins,) = score_requests(model, [(prefix_ids, candidate_ids)], head, pad_id,
                                max_tokens_per_pass, reuse_prefix_cache,
                                candidate_tokens_per_pass)
    return torch.sigmoid(margins)


def score_per_item_reference(model, prefix_ids: Sequence[int],
                             candidate_ids: Sequence[Sequence[int]], yes_id: int, no_id: int
                             ) -> torch.Tensor:
    """The plain implementation: ``prefix + candidate`` alone through the model's own
    forward (its own causal mask, default positions, full LM head), softmax over the two
    label logits at the last token. One forward per candidate; slow by design.

    Always eager SDPA: a kernel independent of the FlexAttention path it checks (and
    compiled fp32 FlexAttention fails in inductor once shapes turn dynamic)."""
    device = _model_device(model)
    impl = model.config._attn_implementation
    probs = []
    try:
        if impl != "sdpa":
            model.set_attn_implementation("sdpa")
        with torch.compiler.set_stance("force_eager"):
            for cand in candidate_ids:
                ids = torch.tensor([list(prefix_ids) + list(cand)], dtype=torch.long,
                                   device=device)
                probs.append(full_forward_probabilities(model, ids, yes_id, no_id).cpu())
    finally:
        if model.config._attn_implementation != impl:
            model.set_attn_implementation(impl)
    return torch.cat(probs) if probs else torch.empty(0)
