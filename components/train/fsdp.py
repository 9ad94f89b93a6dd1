"""FSDP2 (``torch.distributed.fsdp.fully_shard``) for the decoder, on CPU or GPU.

Why FSDP2 and not Ray's ``prepare_model(parallel_strategy="fsdp")``: the latter raises
"FSDP is only available with GPU-enabled training" on CPU, while ``fully_shard`` works
with the gloo backend, so the same code is tested here on 2 CPU workers and runs on GPUs
with NCCL.

How: every decoder layer becomes its own FSDP unit (its parameters are all-gathered just
before the layer runs and freed after), then the root module (the ``RankingLM`` wrapper:
embedding, final norm, LM head) is sharded too. The optimizer must be created *after*
sharding, over the sharded (DTensor) parameters. Mixed precision (bf16 compute, fp32
gradient reduction) is applied on CUDA only: CPU bf16 matmuls are slow and gloo does
not reduce bf16.

State dicts go through ``torch.distributed.checkpoint.state_dict``: the same calls work
for a sharded and a plain module, so checkpoints written by 2 workers load in 1 process
and the other way round.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)


def decoder_layers(lm: nn.Module) -> list[nn.Module]:
    """The repeated transformer blocks of a HF causal LM (``lm.model.layers``)."""
    body = lm.get_decoder() if hasattr(lm, "get_decoder") else getattr(lm, "model", None)
    layers = getattr(body, "layers", None)
    if layers is None:
        raise ValueError(f"cannot find the decoder layers of {type(lm).__name__}: expected "
                         f"lm.model.layers (Llama/Qwen/Mistral/Mixtral-kind models)")
    return list(layers)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank_and_world() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` without a process group."""
    if is_distributed():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def mixed_precision_policy(device: torch.device):
    """bf16 parameters/compute with fp32 gradient reduction on CUDA; ``None`` elsewhere."""
    if device.type != "cuda":
        return None
    from torch.distributed.fsdp import MixedPrecisionPolicy

    return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)


def shard_model(module: nn.Module, lm: nn.Module | None = None,
                device: torch.device | None = None, reshard_after_forward: bool = True
                ) -> nn.Module:
    """Apply ``fully_shard`` to each decoder layer of ``lm`` (default ``module.lm``), then
    to ``module``. Needs an initialized process group. Returns ``module`` (now an
    ``FSDPModule``); build the optimizer afterwards."""
    from torch.distributed.fsdp import fully_shard

    if not is_distributed():
        raise RuntimeError("shard_model needs torch.distributed initialized (Ray Train does it "
                           "in each worker; torchrun too): run with world size > 1 or skip "
                           "sharding")
    lm = lm if lm is not None else module.lm
    device = device or torch.device("cpu")
    kwargs: dict[str, Any] = {"reshard_after_forward": reshard_after_forward}
    mp = mixed_precision_policy(device)
    if mp is not None:
        kwargs["mp_policy"] = mp
    for layer in decoder_layers(lm):
        fully_shard(layer, **kwargs)
    fully_shard(module, **kwargs)
    return module


def is_sharded(module: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def full_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """The full (unsharded) model state on CPU. A collective: call it on every rank; rank
    0 gets the tensors, other ranks an empty dict."""
    return get_model_state_dict(
        module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_state_dict(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a full state dict into a plain or sharded module (every rank passes the full
    state; each keeps its own shard)."""
    set_model_state_dict(module, state, options=StateDictOptions(full_state_dict=True,
                                                                 strict=True))


def load_full_state_dict_from_rank0(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """:func:`load_full_state_dict` where only rank 0 holds the full state (as
    :func:`full_state_dict` leaves it; other ranks pass ``{}``): rank 0 broadcasts it. A
    collective when distributed."""
    if not (dist.is_available() and dist.is_initialized()):
        load_full_state_dict(module, state)
        return
    set_model_state_dict(module, state, options=StateDictOptions(
        full_state_dict=True, broadcast_from_rank0=True, strict=True))


def full_optimizer_state(module: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer state keyed by parameter name, unsharded on CPU (collective)."""
    return get_optimizer_state_dict(
        module, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_optimizer_state(module: nn.Module, optimizer: torch.optim.Optimizer,
                              state: dict) -> None:
    """Inverse of :func:`full_optimizer_state` (every rank passes the full state)."""
    set_optimizer_state_dict(module, optimizer, state,
                             options=StateDictOptions(full_state_dict=True))


def set_gradient_sync(module: nn.Module, enabled: bool) -> None:
    """Skip the gradient reduce-scatter on accumulation micro-batches (FSDP2 only)."""
    fn = getattr(module, "set_requires_gradient_sync", None)
    if fn is not None:
        fn(enabled)
