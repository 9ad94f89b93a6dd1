"""Training core: SFT label masking, tokenization parity with scoring, length caps, CPT
packing, losses, AUC, loss going down (SFT, align, CPT, MoE), exact resume, and Ray Train
with 2 CPU workers + FSDP2, including a worker killed mid-training.

Data is synthetic and learnable by a 2-layer model in a few dozen steps: a candidate is
positive iff its topic is one of two popular topics (a relation between the member's
liked topic in the prefix and the candidate's needs hundreds of steps to appear).
"""

from __future__ import annotations

import copy
import json
import os
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from components.promptify.tokenizer import answer_token_ids, load_tokenizer, train_bpe_tokenizer
from components.train.config import TrainConfig, TrainDataConfig
from components.train.data import (
    IGNORE_INDEX,
    BatchPlan,
    TokenizeStats,
    TrainDataError,
    build_cpt_dataset,
    collate,
    layout_prompt,
    read_examples,
    segment_mask,
    tokenize_prompts,
)
from components.train.loop import (
    answer_base_rate_entropy,
    build_tiny_llama,
    latest_checkpoint,
    load_weights,
    roc_auc,
    train,
    validation_auc,
)
from components.train.losses import (
    RankingLM,
    causal_lm_loss,
    label_logits,
    pairwise_ranking_loss,
    prompt_lm_labels,
    stage_counts,
    stage_loss,
)

TOPICS = ["astronomy", "baking", "cycling", "databases", "ecology", "finance"]
TINY = dict(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128)


POPULAR = {"astronomy", "baking"}


def synthetic_rows(n: int, split: str, seed: int, n_cands: int = 4) -> list[dict]:
    """Promptify-shaped rows: the label is 'candidate topic is popular'."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        liked = rng.choice(TOPICS)
        hist = "\n".join(f"- read a post about {liked}" if rng.random() < 0.7 else
                         f"- read a post about {rng.choice(TOPICS)}" for _ in range(4))
        prefix = (f"## Instruction\nWill the member read the candidate post?\n\n"
                  f"## Member profile\n- Likes: {liked}\n\n## Past activity\n{hist}\n")
        topics = rng.sample(TOPICS, n_cands)
        cands = [f"\n### Candidate post\n- Topic: {t}\nAnswer:" for t in topics]
        labels = [int(t in POPULAR) for t in topics]
        rows.append({"example_id": f"{split}-{i:05d}", "member_id": f"m{i}", "task_id": "read",
                     "split": split, "held_out": False, "prefix": prefix,
                     "candidates": cands, "labels": labels})
    return rows


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    """Examples as Parquet (train/valid), member rows for CPT, a BPE tokenizer."""
    root = tmp_path_factory.mktemp("train_corpus")
    rows = synthetic_rows(160, "train", 0) + synthetic_rows(24, "valid", 1)
    df = pl.DataFrame(rows, schema_overrides={"labels": pl.List(pl.Int8)})
    (root / "examples").mkdir()
    df.write_parquet(root / "examples" / "part-0.parquet")
    texts = [r["prefix"] for r in rows] + [c for r in rows for c in r["candidates"]]
    tok_dir = train_bpe_tokenizer(texts, vocab_size=400, out_dir=root / "tokenizer")
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    members = pl.DataFrame({
        "member_id": ["a", "b", "c"],
        "profile_markdown": ["- Likes: baking", "- Likes: cycling", None],
        "hist_time": [[t0, t0 + timedelta(days=1), t0 + timedelta(days=30)],
                      [t0 + timedelta(days=2)], [t0 + timedelta(days=3)]],
        "hist_markdown": [["- read a post about baking", "- liked a post about baking",
                           "- FUTURE EVENT"], ["- read a post about cycling"],
                          ["- read a post about ecology"]],
    })
    (root / "member_rows").mkdir()
    members.write_parquet(root / "member_rows" / "part-0.parquet")
    tok = load_tokenizer(tok_dir)
    return {"root": root, "examples": root / "examples", "members": root / "member_rows",
            "tok_dir": tok_dir, "tok": tok, "answers": answer_token_ids(tok),
            "cutoff": t0 + timedelta(days=10)}


def sft_sets(corpus, layout="sequential", max_seq_len=256):
    tok = corpus["tok"]
    yes, no = corpus["answers"]
    tr = tokenize_prompts(read_examples(corpus["examples"], "train"), tok, yes, no,
                          max_seq_len, layout)
    va = tokenize_prompts(read_examples(corpus["examples"], "valid"), tok, yes, no, 1024,
                          "multi_item", with_answers=False)
    return tr, va


def quick_cfg(**kw) -> TrainConfig:
    base = dict(stage="sft", max_steps=30, batch_size=4, lr=3e-3, warmup_steps=3,
                checkpoint_every=0, log_every=1, seed=0)
    return TrainConfig(**{**base, **kw})


# ----------------------------------------------------------------------------- data


@pytest.mark.parametrize("layout", ["sequential", "multi_item"])
def test_sft_labels_only_at_answer_positions(corpus, layout):
    tok = corpus["tok"]
    yes, no = corpus["answers"]
    ds, _ = sft_sets(corpus, layout)
    assert len(ds) == 160 and ds.stats.candidates_dropped_over_length == 0
    for p in ds.prompts[:20]:
        answer_pos = p.cue_positions + 1
        expected = np.where(p.answer_labels == 1, yes, no)
        assert np.array_equal(p.input_ids[answer_pos], expected)
        assert np.array_equal(p.labels[answer_pos], expected)
        mask = np.ones(len(p), dtype=bool)
        mask[answer_pos] = False
        assert (p.labels[mask] == IGNORE_INDEX).all()
        # the cue is the end of "Answer:" in every candidate
        assert tok.decode(p.input_ids[p.cue_positions[0]]).endswith(":")
    # batched: labels survive padding, cues point at the same tokens
    b = collate(ds.prompts[:3], tok.pad_token_id)
    assert (b.labels != IGNORE_INDEX).sum() == sum(len(p.cue_positions) for p in ds.prompts[:3])
    assert torch.equal(b.input_ids[b.cue_rows, b.cue_cols + 1],
                       torch.where(b.cue_labels.bool(), yes, no))


def test_tokenization_matches_the_scoring_engine(corpus):
    engine = pytest.importorskip("components.model.engine")
    tok = corpus["tok"]
    yes, no = corpus["answers"]
    rows = read_examples(corpus["examples"], "valid", limit=5)
    ds = tokenize_prompts(rows, tok, yes, no, 4096, "multi_item", with_answers=False)
    for p, r in zip(ds.prompts, rows.iter_rows(named=True), strict=True):
        prefix_ids, cand_ids = engine.tokenize_request(tok, r["prefix"], r["candidates"])
        assert p.input_ids.tolist() == prefix_ids + [t for c in cand_ids for t in c]


def test_length_cap_drops_trailing_candidates_then_left_truncates_the_prefix():
    stats = TokenizeStats()
    prefix, cands = list(range(100, 130)), [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    p = layout_prompt(prefix, cands, [1, 0, 1], 90, 91, 38, "sequential", True, stats)
    assert len(p) == 30 + 4 + 4 and p.answer_labels.tolist() == [1, 0]
    assert p.input_ids[:30].tolist() == prefix  # the prefix start is kept
    assert stats.candidates_dropped_over_length == 1 and stats.prefixes_left_truncated == 0
    # the prefix alone is too long: keep its end (and a BOS at position 0)
    p = layout_prompt([0] + prefix, cands, [1, 0, 1], 90, 91, 12, "sequential", True, stats,
                      keep_prefix_start=1)
    assert len(p) == 12 and p.input_ids[0] == 0 and p.input_ids[1:8].tolist() == prefix[-7:]
    assert stats.prefixes_left_truncated == 1 and stats.prefix_tokens_cut == 23
    assert layout_prompt(prefix, [[1] * 50], [0], 90, 91, 12, "sequential", True, stats) is None
    assert stats.prompts_dropped_first_candidate_too_long == 1
    stats.check()


def test_multi_item_layout_equals_each_candidate_alone(corpus):
    """The multi_item mask + positions give every cue the hidden state of prefix+candidate
    scored alone (the scoring engine's contract), so training sees what serving computes."""
    tok = corpus["tok"]
    yes, no = corpus["answers"]
    lm = build_tiny_llama(len(tok), **TINY, seed=1).eval()
    module = RankingLM(lm, yes, no)
    ds = tokenize_prompts(read_examples(corpus["examples"], "valid", limit=2), tok, yes, no,
                          1024, "multi_item", with_answers=True)
    b = collate(ds.prompts, tok.pad_token_id)
    with torch.no_grad():
        packed = module(b, "scores")["pair_logits"]
        k = 0
        for p in ds.prompts:
            n_prefix = int((p.segment_ids == 0).sum())
            for i, cue in enumerate(p.cue_positions):
                seg = p.segment_ids == i + 1
                ids = np.concatenate([p.input_ids[:n_prefix], p.input_ids[seg]])
                cue_alone = n_prefix + (cue - np.flatnonzero(seg)[0])
                logits = lm(input_ids=torch.tensor(ids)[None]).logits[0, cue_alone]
                assert torch.allclose(packed[k], logits[[yes, no]].float(), atol=1e-4)
                k += 1


def test_cpt_packing_respects_cutoff_eos_and_document_mask(corpus):
    tok = corpus["tok"]
    rows = pl.read_parquet(corpus["members"] / "part-0.parquet")
    ds = build_cpt_dataset(rows, tok, seq_len=16, cutoff=corpus["cutoff"])
    assert ds.stats.events_after_cutoff == 1 and ds.stats.documents == 3
    text = tok.decode(np.concatenate([b.input_ids for b in ds.blocks]).tolist())
    assert "FUTURE" not in text and "baking" in text
    ids = np.concatenate([b.input_ids[b.segment_ids >= 0] for b in ds.blocks])
    assert (ids == tok.eos_token_id).sum() == 3  # one EOS after each document
    for blk in ds.blocks:
        real = blk.segment_ids >= 0
        assert len(blk) == 16 and (blk.segment_ids[real] >= 1).all()
        for s in np.unique(blk.segment_ids[real]):  # positions restart in each document
            assert blk.position_ids[blk.segment_ids == s].tolist() == list(range(
                int((blk.segment_ids == s).sum())))
    m = segment_mask(torch.tensor([[1, 1, 2, 2, -1]]))[0, 0]
    assert m[3].tolist() == [False, False, True, True, False]  # doc 2 never sees doc 1


def test_batch_plan_is_a_function_of_the_step_and_covers_every_item():
    a = BatchPlan(10, 2, seed=3, rank=0, world_size=2)
    b = BatchPlan(10, 2, seed=3, rank=1, world_size=2)
    first_epoch = [i for k in range(a.batches_per_epoch) for i in a.indices(k) + b.indices(k)]
    assert len(first_epoch) == 12 and set(first_epoch) == set(range(10))  # 2 wrap-around
    assert BatchPlan(10, 2, seed=3, rank=0, world_size=2).indices(7) == a.indices(7)


def test_length_grouped_plan_keeps_coverage_and_cuts_padding():
    rng = np.random.default_rng(0)
    lengths = rng.integers(100, 1000, size=203)
    kw = dict(seed=5, world_size=2, lengths=lengths)
    plans = [BatchPlan(203, 4, rank=r, group_batches=8, **kw) for r in (0, 1)]
    plain = [BatchPlan(203, 4, rank=r, **kw) for r in (0, 1)]

    def epoch(ps):
        return [[p.indices(k) for p in ps] for k in range(ps[0].batches_per_epoch)]

    grouped = epoch(plans)
    flat = [i for rnd in grouped for b in rnd for i in b]
    assert len(flat) == 26 * 8 and set(flat) == set(range(203))  # every item, 5 wrap-around

    def cost(rounds):  # what a step costs: the longest micro-batch on any rank, padded
        return sum(max(len(b) * int(lengths[b].max()) for b in rnd) for rnd in rounds)

    assert cost(grouped) < 0.85 * cost(epoch(plain))
    # deterministic, a function of (seed, step): a fresh plan gives the same batches
    again = BatchPlan(203, 4, rank=1, group_batches=8, **kw)
    assert again.indices(40) == plans[1].indices(40)
    with pytest.raises(TrainDataError, match="lengths"):
        BatchPlan(10, 2, seed=0, group_batches=4)


# --------------------------------------------------------------------------- losses


def test_losses_match_references(corpus):
    tok = corpus["tok"]
    yes, no = corpus["answers"]
    torch.manual_seed(0)
    # pairwise: hand-computed
    s = torch.tensor([2.0, 0.0, 1.0, 5.0])
    parts = pairwise_ranking_loss(s, torch.tensor([1, 0, 0, 1]), torch.tensor([0, 0, 1, 1]))
    ref = torch.nn.functional.softplus(torch.tensor([-2.0, -4.0])).sum()
    assert parts.count == 2 and torch.isclose(parts.total, ref)
    assert pairwise_ranking_loss(s, torch.ones(4), torch.zeros(4)).count == 0
    # label logits = the two columns of the full head
    h, w = torch.randn(5, 16), torch.randn(40, 16)
    assert torch.allclose(label_logits(h, w, 3, 7), (h @ w.T)[:, [3, 7]], atol=1e-5)
    # SFT from the cue rows == the HF causal-LM loss with answer-only labels (sequential)
    lm = build_tiny_llama(len(tok), **TINY, seed=2)
    module = RankingLM(lm, yes, no)
    ds, _ = sft_sets(corpus)
    b = collate(ds.prompts[:3], tok.pad_token_id)
    ours = stage_loss(module, b, "sft")["sft"].mean()
    hf = lm(input_ids=b.input_ids, attention_mask=b.attention_mask, labels=b.labels).loss
    assert torch.allclose(ours, hf, atol=1e-5)
    logits, labels = torch.randn(2, 5, 9), torch.tensor([[1, 2, 3, -100, -100], [4, 5, 6, 7, 8]])
    lm_parts = causal_lm_loss(logits, labels)
    assert lm_parts.count == 2 + 4
    ref = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 9), labels[:, 1:].reshape(-1),
                                            ignore_index=-100, reduction="sum")
    assert torch.allclose(lm_parts.total, ref)


def test_auxiliary_prompt_lm_targets_stay_inside_segments(corpus):
    tok = corpus["tok"]
    yes, no = corpus["answers"]
    ds, _ = sft_sets(corpus, "multi_item")
    b = collate(ds.prompts[:3], tok.pad_token_id)
    lab = prompt_lm_labels(b)
    seg = b.segment_ids
    t = lab != IGNORE_INDEX
    assert t.any()
    assert not t[:, 0].any()
    # a target continues its own segment: never a candidate predicted from another one
    assert (seg[:, 1:][t[:, 1:]] == seg[:, :-1][t[:, 1:]]).all()
    assert (seg[t] >= 0).all() and torch.equal(lab[t], b.input_ids[t])
    assert not (t & (b.labels != IGNORE_INDEX)).any()  # answers belong to the SFT term
    module = RankingLM(build_tiny_llama(len(tok), **TINY, seed=2), yes, no)
    parts = stage_loss(module, b, "sft", lm_weight=0.5)
    assert set(parts) == {"sft", "lm"} == set(stage_counts(b, "sft", 0.5))
    assert parts["lm"].count == stage_counts(b, "sft", 0.5)["lm"] == int(t[:, 1:].sum())
    full = causal_lm_loss(module(b, "lm")["logits"], lab)
    assert torch.allclose(parts["lm"].total, 0.5 * full.total, rtol=1e-5)


@pytest.mark.parametrize("tie", [True, False], ids=["tied-head", "untied-head"])
def test_chunked_lm_loss_equals_full_logits(corpus, tie):
    """Chunked linear + cross-entropy (no [tokens, vocab] logits): the same loss and the
    same gradients as the plain path, for CPT and for the SFT stage's lm term."""
    from components.train.losses import linear_cross_entropy

    h, w = torch.randn(11, 16, requires_grad=True), torch.randn(40, 16, requires_grad=True)
    t = torch.randint(0, 40, (11,))
    ours = linear_cross_entropy(h, w, t, chunk_tokens=4)  # 3 chunks, the last one short
    ref = torch.nn.functional.cross_entropy(h @ w.T, t, reduction="sum")
    g_ours, g_ref = (torch.autograd.grad(2.5 * x, [h, w]) for x in (ours, ref))
    assert torch.allclose(ours, ref, atol=1e-5)
    for a, b in zip(g_ours, g_ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # matmuls in bf16, softmax in fp32
        low = linear_cross_entropy(h, w, t, chunk_tokens=4)
    assert low.dtype == torch.float32 and abs(float((low - ref).detach())) < 0.05 * float(ref.detach())

    tok, (yes, no) = corpus["tok"], corpus["answers"]
    b = collate(sft_sets(corpus, "multi_item")[0].prompts[:3], tok.pad_token_id)
    plain = RankingLM(build_tiny_llama(len(tok), **TINY, seed=2, tie_word_embeddings=tie),
                      yes, no)
    chunked = copy.deepcopy(plain)
    chunked.lm_loss_chunk = 37
    assert int((b.labels != IGNORE_INDEX).sum()) > 0
    full_lm = causal_lm_loss(plain(b, "lm")["logits"], b.input_ids)
    ch_lm = chunked(b, "lm", lm_labels=b.input_ids)["lm"]
    assert ch_lm.count == full_lm.count and torch.allclose(ch_lm.total, full_lm.total, rtol=1e-5)
    for stage, kw in (("cpt", {}), ("sft", {"lm_weight": 0.5})):
        if stage == "cpt":
            b.labels = b.input_ids.clone()  # a CPT batch: every next token is a target
        losses = []
        for module in (plain, chunked):
            module.zero_grad()
            parts = stage_loss(module, b, stage, **kw)
            total = sum(p.total for p in parts.values())
            total.backward()
            losses.append((float(total.detach()), [p.grad.clone() for p in module.parameters()]))
        assert abs(losses[0][0] - losses[1][0]) < 1e-4 * abs(losses[0][0])
        for a, c in zip(losses[0][1], losses[1][1], strict=True):
            torch.testing.assert_close(c, a, atol=2e-5, rtol=1e-4)


def test_roc_auc_counts_pairs_and_ties():
    rng = np.random.default_rng(0)
    s = rng.integers(0, 5, 200).astype(float)
    y = rng.integers(0, 2, 200)
    pos, neg = s[y == 1], s[y == 0]
    brute = ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (
        len(pos) * len(neg))
    assert abs(roc_auc(s, y) - brute) < 1e-12
    assert np.isnan(roc_auc(s, np.ones(200)))


# ------------------------------------------------------------------ one-process runs


def test_sft_loss_goes_down_and_auc_rises(corpus, tmp_path):
    tok = corpus["tok"]
    yes, no = corpus["answers"]
    tr, va = sft_sets(corpus)
    lm = build_tiny_llama(len(tok), **TINY, seed=0)
    res = train(lm, tr, quick_cfg(max_steps=40), tmp_path, yes_id=yes, no_id=no,
                pad_id=tok.pad_token_id, valid_set=va)
    losses = [h["loss"] for h in res.history]
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
    assert res.evals[-1]["valid_auc"] > 0.6
    assert latest_checkpoint(tmp_path).name == "step_000040"


def test_answer_loss_is_logged_against_the_base_rate_entropy(corpus, tmp_path):
    tr, _ = sft_sets(corpus)
    labels = np.concatenate([p.answer_labels for p in tr.prompts])
    p = labels.mean()
    h = answer_base_rate_entropy(tr)
    assert h == pytest.approx(-(p * np.log(p) + (1 - p) * np.log(1 - p)))
    tok = corpus["tok"]
    yes, no = corpus["answers"]
    res = train(build_tiny_llama(len(tok), **TINY, seed=0), tr, quick_cfg(max_steps=4, warmup_steps=1), tmp_path,
                yes_id=yes, no_id=no, pad_id=tok.pad_token_id)
    last = res.history[-1]
    assert last["base_rate_entropy"] == pytest.approx(h)
    assert last["answer_loss_over_base_rate"] == pytest.approx(last["loss_sft"] / h)


class Interrupt(Exception):
    """A crash in the middle of training (raised from an on_step hook)."""


def crash_at(crash_step: int):
    """An on_step hook that raises Interrupt after step ``crash_step``."""
    def hook(step, metrics):
        if step == crash_step:
            raise Interrupt
    return hook


def test_resume_continues_from_the_checkpoint_step_and_matches(corpus, tmp_path):
    tok = corpus["tok"]
    yes, no = corpus["answers"]
    tr, _ = sft_sets(corpus)
    cfg = quick_cfg(max_steps=12, checkpoint_every=4, grad_accum=2)
    kw = dict(yes_id=yes, no_id=no, pad_id=tok.pad_token_id)
    full = train(build_tiny_llama(len(tok), **TINY, seed=0), tr, cfg, tmp_path / "a", **kw)
    with pytest.raises(Interrupt):
        train(build_tiny_llama(len(tok), **TINY, seed=0), tr, cfg, tmp_path / "b",
              on_step=crash_at(6), **kw)
    ckpt = latest_checkpoint(tmp_path / "b")
    assert ckpt.name == "step_000004"
    steps_run = []
    resumed = train(build_tiny_llama(len(tok), **TINY, seed=5), tr, cfg, tmp_path / "b",
                    resume_from=ckpt, on_step=lambda s, m: steps_run.append(s), **kw)
    assert steps_run == list(range(5, 13)) and resumed.resumed_from_step == 4
    assert [h["step"] for h in resumed.history] == list(range(1, 13))
    np.testing.assert_allclose([h["loss"] for h in resumed.history],
                               [h["loss"] for h in full.history], rtol=1e-5, atol=1e-6)
    a = load_weights(full.module.lm, latest_checkpoint(tmp_path / "a"))
    b = load_weights(resumed.module.lm, latest_checkpoint(tmp_path / "b"))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def _trained_start(corpus, tmp_path):
    """A tiny model that already ranks (valid AUC > 0.6), and the sets it was trained on."""
    tok = corpus["tok"]
    yes, no = corpus["answers"]
    tr, va = sft_sets(corpus)
    res = train(build_tiny_llama(len(tok), **TINY, seed=0), tr, quick_cfg(max_steps=40),
                tmp_path / "start", yes_id=yes, no_id=no, pad_id=tok.pad_token_id)
    return res.module.lm, tr, va, dict(yes_id=yes, no_id=no, pad_id=tok.pad_token_id)


def test_keep_best_ends_with_the_best_evaluations_weights(corpus, tmp_path):
    """A destructive lr after a good start: keep_best evaluates the start too and ends
    with the weights of the best evaluation (here the start), exactly; without it the run
    ends with the last step's weights. The choice is the first maximum of best_metric."""
    start, tr, va, kw = _trained_start(corpus, tmp_path)
    cfg = quick_cfg(max_steps=6, lr=0.5, warmup_steps=1, eval_every=2, keep_best=True)
    res = train(copy.deepcopy(start), tr, cfg, tmp_path / "best", valid_set=va, **kw)
    assert [e["step"] for e in res.evals] == [0, 2, 4, 6]
    values = [e["valid_prompt_auc"] for e in res.evals]
    assert res.best["step"] == res.evals[int(np.argmax(values))]["step"] == 0
    assert res.best["value"] == max(values) and res.best["metric"] == "valid_prompt_auc"
    assert max(values[1:]) < values[0]  # the setup: the lr did destroy the start
    kept = res.module.lm.state_dict()
    assert all(torch.equal(kept[k], v) for k, v in start.state_dict().items())
    assert validation_auc(res.module, va, kw["pad_id"])["valid_prompt_auc"] == pytest.approx(values[0])
    plain = train(copy.deepcopy(start), tr, cfg.model_copy(update={"keep_best": False}),
                  tmp_path / "plain", valid_set=va, **kw)
    assert plain.best is None and [e["step"] for e in plain.evals] == [2, 4, 6]
    last = load_weights(plain.module.lm, latest_checkpoint(tmp_path / "plain"))
    assert all(torch.allclose(plain.module.lm.state_dict()[k], last[k]) for k in last)
    with pytest.raises(ValueError, match="keep_best needs a validation set"):
        train(copy.deepcopy(start), tr, cfg, tmp_path / "none", **kw)


def test_keep_best_survives_a_resume(corpus, tmp_path):
    """Crash after a checkpoint whose step is not the best: the checkpoint carries the best
    weights (best/), and the resumed run ends with the same weights as the uninterrupted one."""
    start, tr, va, kw = _trained_start(corpus, tmp_path)
    cfg = quick_cfg(max_steps=8, lr=0.5, warmup_steps=1, eval_every=2, checkpoint_every=4,
                    keep_best=True)
    full = train(copy.deepcopy(start), tr, cfg, tmp_path / "a", valid_set=va, **kw)
    with pytest.raises(Interrupt):
        train(copy.deepcopy(start), tr, cfg, tmp_path / "b", valid_set=va, on_step=crash_at(6), **kw)
    ckpt = latest_checkpoint(tmp_path / "b")
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert ckpt.name == "step_000004" and state["best"]["step"] == full.best["step"] != 4
    assert (ckpt / "best" / "model.safetensors").exists()
    resumed = train(copy.deepcopy(start), tr, cfg, tmp_path / "b", valid_set=va,
                    resume_from=ckpt, **kw)
    assert resumed.best == full.best
    a, b = full.module.lm.state_dict(), resumed.module.lm.state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


@pytest.mark.parametrize("stage", ["align", "cpt"])
def test_align_and_cpt_losses_go_down(corpus, tmp_path, stage):
    tok = corpus["tok"]
    yes, no = corpus["answers"]
    if stage == "cpt":
        rows = pl.read_parquet(corpus["members"] / "part-0.parquet")
        data = build_cpt_dataset(rows, tok, seq_len=16, cutoff=corpus["cutoff"])
        cfg = quick_cfg(stage="cpt", max_steps=25, batch_size=2)
    else:
        data, _ = sft_sets(corpus, "multi_item")
        cfg = quick_cfg(stage="align", max_steps=25)
    res = train(build_tiny_llama(len(tok), **TINY, seed=0), data, cfg, tmp_path,
                yes_id=yes, no_id=no, pad_id=tok.pad_token_id)
    losses = [h["loss"] for h in res.history]
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])
    if stage == "align":
        assert {"loss_pairwise", "loss_sft"} <= set(res.history[-1])


def test_moe_model_trains(corpus, tmp_path):
    tok = corpus["tok"]
    yes, no = corpus["answers"]
    tr, va = sft_sets(corpus)
    lm = build_tiny_llama(len(tok), **TINY, num_experts=4, experts_per_token=2, seed=0)
    assert type(lm).__name__ == "MixtralForCausalLM"
    res = train(lm, tr, quick_cfg(max_steps=20), tmp_path, yes_id=yes, no_id=no,
                pad_id=tok.pad_token_id, valid_set=va)
    losses = [h["loss"] for h in res.history]
    assert np.mean(losses[-3:]) < 0.6 * np.mean(losses[:3])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_sft_step_on_gpu(corpus, tmp_path):
    tok = corpus["tok"]
    yes, no = corpus["answers"]
    tr, va = sft_sets(corpus)
    res = train(build_tiny_llama(len(tok), **TINY, seed=0), tr, quick_cfg(max_steps=10),
                tmp_path, yes_id=yes, no_id=no, pad_id=tok.pad_token_id, valid_set=va,
                device="cuda")
    assert res.history[-1]["loss"] < res.history[0]["loss"]
    assert 0.0 <= validation_auc(res.module, va, tok.pad_token_id, device="cuda")[
        "valid_auc"] <= 1.0


def test_components_import_without_ray_or_mlflow():
    import subprocess
    import sys

    code = ("import sys, components.train; "
            "bad = [m for m in ('ray', 'mlflow') if m in sys.modules]; "
            "sys.exit(f'imported {bad}' if bad else 0)")
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------------ Ray Train


def ray_data_config(corpus) -> TrainDataConfig:
    return TrainDataConfig(examples_dir=corpus["examples"], max_seq_len=256,
                           max_valid_prompts=24)


@pytest.mark.slow
def test_ray_train_fsdp_two_workers_loss_goes_down(ray_local, corpus, tmp_path):
    from mlflow import MlflowClient
    from transformers import AutoModelForCausalLM

    from pipelines.train_job import run_training

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("train-test", artifact_location=str(tmp_path / "mlruns"))
    run_id = client.create_run(exp).info.run_id
    out = run_training("sft", data=ray_data_config(corpus),
                       train=quick_cfg(max_steps=24, batch_size=2, checkpoint_every=8),
                       tokenizer_dir=corpus["tok_dir"], base_model=TINY,
                       storage_path=tmp_path / "ray", name="sft_fsdp", num_workers=2,
                       mlflow_run_id=run_id, mlflow_tracking_uri=uri)
    logged = client.get_metric_history(run_id, "sft.loss")  # rank 0 only: once per step
    assert [m.step for m in logged] == list(range(1, 25))
    assert client.get_metric_history(run_id, "sft.valid_auc")
    losses = [h["loss"] for h in out.history]
    assert len(losses) == 24 and np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
    # 2 workers x 2 sequences see the same 4 sequences per step as 1 process x 4, and the
    # loss is normalised by global counts: the sharded run must follow the same curve
    tok = corpus["tok"]
    tr, _ = sft_sets(corpus)
    one = train(build_tiny_llama(len(tok), **TINY, seed=0), tr,
                quick_cfg(max_steps=24, batch_size=4), tmp_path / "one",
                yes_id=corpus["answers"][0], no_id=corpus["answers"][1],
                pad_id=tok.pad_token_id)
    np.testing.assert_allclose(losses, [h["loss"] for h in one.history], rtol=2e-4)
    # a checkpoint written by 2 FSDP workers resumes in 1 process (weights + optimizer)
    mid = tmp_path / "ray" / "sft_fsdp" / "step_000016"
    cont = train(build_tiny_llama(len(tok), **TINY, seed=9), tr,
                 quick_cfg(max_steps=24, batch_size=4), tmp_path / "cont", resume_from=mid,
                 yes_id=corpus["answers"][0], no_id=corpus["answers"][1],
                 pad_id=tok.pad_token_id)
    np.testing.assert_allclose([h["loss"] for h in cont.history[16:]], losses[16:], rtol=2e-4)
    assert out.evals and 0.0 <= out.evals[-1]["valid_auc"] <= 1.0
    assert out.resumed_from_step is None
    # the final model is a plain HF directory (safetensors + tokenizer) equal to the
    # last checkpoint gathered from both shards
    assert any(out.model_dir.glob("*.safetensors")) and (out.model_dir / "tokenizer.json").exists()
    lm = AutoModelForCausalLM.from_pretrained(out.model_dir)
    ckpt = load_weights(lm, Path(out.checkpoint_path))
    state = lm.state_dict()
    assert all(torch.equal(state[k], ckpt[k]) for k in ckpt)
    assert Path(out.checkpoint_path).name == "step_000024"
    kept = sorted(p.name for p in (tmp_path / "ray" / "sft_fsdp").glob("step_*"))
    assert kept == ["step_000016", "step_000024"]  # CheckpointConfig(num_to_keep=2)
    assert {"rng_rank0.pt", "rng_rank1.pt"} <= {p.name for p in
                                                Path(out.checkpoint_path).iterdir()}


@pytest.mark.slow
def test_ray_train_fsdp_keep_best_restores_the_sharded_model(ray_local, corpus, tmp_path):
    """keep_best with 2 FSDP2 workers: the best weights (gathered on rank 0) are broadcast
    back into both shards at the end, so the saved model is the best evaluation's."""
    from transformers import AutoModelForCausalLM

    from pipelines.train_job import run_training

    start, _, _, _ = _trained_start(corpus, tmp_path)
    start.save_pretrained(tmp_path / "start_model")
    out = run_training("sft", data=ray_data_config(corpus),
                       train=quick_cfg(max_steps=4, batch_size=2, lr=0.5, warmup_steps=1,
                                       eval_every=2, checkpoint_every=0, keep_best=True),
                       tokenizer_dir=corpus["tok_dir"], base_model=str(tmp_path / "start_model"),
                       storage_path=tmp_path / "ray", name="sft_best", num_workers=2)
    assert [e["step"] for e in out.evals] == [0, 2, 4]
    assert out.best["step"] == 0 and out.best["value"] > max(e["valid_prompt_auc"] for e in out.evals[1:])
    saved = AutoModelForCausalLM.from_pretrained(out.model_dir).state_dict()
    assert all(torch.equal(saved[k], v) for k, v in start.state_dict().items())


@pytest.mark.slow
def test_ray_train_restarts_a_killed_worker_from_the_last_checkpoint(ray_local, corpus,
                                                                      tmp_path):
    from pipelines.train_job import run_training

    marker = tmp_path / "killed_once"
    out = run_training("sft", data=ray_data_config(corpus),
                       train=quick_cfg(max_steps=12, batch_size=2, checkpoint_every=4),
                       tokenizer_dir=corpus["tok_dir"], base_model=TINY,
                       storage_path=tmp_path / "ray", name="sft_fault", num_workers=2,
                       fault_injection={"rank": 1, "step": 6, "marker": str(marker)})
    assert marker.exists(), "the fault was not injected"
    assert out.resumed_from_step == 4  # not 0: the restart loaded the step-4 checkpoint
    assert [h["step"] for h in out.history] == list(range(1, 13))
    assert Path(out.checkpoint_path).name == "step_000012"
    state = json.loads((Path(out.checkpoint_path) / "trainer_state.json").read_text())
    assert state["step"] == 12 and state["world_size"] == 2


@pytest.mark.gpu
@pytest.mark.parametrize("device", [
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                  reason="needs CUDA")),
    pytest.param("cpu", marks=pytest.mark.skipif(
        os.environ.get("RANKBREW_TEST_FLEX_CPU") != "1",
        reason="compiles FlexAttention for CPU; set RANKBREW_TEST_FLEX_CPU=1")),
])
def test_flex_training_mask_matches_dense_mask(corpus, device):
    """On CUDA training uses FlexAttention block masks (attention='auto'): the same
    logits as the dense segment mask under SDPA, and different from plain causal."""
    tok = corpus["tok"]
    yes, no = corpus["answers"]
    tr, _ = sft_sets(corpus, layout="multi_item", max_seq_len=512)
    batch = collate([tr[i] for i in range(4)], tok.pad_token_id).to(device)
    assert batch.dense_mask
    lm = build_tiny_llama(len(tok), **TINY, seed=0).to(device)
    with torch.no_grad():
        lm.set_attn_implementation("sdpa")
        dense = RankingLM(lm, yes, no)(batch, "cues+lm")
        lm.set_attn_implementation("flex_attention")
        flex = RankingLM(lm, yes, no)(batch, "cues+lm")
        lm.set_attn_implementation("sdpa")
        causal = lm(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    real = batch.attention_mask.bool()
    tol = dict(atol=2e-3, rtol=2e-3)  # fp32; Triton may use tf32 inside the flex kernel
    torch.testing.assert_close(flex["logits"][real], dense["logits"][real], **tol)
    torch.testing.assert_close(flex["pair_logits"], dense["pair_logits"], **tol)
    # the check can fail: ignoring the segments (plain causal) moves the logits
    assert (causal[real] - dense["logits"][real]).abs().max() > 10 * tol["atol"]
