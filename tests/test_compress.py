"""The "go small" components: KD loss, structured pruning, quantization with an fp32 head.

Pruned models are checked against the *masked* original (the same weights with the
pruned channels, heads or layers zeroed out of the residual stream): pruning must remove
exactly what the mask removes, nothing else.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from components.compress.kd import answer_kd_sum
from components.compress.prune import (
    PruneError,
    drop_layers,
    measure_importance,
    non_embedding_parameters,
    prune_to_shape,
    prune_width,
)
from components.model import ScoringEngine, build_model, preset, save_model
from components.promptify.tokenizer import load_tokenizer, train_bpe_tokenizer

VOCAB = 300
SHAPE = dict(hidden_size=32, num_layers=3, num_heads=4, num_kv_heads=2, intermediate_size=64,
             initializer_range=0.1, max_position_embeddings=512)


def tiny(seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return build_model(preset("tiny", **{**SHAPE, **overrides}), VOCAB)


def tokens(seed: int = 0, batch: int = 2, length: int = 24) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def logits(lm, ids):
    with torch.no_grad():
        return lm(input_ids=ids).logits


def plain_forward(lm, ids):
    lm(input_ids=ids)
    return torch.ones_like(ids, dtype=torch.bool)


# --- KD -------------------------------------------------------------------------------------


def test_kd_loss_against_hand_computed_value():
    # teacher (2, 0) -> p = (sigmoid(2), sigmoid(-2)); student (0, 0) -> (0.5, 0.5); T = 1
    p = 1 / (1 + math.exp(-2.0))
    by_hand = p * math.log(p / 0.5) + (1 - p) * math.log((1 - p) / 0.5)
    got = answer_kd_sum(torch.tensor([[0.0, 0.0]]), torch.tensor([[2.0, 0.0]]), 1.0)
    assert got.item() == pytest.approx(by_hand, rel=1e-6)
    assert by_hand == pytest.approx(0.327813, abs=1e-6)
    # T = 2: logits halved, then x T^2 = 4
    p2 = 1 / (1 + math.exp(-1.0))
    by_hand2 = 4 * (p2 * math.log(p2 / 0.5) + (1 - p2) * math.log((1 - p2) / 0.5))
    assert answer_kd_sum(torch.tensor([[0.0, 0.0]]), torch.tensor([[2.0, 0.0]]), 2.0).item() == \
        pytest.approx(by_hand2, rel=1e-6)


def test_kd_loss_is_zero_at_the_teacher_and_sums_over_answers():
    t = torch.tensor([[1.5, -0.5], [0.2, 0.9], [-3.0, 1.0]])
    assert answer_kd_sum(t.clone(), t, 2.0).item() == pytest.approx(0.0, abs=1e-7)
    s = torch.zeros(3, 2, requires_grad=True)
    total = answer_kd_sum(s, t, 1.0)
    parts = sum(answer_kd_sum(s[i:i + 1], t[i:i + 1], 1.0) for i in range(3))
    assert total.item() == pytest.approx(parts.item(), rel=1e-6)
    total.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    empty = answer_kd_sum(torch.zeros(0, 2, requires_grad=True), torch.zeros(0, 2), 1.0)
    assert empty.item() == 0.0 and empty.requires_grad
    with pytest.raises(ValueError, match="differ"):
        answer_kd_sum(torch.zeros(2, 2), torch.zeros(3, 2))


def test_distill_stage_loss_has_kd_and_sft_terms():
    from components.train.data import TokenizeStats, collate, layout_prompt
    from components.train.losses import RankingLM, stage_counts, stage_loss

    lm = tiny()
    yes, no = 7, 8
    prompt = layout_prompt(list(range(20, 40)), [[50, 51, 52], [60, 61]], [1, 0], yes, no, 256,
                           "multi_item", True, TokenizeStats())
    batch = collate([prompt], pad_id=0)
    student = RankingLM(lm, yes, no)
    teacher = RankingLM(tiny(seed=1), yes, no)
    with torch.no_grad():
        t_pair = teacher(batch, "scores")["pair_logits"]
    terms = stage_loss(student, batch, "distill", 1.0, 0.0, 0.0, t_pair, kd_weight=1.0,
                       kd_temperature=2.0)
    assert set(terms) == {"sft", "kd"} and terms["kd"].count == 2
    assert stage_counts(batch, "distill", kd_weight=1.0) == {"sft": 2, "kd": 2}
    alone = stage_loss(student, batch, "distill", 1.0, 0.0, 0.0, None, kd_weight=0.0)
    assert set(alone) == {"sft"}
    with pytest.raises(ValueError, match="teacher"):
        stage_loss(student, batch, "distill", 1.0, 0.0, 0.0, None, kd_weight=1.0)


# --- pruning --------------------------------------------------------------------------------


def masked_width(lm, mlp_keep, kv_keep):
    """The original with the pruned channels / heads zeroed where they enter the residual."""
    m = copy.deepcopy(lm)
    cfg = m.config
    hd = cfg.hidden_size // cfg.num_attention_heads
    rep = cfg.num_attention_heads // cfg.num_key_value_heads
    with torch.no_grad():
        for i, layer in enumerate(m.model.layers):
            drop = [j for j in range(cfg.intermediate_size) if j not in mlp_keep[i]]
            layer.mlp.down_proj.weight[:, drop] = 0
            for g in range(cfg.num_key_value_heads):
                if g not in kv_keep[i]:
                    for r in range(rep):
                        h = g * rep + r
                        layer.self_attn.o_proj.weight[:, h * hd:(h + 1) * hd] = 0
    return m


def test_width_pruned_model_equals_the_masked_original_and_loads(tmp_path):
    from transformers import AutoModelForCausalLM

    lm = tiny()
    mlp_keep = [[0, 3, 5, 9, 10, 20, 33, 63], [1, 2, 4, 8, 16, 32, 40, 50], [7, 8, 9, 10, 11, 12, 13, 14]]
    kv_keep = [[1], [0], [1]]
    pruned = prune_width(lm, mlp_keep, kv_keep)
    assert pruned.config.intermediate_size == 8
    assert pruned.config.num_key_value_heads == 1 and pruned.config.num_attention_heads == 2
    ids = tokens()
    np.testing.assert_allclose(logits(pruned, ids), logits(masked_width(lm, mlp_keep, kv_keep), ids),
                               atol=1e-5)
    save_dir = tmp_path / "pruned"
    pruned.save_pretrained(save_dir)
    back = AutoModelForCausalLM.from_pretrained(save_dir, dtype=torch.float32)
    layer = back.model.layers[0]
    assert tuple(layer.mlp.down_proj.weight.shape) == (32, 8)
    assert tuple(layer.self_attn.q_proj.weight.shape) == (16, 32)
    assert tuple(layer.self_attn.k_proj.weight.shape) == (8, 32)
    np.testing.assert_allclose(logits(back, ids), logits(pruned, ids), atol=1e-6)
    assert non_embedding_parameters(back) < non_embedding_parameters(lm)


def test_depth_pruned_model_equals_identity_layers_and_loads(tmp_path):
    from transformers import AutoModelForCausalLM

    lm = tiny()
    masked = copy.deepcopy(lm)
    with torch.no_grad():  # zero the layer's writes to the residual: the layer is the identity
        masked.model.layers[1].self_attn.o_proj.weight.zero_()
        masked.model.layers[1].mlp.down_proj.weight.zero_()
    pruned = drop_layers(lm, [0, 2])
    assert pruned.config.num_hidden_layers == 2
    ids = tokens(1)
    np.testing.assert_allclose(logits(pruned, ids), logits(masked, ids), atol=1e-5)
    pruned.save_pretrained(tmp_path / "d")
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "d", dtype=torch.float32)
    assert len(back.model.layers) == 2
    np.testing.assert_allclose(logits(back, ids), logits(pruned, ids), atol=1e-6)
    with pytest.raises(PruneError):
        drop_layers(lm, [5])


def test_importance_finds_the_layer_that_does_nothing_and_prunes_it():
    lm = tiny(seed=3)
    with torch.no_grad():
        lm.model.layers[2].self_attn.o_proj.weight.zero_()
        lm.model.layers[2].mlp.down_proj.weight.zero_()
        lm.model.layers[0].mlp.down_proj.weight[:, 5] = 0  # a dead channel
    batches = [tokens(s) for s in range(3)]
    imp = measure_importance(lm, batches, plain_forward)
    assert imp.layers[2] == pytest.approx(0.0, abs=1e-6)
    assert imp.layers[0] > 0.01 and imp.layers[1] > 0.01
    assert imp.mlp[0, 5] == 0.0 and imp.mlp[0].max() > 0
    small, report = prune_to_shape(lm, batches, plain_forward, num_layers=2, intermediate_size=32,
                                   num_kv_heads=1)
    assert report["layers_kept"] == [0, 1]
    assert small.config.num_hidden_layers == 2 and small.config.intermediate_size == 32
    assert small.config.num_key_value_heads == 1
    with pytest.raises(PruneError, match="num_layers"):
        prune_to_shape(lm, batches, plain_forward, num_layers=9)


def test_moe_models_are_refused():
    torch.manual_seed(0)
    moe = build_model(preset("tiny-moe", **SHAPE), VOCAB)
    with pytest.raises(PruneError, match="experts"):
        drop_layers(moe, [0])


# --- quantization ---------------------------------------------------------------------------

torchao = pytest.importorskip("torchao", reason="torchao is not installed (pip install torchao==0.18.0)")


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    texts = [f"Member {i} is a {['data', 'ml', 'web'][i % 3]} engineer in city {i % 11}. "
             f"Applied to job {i * 7}.\nCandidate job: analyst {i}\nAnswer: {'Yes' if i % 2 else 'No'}"
             for i in range(300)]
    return load_tokenizer(train_bpe_tokenizer(texts, 400, tmp_path_factory.mktemp("tok")))


PREFIX = "Member: data engineer in city 3. Applied to job 14.\nQuestion: will the member apply?"
CANDS = [f"\nCandidate job: analyst {i} in city {i % 11}\nAnswer:" for i in range(30)]


@pytest.mark.parametrize("method", ["int8_dynamic", "int8_weight_only"])
def test_int8_scores_close_to_fp32_and_head_stays_fp32_after_round_trip(tmp_path, tok, method):
    from components.compress.quantize import (
        QuantRecipe,
        head_is_fp32,
        quantized_linear_count,
        read_recipe,
        write_recipe,
    )

    torch.manual_seed(0)
    model = build_model(preset("tiny", hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                               intermediate_size=128, initializer_range=0.1), len(tok))
    d = save_model(model, tok, tmp_path / "m")
    fp32 = ScoringEngine.from_pretrained(d).score(PREFIX, CANDS, margins=True)
    recipe = QuantRecipe(method=method)
    write_recipe(d, recipe)
    assert read_recipe(d) == recipe
    eng = ScoringEngine.from_pretrained(d)  # quantized at load from the fp32 safetensors
    assert head_is_fp32(eng.model)
    assert quantized_linear_count(eng.model) == 2 * 7  # q k v o gate up down per layer
    assert eng.model.get_output_embeddings().weight.data_ptr() == \
        eng.model.get_input_embeddings().weight.data_ptr()  # the tie survives
    q = eng.score(PREFIX, CANDS, margins=True)
    # within tolerance in P(yes) (random weights: a harder case than a trained model's
    # larger margins), and the same order
    p_q, p_f = 1 / (1 + np.exp(-q)), 1 / (1 + np.exp(-fp32))
    assert np.abs(p_q - p_f).max() < 0.025
    assert np.corrcoef(q, fp32)[0, 1] > 0.95
    assert not np.allclose(q, fp32, atol=1e-7)  # it really is quantized
    # deterministic at load
    np.testing.assert_array_equal(ScoringEngine.from_pretrained(d).score(PREFIX, CANDS, margins=True), q)


def test_quantized_head_ablation_quantizes_the_head(tmp_path, tok):
    from components.compress.quantize import QuantRecipe, head_is_fp32, quantize_model

    torch.manual_seed(0)
    model = build_model(preset("tiny", hidden_size=64, num_layers=1, num_heads=4, num_kv_heads=2,
                               intermediate_size=128, initializer_range=0.1, tie_word_embeddings=False),
                        len(tok))
    quantize_model(model, QuantRecipe(method="int8_weight_only", head="quantized"))
    assert not head_is_fp32(model)
    eng = ScoringEngine(model, tok)  # label rows read from the dequantized int8 head
    assert eng.head.weight.dtype == torch.float32
    assert np.isfinite(eng.score(PREFIX, CANDS[:4])).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="FP8 needs a CUDA GPU (compute capability >= 8.9)")
def test_fp8_on_cuda(tmp_path, tok):
    from components.compress.quantize import QuantRecipe, head_is_fp32

    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("FP8 needs compute capability >= 8.9")
    torch.manual_seed(0)
    model = build_model(preset("tiny", hidden_size=128, num_layers=2, num_heads=4, num_kv_heads=2,
                               intermediate_size=256, initializer_range=0.1), len(tok))
    d = save_model(model, tok, tmp_path / "m")
    ref = ScoringEngine.from_pretrained(d, device="cuda").score(PREFIX, CANDS, margins=True)
    eng = ScoringEngine(*__import__("components.model.factory", fromlist=["load_model"]).load_model(d),
                        device="cuda", quantization=QuantRecipe(method="fp8_dynamic"))
    assert head_is_fp32(eng.model)
    q = eng.score(PREFIX, CANDS, margins=True)
    assert np.abs(q - ref).max() < 0.1 * np.abs(ref).max() + 1e-2


def test_fp8_refused_without_cuda():
    from components.compress.quantize import QuantizationError, torchao_config

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(QuantizationError, match="compute capability"):
        torchao_config("fp8_dynamic")


def test_gate_rejects_a_model_with_a_corrupted_layer(tok):
    """Labels = the parent's own ranking (parent AUC 1.0); a copy with one layer's MLP
    replaced by noise ranks differently and is refused, naming the AUC drop; the parent
    itself passes."""
    from components.compress.quantize import compression_gate
    from components.train.loop import roc_auc

    torch.manual_seed(0)
    parent = build_model(preset("tiny", hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                                intermediate_size=128, initializer_range=0.1), len(tok))
    corrupted = copy.deepcopy(parent)
    with torch.no_grad():
        w = corrupted.model.layers[1].mlp.down_proj.weight
        w.copy_(torch.randn_like(w) * 3 * w.std())
    s_parent = ScoringEngine(parent, tok).score(PREFIX, CANDS, margins=True)
    s_bad = ScoringEngine(corrupted, tok).score(PREFIX, CANDS, margins=True)
    labels = (s_parent > np.median(s_parent)).astype(int)
    ok = compression_gate(roc_auc(s_parent, labels), roc_auc(s_parent, labels), 0.01)
    assert ok.passed
    bad = compression_gate(roc_auc(s_parent, labels), roc_auc(s_bad, labels), 0.01)
    assert not bad.passed and "AUC dropped" in bad.reason and bad.auc_drop > 0.005
    miscal = compression_gate(0.8, 0.799, 0.2)
    assert not miscal.passed and "ECE" in miscal.reason
    assert not compression_gate(0.8, float("nan"), 0.01).passed
    # the floor does not change the verdict; the reason says when the sample cannot judge
    small = compression_gate(0.8, 0.8, 0.02, max_ece=0.03, ece_floor=0.03)
    assert small.passed and "too few candidates" in small.reason and "max_report_prompts" in small.reason
    enough = compression_gate(0.8, 0.8, 0.02, max_ece=0.03, ece_floor=0.012)
    assert enough.passed and "0.0120" in enough.reason and "too few" not in enough.reason
    assert not compression_gate(0.8, 0.8, 0.04, max_ece=0.03, ece_floor=0.03).passed


def test_compress_imports_without_ray_or_mlflow():
    """The GPU box and a notebook call these directly (ARCHITECTURE: components run without Ray)."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys; import components.compress.kd, components.compress.prune, "
            "components.compress.quantize, components.compress.students, components.compress.report, "
            "components.compress.measure; bad = [m for m in ('ray', 'mlflow') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


def test_redistillation_that_loses_to_its_pruned_start_is_flagged() -> None:
    from pipelines.compress_stages import REDISTILL_TOLERANCE, redistill_warning

    line = redistill_warning(0.789, 0.688, 0)
    assert line is not None and line.startswith("WARNING") and "0.789" in line and "0.688" in line
    assert "compress.chain.0.train.lr" in line
    assert redistill_warning(0.789, 0.789 - REDISTILL_TOLERANCE / 2, 1) is None  # within tolerance
    assert redistill_warning(0.70, 0.75, 1) is None         # distillation helped
    assert redistill_warning(None, 0.60, 1) is None         # random start: nothing to compare
    assert redistill_warning(0.70, float("nan"), 1) is None  # no validation number


def test_chain_table_ece_is_pooled_over_trained_candidates_with_its_floor():
    """The chain's ECE column pools trained-task candidates (the gate's definition): a
    calibrated model's per-task ECEs on a few hundred candidates each read high from noise
    alone, and held-out tasks stay out."""
    import polars as pl

    from components.compress.report import pooled_ece
    from components.evaluate.metrics import expected_calibration_error

    rng = np.random.default_rng(5)
    n = 12_000
    p = rng.beta(1, 7, n)
    y = (rng.random(n) < p).astype(np.int64)
    task = np.array([f"t{i % 24}" for i in range(n)])
    held = np.isin(task, ["t0", "t1"])
    frame = pl.DataFrame({"model": ["m"] * n, "prob": p, "label": y, "task_id": task,
                          "held_out": held})
    ece, floor = pooled_ece(frame, "m")
    assert ece == pytest.approx(expected_calibration_error(p[~held], y[~held]))
    per_task = np.mean([expected_calibration_error(p[task == t], y[task == t])
                        for t in np.unique(task[~held])])
    assert ece < 0.02 < per_task  # ~500 candidates a task: the per-task mean reads noise
    assert 0 < floor < 0.02 and ece < 3 * floor
    # a miscalibrated model (every P(yes) doubled) is seen, well past its floor
    bad, bad_floor = pooled_ece(frame.with_columns(pl.col("prob") * 2), "m")
    assert bad > 5 * bad_floor
    assert all(np.isnan(v) for v in pooled_ece(frame, "other"))
    assert all(np.isnan(v) for v in pooled_ece(frame.drop("prob"), "m"))
