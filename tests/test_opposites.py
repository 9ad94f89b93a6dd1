"""Opposite-task check (components/evaluate/opposites.py): does the question matter?"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from components.evaluate.opposites import (
    are_opposite,
    list_correlations,
    opposite_correlations,
    opposite_pairs,
    opposite_verdict,
    swap_question,
)
from components.promptify.tasks import load_tasks
from components.promptify.verbalize import STYLES, PromptPieces, render_candidate, render_prefix

REG = load_tasks().by_id()


def test_registry_pairs_are_the_tasks_that_should_disagree():
    assert are_opposite(REG["job_apply_jobs-home"], REG["job_dismiss_jobs-home"])
    assert are_opposite(REG["ml_will_like"], REG["ml_will_dislike"])
    assert not are_opposite(REG["job_apply_jobs-home"], REG["job_save_jobs-home"])  # both engagements
    assert not are_opposite(REG["job_apply_jobs-home"], REG["job_dismiss_job-search"])  # other surface
    assert not are_opposite(REG["ml_will_like"], REG["ml_will_rate"])
    pairs = opposite_pairs(load_tasks().for_domain("movielens"))
    assert pairs == [("ml_will_like", "ml_will_dislike")]
    with pytest.raises(ValueError, match="not evaluated tasks"):
        opposite_pairs(load_tasks().for_domain("movielens"), [["ml_will_like", "nope"]])


@pytest.mark.parametrize("style", STYLES)
def test_swap_question_changes_only_the_instruction_and_question(style):
    a, b = REG["job_apply_jobs-home"], REG["job_dismiss_jobs-home"]
    prefix = render_prefix(PromptPieces(a.instruction, "A nurse", (), (), a.question, today="2026-01-02"),
                           "- applied: a job", style)
    want = render_prefix(PromptPieces(b.instruction, "A nurse", (), (), b.question, today="2026-01-02"),
                         "- applied: a job", style)
    assert swap_question(prefix, a, b) == want
    with pytest.raises(ValueError, match="job_save_jobs-home"):
        swap_question(prefix, REG["job_save_jobs-home"], b)


def test_list_correlations_skip_short_and_constant_lists():
    c = list_correlations([np.array([1, 2, 3.0]), np.array([1, 1, 1.0]), np.array([1, 2.0])],
                          [np.array([3, 2, 1.0]), np.array([1, 2, 3.0]), np.array([2, 1.0])])
    assert c.tolist() == [-1.0]


def _examples(task, n=12, k=6, seed=0, question_in_candidates=False):
    rng = np.random.default_rng(seed)
    rows = []
    q = task.question if question_in_candidates else None
    for i in range(n):
        prefix = render_prefix(PromptPieces(task.instruction, f"member {i}", (), (), task.question), "- x", "markdown")
        rows.append({"example_id": f"e{i:02d}", "task_id": task.id, "prefix": prefix,
                     "candidates": [render_candidate(f"item {rng.integers(1000)}", "job", "markdown", q)
                                    for _ in range(k)]})
    return pl.DataFrame(rows)


def _score_fn(reads_question: bool, where: str = "prefix"):
    """A fake model: a fixed score per item, negated when it reads "dismiss" in the
    prefix (``where="prefix"``) or in the candidate's own cue (``"candidate"``)."""
    def score(batch):
        out = []
        for prefix, cands in batch:
            base = np.array([(hash(c.split("Will the member")[0]) % 997) / 997 for c in cands])
            if where == "prefix":
                flip = np.full(len(cands), reads_question and "Will the member dismiss" in prefix)
            else:
                flip = np.array([reads_question and "Will the member dismiss" in c for c in cands])
            out.append(np.where(flip, -base, base))
        return out
    return score


@pytest.mark.parametrize(("reads", "where"), [(True, "prefix"), (False, "prefix"),
                                              (True, "candidate"), (False, "candidate")])
def test_a_model_that_ignores_the_question_is_caught(reads, where):
    a, b = REG["job_apply_jobs-home"], REG["job_dismiss_jobs-home"]
    # a model reading the question at the candidate needs the swap to reach the candidates too
    ex = _examples(a, question_in_candidates=where == "candidate")
    table = opposite_correlations(ex, [a, b], [(a.id, b.id)], _score_fn(reads, where), n_boot=200)
    row = table.row(0, named=True)
    assert row["lists"] == 12
    if reads:
        assert row["mean_corr"] == pytest.approx(-1.0) and row["share_negative"] == 1.0
        assert "reads the question" in opposite_verdict(table)
    else:
        assert row["mean_corr"] == pytest.approx(1.0) and row["share_negative"] == 0.0
        assert "does NOT reliably read" in opposite_verdict(table)


def test_scores_as_asked_can_come_from_the_fanout():
    a, b = REG["job_apply_jobs-home"], REG["job_dismiss_jobs-home"]
    ex = _examples(a, n=5)
    fn = _score_fn(True)
    asked = {e: s for e, s in zip(ex["example_id"], fn(list(zip(ex["prefix"], ex["candidates"], strict=True))),
                                  strict=True)}
    calls = []

    def counting(batch):
        calls.append(len(batch))
        return fn(batch)

    table = opposite_correlations(ex, [a, b], [(a.id, b.id)], counting, asked, n_boot=50)
    assert calls == [5] and table["mean_corr"][0] == pytest.approx(-1.0)
    assert opposite_verdict(table.clear()) is None
