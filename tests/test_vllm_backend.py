"""The optional vLLM backend scores like the torch engine (needs `make setup-vllm`)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from components.serve.vllm_engine import vllm_available

pytestmark = pytest.mark.skipif(vllm_available() is not None, reason=str(vllm_available()))


def test_vllm_margins_and_probabilities_equal_the_torch_engine(tiny_run, tmp_path):
    import torch

    from components.model import build_model, preset, save_model
    from components.model.engine import ScoringEngine
    from components.promptify.tokenizer import load_tokenizer
    from components.serve.vllm_engine import VllmEngine

    _, run = tiny_run
    # the run's tokenizer and prompts; a model with head_dim 32 (vLLM's CPU attention has no
    # kernel for the tiny run's head_dim 16); random weights: equality, not quality
    tok = load_tokenizer(run.results["align"].path / "model")
    torch.manual_seed(0)
    model_dir = save_model(build_model(preset("tiny", hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1,
                                              intermediate_size=128, initializer_range=0.1), len(tok)),
                           tok, tmp_path / "m")
    ex = pl.read_parquet(run.results["promptify"].path / "examples").filter(pl.col("split") == "test").head(8)
    reqs = [(p, list(c)) for p, c in zip(ex["prefix"], ex["candidates"], strict=True)]
    torch_engine = ScoringEngine.from_pretrained(model_dir)
    vllm_engine = VllmEngine(model_dir)
    want_m = torch_engine.score_batch(reqs, margins=True)
    got_m = vllm_engine.score_batch(reqs, margins=True)
    assert [len(g) for g in got_m] == [len(c) for _, c in reqs]
    assert max(float(np.max(np.abs(g - w))) for g, w in zip(got_m, want_m, strict=True)) < 1e-3
    want_p, got_p = torch_engine.score_batch(reqs), vllm_engine.score_batch(reqs)
    assert max(float(np.max(np.abs(g - w))) for g, w in zip(got_p, want_p, strict=True)) < 1e-3
