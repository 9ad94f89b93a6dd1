"""benchmarks/ml_readout_ceiling.py: each shown number scored alone, on a run's scored rows."""

from __future__ import annotations

import sys

import polars as pl
import pytest

from benchmarks import ml_readout_ceiling as mrc


def _candidate(n: int, mean: float, word: str) -> str:
    return f"\n### Candidate movie\n- Title: X\n- Ratings so far: {n}, mean {mean:.1f} ({word})\nAnswer:"


def _artifacts(tmp_path, extra_scored: bool = False):
    ex_dir = tmp_path / "promptify" / "k1" / "examples"
    ex_dir.mkdir(parents=True)
    # list a: the higher mean is the positive; list b: the higher mean is the negative
    pl.DataFrame({"example_id": ["a", "b"], "split": ["test", "test"], "task_id": ["ml_will_like"] * 2,
                  "candidates": [[_candidate(10, 4.2, "acclaimed"), _candidate(3, 2.0, "panned")],
                                 [_candidate(50, 3.9, "liked"), _candidate(8, 3.2, "mixed")]]}
                 ).write_parquet(ex_dir / "part-0.parquet")
    rows = [("a", 0, 1), ("a", 1, 0), ("b", 0, 0), ("b", 1, 1)] + ([("c", 0, 1)] if extra_scored else [])
    ev = tmp_path / "evaluate" / "k2"
    ev.mkdir(parents=True)
    pl.DataFrame([{"example_id": e, "position": p, "label": y, "task_id": "ml_will_like", "model": "teacher",
                   "score": float(y)} for e, p, y in rows]).write_parquet(ev / "scores.parquet")


def test_candidate_stats_parses_count_mean_and_word(tmp_path):
    _artifacts(tmp_path)
    df = mrc.candidate_stats(tmp_path / "promptify" / "k1" / "examples", "ml_will_like")
    assert df.sort("example_id", "position").rows() == [
        ("a", 0, 10, 4.2, "acclaimed"), ("a", 1, 3, 2.0, "panned"),
        ("b", 0, 50, 3.9, "liked"), ("b", 1, 8, 3.2, "mixed")]


def test_table_scores_each_number_on_the_scored_rows(tmp_path, monkeypatch, capsys):
    _artifacts(tmp_path)
    monkeypatch.setattr(sys, "argv", ["x", "--run-dir", str(tmp_path)])
    mrc.main()
    out = capsys.readouterr().out
    assert "4 scored candidates in 2 lists" in out
    assert "| teacher | 1.000 | 1.000 |" in out            # scores = labels
    # per list: right in a, wrong in b (0.5); pooled: 3 of the 4 positive-negative pairs
    assert "| mean shown (1 dp) | 0.750 | 0.500 |" in out
    assert "| band word (5) | 0.750 | 0.500 |" in out


def test_scored_rows_without_a_prompt_name_the_fix(tmp_path, monkeypatch):
    _artifacts(tmp_path, extra_scored=True)
    monkeypatch.setattr(sys, "argv", ["x", "--run-dir", str(tmp_path)])
    with pytest.raises(SystemExit, match="--promptify-key"):
        mrc.main()
