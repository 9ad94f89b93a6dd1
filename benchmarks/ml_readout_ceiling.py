"""MovieLens ``ml_will_like``: how far each number shown in a candidate's text ranks on its own.

Why: the teacher reads ``- Ratings so far: 98, mean 4.0 (liked)``. If a model that only read
the band word could at best rank at AUC X, a teacher at X has learned the word and needs
the digits (or the member's taste) to go further. This scores the evaluate stage's scored
rows of one run (same candidates as its teacher and baselines) with: the count, the mean as
printed, the shrunk mean the word is cut from, the band word's rank, and the same shrunk mean
cut into 10 and 20 equal-share bands (what finer words could carry at most); pooled AUC and
per-list (group) AUC, beside the run's teacher and baselines.

    python -m benchmarks.ml_readout_ceiling --run-dir runs/movielens/artifacts \\
        [--evaluate-key KEY] [--promptify-key KEY] [--task ml_will_like]

Reads artifacts only: no Ray, no MLflow, no model.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np
import polars as pl

from components.evaluate.metrics import group_auc, roc_auc

STATS = re.compile(r"Ratings so far: (\d+), mean ([\d.]+)(?: \((\w+)\))?")
WORDS = ("panned", "mixed", "decent", "liked", "acclaimed")  # the movielens profile's bands


def _newest(parent: Path, key: str | None) -> Path:
    if key:
        return parent / key
    dirs = sorted((p for p in parent.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
    if not dirs:
        raise SystemExit(f"no stage output under {parent}: run `rankbrew run --profile movielens` first")
    return dirs[-1]


def candidate_stats(examples: Path, task: str) -> pl.DataFrame:
    """One row per test candidate of ``task``: example_id, position, count, mean, word."""
    ex = (pl.scan_parquet(examples / "*.parquet").filter((pl.col("split") == "test") & (pl.col("task_id") == task))
          .select("example_id", "candidates").collect())
    rows = []
    for eid, cands in ex.iter_rows():
        for pos, text in enumerate(cands):
            m = STATS.search(text)
            rows.append((eid, pos, int(m[1]) if m else 0, float(m[2]) if m else None, m[3] if m else None))
    return pl.DataFrame(rows, schema=["example_id", "position", "count", "mean", "word"], orient="row")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", type=Path, required=True, help="a movielens run's artifacts/ directory")
    ap.add_argument("--evaluate-key", help="the evaluate stage's key (default: the newest)")
    ap.add_argument("--promptify-key", help="the promptify stage's key (default: the newest)")
    ap.add_argument("--task", default="ml_will_like")
    ap.add_argument("--prior-mean", type=float, default=3.5, help="as promptify.item_stats_words")
    ap.add_argument("--prior-weight", type=float, default=5.0, help="as promptify.item_stats_words")
    args = ap.parse_args()
    ev = _newest(args.run_dir / "evaluate", args.evaluate_key)
    pr = _newest(args.run_dir / "promptify", args.promptify_key)
    scores = pl.read_parquet(ev / "scores.parquet").filter(pl.col("task_id") == args.task)
    wide = scores.pivot(on="model", index=["example_id", "position", "label"], values="score")
    models = [c for c in wide.columns if c not in ("example_id", "position", "label")]
    df = wide.join(candidate_stats(pr / "examples", args.task), on=["example_id", "position"], how="inner")
    if df.height != wide.height:
        raise SystemExit(f"{wide.height - df.height} scored rows have no prompt in {pr}: pass the "
                         "--promptify-key the evaluate stage read")
    n, mean = df["count"].to_numpy().astype(float), df["mean"].fill_null(args.prior_mean).to_numpy()
    shrunk = (mean * n + args.prior_mean * args.prior_weight) / (n + args.prior_weight)
    cols = {m: df[m].to_numpy() for m in models}
    cols["count shown"] = n
    cols["mean shown (1 dp)"] = mean
    cols["shrunk mean"] = shrunk
    if df["word"].null_count() < df.height:
        cols["band word (5)"] = np.array([WORDS.index(w) if w in WORDS else -1 for w in df["word"].to_list()])
    for k in (10, 20):
        cols[f"shrunk mean in {k} bands"] = np.searchsorted(np.quantile(shrunk, np.linspace(0, 1, k + 1)[1:-1]), shrunk)
    y, g = df["label"].to_numpy(), df["example_id"].to_numpy()
    print(f"{args.task}: {df.height} scored candidates in {df['example_id'].n_unique()} lists "
          f"(evaluate {ev.name}, promptify {pr.name})\n")
    print("| scorer | pooled AUC | per-list AUC |\n|---|---:|---:|")
    for name, s in cols.items():
        print(f"| {name} | {roc_auc(s, y):.3f} | {group_auc(s, y, g):.3f} |")


if __name__ == "__main__":
    main()
