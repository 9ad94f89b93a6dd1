"""Model factory and multi-item scoring: exactness against per-item, isolation, chunking,
label-head scoring, safetensors round trip, checkpoint kinds, and the FlexAttention path.

Random-weight models use ``initializer_range=0.1`` so scores spread over (0.02, 0.96)
(at 0.02 they all sit near 0.5 and a wrong mask could hide in the noise) while fp32
rounding stays below 1e-6.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from components.model import (
    ModelConfig,
    ModelLoadError,
    ScoringEngine,
    ScoringError,
    build_model,
    count_parameters,
    label_head,
    label_probabilities,
    plan_chunks,
    preset,
    save_model,
    score_multi_item,
    score_per_item_reference,
    score_requests,
)
from components.model.factory import load_model
from components.model.multi_item import dense_mask, pack_candidates
from components.model.scoring import LabelHead, final_hidden_states, verify_label_head
from components.model.shared_prefix import SHARED_PREFIX
from components.promptify.tokenizer import load_tokenizer, train_bpe_tokenizer

VOCAB = 512
YES, NO = 7, 8
SMALL = dict(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128,
             initializer_range=0.1, max_position_embeddings=4096)
EXACT = 1e-5


def small_model(family: str, seed: int = 0, vocab: int = VOCAB, **overrides):
    torch.manual_seed(seed)
    name = "tiny" if family == "dense" else "tiny-moe"
    return build_model(preset(name, **{**SMALL, **overrides}), vocab)


@pytest.fixture(scope="module", params=["dense", "moe"])
def model(request):
    return small_model(request.param)


def random_request(n: int, prefix_len: int = 120, seed: int = 0):
    """A prefix and ``n`` candidates of mixed lengths (1..24 tokens) as raw token ids."""
    g = torch.Generator().manual_seed(seed)
    prefix = torch.randint(0, VOCAB, (prefix_len,), generator=g).tolist()
    lens = torch.randint(1, 25, (n,), generator=g).tolist()
    return prefix, [torch.randint(0, VOCAB, (k,), generator=g).tolist() for k in lens]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    texts = [f"Member {i} is a {['data', 'ml', 'web'][i % 3]} engineer in city {i % 11}. "
             f"Applied to job {i * 7}. Saved post {i % 5}.\nCandidate job: analyst {i}\n"
             f"Answer: {'Yes' if i % 2 else 'No'}" for i in range(400)]
    return load_tokenizer(train_bpe_tokenizer(texts, 700, tmp_path_factory.mktemp("tok")))


PREFIX_TEXT = ("Predict whether the member will apply to the candidate job.\n"
               "Member: data engineer in city 3.\nHistory: applied to job 14; saved post 2; "
               "applied to job 91.\nQuestion: Will the member apply to this job?")


def candidate_texts(n: int) -> list[str]:
    return [f"\nCandidate job: {['analyst', 'ml engineer', 'web lead'][i % 3]} {i}"
            f"{' in city ' + str(i % 11) if i % 2 else ''}\nAnswer:" for i in range(n)]


# --- exactness of the core function --------------------------------------------------------


@pytest.mark.parametrize("n", [1, 7, 64])
def test_multi_item_equals_per_item(model, n):
    prefix, cands = random_request(n, seed=n)
    head = label_head(model, YES, NO)
    multi = score_multi_item(model, prefix, cands, head)
    ref = score_per_item_reference(model, prefix, cands, YES, NO)
    assert multi.shape == (n,)
    torch.testing.assert_close(multi, ref, atol=EXACT, rtol=0)
    if n > 1:  # a mask bug could hide behind scores that are all the same
        assert float(ref.std()) > 0.05


def test_candidate_isolation(model):
    prefix, cands = random_request(12, seed=3)
    head = label_head(model, YES, NO)
    base = score_multi_item(model, prefix, cands, head)
    changed = [list(c) for c in cands]
    changed[5] = [(t + 1) % VOCAB for t in changed[5]] + [11, 12, 13]  # other text, longer
    after = score_multi_item(model, prefix, changed, head)
    others = [i for i in range(12) if i != 5]
    torch.testing.assert_close(after[others], base[others], atol=1e-6, rtol=0)
    assert abs(float(after[5] - base[5])) > 1e-4


def test_mask_and_positions():
    pack = pack_candidates([1, 2, 3], [[4, 5], [6]])
    assert pack.segment_ids.tolist() == [0, 0, 0, 1, 1, 2]
    assert pack.position_ids.tolist() == [0, 1, 2, 3, 4, 3]  # candidate 2 restarts at P
    assert pack.answer_index.tolist() == [4, 5]
    mask = dense_mask(torch.from_numpy(pack.segment_ids)[None])[0, 0]
    assert mask[5].tolist() == [True, True, True, False, False, True]  # sees prefix + itself
    assert mask[4].tolist() == [True, True, True, True, True, False]
    assert mask[1].tolist() == [True, True, False, False, False, False]  # prefix is causal
    cached = dense_mask(torch.from_numpy(pack.segment_ids)[None], q_offset=3)[0, 0]
    assert torch.equal(cached, mask[3:])


# --- shared-prefix attention (no mask: flash call + triangles, merged by log-sum-exp) -------


@pytest.mark.parametrize("lens", [[5, 5, 5], [3, 7, 1, 4]], ids=["uniform", "mixed"])
@pytest.mark.parametrize("cached", [False, True], ids=["one-pass", "cached-prefix"])
def test_shared_prefix_attention_equals_masked_attention(lens, cached):
    from components.model.shared_prefix import (
        SharedPrefixLayout,
        math_attention_with_lse,
        shared_prefix_attention,
    )

    p = 9
    pack = pack_candidates(list(range(p)), [[1] * k for k in lens])
    g = torch.Generator().manual_seed(len(lens))
    t = len(pack)
    q, k, v = (torch.randn(2, h, t, 8, generator=g) for h in (4, 2, 2))  # GQA 4/2
    ref, _ = math_attention_with_lse(q, k, v, 0.3,
                                     mask=dense_mask(torch.from_numpy(pack.segment_ids)[None]))
    layout = SharedPrefixLayout.from_lengths(p, lens)
    assert (layout.cand_len is not None) == (len(set(lens)) == 1)
    start = p if cached else 0
    out, _ = shared_prefix_attention(None, q[:, :, start:], k, v, None, scaling=0.3,
                                     shared_prefix_layout=layout)
    torch.testing.assert_close(out.transpose(1, 2), ref[:, :, start:], atol=1e-6, rtol=0)
    with pytest.raises(ScoringError, match="cache"):  # a cache holding part of the prefix
        shared_prefix_attention(None, q[:, :, 4:], k, v, None, scaling=0.3,
                                shared_prefix_layout=layout)


@pytest.mark.parametrize("n", [1, 7, 64])
def test_shared_prefix_scores_equal_per_item(model, n):
    from components.model.shared_prefix import register

    prefix, cands = random_request(n, seed=n)
    same_len = [c[:1] * 6 for c in cands]  # the uniform-length fast path
    head = label_head(model, YES, NO)
    refs = [score_per_item_reference(model, prefix, c, YES, NO) for c in (cands, same_len)]
    try:
        model.set_attn_implementation(register())
        for c, ref in zip((cands, same_len), refs, strict=True):
            torch.testing.assert_close(score_multi_item(model, prefix, c, head), ref,
                                       atol=EXACT, rtol=0)
            chunked = score_multi_item(model, prefix, c, head,
                                       max_tokens_per_pass=len(prefix) + 60)
            torch.testing.assert_close(chunked, ref, atol=EXACT, rtol=0)
    finally:
        model.set_attn_implementation("sdpa")
    if n > 1:
        assert float(refs[0].std()) > 0.05


def test_shared_prefix_model_still_runs_causal_forwards(tokenizer):
    """Without a layout the registered attention is plain causal SDPA (prefix passes of a
    KV cache, ordinary forwards of the same model object)."""
    eng = ScoringEngine(small_model("dense", seed=2, vocab=len(tokenizer)), tokenizer,
                        device="cpu", attention="shared_prefix")
    assert eng.candidate_tokens_per_pass is None  # no masked pairs to save
    ids = torch.tensor([eng.tokenize(PREFIX_TEXT, [])[0]])
    with torch.no_grad():
        logits = eng.model(input_ids=ids).logits
        eng.model.set_attn_implementation("sdpa")
        torch.testing.assert_close(eng.model(input_ids=ids).logits, logits, atol=1e-5, rtol=0)


# --- chunking and batching -----------------------------------------------------------------


def test_plan_chunks_budget():
    lens = [5, 9, 3, 8, 8, 1]
    chunks = plan_chunks(10, lens, 25)
    assert [i for c in chunks for i in c] == list(range(6))
    assert all(10 + sum(lens[i] for i in c) <= 25 for c in chunks)
    with pytest.raises(ScoringError, match="max_tokens_per_pass"):
        plan_chunks(20, lens, 25)


@pytest.mark.parametrize(("reuse_cache", "cand_tokens"), [(True, None), (False, None), (True, 1)],
                         ids=["cached-prefix", "recomputed-prefix", "one-candidate-per-pass"])
def test_chunked_equals_single_pass(model, reuse_cache, cand_tokens):
    prefix, cands = random_request(40, seed=5)
    head = label_head(model, YES, NO)
    whole = score_multi_item(model, prefix, cands, head)
    chunked = score_multi_item(model, prefix, cands, head, max_tokens_per_pass=len(prefix) + 60,
                               reuse_prefix_cache=reuse_cache, candidate_tokens_per_pass=cand_tokens)
    torch.testing.assert_close(chunked, whole, atol=EXACT, rtol=0)


@pytest.mark.parametrize(("attention", "cand_tokens"),
                         [("sdpa", None), ("sdpa", 0), ("shared_prefix", None)],
                         ids=["prefix-first", "packed-batches", "shared-prefix"])
def test_engine_text_and_batch(model, tokenizer, attention, cand_tokens):
    eng = ScoringEngine(copy.deepcopy(model), tokenizer, device="cpu", max_tokens_per_pass=600,
                        candidate_tokens_per_pass=cand_tokens, attention=attention)
    assert eng.attention == ("sdpa" if attention == "sdpa" else SHARED_PREFIX)
    cands = candidate_texts(30)
    scores = eng.score(PREFIX_TEXT, cands)
    assert scores.dtype == np.float32 and scores.shape == (30,)
    np.testing.assert_allclose(scores, eng.score_per_item(PREFIX_TEXT, cands), atol=EXACT)
    # several members: different prefix lengths -> right padding; one chunked, one empty
    requests = [(PREFIX_TEXT, cands[:4]), ("Short prefix.", cands[4:9]),
                (PREFIX_TEXT + " Saved post 4." * 5, cands), ("Nothing to rank.", [])]
    batch = eng.score_batch(requests)
    assert [b.shape for b in batch] == [(4,), (5,), (30,), (0,)]
    for (p, c), got in zip(requests[:3], batch[:3], strict=True):
        np.testing.assert_allclose(got, eng.score_per_item(p, c), atol=EXACT)
    margins = eng.score(PREFIX_TEXT, cands[:3], margins=True)
    np.testing.assert_allclose(1 / (1 + np.exp(-margins)), scores[:3], atol=1e-6)


def test_prefix_tokenized_once_and_identically(tokenizer, model):
    eng = ScoringEngine(model, tokenizer, device="cpu")
    p1, c1 = eng.tokenize(PREFIX_TEXT, candidate_texts(3))
    p2, c2 = eng.tokenize(PREFIX_TEXT, candidate_texts(5)[2:])
    assert p1 == p2 and c1[2] == c2[0]
    assert tokenizer.decode(p1 + c1[0]) == PREFIX_TEXT + candidate_texts(1)[0]


# --- label-head scoring --------------------------------------------------------------------


@pytest.mark.parametrize("tie", [True, False])
def test_label_head_equals_full_vocab_softmax(tie):
    model = small_model("dense", seed=1, tie_word_embeddings=tie)
    ids = torch.randint(0, VOCAB, (2, 40), generator=torch.Generator().manual_seed(0))
    head = label_head(model, YES, NO)
    with torch.no_grad():
        ours = label_probabilities(final_hidden_states(model, input_ids=ids).reshape(-1, 64),
                                   head)
        full = model(input_ids=ids).logits.reshape(-1, VOCAB)
    ref = torch.softmax(full[:, [YES, NO]].float(), dim=-1)[:, 0]
    torch.testing.assert_close(ours, ref, atol=EXACT, rtol=0)


def test_label_head_is_fp32_for_bf16_model():
    model = small_model("dense", seed=2, dtype="bfloat16")
    head = label_head(model, YES, NO)
    assert model.dtype == torch.bfloat16 and head.weight.dtype == torch.float32
    prefix, cands = random_request(8, seed=8)
    multi = score_multi_item(model, prefix, cands, head)
    assert multi.dtype == torch.float32
    ref = score_per_item_reference(model, prefix, cands, YES, NO)
    torch.testing.assert_close(multi, ref, atol=3e-2, rtol=0)  # bf16 body, rounded logits


def test_verify_label_head_catches_a_wrong_head():
    model = small_model("dense", seed=3)
    good = label_head(model, YES, NO)
    verify_label_head(model, good)
    bad = LabelHead(good.weight * 3, None, None, 1.0, YES, NO)  # e.g. an unknown logit scale
    with pytest.raises(ScoringError, match="full forward"):
        verify_label_head(model, bad)


# --- factory, save/load ---------------------------------------------------------------------


def test_presets_and_config_errors():
    assert 1e6 < count_parameters(build_model(preset("tiny"), 4096)) < 10e6
    assert 1e6 < count_parameters(build_model(preset("tiny-moe"), 4096)) < 10e6
    with torch.device("meta"):  # shape only: no 2.4 GB of weights on a CI runner
        big = build_model(preset("0.6b"), 151_936)
    assert 550e6 < count_parameters(big) < 650e6
    assert big.config.head_dim == 128 and big.config.num_key_value_heads == 8
    with pytest.raises(ValueError, match="num_kv_heads"):
        ModelConfig(num_heads=8, num_kv_heads=3)
    with pytest.raises(ValueError, match="extra"):
        ModelConfig(hidden=64)
    with pytest.raises(ValueError, match="tiny-moe"):
        preset("huge")


def test_save_load_round_trip(tmp_path, tokenizer):
    model = small_model("moe", seed=4, vocab=len(tokenizer))
    eng = ScoringEngine(model, tokenizer, device="cpu")
    cands = candidate_texts(9)
    before = eng.score(PREFIX_TEXT, cands)
    out = save_model(model, tokenizer, tmp_path / "m")
    names = {p.name for p in out.iterdir()}
    assert any(n.endswith(".safetensors") for n in names)
    assert not any(n.endswith((".bin", ".pt", ".pth")) for n in names)
    after = ScoringEngine.from_pretrained(out, device="cpu").score(PREFIX_TEXT, cands)
    np.testing.assert_array_equal(after, before)
    via_config = build_model(ModelConfig(checkpoint=out), len(tokenizer))
    assert via_config.config.model_type == "mixtral"


def test_platt_fit_recovers_a_known_map():
    import warnings

    from components.model.calibration import fit_platt

    rng = np.random.default_rng(0)
    m = rng.normal(0, 2, 20_000)
    y = (rng.random(m.size) < 1 / (1 + np.exp(-(0.5 * m - 1.5)))).astype(float)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a good fit warns about nothing
        cal = fit_platt(m, y, fitted_on="synthetic")
    assert cal.status == "fitted" and cal.reason == ""
    assert cal.slope == pytest.approx(0.5, abs=0.03) and cal.intercept == pytest.approx(-1.5, abs=0.06)
    assert (cal.n, cal.positive_rate, cal.fitted_on) == (m.size, pytest.approx(y.mean()), "synthetic")
    # separable but moderate: a finite fit, better than the raw P(yes) on its data
    sep = np.r_[rng.normal(-3, 1, 50), rng.normal(3, 1, 50)]
    lab = np.r_[np.zeros(50), np.ones(50)]
    cal = fit_platt(sep, lab)
    assert cal.status == "fitted" and 0 < cal.slope < 50 and abs(cal.intercept) < 50
    with pytest.raises(ValueError, match="0/1"):
        fit_platt(m[:3], np.array([0, 2, 1]))
    with pytest.raises(ValueError, match="need the same"):
        fit_platt(m[:3], y[:2])
    with pytest.raises(ValueError, match="not finite"):
        fit_platt(np.array([0.0, np.inf]), np.array([0, 1]))


@pytest.mark.parametrize("case", ["diverging", "huge_separable", "constant_labels",
                                  "constant_margins", "tiny"])
def test_platt_fit_that_would_explode_falls_back_to_the_identity(case, tmp_path):
    from components.model.calibration import Calibration, CalibrationWarning, fit_platt

    rng = np.random.default_rng(1)
    m, y = {
        # every margin high and positives barely above the negatives: the old Newton loop
        # went to slope ~1,486, intercept ~1.4e8 here, every calibrated P(yes) 1.000
        "diverging": (np.r_[rng.uniform(10, 10.2, 30), rng.uniform(10.3, 10.5, 5)],
                      np.r_[np.zeros(30), np.ones(5)]),
        "huge_separable": (np.r_[rng.uniform(-500, -400, 50), rng.uniform(400, 500, 50)],
                           np.r_[np.zeros(50), np.ones(50)]),
        "constant_labels": (rng.normal(0, 1, 10), np.ones(10)),
        "constant_margins": (np.full(10, 0.3), np.r_[np.ones(5), np.zeros(5)]),
        "tiny": (np.array([-1.0, 1.0]), np.array([0.0, 1.0])),
    }[case]
    with pytest.warns(CalibrationWarning, match="identity"):
        cal = fit_platt(m, y, fitted_on=case)
    assert (cal.slope, cal.intercept, cal.status) == (1.0, 0.0, "identity")
    assert cal.reason and cal.n == m.size and cal.fitted_on == case
    np.testing.assert_allclose(cal.apply(m), 1 / (1 + np.exp(-m)), rtol=1e-6, atol=1e-30)  # raw P(yes)
    cal.save(tmp_path)
    assert Calibration.load(tmp_path) == cal  # the status and reason travel with the model


def test_calibration_files_old_and_absurd(tmp_path):
    import json

    from components.model.calibration import CALIBRATION_FILE, Calibration, CalibrationWarning

    path = tmp_path / CALIBRATION_FILE
    path.write_text(json.dumps({"slope": 0.5, "intercept": -1.0, "n": 10, "positive_rate": 0.2,
                                "fitted_on": "valid"}))  # written before status / reason
    assert Calibration.load(tmp_path) == Calibration(0.5, -1.0, 10, 0.2, "valid", "fitted", "")
    path.write_text(json.dumps({"slope": 1937.7, "intercept": 456521739.0}))  # the old divergence
    with pytest.warns(CalibrationWarning, match="outside"):
        assert Calibration.load(tmp_path) is None  # scored uncalibrated, loudly


def test_platt_with_task_offsets_calibrates_each_task_and_falls_back_for_others(tmp_path):
    from components.evaluate.metrics import expected_calibration_error
    from components.model.calibration import Calibration, fit_platt

    rng = np.random.default_rng(3)
    # one model answering two tasks: the same margins, positive rates far apart
    m = rng.normal(0, 2, 40_000)
    task = np.where(np.arange(m.size) % 2 == 0, "apply", "dismiss").astype(object)
    true_b = np.where(task == "apply", 0.5, -2.5)
    y = (rng.random(m.size) < 1 / (1 + np.exp(-(0.8 * m + true_b)))).astype(float)
    one = np.r_[np.zeros(20), np.ones(0)]  # a task whose candidates are all negatives
    m2, y2 = np.r_[m, rng.normal(0, 2, 20)], np.r_[y, one]
    t2 = np.r_[task, np.array(["all_negative"] * 20, dtype=object)]
    cal = fit_platt(m2, y2, "valid", tasks=t2)
    assert set(cal.task_offsets) == {"apply", "dismiss"}  # none for the one-class task
    assert cal.slope == pytest.approx(0.8, abs=0.04)
    assert cal.intercept + cal.task_offsets["apply"] == pytest.approx(0.5, abs=0.1)
    assert cal.intercept + cal.task_offsets["dismiss"] == pytest.approx(-2.5, abs=0.1)
    glob = fit_platt(m, y, "valid")
    for t in ("apply", "dismiss"):
        sel = task == t
        per_task = expected_calibration_error(cal.apply(m[sel], t).astype(float), y[sel])
        assert per_task < 0.02 < expected_calibration_error(glob.apply(m[sel]).astype(float), y[sel])
    # an unknown task (held out, a free instruction) gets the global map, never an offset
    np.testing.assert_array_equal(cal.apply(m[:5], "new_task"), cal.apply(m[:5]))
    assert not np.allclose(cal.apply(m[:5], "dismiss"), cal.apply(m[:5]))
    cal.save(tmp_path)
    assert Calibration.load(tmp_path) == cal  # offsets travel with the model
    with pytest.raises(ValueError, match="one per margin"):
        fit_platt(m, y, tasks=task[:10])


def test_task_slopes_calibrate_tasks_whose_margins_differ_in_scale_and_are_chosen_out_of_fold(tmp_path):
    from components.evaluate.metrics import expected_calibration_error
    from components.model.calibration import Calibration, fit_calibration, fit_platt

    rng = np.random.default_rng(11)
    # a student whose margins are sharp on one task and blunt on the other
    m = rng.normal(0, 2, 30_000)
    task = np.where(np.arange(m.size) % 2 == 0, "apply", "dismiss").astype(object)
    true_w = np.where(task == "apply", 1.5, 0.4)
    true_b = np.where(task == "apply", -1.0, -2.0)
    y = (rng.random(m.size) < 1 / (1 + np.exp(-(true_w * m + true_b)))).astype(float)
    groups = np.array([f"m{i % 300}" for i in range(m.size)], dtype=object)
    cal = fit_platt(m, y, "valid", tasks=task, task_slopes=True)
    assert cal.slope_for("apply") == pytest.approx(1.5, abs=0.1)
    assert cal.slope_for("dismiss") == pytest.approx(0.4, abs=0.05)
    assert cal.slope_for("unseen") == cal.slope  # a free instruction: the global map
    offsets_only = fit_platt(m, y, "valid", tasks=task)
    for t in ("apply", "dismiss"):
        sel = task == t
        assert (expected_calibration_error(cal.apply(m[sel], t).astype(float), y[sel]) < 0.015
                < expected_calibration_error(offsets_only.apply(m[sel], t).astype(float), y[sel]))
    cal.save(tmp_path)
    assert Calibration.load(tmp_path) == cal
    choice = fit_calibration(m, y, groups, task, "valid")
    assert choice.family == "task_slopes" and choice.calibration.task_slopes
    assert choice.oof_log_loss["task_slopes"] < choice.oof_log_loss["task_offsets"]
    # one scale for every task: the extra slopes buy nothing out of fold, the simpler family stays
    y1 = (rng.random(m.size) < 1 / (1 + np.exp(-(0.8 * m + true_b)))).astype(float)
    simple = fit_calibration(m, y1, groups, task, "valid")
    assert simple.family == "task_offsets" and not simple.calibration.task_slopes
    assert simple.out_of_fold.shape == m.shape
    # a per-task slope that reverses its task's ranking is refused, like a global one ...
    assert "reverse" in Calibration(1.0, 0.0, task_slopes={"apply": -1.5}).insanity()
    # ... so a task ranked backwards on these labels gets no slope of its own (refitted on
    # the global one, or the offsets-only fit when that slope turns negative): the fit
    # stands, not the identity, and every task's ranking is kept
    inv = rng.normal(0, 2, 4_000)
    y_inv = (rng.random(inv.size) < 1 / (1 + np.exp(-(-0.7 * inv - 1.5)))).astype(float)
    mixed = fit_platt(np.r_[m, inv], np.r_[y, y_inv], "valid", task_slopes=True,
                      tasks=np.r_[task, np.array(["inverted"] * inv.size, dtype=object)])
    assert mixed.status == "fitted" and "inverted" not in mixed.task_slopes
    assert mixed.slope_for("inverted") == mixed.slope > 0 and "inverted" in mixed.task_offsets
    assert all(mixed.slope_for(k) > 0 for k in ("apply", "dismiss"))


def test_out_of_fold_calibration_never_sees_the_scored_members_labels():
    from components.model.calibration import fit_platt, out_of_fold_probabilities

    rng = np.random.default_rng(4)
    m = rng.normal(0, 1.5, 6_000)
    y = (rng.random(m.size) < 1 / (1 + np.exp(-(m - 1)))).astype(float)
    groups = np.array([f"m{i % 60}" for i in range(m.size)], dtype=object)
    tasks = np.where(np.arange(m.size) % 3 == 0, "a", "b").astype(object)
    p = out_of_fold_probabilities(m, y, groups, tasks)
    assert p.shape == m.shape and np.all((p > 0) & (p < 1))
    assert np.array_equal(p, out_of_fold_probabilities(m, y, groups, tasks))  # seeded folds
    # flip one member's labels: its own probabilities do not move (its fold's fit never saw them)
    who = groups == "m7"
    y_flip = y.copy()
    y_flip[who] = 1 - y_flip[who]
    q = out_of_fold_probabilities(m, y_flip, groups, tasks)
    np.testing.assert_array_equal(q[who], p[who])
    assert not np.allclose(q[~who], p[~who])  # the other fold's fit did see them
    # in-sample, the same flip moves the member's own probabilities
    assert not np.allclose(fit_platt(m, y_flip, tasks=tasks).apply(m[who], "a"),
                           fit_platt(m, y, tasks=tasks).apply(m[who], "a"))
    with pytest.raises(ValueError, match="one of each"):
        out_of_fold_probabilities(m, y, groups[:5])


def test_platt_calibration_is_applied_by_the_engine(tmp_path, tokenizer):
    from components.model.calibration import CALIBRATION_FILE, Calibration

    model = small_model("dense", seed=5, vocab=len(tokenizer))
    out = save_model(model, tokenizer, tmp_path / "m")
    cands = candidate_texts(7)
    raw = ScoringEngine.from_pretrained(out, device="cpu")
    margins = raw.score(PREFIX_TEXT, cands, margins=True)
    Calibration(0.5, -1.5).save(out)
    eng = ScoringEngine.from_pretrained(out, device="cpu")
    want = 1 / (1 + np.exp(-(0.5 * margins.astype(np.float64) - 1.5)))
    np.testing.assert_allclose(eng.score(PREFIX_TEXT, cands), want, atol=1e-6)
    np.testing.assert_allclose(eng.score_per_item(PREFIX_TEXT, cands), want, atol=1e-5)
    np.testing.assert_array_equal(eng.score(PREFIX_TEXT, cands, margins=True), margins)  # raw
    assert np.argsort(eng.score(PREFIX_TEXT, cands)).tolist() == np.argsort(margins).tolist()
    uncal = ScoringEngine.from_pretrained(out, device="cpu", calibrated=False)
    np.testing.assert_allclose(uncal.score(PREFIX_TEXT, cands), raw.score(PREFIX_TEXT, cands))
    Calibration(0.5, -1.5, task_offsets={"job_apply": 1.0}).save(out)
    eng = ScoringEngine.from_pretrained(out, device="cpu")
    np.testing.assert_allclose(eng.score(PREFIX_TEXT, cands, task="job_apply"),
                               1 / (1 + np.exp(-(0.5 * margins.astype(np.float64) - 0.5))), atol=1e-6)
    np.testing.assert_allclose(eng.score(PREFIX_TEXT, cands, task="other"), want, atol=1e-6)
    got = eng.score_batch([(PREFIX_TEXT, cands)] * 2, tasks=["job_apply", None])
    np.testing.assert_allclose(got[1], want, atol=1e-6)
    assert not np.allclose(got[0], got[1])
    with pytest.raises(ValueError, match="one per request"):
        eng.score_batch([(PREFIX_TEXT, cands)] * 2, tasks=["job_apply"])
    (out / CALIBRATION_FILE).write_text('{"slope": 1.0, "offset": 0.2}')
    with pytest.raises(ValueError, match="calibration.json.*offset"):
        ScoringEngine.from_pretrained(out, device="cpu")


def test_pickle_weights_refused(tmp_path, tokenizer):
    model = small_model("dense", vocab=len(tokenizer))
    out = save_model(model, tokenizer, tmp_path / "m")
    for f in out.glob("*.safetensors"):
        f.unlink()
    torch.save(model.state_dict(), out / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="safetensors"):
        load_model(out)
    with pytest.raises(ModelLoadError, match="safetensors"):
        ScoringEngine.from_pretrained(out)
    with pytest.raises(ModelLoadError, match="not a directory"):
        load_model(tmp_path / "missing")


def _hf_kind(kind: str, vocab: int, **extra):
    import transformers as tf

    common = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, initializer_range=0.1,
                  max_position_embeddings=2048, bos_token_id=None, eos_token_id=None)
    cfg = {
        "qwen2": lambda: tf.Qwen2Config(**common),  # q/k/v biases
        "qwen3": lambda: tf.Qwen3Config(**common, head_dim=32),  # q/k RMSNorm, wide heads
        "mistral": lambda: tf.MistralConfig(**common, sliding_window=None),
        "qwen3_moe": lambda: tf.Qwen3MoeConfig(**common, num_experts=4, num_experts_per_tok=2,
                                               moe_intermediate_size=64),
    }[kind]()
    for k, v in extra.items():
        setattr(cfg, k, v)
    torch.manual_seed(0)
    return tf.AutoModelForCausalLM.from_config(cfg).eval()


@pytest.mark.parametrize("kind", ["qwen2", "qwen3", "mistral", "qwen3_moe"])
def test_loaded_checkpoint_kinds(kind, tmp_path, tokenizer):
    out = save_model(_hf_kind(kind, len(tokenizer)), tokenizer, tmp_path / kind)
    eng = ScoringEngine.from_pretrained(out, device="cpu", max_tokens_per_pass=300)
    assert eng.model.config.model_type == kind
    cands = candidate_texts(12)
    np.testing.assert_allclose(eng.score(PREFIX_TEXT, cands),
                               eng.score_per_item(PREFIX_TEXT, cands), atol=EXACT)


def test_sliding_window_model_refused_when_it_matters(tokenizer):
    model = _hf_kind("mistral", len(tokenizer), sliding_window=32)
    eng = ScoringEngine(model, tokenizer, device="cpu")
    with pytest.raises(ScoringError, match="sliding"):
        eng.score(PREFIX_TEXT, candidate_texts(2))


# --- FlexAttention path ----------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="FlexAttention path needs CUDA")
def test_flex_attention_gpu_matches_per_item(tokenizer):
    model = small_model("dense", seed=5, vocab=len(tokenizer), dtype="bfloat16")
    eng = ScoringEngine(model, tokenizer, device="cuda")
    assert eng.attention == "flex_attention"
    cands = candidate_texts(50)
    multi = eng.score(PREFIX_TEXT * 4, cands)
    ref = eng.score_per_item(PREFIX_TEXT * 4, cands)
    np.testing.assert_allclose(multi, ref, atol=3e-2)  # bf16 tolerance
    chunked = ScoringEngine(model, tokenizer, device="cuda", max_tokens_per_pass=600)
    np.testing.assert_allclose(chunked.score(PREFIX_TEXT * 4, cands), ref, atol=3e-2)
    # compiled layers (one packed pass) and eager chunks over a cached prefix
    compiled = ScoringEngine(small_model("dense", seed=5, vocab=len(tokenizer), dtype="bfloat16"),
                             tokenizer, device="cuda", compile=True,
                             kernel_options={"BLOCK_M": 64, "BLOCK_N": 64})
    np.testing.assert_allclose(compiled.score(PREFIX_TEXT * 4, cands), ref, atol=3e-2)
    compiled.max_tokens_per_pass = 600
    np.testing.assert_allclose(compiled.score(PREFIX_TEXT * 4, cands), ref, atol=3e-2)
    moe = small_model("moe", seed=5, vocab=len(tokenizer))  # fp32 on GPU: tight
    eng = ScoringEngine(moe, tokenizer, device="cuda")
    np.testing.assert_allclose(eng.score(PREFIX_TEXT, cands), eng.score_per_item(PREFIX_TEXT, cands),
                               atol=1e-4)
    # shared-prefix attention: flash kernel (bf16) and memory-efficient kernel (fp32)
    shared = ScoringEngine(small_model("dense", seed=5, vocab=len(tokenizer), dtype="bfloat16"),
                           tokenizer, device="cuda", attention="shared_prefix")
    np.testing.assert_allclose(shared.score(PREFIX_TEXT * 4, cands), ref, atol=3e-2)
    shared.max_tokens_per_pass = 600
    np.testing.assert_allclose(shared.score(PREFIX_TEXT * 4, cands), ref, atol=3e-2)
    shared32 = ScoringEngine(small_model("moe", seed=5, vocab=len(tokenizer)), tokenizer,
                             device="cuda", attention="shared_prefix")
    np.testing.assert_allclose(shared32.score(PREFIX_TEXT, cands),
                               shared32.score_per_item(PREFIX_TEXT, cands), atol=1e-4)


@pytest.mark.skipif(os.environ.get("RANKBREW_TEST_FLEX_CPU") != "1",
                    reason="compiles FlexAttention for CPU (~20 s); set RANKBREW_TEST_FLEX_CPU=1")
def test_flex_attention_cpu_matches_per_item():
    model = small_model("dense", seed=6)
    head = label_head(model, YES, NO)
    prefix, cands = random_request(20, prefix_len=150, seed=6)
    ref = score_per_item_reference(model, prefix, cands, YES, NO)
    model.set_attn_implementation("flex_attention")
    multi = score_multi_item(model, prefix, cands, head)
    cached = score_multi_item(model, prefix, cands, head, max_tokens_per_pass=250)
    torch.testing.assert_close(multi, ref, atol=EXACT, rtol=0)
    torch.testing.assert_close(cached, ref, atol=EXACT, rtol=0)
    short = (prefix[:40], cands[:3])  # two rows, right-padded: a batched BlockMask
    both = score_requests(model, [(prefix, cands), short], head, pad_id=0)
    torch.testing.assert_close(torch.sigmoid(both[0]), ref, atol=EXACT, rtol=0)
    torch.testing.assert_close(torch.sigmoid(both[1]),
                               score_per_item_reference(model, *short, YES, NO), atol=EXACT, rtol=0)


def test_module_imports_without_ray_or_mlflow():
    import subprocess
    import sys

    code = ("import sys; import components.model, components.model.engine; "
            "bad = [m for m in ('ray', 'mlflow') if m in sys.modules]; "
            "assert not bad, bad")
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)
