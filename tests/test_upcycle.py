"""Sparse upcycling (dense Llama -> Mixtral): the upcycled model computes exactly what the
dense one did, its experts drift apart and its loss goes down under training, and it
survives a safetensors round trip. Bad inputs are refused with the reason.

Models are 2-layer, 64-wide; ``initializer_range=0.1`` spreads the logits so an
expert-mapping mistake (gate and up swapped, a transposed down projection) cannot hide
in near-zero activations.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from components.model import (
    ModelConfig,
    UpcycleError,
    build_model,
    expert_spread,
    preset,
    upcycle_to_moe,
    upcycled_model_config,
)
from components.model.factory import load_model, save_model
from components.promptify.tokenizer import answer_token_ids, load_tokenizer, train_bpe_tokenizer
from components.train.config import TrainConfig
from components.train.data import tokenize_prompts
from components.train.loop import train
from tests.test_train import synthetic_rows

VOCAB = 512
SMALL = dict(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128,
             initializer_range=0.1, max_position_embeddings=1024)


def dense_model(seed: int = 0, vocab: int = VOCAB, **overrides):
    torch.manual_seed(seed)
    return build_model(preset("tiny", **{**SMALL, **overrides}), vocab)


@pytest.fixture(scope="module")
def sft_data(tmp_path_factory):
    """A tiny promptified corpus (tests/test_train.py's synthetic task) and its tokenizer."""
    rows = synthetic_rows(96, "train", 0)
    df = pl.DataFrame(rows, schema_overrides={"labels": pl.List(pl.Int8)})
    texts = [r["prefix"] for r in rows] + [c for r in rows for c in r["candidates"]]
    tok = load_tokenizer(train_bpe_tokenizer(texts, 400, tmp_path_factory.mktemp("tok")))
    yes, no = answer_token_ids(tok)
    data = tokenize_prompts(df, tok, yes, no, 256, "multi_item")
    return {"tok": tok, "yes": yes, "no": no, "train": data}


def sft_cfg(**kw) -> TrainConfig:
    base = dict(stage="sft", max_steps=8, batch_size=4, lr=3e-3, warmup_steps=2,
                checkpoint_every=0, log_every=1, seed=0, lm_weight=1.0)
    return TrainConfig(**{**base, **kw})


# ------------------------------------------------------------------------ exactness


@pytest.mark.parametrize("tied", [True, False])
def test_upcycled_logits_equal_dense(tied):
    """Every expert is the dense MLP and Mixtral renormalises its top-k weights to sum to
    1, so the MoE layer returns MLP(x): same logits, any routing."""
    from transformers import MixtralForCausalLM

    dense = dense_model(tie_word_embeddings=tied)
    moe = upcycle_to_moe(dense, num_experts=4, experts_per_token=2)
    assert isinstance(moe, MixtralForCausalLM)
    assert moe.config.tie_word_embeddings == tied
    assert (moe.lm_head.weight is moe.model.embed_tokens.weight) == tied
    x = torch.randint(0, VOCAB, (3, 80), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, got = dense(x).logits, moe(x).logits
    assert want.abs().max() > 1.0  # logits spread: a mapping error would show
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # the weights are copies, not views: training the MoE leaves the dense model alone
    emb = moe.model.embed_tokens.weight
    assert emb.data_ptr() != dense.model.embed_tokens.weight.data_ptr()
    assert expert_spread(moe) == [0.0, 0.0]


def test_router_is_small_random_and_uses_every_expert():
    moe = upcycle_to_moe(dense_model(), num_experts=4, experts_per_token=2, router_std=1e-3)
    for layer in moe.model.layers:
        w = layer.mlp.gate.weight
        assert 0 < w.std() < 2e-3
    # near-uniform router probabilities, yet distinct tokens pick distinct experts
    h = torch.randn(500, 64)
    logits, _, chosen = moe.model.layers[0].mlp.gate(h)
    probs = torch.softmax(logits, -1)
    assert (probs - 0.25).abs().max() < 0.01
    assert set(chosen.flatten().tolist()) == {0, 1, 2, 3}
    # the seed decides the router, nothing else does
    again = upcycle_to_moe(dense_model(), 4, 2, seed=0).model.layers[0].mlp.gate.weight
    other = upcycle_to_moe(dense_model(), 4, 2, seed=1).model.layers[0].mlp.gate.weight
    assert torch.equal(again, moe.model.layers[0].mlp.gate.weight)
    assert not torch.equal(other, again)


def test_upcycled_config_is_the_from_scratch_shape():
    cfg = preset("tiny", **SMALL)
    moe_cfg = upcycled_model_config(cfg, num_experts=4, experts_per_token=2)
    assert moe_cfg.family == "moe" and moe_cfg.intermediate_size == cfg.intermediate_size
    scratch = build_model(moe_cfg, VOCAB)
    up = upcycle_to_moe(build_model(cfg, VOCAB), 4, 2)
    assert {k: v.shape for k, v in scratch.state_dict().items()} == \
        {k: v.shape for k, v in up.state_dict().items()}


# ------------------------------------------------------------------------ training


def test_experts_diverge_and_loss_goes_down(sft_data, tmp_path):
    d = sft_data
    dense = dense_model(vocab=len(d["tok"]), initializer_range=0.02)
    dense = train(dense, d["train"], sft_cfg(max_steps=6), tmp_path / "dense", yes_id=d["yes"],
                  no_id=d["no"], pad_id=d["tok"].pad_token_id).module.lm
    moe = upcycle_to_moe(dense, num_experts=4, experts_per_token=2)
    router0 = [layer.mlp.gate.weight.detach().clone() for layer in moe.model.layers]

    # the MoE starts where the dense model is: same loss on the same first batch
    probe = sft_cfg(max_steps=1, warmup_steps=0, seed=1)
    dense_first = train(dense, d["train"], probe, tmp_path / "probe", yes_id=d["yes"],
                        no_id=d["no"], pad_id=d["tok"].pad_token_id).history[0]["loss"]
    res = train(moe, d["train"], sft_cfg(seed=1), tmp_path / "moe", yes_id=d["yes"],
                no_id=d["no"], pad_id=d["tok"].pad_token_id)
    losses = [h["loss"] for h in res.history]
    assert losses[0] == pytest.approx(dense_first, rel=1e-5)
    assert np.mean(losses[-3:]) < np.mean(losses[:3])

    spread = expert_spread(moe)
    assert all(s > 1e-3 for s in spread), spread
    # experts got different gradients (tokens routed apart), so the router got one too
    for layer, r0 in zip(moe.model.layers, router0, strict=True):
        assert not torch.equal(layer.mlp.gate.weight.detach(), r0)


def test_router_load_balancing_loss_is_logged_and_penalises_a_collapsed_router(sft_data, tmp_path):
    from components.train.data import collate
    from components.train.losses import RankingLM, router_aux_loss, stage_counts, stage_loss

    d = sft_data
    moe = upcycle_to_moe(dense_model(vocab=len(d["tok"])), num_experts=4, experts_per_token=2)
    module = RankingLM(moe, d["yes"], d["no"])
    batch = collate(d["train"].prompts[:4], d["tok"].pad_token_id)
    even = stage_loss(module, batch, "sft", lm_weight=1.0, router_aux_weight=1.0)
    assert set(even) == {"sft", "lm", "router_aux"} == set(stage_counts(batch, "sft", 1.0, True))
    # a near-uniform router is balanced: num_experts * sum_e f_e P_e ~ top-k = 2
    assert float(even["router_aux"].total.detach()) == pytest.approx(2.0, abs=0.1)
    # a router sending every real token to experts 0 and 1 is penalised
    n_tok = batch.input_ids.numel()
    skew = torch.tensor([5.0, 4.0, 0.0, 0.0]).expand(n_tok, 4)
    out = {"router_logits": tuple(skew for _ in moe.model.layers)}
    collapsed = router_aux_loss(module, out, batch, 1.0)
    assert float(collapsed.total.detach()) > 1.5 * float(even["router_aux"].total.detach())
    # a dense model has no router: the weight is ignored
    dense = RankingLM(dense_model(vocab=len(d["tok"])), d["yes"], d["no"])
    assert "router_aux" not in stage_loss(dense, batch, "sft", router_aux_weight=1.0)
    # in training it is a logged term of the loss
    fresh = upcycle_to_moe(dense_model(vocab=len(d["tok"])), 4, 2)
    res = train(fresh, d["train"], sft_cfg(max_steps=3, router_aux_weight=0.01), tmp_path / "aux",
                yes_id=d["yes"], no_id=d["no"], pad_id=d["tok"].pad_token_id)
    assert all(np.isfinite(h["loss_router_aux"]) and h["loss_router_aux"] > 0
               for h in res.history)


# ------------------------------------------------------------------------ save / load


def test_upcycled_model_round_trips_in_safetensors(sft_data, tmp_path):
    tok = sft_data["tok"]
    moe = upcycle_to_moe(dense_model(vocab=len(tok)), 4, 2).eval()
    with torch.no_grad():  # make the experts distinct: a loader that copied expert 0 fails
        for layer in moe.model.layers:
            layer.mlp.experts.gate_up_proj.add_(0.05 * torch.randn_like(
                layer.mlp.experts.gate_up_proj))
            layer.mlp.experts.down_proj.add_(0.05 * torch.randn_like(
                layer.mlp.experts.down_proj))
    out = save_model(moe, tok, tmp_path / "moe")
    assert list(out.glob("*.safetensors")) and not list(out.glob("*.bin"))
    loaded, _ = load_model(out)
    assert type(loaded) is type(moe)
    assert loaded.config.num_local_experts == 4 and loaded.config.num_experts_per_tok == 2
    want, got = moe.state_dict(), loaded.state_dict()
    assert want.keys() == got.keys()
    for k in want:
        assert torch.equal(want[k], got[k]), k
    x = torch.randint(0, len(tok), (2, 40))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, moe(x).logits, atol=0, rtol=0)


# ------------------------------------------------------------------------ refusals


def test_refuses_bad_settings_and_non_llama_models():
    dense = dense_model()
    with pytest.raises(UpcycleError, match="router_std"):
        upcycle_to_moe(dense, 4, 2, router_std=0.0)
    with pytest.raises(UpcycleError, match="experts_per_token"):
        upcycle_to_moe(dense, 2, 3)
    with pytest.raises(UpcycleError, match="RankingLM"):
        upcycle_to_moe(torch.nn.Linear(2, 2), 4, 2)
    with pytest.raises(UpcycleError, match="family"):
        upcycled_model_config(preset("tiny-moe"), 4, 2)
    with pytest.raises(UpcycleError, match="checkpoint"):
        upcycled_model_config(ModelConfig(checkpoint="/models/x"), 4, 2)

    from transformers import Qwen3Config, Qwen3ForCausalLM

    qwen3 = Qwen3ForCausalLM(Qwen3Config(vocab_size=64, hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=2,
                                         num_key_value_heads=1, head_dim=16))
    with pytest.raises(UpcycleError, match="q_norm"):
        upcycle_to_moe(qwen3, 4, 2)
