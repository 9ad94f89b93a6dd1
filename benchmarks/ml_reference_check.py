"""MovieLens-100K popularity reference (issue 6): the issue's quick baseline, recomputed.

The issue quotes AUC 0.697 for popularity on "will like" (rating >= 4) with test = the last
20% of time and train-period aggregates only. This recomputes that baseline (an item's
like-rate in the train period, smoothed towards the global rate with 10 pseudo-ratings) on
(a) every test rating and (b) the "will like" candidates of a promptify run's test prompts,
the rows the evaluate stage scores. (b) is the like-for-like bar for our baselines, which
see the full history before each prompt.

    python -m benchmarks.ml_reference_check --examples-dir runs/movielens/artifacts/promptify/<key>/examples

Needs ../shared/data/ml-100k (or --ml100k); no Ray, no MLflow.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import polars as pl
from sklearn.metrics import roc_auc_score


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ml100k", type=Path,
                    default=Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-100k")
    ap.add_argument("--examples-dir", type=Path, required=True,
                    help="a MovieLens promptify run's examples/ directory")
    ap.add_argument("--smoothing", type=float, default=10.0, help="pseudo-ratings at the global rate")
    args = ap.parse_args()
    if not (args.ml100k / "u.data").exists():
        raise SystemExit(f"MovieLens-100K not found at {args.ml100k}: download it from "
                         "https://grouplens.org/datasets/movielens/100k/ or pass --ml100k")
    d = pl.read_csv(args.ml100k / "u.data", separator="\t", has_header=False,
                    new_columns=["member", "item", "rating", "t"])
    cut = d["t"].quantile(0.8)
    train, test = d.filter(pl.col("t") < cut), d.filter(pl.col("t") >= cut)
    glob_rate = float((train["rating"] >= 4).mean())
    pop = (train.group_by("item")
           .agg(pl.len().alias("n"), (pl.col("rating") >= 4).mean().alias("rate")))

    def auc(rows: pl.DataFrame) -> float:
        j = rows.join(pop, on="item", how="left").with_columns(
            pl.col("n").fill_null(0), pl.col("rate").fill_null(glob_rate))
        s = (j["rate"] * j["n"] + glob_rate * args.smoothing) / (j["n"] + args.smoothing)
        return float(roc_auc_score(j["y"], s))

    all_rows = test.select("item", (pl.col("rating") >= 4).cast(pl.Int8).alias("y"))
    ex = pl.read_parquet(args.examples_dir).filter(
        (pl.col("split") == "test") & (pl.col("task_id") == "ml_will_like"))
    cands = (ex.select("candidate_item_ids", "labels").explode(["candidate_item_ids", "labels"])
             .select(pl.col("candidate_item_ids").cast(pl.Int64).alias("item"),
                     pl.col("labels").alias("y")))
    print("| rows | n | positive rate | train-period popularity AUC |\n|---|---:|---:|---:|")
    for name, rows in (("every test rating", all_rows), ("will-like candidates of the test prompts", cands)):
        print(f"| {name} | {rows.height:,} | {rows['y'].mean():.3f} | {auc(rows):.3f} |")


if __name__ == "__main__":
    main()
