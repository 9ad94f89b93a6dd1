"""Quantization with torchao, the LM head kept in fp32; a recipe stored beside the weights.

A quantized model directory is the unquantized student's ``save_pretrained`` directory
(safetensors, fp32) plus ``quantization.json`` (the recipe). Loading applies the recipe
with torchao's ``quantize_`` (deterministic: the same weights give the same int8 / FP8
tensors), so artifacts stay safetensors and nothing pickled is ever loaded, and the same
directory serves on CPU (int8) and, with an FP8 recipe, on CUDA.

The head stays fp32 (LinkedIn's finding for 360Brew: quantizing the LM head collapses
calibration): ``quantize_``'s filter skips ``lm_head``, and since the embedding is not a
``Linear`` a tied embedding stays fp32 too. ``head_is_fp32`` checks the loaded model
rather than trusting the filter. The scoring engine reads its two label rows from the
head in fp32 either way; with ``head: quantized`` (the ablation) those rows are the
dequantized int8 / FP8 values, so the ablation measures what a quantized head does to
the score.

Methods: ``int8_dynamic`` (``Int8DynamicActivationInt8WeightConfig``: int8 weights and
per-token int8 activations; CPU and CUDA), ``int8_weight_only`` (``Int8WeightOnlyConfig``),
``fp8_dynamic`` (``Float8DynamicActivationFloat8WeightConfig`` per row; CUDA with compute
capability >= 8.9 only).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import Field

from components.config_base import StrictModel

RECIPE_FILE = "quantization.json"
Method = Literal["int8_dynamic", "int8_weight_only", "fp8_dynamic"]


class QuantizationError(RuntimeError):
    """A recipe this machine or model cannot apply; the message says the fix."""


class QuantRecipe(StrictModel):
    """How a model directory is quantized at load."""

    method: Method = Field("int8_weight_only", description="int8_weight_only / int8_dynamic "
                           "(CPU or CUDA) or fp8_dynamic (CUDA, compute capability >= 8.9).")
    head: Literal["fp32", "quantized"] = Field(
        "fp32", description="fp32: lm_head is left out of quantize_ (the default and the "
        "served recipe); quantized: the head too (the calibration ablation only).")


def torchao_config(method: Method):
    """The torchao config object of ``method`` (imports torchao: optional dependency)."""
    try:
        import torchao.quantization as tq
    except ImportError as err:  # pragma: no cover - torchao is a runtime dependency
        raise QuantizationError("torchao is not installed: pip install 'torchao==0.18.0' "
                                "(it is in rankbrew's dependencies)") from err
    if method == "int8_dynamic":
        return tq.Int8DynamicActivationInt8WeightConfig()
    if method == "int8_weight_only":
        return tq.Int8WeightOnlyConfig()
    if method == "fp8_dynamic":
        import torch

        if not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9):
            raise QuantizationError("fp8_dynamic needs a CUDA GPU with compute capability "
                                    ">= 8.9 (H100/L4/4090): use int8_dynamic on this machine")
        from torchao.quantization import PerRow

        return tq.Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())
    raise QuantizationError(f"quantization method {method!r}: use one of {Method.__args__}")


def quantize_model(model, recipe: QuantRecipe):
    """Quantize ``model``'s linear layers in place (``lm_head`` kept fp32 unless the
    recipe says otherwise); returns the model. Put it on its device first (FP8 on CUDA)."""
    import torch
    from torch import nn
    from torchao.quantization import quantize_

    def keep(module: nn.Module, fqn: str) -> bool:
        if not isinstance(module, nn.Linear):
            return False
        return recipe.head == "quantized" or not fqn.endswith("lm_head")

    with torch.no_grad():
        quantize_(model, torchao_config(recipe.method), filter_fn=keep)
    if recipe.head == "fp32" and not head_is_fp32(model):
        raise QuantizationError("the LM head was quantized although the recipe keeps it fp32 "
                                "(a bug in the filter)")
    return model


def is_quantized_tensor(t) -> bool:
    """A torchao tensor subclass (int8 / FP8), not a plain dense tensor."""
    import torch

    return type(t) is not torch.Tensor and type(t) is not torch.nn.Parameter and \
        hasattr(t, "dequantize")


def head_is_fp32(model) -> bool:
    """The LM head's weight is a plain fp32 tensor (checked on the model, not assumed)."""
    import torch

    w = model.get_output_embeddings().weight
    data = w.data if isinstance(w, torch.nn.Parameter) else w
    return not is_quantized_tensor(data) and data.dtype == torch.float32


def quantized_linear_count(model) -> int:
    """How many linear layers carry a quantized weight."""
    from torch import nn

    return sum(1 for m in model.modules()
               if isinstance(m, nn.Linear) and is_quantized_tensor(m.weight.data))


def write_recipe(model_dir: Path, recipe: QuantRecipe) -> Path:
    path = Path(model_dir) / RECIPE_FILE
    path.write_text(json.dumps(recipe.model_dump(mode="json"), indent=1))
    return path


def read_recipe(model_dir: Path) -> QuantRecipe | None:
    """The directory's recipe, or ``None`` for an unquantized model."""
    path = Path(model_dir) / RECIPE_FILE
    if not path.exists():
        return None
    return QuantRecipe.model_validate_json(path.read_text())


def directory_bytes(model_dir: Path) -> int:
    """Bytes of the weights on disk (safetensors; a quantized directory stores fp32
    weights and quantizes at load, see ``weight_bytes`` for its in-memory size)."""
    return sum(p.stat().st_size for p in Path(model_dir).glob("*.safetensors"))


def weight_bytes(model) -> int:
    """In-memory bytes of ``model``'s unique weights (int8 / FP8 tensors at their packed
    size: the number a server's memory sees)."""
    total = 0
    seen = set()
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        data = p.data
        if is_quantized_tensor(data):
            inner = [getattr(data, n) for n in getattr(data, "tensor_data_names", [])
                     if getattr(data, n, None) is not None]
            total += sum(t.numel() * t.element_size() for t in inner) if inner else data.numel()
        else:
            total += data.numel() * data.element_size()
    return total


class GateDecision(StrictModel):
    """The quantization gate's verdict on a model against its unquantized parent."""

    passed: bool
    auc_drop: float
    ece: float
    reason: str


def compression_gate(parent_auc: float, child_auc: float, child_ece: float,
                     max_auc_drop: float = 0.005, max_ece: float = 0.03,
                     ece_floor: float = float("nan")) -> GateDecision:
    """Accept a compressed model only if its AUC (same prompts as the parent) fell at most
    ``max_auc_drop`` and its ECE is at most ``max_ece``; ``reason`` says which failed and
    by how much. A nan metric fails (nothing measured is not a pass).

    ``ece_floor`` (``metrics.ece_noise_floor`` of the same sample): the ECE a calibrated
    model would show there. It does not change the verdict; when it is above half of
    ``max_ece`` the reason says the sample is too small to judge calibration, and how to
    fix that."""
    import math

    drop = parent_auc - child_auc
    problems = []
    if math.isnan(drop) or drop > max_auc_drop:
        problems.append(f"AUC dropped {drop:+.4f} vs the parent ({parent_auc:.4f} -> {child_auc:.4f}; "
                        f"allowed {max_auc_drop})")
    if math.isnan(child_ece) or child_ece > max_ece:
        problems.append(f"ECE {child_ece:.4f} > {max_ece}")
    reason = "; ".join(problems) if problems else (
        f"AUC {parent_auc:.4f} -> {child_auc:.4f} (drop {drop:+.4f} <= {max_auc_drop}), "
        f"ECE {child_ece:.4f} <= {max_ece}")
    if not math.isnan(ece_floor):
        reason += f" (a calibrated model's ECE on this sample: {ece_floor:.4f}"
        reason += (f": too few candidates to judge {max_ece}; raise train.data.max_report_prompts)"
                   if ece_floor > max_ece / 2 else ")")
    return GateDecision(passed=not problems, auc_drop=drop, ece=child_ece, reason=reason)
