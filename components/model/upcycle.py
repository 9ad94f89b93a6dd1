"""Sparse upcycling: a Mixture-of-Experts decoder initialised from a trained dense one.

Why: the teacher recipe grows model size before distilling down. Training a MoE from
random weights throws away what the dense model already learned; upcycling (Komatsuzaki
et al., 2022, "Sparse Upcycling") starts every expert as a copy of the dense MLP and
copies everything else, so the MoE begins exactly where the dense model is and only the
extra capacity is new.

The mapping, for a Llama-family ``dense`` (transformers 5.19 layouts)::

    dense layer i (Llama)            moe layer i (Mixtral), E experts
    mlp.gate_proj.weight [I, H] -+
    mlp.up_proj.weight   [I, H] -+-> mlp.experts.gate_up_proj [E, 2I, H]  (each: [gate; up])
    mlp.down_proj.weight [H, I] ---> mlp.experts.down_proj    [E, H, I]
    (new)                            mlp.gate.weight          [E, H] ~ N(0, router_std)
    everything else (embeddings, attention, norms, head): same name, copied

Mixtral stores its experts as fused 3-D parameters (``MixtralExperts``), gate rows
first (``gate, up = (x @ gate_up_proj[e].T).chunk(2)``), and its router renormalises the
top-k softmax weights to sum to 1. With identical experts the MoE layer is therefore
``sum_k w_k MLP(x) = MLP(x)``: the upcycled model's logits equal the dense model's (up to
float rounding; tested).

The router must start random, not zero: with all router logits equal, top-k breaks the
tie the same way for every token, the same k experts get identical gradients and stay
identical forever, and since the renormalised weights sum to 1 over identical experts
the router's own gradient is exactly zero. A small random router sends different tokens
to different experts, so the experts receive different gradients and drift apart; once
they differ, the router receives a gradient too.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from components.model.factory import ModelConfig

#: Per-layer tensors a Llama-family decoder layer has; anything else (biases, q/k norms)
#: has no place in a Mixtral layer and is refused rather than dropped.
_LAYER_KEYS = {
    "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
    "self_attn.o_proj.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight",
    "mlp.down_proj.weight", "input_layernorm.weight", "post_attention_layernorm.weight",
}
_TOP_KEYS = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}
_LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


class UpcycleError(ValueError):
    """A dense model or setting that cannot be upcycled; the message says why and the fix."""


def upcycled_model_config(dense: ModelConfig, num_experts: int, experts_per_token: int
                          ) -> ModelConfig:
    """The ``ModelConfig`` of the MoE that ``upcycle_to_moe`` makes from a model built
    with ``dense``: the same shape, ``family: moe``, each expert as wide as the dense MLP.

    Also the fair from-scratch baseline: ``build_model(upcycled_model_config(cfg, 4, 2),
    vocab)`` is a random MoE of exactly the upcycled model's shape."""
    if dense.family != "dense":
        raise UpcycleError(f"model.family is {dense.family!r}: upcycling starts from a dense "
                           f"model (family: dense)")
    if dense.checkpoint is not None:
        raise UpcycleError(f"model.checkpoint={dense.checkpoint} is set, so the shape fields "
                           f"are not the model's: upcycle the loaded model with "
                           f"upcycle_to_moe(model, ...) instead")
    _check_counts(num_experts, experts_per_token)
    return dense.model_copy(update={"family": "moe", "num_experts": num_experts,
                                    "experts_per_token": experts_per_token})


def upcycle_to_moe(dense: nn.Module, num_experts: int, experts_per_token: int,
                   router_std: float = 1e-3, seed: int = 0):
    """A ``MixtralForCausalLM`` whose every expert is a copy of ``dense``'s MLP.

    ``dense``: a Llama-family Hugging Face causal LM (``LlamaForCausalLM``, or a Mistral
    without biases or q/k norms): per layer q/k/v/o projections, a SwiGLU MLP
    (gate/up/down) and two RMSNorms. Embeddings, attention, norms and the LM head are
    copied (a tied head stays tied); the router of each layer is drawn from
    N(0, ``router_std``) with a generator seeded by ``seed``. The result has ``dense``'s
    dtype, device and train/eval mode, and no tensor shared with ``dense``.

    Errors (``UpcycleError``): experts_per_token outside [1, num_experts], router_std not
    positive, or a dense model with tensors a Mixtral layer has no place for (biases,
    q/k norms: Qwen2/Qwen3) or without the Llama layout.
    """
    from transformers import MixtralConfig, MixtralForCausalLM

    _check_counts(num_experts, experts_per_token)
    if not router_std > 0:
        raise UpcycleError(f"router_std={router_std}: must be > 0. A zero router routes every "
                           f"token to the same experts, which then stay identical and the "
                           f"router never gets a gradient; use a small value such as 1e-3")
    dc = getattr(dense, "config", None)
    if dc is None:
        raise UpcycleError(f"{type(dense).__name__} has no .config: pass the Hugging Face "
                           f"causal LM itself (e.g. TrainResult.module.lm, not the RankingLM)")
    weights = dense.state_dict()
    _check_llama_layout(weights, dc)

    ref = weights["model.embed_tokens.weight"]
    config = MixtralConfig(
        vocab_size=dc.vocab_size, hidden_size=dc.hidden_size,
        intermediate_size=dc.intermediate_size, num_hidden_layers=dc.num_hidden_layers,
        num_attention_heads=dc.num_attention_heads, num_key_value_heads=dc.num_key_value_heads,
        head_dim=getattr(dc, "head_dim", None), hidden_act=dc.hidden_act,
        max_position_embeddings=dc.max_position_embeddings,
        initializer_range=dc.initializer_range, rms_norm_eps=dc.rms_norm_eps,
        pad_token_id=dc.pad_token_id, bos_token_id=dc.bos_token_id,
        eos_token_id=dc.eos_token_id, tie_word_embeddings=dc.tie_word_embeddings,
        sliding_window=getattr(dc, "sliding_window", None),
        attention_dropout=getattr(dc, "attention_dropout", 0.0),
        rope_parameters=dict(dc.rope_parameters) if dc.rope_parameters else None,
        num_local_experts=num_experts, num_experts_per_tok=experts_per_token,
        dtype=ref.dtype,
    )
    config._attn_implementation = getattr(dc, "_attn_implementation", None) or "sdpa"
    moe = MixtralForCausalLM._from_config(config, dtype=ref.dtype).to(ref.device)

    gen = torch.Generator().manual_seed(seed)
    new: dict[str, torch.Tensor] = {}
    for key, t in weights.items():
        m = _LAYER_RE.match(key)
        if m is None or not m.group(2).startswith("mlp."):
            new[key] = t
            continue
        i, name = m.group(1), m.group(2)
        prefix = f"model.layers.{i}.mlp"
        if name == "mlp.gate_proj.weight":
            gate_up = torch.cat([t, weights[f"{prefix}.up_proj.weight"]], dim=0)
            new[f"{prefix}.experts.gate_up_proj"] = gate_up.unsqueeze(0).repeat(
                num_experts, 1, 1)
            router = torch.randn(num_experts, dc.hidden_size, generator=gen) * router_std
            new[f"{prefix}.gate.weight"] = router.to(dtype=t.dtype, device=t.device)
        elif name == "mlp.down_proj.weight":
            new[f"{prefix}.experts.down_proj"] = t.unsqueeze(0).repeat(num_experts, 1, 1)
    if dc.tie_word_embeddings:
        new.pop("lm_head.weight", None)  # the embedding; load_state_dict keeps the tie
    result = moe.load_state_dict(new, strict=False)
    missing = [k for k in result.missing_keys if not (dc.tie_word_embeddings
                                                      and k == "lm_head.weight")]
    if missing or result.unexpected_keys:
        raise UpcycleError(f"the Mixtral built from {type(dense).__name__} does not match its "
                           f"weights: missing {missing[:5]}, unexpected "
                           f"{result.unexpected_keys[:5]} (transformers layout changed?)")
    moe.train(dense.training)
    return moe


def expert_spread(moe: nn.Module) -> list[float]:
    """Per layer, how far the experts are apart: the mean over experts of
    ``||W_e - mean_e W|| / ||mean_e W||`` over the fused gate/up and down weights.
    0 right after upcycling; grows as training specialises the experts."""
    out = []
    for layer in moe.get_decoder().layers:
        experts = layer.mlp.experts
        w = torch.cat([experts.gate_up_proj.detach().flatten(1),
                       experts.down_proj.detach().flatten(1)], dim=1).float()
        mean = w.mean(0, keepdim=True)
        out.append(float(((w - mean).norm(dim=1) / mean.norm()).mean()))
    return out


def _check_counts(num_experts: int, experts_per_token: int) -> None:
    if num_experts < 1 or not 1 <= experts_per_token <= num_experts:
        raise UpcycleError(f"num_experts={num_experts}, experts_per_token={experts_per_token}: "
                           f"need 1 <= experts_per_token <= num_experts")


def _check_llama_layout(weights: dict[str, torch.Tensor], dc) -> None:
    """Refuse a dense model whose tensors do not all have a place in a Mixtral."""
    layers: dict[int, set[str]] = {}
    for key in weights:
        m = _LAYER_RE.match(key)
        if m:
            layers.setdefault(int(m.group(1)), set()).add(m.group(2))
        elif key not in _TOP_KEYS:
            raise UpcycleError(f"dense tensor {key!r} has no place in a Mixtral: upcycle a "
                               f"Llama-family model (LlamaForCausalLM)")
    if sorted(layers) != list(range(dc.num_hidden_layers)):
        raise UpcycleError(f"dense model has layers {sorted(layers)[:8]}..., config says "
                           f"{dc.num_hidden_layers}: not a Llama-layout decoder")
    for i, names in layers.items():
        extra, lacking = names - _LAYER_KEYS, _LAYER_KEYS - names
        if extra or lacking:
            raise UpcycleError(
                f"dense layer {i} has tensors {sorted(extra)} that a Mixtral layer lacks"
                f"{' and lacks ' + str(sorted(lacking)) if lacking else ''} (attention/MLP "
                f"biases or q/k norms, e.g. Qwen2/Qwen3): upcycling maps Llama-family "
                f"layers only")
