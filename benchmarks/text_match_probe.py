"""How much ranking signal do the prompts' words carry? A hand-written text score per task.

For every markdown-style prompt of a run's promptify examples, parse the member's
``Skills``, ``Industry`` and ``Location`` lines from the prefix and the candidate's from
its text, and score ``2 * skill share + industry match + 0.7 * location match``; print the
per-task AUC of that score against the labels. No learning, no ids: if this score ranks
well and the teacher does not, the information is in the text and the model fails to
extract it (docs/training.md, "What the tiny teacher learns").

    python -m benchmarks.text_match_probe                 # newest run under runs/local
    python -m benchmarks.text_match_probe --split test --examples-dir DIR
"""

from __future__ import annotations

import argparse
import glob
import json
import re
from pathlib import Path

import numpy as np
import polars as pl

from components.evaluate.metrics import roc_auc


def _field(text: str, name: str) -> str | None:
    m = re.search(rf"- {name}: ([^\n]*)", text)
    return m.group(1) if m else None


def text_score(prefix: str, candidate: str) -> float:
    """2 x share of the candidate's skills the member lists + same industry + 0.7 x same city."""
    member_skills = set((_field(prefix, "Skills") or "").split(", "))
    skills = [s for s in (_field(candidate, "Skills") or "").split(", ") if s]
    share = sum(s in member_skills for s in skills) / max(1, len(skills))
    same_industry = _field(candidate, "Industry") == _field(prefix, "Industry")
    same_city = _field(candidate, "Location") == _field(prefix, "Location")
    return 2.0 * share + float(same_industry) + 0.7 * float(same_city)


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples-dir", type=Path, default=None,
                    help="promptify examples/ (default: the newest under runs/local)")
    ap.add_argument("--split", default="valid")
    args = ap.parse_args(argv)
    ex_dir = args.examples_dir or Path(sorted(
        glob.glob("runs/local/artifacts/promptify/*/examples"),
        key=lambda p: Path(p).stat().st_mtime)[-1])
    df = pl.read_parquet(ex_dir).filter((pl.col("style") == "markdown")
                                        & (pl.col("split") == args.split))
    per_task: dict[str, float] = {}
    for (task,), g in df.group_by(["task_id"]):
        s, y = [], []
        for prefix, cands, labels in g.select("prefix", "candidates", "labels").iter_rows():
            s += [text_score(prefix, c) for c in cands]
            y += list(labels)
        auc = roc_auc(np.asarray(s), np.asarray(y))
        if not np.isnan(auc):
            per_task[str(task)] = round(float(auc), 3)
    per_task = dict(sorted(per_task.items()))
    engage = [a for t, a in per_task.items() if "dismiss" not in t and "hide" not in t]
    out = {"split": args.split, "examples": str(ex_dir), "per_task_auc": per_task,
           "mean_auc_engagement_tasks": round(float(np.mean(engage)), 3)}
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
