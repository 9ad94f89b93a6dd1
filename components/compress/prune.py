"""Structured pruning of a Llama-shaped decoder: fewer layers, KV groups and MLP channels.

The result is a genuinely smaller model: a new ``config.json`` (fewer
``num_hidden_layers``, ``num_key_value_heads`` / ``num_attention_heads``,
``intermediate_size``) and sliced weights, loadable with
``AutoModelForCausalLM.from_pretrained`` like any other checkpoint. Nothing is masked.

Importance is measured on calibration prompts (training prompts, never validation or
test), one forward per batch with hooks:

* **Depth** (ShortGPT's "block influence"): ``1 - cos(h_in, h_out)`` of each decoder
  layer over real tokens. A layer that barely turns its input is the cheapest to drop.
* **MLP channels** (Wanda-style): ``mean |a_j| * ||W_down[:, j]||`` where ``a`` is the
  input of ``down_proj`` (the gated activation): how much channel ``j`` adds to the
  residual stream.
* **KV groups**: per query head ``mean ||o_h|| * ||W_o[:, h]||`` (``o`` the input of
  ``o_proj``), summed over the query heads that share a KV head. A group is the unit
  that can go without breaking grouped-query attention.

Every layer keeps the same number of channels and groups (the HF config has one
``intermediate_size`` and one head count); the channels kept differ per layer. Why own
code and not a library: torch's ``nn.utils.prune`` only masks; LLM-Pruner / Minitron's
scripts are tied to their own training stacks and CUDA. What is pruned here is a few
slices of a transformers model, tested against the masked equivalent.

MoE experts are not pruned here (the embedded default is dense); ``prune_to_shape``
refuses a Mixtral with a clear error.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


class PruneError(ValueError):
    """A pruning request the model cannot satisfy; the message says the fix."""


@dataclass
class Importance:
    """Importance scores of one model on calibration batches (higher = keep)."""

    layers: np.ndarray  # [L]: 1 - cos(h_in, h_out)
    mlp: np.ndarray  # [L, intermediate]
    kv_groups: np.ndarray  # [L, num_kv_heads]
    tokens: int


def _layers(lm: nn.Module) -> nn.ModuleList:
    body = lm.get_decoder() if hasattr(lm, "get_decoder") else lm.model
    return body.layers


def _check_dense(lm: nn.Module) -> None:
    cfg = lm.config
    if getattr(cfg, "num_local_experts", None):
        raise PruneError("pruning a mixture-of-experts model (experts) is not supported: "
                         "prune a dense (Llama-shaped) student")
    layer = _layers(lm)[0]
    for name in ("self_attn", "mlp"):
        if not hasattr(layer, name):
            raise PruneError(f"{type(layer).__name__} has no {name}: only Llama-shaped "
                             f"decoders (q/k/v/o, gate/up/down) are supported")


def _head_dim(cfg) -> int:
    return int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)


@torch.no_grad()
def measure_importance(lm: nn.Module, batches: Iterable, forward) -> Importance:
    """Importance of layers, MLP channels and KV groups of ``lm``.

    ``batches``: calibration inputs; ``forward(lm, batch) -> mask``: runs the model on one
    batch and returns the ``[B, T]`` bool mask of real tokens (so the hooks, which run
    inside that forward, count real tokens only; the mask is read after the forward)."""
    _check_dense(lm)
    cfg = lm.config
    layers = _layers(lm)
    n_layers, hd = len(layers), _head_dim(cfg)
    n_heads, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
    cos_sum = np.zeros(n_layers)
    mlp_sum = np.zeros((n_layers, cfg.intermediate_size))
    head_sum = np.zeros((n_layers, n_heads))
    store: dict = {}
    hooks = []

    def layer_pre(i):
        def hook(mod, args, kwargs):
            store[("in", i)] = (args[0] if args else kwargs["hidden_states"]).detach()
        return hook

    def layer_post(i):
        def hook(mod, args, kwargs, out):
            h = out[0] if isinstance(out, tuple) else out
            store[("out", i)] = h.detach()
        return hook

    def capture(key, i):
        def hook(mod, args):
            store[(key, i)] = args[0].detach()
        return hook

    for i, layer in enumerate(layers):
        hooks.append(layer.register_forward_pre_hook(layer_pre(i), with_kwargs=True))
        hooks.append(layer.register_forward_hook(layer_post(i), with_kwargs=True))
        hooks.append(layer.mlp.down_proj.register_forward_pre_hook(capture("mlp", i)))
        hooks.append(layer.self_attn.o_proj.register_forward_pre_hook(capture("attn", i)))
    tokens = 0
    was_training = lm.training
    lm.eval()
    try:
        for batch in batches:
            store.clear()
            mask = forward(lm, batch).reshape(-1).bool()
            n = int(mask.sum())
            if n == 0:
                continue
            tokens += n
            for i in range(n_layers):
                h_in = store[("in", i)].reshape(-1, cfg.hidden_size)[mask].float()
                h_out = store[("out", i)].reshape(-1, cfg.hidden_size)[mask].float()
                cos_sum[i] += float(nn.functional.cosine_similarity(h_in, h_out, dim=-1).sum())
                a = store[("mlp", i)].reshape(-1, cfg.intermediate_size)[mask].float()
                mlp_sum[i] += a.abs().sum(0).cpu().numpy()
                o = store[("attn", i)].reshape(-1, n_heads, hd)[mask].float()
                head_sum[i] += o.norm(dim=-1).sum(0).cpu().numpy()
    finally:
        for h in hooks:
            h.remove()
        lm.train(was_training)
    if tokens == 0:
        raise PruneError("the calibration batches hold no real tokens: give training prompts")
    w_down = np.stack([layer.mlp.down_proj.weight.float().norm(dim=0).cpu().numpy()
                       for layer in layers])
    w_o = np.stack([layer.self_attn.o_proj.weight.float().reshape(cfg.hidden_size, n_heads, hd)
                    .norm(dim=(0, 2)).cpu().numpy() for layer in layers])
    heads = head_sum / tokens * w_o
    groups = heads.reshape(n_layers, n_kv, n_heads // n_kv).sum(-1)
    return Importance(layers=1.0 - cos_sum / tokens, mlp=mlp_sum / tokens * w_down,
                      kv_groups=groups, tokens=tokens)


def _fresh(lm: nn.Module, **changes) -> nn.Module:
    """An empty model of ``lm``'s class with config fields changed (weights copied later)."""
    cfg = lm.config.__class__.from_dict({**lm.config.to_dict(), **changes})
    cfg._attn_implementation = lm.config._attn_implementation
    new = type(lm)(cfg)
    return new.to(next(lm.parameters()).dtype).eval()


def _load(new: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    if getattr(new.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    missing, unexpected = new.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and new.config.tie_word_embeddings)]
    if missing or unexpected:
        raise RuntimeError(f"pruned weights do not fit the pruned shape: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]} (a bug)")
    return new


@torch.no_grad()
def drop_layers(lm: nn.Module, keep: Sequence[int]) -> nn.Module:
    """A new model with only the decoder layers ``keep`` (in their original order)."""
    _check_dense(lm)
    n = len(_layers(lm))
    keep = sorted(set(int(k) for k in keep))
    if not keep or keep[0] < 0 or keep[-1] >= n:
        raise PruneError(f"keep layers {keep}: give 1..{n} indices in [0, {n})")
    state = {}
    for k, v in lm.state_dict().items():
        if ".layers." in k:
            prefix, rest = k.split(".layers.", 1)
            idx, tail = rest.split(".", 1)
            if int(idx) not in keep:
                continue
            k = f"{prefix}.layers.{keep.index(int(idx))}.{tail}"
        state[k] = v.clone()
    return _load(_fresh(lm, num_hidden_layers=len(keep)), state)


@torch.no_grad()
def prune_width(lm: nn.Module, mlp_keep: Sequence[Sequence[int]] | None = None,
                kv_keep: Sequence[Sequence[int]] | None = None) -> nn.Module:
    """A new model keeping, in each layer ``i``, the MLP channels ``mlp_keep[i]`` and the
    KV groups ``kv_keep[i]`` (with their query heads). Every layer must keep the same
    number of each (one shape per config)."""
    _check_dense(lm)
    cfg = lm.config
    layers = _layers(lm)
    n_layers, hd = len(layers), _head_dim(cfg)
    n_heads, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
    rep = n_heads // n_kv
    mlp_keep = [sorted(map(int, x)) for x in (mlp_keep or [range(cfg.intermediate_size)] * n_layers)]
    kv_keep = [sorted(map(int, x)) for x in (kv_keep or [range(n_kv)] * n_layers)]
    for name, keep, size in (("mlp_keep", mlp_keep, cfg.intermediate_size), ("kv_keep", kv_keep, n_kv)):
        if len(keep) != n_layers or len({len(k) for k in keep}) != 1:
            raise PruneError(f"{name}: one list per layer ({n_layers}), all of the same length")
        if not keep[0] or any(k[0] < 0 or k[-1] >= size or len(set(k)) != len(k) for k in keep):
            raise PruneError(f"{name}: distinct indices in [0, {size}), at least one per layer")
    state = {k: v.clone() for k, v in lm.state_dict().items() if ".layers." not in k}
    prefix = next(k for k in lm.state_dict() if ".layers." in k).split(".layers.")[0]
    for i, layer in enumerate(layers):
        p = f"{prefix}.layers.{i}."
        ch = torch.tensor(mlp_keep[i])
        groups = kv_keep[i]
        q_heads = torch.tensor([g * rep + r for g in groups for r in range(rep)])
        q_rows = (q_heads[:, None] * hd + torch.arange(hd)).reshape(-1)
        kv_rows = (torch.tensor(groups)[:, None] * hd + torch.arange(hd)).reshape(-1)
        attn, mlp = layer.self_attn, layer.mlp
        state[p + "self_attn.q_proj.weight"] = attn.q_proj.weight[q_rows].clone()
        state[p + "self_attn.k_proj.weight"] = attn.k_proj.weight[kv_rows].clone()
        state[p + "self_attn.v_proj.weight"] = attn.v_proj.weight[kv_rows].clone()
        state[p + "self_attn.o_proj.weight"] = attn.o_proj.weight[:, q_rows].clone()
        for proj, rows in (("q_proj", q_rows), ("k_proj", kv_rows), ("v_proj", kv_rows)):
            bias = getattr(getattr(attn, proj), "bias", None)
            if bias is not None:
                state[p + f"self_attn.{proj}.bias"] = bias[rows].clone()
        if getattr(attn.o_proj, "bias", None) is not None:
            state[p + "self_attn.o_proj.bias"] = attn.o_proj.bias.clone()
        state[p + "mlp.gate_proj.weight"] = mlp.gate_proj.weight[ch].clone()
        state[p + "mlp.up_proj.weight"] = mlp.up_proj.weight[ch].clone()
        state[p + "mlp.down_proj.weight"] = mlp.down_proj.weight[:, ch].clone()
        for k, v in layer.state_dict().items():  # norms (and anything else unsliced)
            if not k.startswith(("self_attn.", "mlp.")):
                state[p + k] = v.clone()
    new = _fresh(lm, intermediate_size=len(mlp_keep[0]), num_key_value_heads=len(kv_keep[0]),
                 num_attention_heads=len(kv_keep[0]) * rep, head_dim=hd)
    return _load(new, state)


def top_k(scores: np.ndarray, k: int) -> list[int]:
    """Indices of the ``k`` largest scores, ascending (ties: the lower index)."""
    order = np.argsort(-np.asarray(scores), kind="stable")[:k]
    return sorted(int(i) for i in order)


def prune_to_shape(lm: nn.Module, batches: Sequence, forward, num_layers: int | None = None,
                   intermediate_size: int | None = None, num_kv_heads: int | None = None
                   ) -> tuple[nn.Module, dict]:
    """Prune ``lm`` to the given shape by importance (``None``: keep that dimension).

    Width first (channels and groups ranked in the full model), then depth, with layer
    importance measured again on the width-pruned model (what is dropped is judged in
    the model it is dropped from). Returns the new model and a report of what was kept."""
    _check_dense(lm)
    cfg = lm.config
    report: dict = {}
    for name, want, have in (("num_layers", num_layers, cfg.num_hidden_layers),
                             ("intermediate_size", intermediate_size, cfg.intermediate_size),
                             ("num_kv_heads", num_kv_heads, cfg.num_key_value_heads)):
        if want is not None and not 1 <= want <= have:
            raise PruneError(f"prune {name}={want}: must be between 1 and the model's {have}")
    model = lm
    if (intermediate_size or cfg.intermediate_size) < cfg.intermediate_size or \
            (num_kv_heads or cfg.num_key_value_heads) < cfg.num_key_value_heads:
        imp = measure_importance(model, batches, forward)
        mlp_keep = [top_k(s, intermediate_size or cfg.intermediate_size) for s in imp.mlp]
        kv_keep = [top_k(s, num_kv_heads or cfg.num_key_value_heads) for s in imp.kv_groups]
        model = prune_width(model, mlp_keep, kv_keep)
        report.update(kv_groups_kept=kv_keep, mlp_channels_kept=int(len(mlp_keep[0])),
                      calibration_tokens=imp.tokens)
    if num_layers is not None and num_layers < cfg.num_hidden_layers:
        imp = measure_importance(model, batches, forward)
        keep = top_k(imp.layers, num_layers)
        report.update(layer_importance=[round(float(x), 5) for x in imp.layers],
                      layers_kept=keep, calibration_tokens=imp.tokens)
        model = drop_layers(model, keep)
    return model, report


def non_embedding_parameters(lm: nn.Module) -> int:
    """Parameters outside the token embedding and the LM head (the ones pruning and the
    student shapes change; the issue's "1/4 of the teacher" is counted on these)."""
    skip = {id(lm.get_input_embeddings().weight), id(lm.get_output_embeddings().weight)}
    return sum(p.numel() for p in {id(p): p for p in lm.parameters()}.values() if id(p) not in skip)
