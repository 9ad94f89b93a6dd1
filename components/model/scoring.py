"""Label-token scoring: P(yes) / (P(yes) + P(no)) from the two label rows of the LM head.

Why only two rows: the answer is one of two tokens, and renormalising over them is
``softmax([l_yes, l_no])[0] = sigmoid(l_yes - l_no)``. Computing the full-vocabulary
logits at every position (what ``model(...)`` does) costs ``T x hidden x vocab`` FLOPs
and memory: for 18,000 packed tokens and a 151k vocabulary that is 2.7 G logits (11 GB
in fp32) to read two numbers per candidate. We run the decoder body, keep the hidden
states at the answer positions, and multiply by a ``[2, hidden]`` slice of the head.

Why fp32: in bf16 two logits of ~20 differ in the third digit; their difference is the
score. The slice and the gathered hidden states are cast to fp32 whatever the model's
dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

#: Architectures whose body output (``model.get_decoder()(...).last_hidden_state``) is
#: already final-normed and whose LM head is a plain linear layer. Others are checked
#: once against a full forward (``verify_label_head``) before use.
KNOWN_MODEL_TYPES = frozenset({
    "llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe",
})


class ScoringError(RuntimeError):
    """A model or input the label-token scorer cannot handle; the message says the fix."""


@dataclass(frozen=True)
class LabelHead:
    """The yes/no rows of the LM head, in fp32, plus what the model does after the matmul."""

    weight: torch.Tensor  # [2, hidden], fp32: row 0 = yes, row 1 = no
    bias: torch.Tensor | None  # [2], fp32
    softcap: float | None  # final logit soft-capping (Gemma-style), if the model has it
    logit_scale: float  # multiplier on logits (Cohere-style), 1.0 for Llama-kind models
    yes_id: int
    no_id: int


def label_head(model, yes_id: int, no_id: int) -> LabelHead:
    """Slice the LM head to the two answer rows (a copy: training the model later does
    not change an engine built before, and the slice lives in fp32)."""
    head = model.get_output_embeddings()
    if head is None or not hasattr(head, "weight"):
        raise ScoringError(f"{type(model).__name__} has no output embedding (LM head): "
                           f"load it as a causal LM (AutoModelForCausalLM)")
    vocab = head.weight.shape[0]
    for name, tid in (("yes", yes_id), ("no", no_id)):
        if not 0 <= tid < vocab:
            raise ScoringError(f"{name} token id {tid} is outside the LM head (vocab {vocab}): "
                               f"the tokenizer does not match the model")
    with torch.no_grad():
        full = head.weight.detach()
        if type(full) is not torch.Tensor and hasattr(full, "dequantize"):
            full = full.dequantize()  # a quantized head (torchao): the values it computes with
        weight = full[[yes_id, no_id]].float().clone()
        bias = getattr(head, "bias", None)
        bias = None if bias is None else bias[[yes_id, no_id]].detach().float().clone()
    cfg = model.config
    softcap = getattr(cfg, "final_logit_softcapping", None)
    scale = float(getattr(cfg, "logit_scale", None) or 1.0)
    return LabelHead(weight, bias, softcap, scale, yes_id, no_id)


def label_logits(hidden: torch.Tensor, head: LabelHead) -> torch.Tensor:
    """``[n, hidden]`` final hidden states -> ``[n, 2]`` fp32 (yes, no) logits."""
    w = head.weight.to(hidden.device)
    logits = hidden.float() @ w.T
    if head.bias is not None:
        logits = logits + head.bias.to(hidden.device)
    if head.logit_scale != 1.0:
        logits = logits * head.logit_scale
    if head.softcap is not None:
        logits = head.softcap * torch.tanh(logits / head.softcap)
    return logits


def label_margins(hidden: torch.Tensor, head: LabelHead) -> torch.Tensor:
    """``logit_yes - logit_no`` in fp32: the score before the sigmoid (does not saturate,
    so ranking by it breaks no ties that fp32 probabilities would round to 1.0)."""
    logits = label_logits(hidden, head)
    return logits[:, 0] - logits[:, 1]


def label_probabilities(hidden: torch.Tensor, head: LabelHead) -> torch.Tensor:
    """P(yes) / (P(yes) + P(no)) = softmax over the two label logits = sigmoid(margin)."""
    return torch.sigmoid(label_margins(hidden, head))


def decoder_body(model):
    """The transformer body without the LM head (``LlamaModel`` inside ``LlamaForCausalLM``)."""
    body = model.get_decoder() if hasattr(model, "get_decoder") else None
    if body is None:
        body = getattr(model, "model", None)
    if body is None:
        raise ScoringError(f"cannot find the decoder body of {type(model).__name__}: "
                           f"expected .get_decoder() or .model")
    return body


def final_hidden_states(model, **inputs) -> torch.Tensor:
    """Run the body (no LM head) and return its last hidden states ``[B, T, hidden]``.

    HF bodies of the Llama/Qwen/Mistral/Mixtral kind apply the final RMSNorm themselves,
    so ``last_hidden_state`` is what the LM head multiplies.
    """
    out = decoder_body(model)(**inputs)
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


def full_forward_probabilities(model, input_ids: torch.Tensor, yes_id: int, no_id: int
                               ) -> torch.Tensor:
    """Reference: the model's own full forward, softmax over the two label logits at the
    last position of each row of ``input_ids`` (no padding). Used by tests and by
    ``verify_label_head``; slower (full-vocabulary head) but independent of our slicing."""
    with torch.no_grad():
        logits = model(input_ids=input_ids, logits_to_keep=1, use_cache=False).logits[:, -1]
    pair = logits[:, [yes_id, no_id]].float()
    return torch.softmax(pair, dim=-1)[:, 0]


def verify_label_head(model, head: LabelHead, atol: float = 1e-4) -> None:
    """Check the body+slice path against a full forward on a short random sequence.

    Run once for architectures outside ``KNOWN_MODEL_TYPES``: a model that scales or
    post-processes logits in a way we do not know about fails here, not silently.
    """
    device = next(model.parameters()).device
    vocab = model.get_output_embeddings().weight.shape[0]
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (1, 16), generator=gen).to(device)
    with torch.no_grad():
        hidden = final_hidden_states(model, input_ids=ids)[:, -1]
        ours = label_probabilities(hidden, head)
    ref = full_forward_probabilities(model, ids, head.yes_id, head.no_id)
    tol = atol if next(model.parameters()).dtype == torch.float32 else 2e-2
    if not torch.allclose(ours.cpu(), ref.cpu(), atol=tol):
        raise ScoringError(
            f"{model.config.model_type}: label-head scores ({ours.item():.6f}) differ from the "
            f"full forward ({ref.item():.6f}); this architecture post-processes its hidden "
            f"states or logits in a way components/model/scoring.py does not handle"
        )
