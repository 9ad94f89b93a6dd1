"""Model factory: build a dense or MoE decoder from a typed config, or load a local checkpoint.

Why Hugging Face classes (``LlamaForCausalLM`` / ``MixtralForCausalLM``) rather than our
own module: every later stage (FSDP2 training, vLLM serving, export) already knows them,
and a checkpoint we save loads anywhere. The built-in shapes are presets: ``tiny`` and
``tiny-moe`` run the embedded default on a laptop CPU; ``0.6b`` is the Qwen3-0.6B shape
(28 layers, hidden 1024, 16/8 heads of dim 128) for a GPU.

Weights are saved and loaded as safetensors only: a pickle ``.bin`` can run code when
loaded, and a ranking model is exactly the kind of file passed between people.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from components.config_base import StrictModel

DTYPES = ("float32", "bfloat16", "float16")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


class ModelLoadError(ValueError):
    """A model directory that cannot be loaded safely; the message says why and the fix."""


class ModelConfig(StrictModel):
    """Shape of a built-in decoder, or a local checkpoint to load instead.

    ``family: dense`` builds a Llama (RMSNorm, RoPE, SwiGLU, grouped-query attention);
    ``family: moe`` builds a Mixtral (the same, with a top-k routed SwiGLU per layer).
    With ``checkpoint`` set, the shape fields are ignored and the directory's own
    ``config.json`` decides (any Llama/Qwen/Mistral/Mixtral-kind causal LM).
    """

    family: Literal["dense", "moe"] = "dense"
    hidden_size: int = Field(256, ge=8)
    num_layers: int = Field(4, ge=1)
    num_heads: int = Field(8, ge=1)
    num_kv_heads: int = Field(4, ge=1, description="Grouped-query attention: heads sharing K/V.")
    head_dim: int | None = Field(
        None, ge=4, description="Default hidden_size // num_heads; Qwen3 shapes set it apart."
    )
    intermediate_size: int = Field(768, ge=8, description="SwiGLU width (per expert for moe).")
    num_experts: int = Field(4, ge=1, description="moe only: routed experts per layer.")
    experts_per_token: int = Field(2, ge=1, description="moe only: top-k experts per token.")
    max_position_embeddings: int = Field(8192, ge=16)
    rope_theta: float = Field(10_000.0, gt=0)
    rms_norm_eps: float = Field(1e-6, gt=0)
    tie_word_embeddings: bool = Field(
        True, description="Share the input embedding with the LM head (small models: most "
        "parameters are the vocabulary)."
    )
    initializer_range: float = Field(0.02, gt=0, description="Std of the random init.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="Parameter dtype; scores are always computed in fp32."
    )
    checkpoint: Path | None = Field(
        None, description="A local Hugging Face causal-LM directory (safetensors) to load "
        "instead of building from the shape fields."
    )

    @model_validator(mode="after")
    def _consistent(self) -> ModelConfig:
        if self.checkpoint is not None:
            return self
        if self.head_dim is None and self.hidden_size % self.num_heads:
            raise ValueError(
                f"model.hidden_size ({self.hidden_size}) is not divisible by model.num_heads "
                f"({self.num_heads}): change one of them or set model.head_dim"
            )
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"model.num_heads ({self.num_heads}) must be a multiple of model.num_kv_heads "
                f"({self.num_kv_heads}): grouped-query attention shares K/V across equal groups"
            )
        if self.family == "moe" and self.experts_per_token > self.num_experts:
            raise ValueError(
                f"model.experts_per_token ({self.experts_per_token}) exceeds model.num_experts "
                f"({self.num_experts}): lower experts_per_token or add experts"
            )
        return self


#: Built-in shapes. ``tiny``: ~4M parameters with a 4k vocabulary; ``tiny-moe``: the same
#: attention with 4 experts (top-2) per layer, ~6M; ``0.6b``: Qwen3-0.6B-shaped (~600M
#: with a 151,936-token vocabulary), for the GPU.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(family="dense", hidden_size=256, num_layers=4, num_heads=8, num_kv_heads=4,
                 intermediate_size=768),
    "tiny-moe": dict(family="moe", hidden_size=256, num_layers=4, num_heads=8, num_kv_heads=4,
                     intermediate_size=384, num_experts=4, experts_per_token=2),
    "0.6b": dict(family="dense", hidden_size=1024, num_layers=28, num_heads=16, num_kv_heads=8,
                 head_dim=128, intermediate_size=3072, max_position_embeddings=40_960,
                 rope_theta=1_000_000.0, tie_word_embeddings=True, dtype="bfloat16"),
}


def preset(name: str, **overrides: Any) -> ModelConfig:
    """A built-in shape by name, with field overrides (``preset("tiny", num_layers=2)``)."""
    if name not in PRESETS:
        raise ValueError(f"model preset {name!r} is unknown: use one of {sorted(PRESETS)}")
    return ModelConfig(**{**PRESETS[name], **overrides})


def torch_dtype(name: str):
    """``"bfloat16"`` -> ``torch.bfloat16`` (the config keeps strings so it hashes as YAML)."""
    import torch

    if name not in DTYPES:
        raise ValueError(f"dtype {name!r} is not supported: use one of {DTYPES}")
    return getattr(torch, name)


def hf_config(cfg: ModelConfig, vocab_size: int, pad_token_id: int | None = None):
    """The transformers config for a built-in shape (no weights allocated)."""
    from transformers import LlamaConfig, MixtralConfig

    common = dict(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.head_dim,
        max_position_embeddings=cfg.max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        rms_norm_eps=cfg.rms_norm_eps,
        tie_word_embeddings=cfg.tie_word_embeddings,
        initializer_range=cfg.initializer_range,
        pad_token_id=pad_token_id,
        # Our tokenizers add no BOS/EOS; the defaults (1, 2) would point at real tokens.
        bos_token_id=None,
        eos_token_id=None,
        dtype=cfg.dtype,
    )
    if cfg.family == "dense":
        return LlamaConfig(**common)
    return MixtralConfig(
        **common,
        num_local_experts=cfg.num_experts,
        num_experts_per_tok=cfg.experts_per_token,
        sliding_window=None,  # multi-item masks are full-causal; see multi_item.py
    )


def build_model(cfg: ModelConfig, vocab_size: int, pad_token_id: int | None = None):
    """A randomly initialised model of ``cfg``'s shape, or ``cfg.checkpoint`` loaded.

    ``vocab_size`` is the tokenizer's length. For a checkpoint it is checked against the
    embedding size (a tokenizer larger than the embedding would index out of range).
    Attention is SDPA; the scoring engine switches to FlexAttention on CUDA.
    """
    from transformers import AutoModelForCausalLM

    if cfg.checkpoint is not None:
        model = _load_weights(Path(cfg.checkpoint), torch_dtype(cfg.dtype))
        emb = model.get_input_embeddings().weight.shape[0]
        if vocab_size > emb:
            raise ModelLoadError(
                f"tokenizer has {vocab_size} tokens but checkpoint {cfg.checkpoint} embeds only "
                f"{emb}: use the checkpoint's own tokenizer or resize_token_embeddings first"
            )
        return model
    config = hf_config(cfg, vocab_size, pad_token_id)
    config._attn_implementation = "sdpa"
    model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype(cfg.dtype))
    model.eval()
    return model.to(torch_dtype(cfg.dtype))


def count_parameters(model) -> int:
    """Unique parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def save_model(model, tokenizer, out_dir: Path) -> Path:
    """Write weights (safetensors), config and tokenizer to ``out_dir``; return it.

    transformers 5 writes safetensors only (its ``safe_serialization`` flag is gone); we
    check the result anyway, because a pickle in a model directory is what ``load_model``
    refuses.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    if not any(out_dir.glob("*.safetensors")):
        raise ModelLoadError(f"save_pretrained wrote no .safetensors file to {out_dir}")
    return out_dir


def check_safetensors_dir(path: Path) -> None:
    """Raise unless ``path`` is a model directory whose weights are safetensors."""
    path = Path(path)
    if not path.is_dir():
        raise ModelLoadError(f"model path {path} is not a directory: give a local Hugging "
                             f"Face model directory (config.json + *.safetensors)")
    if not (path / "config.json").exists():
        raise ModelLoadError(f"{path} has no config.json: not a Hugging Face model directory")
    if any(path.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise ModelLoadError(
            f"{path} holds only pickle weights {pickles}: rankbrew loads safetensors only "
            f"(unpickling can run arbitrary code). Convert once in a trusted environment: "
            f"AutoModelForCausalLM.from_pretrained(dir, use_safetensors=False)"
            f".save_pretrained(new_dir)"
        )
    raise ModelLoadError(f"{path} has no *.safetensors weights")


def _load_weights(path: Path, dtype):
    from transformers import AutoModelForCausalLM

    check_safetensors_dir(path)
    model = AutoModelForCausalLM.from_pretrained(
        str(path), dtype=dtype, use_safetensors=True, attn_implementation="sdpa",
        local_files_only=True,
    )
    model.eval()
    return model


def load_model(model_dir: Path, dtype: str | None = None):
    """``(model, tokenizer)`` from a directory written by ``save_model`` (or any local HF
    causal LM with a tokenizer). ``dtype`` defaults to the one saved in config.json.

    Errors: not a directory, no config.json, pickle-only weights, or answer tokens that
    are not single tokens in the tokenizer.
    """
    from components.promptify.tokenizer import load_tokenizer

    model_dir = Path(model_dir)
    check_safetensors_dir(model_dir)
    if dtype is None:
        saved = json.loads((model_dir / "config.json").read_text()).get("dtype")
        saved = saved or json.loads((model_dir / "config.json").read_text()).get("torch_dtype")
        dtype = saved if saved in DTYPES else "float32"
    model = _load_weights(model_dir, torch_dtype(dtype))
    tokenizer = load_tokenizer(model_dir)
    return model, tokenizer
