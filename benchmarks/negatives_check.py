"""Do sampled negatives carry a time shortcut? Age and "new item" share of sampled
negatives vs positives, and the AUC of those two features alone, per pool.

    python -m benchmarks.negatives_check --split-dir runs/local/artifacts/split/<key>

For each task with ``negatives: sampled``: one list per (member, window) of the chosen
split's positives, ``k`` negatives drawn by each pool as promptify draws them
(``catalogue``: age- and newness-matched at each positive's time; ``impressions``: the
former scheme, items shown before the list's first question). Prints, per pool, the
share of new items (nobody's event before the question) among positives and negatives,
the KS distance of their ages, and the AUC of "item age" and "is new" as scores
(0.5: no shortcut).
"""

from __future__ import annotations

import argparse

import numpy as np
import polars as pl
from scipy.stats import ks_2samp

from components.evaluate.baselines import BaselineData
from components.evaluate.metrics import roc_auc
from components.promptify.examples import label_events
from components.promptify.negatives import (
    CatalogueSampler,
    NegativeSampler,
    catalogue_pool,
    impression_pool,
)
from components.promptify.tasks import load_tasks

DAY_US = 86_400_000_000


def check(data: BaselineData, task, split: str, k: int, pool: str) -> dict[str, float]:
    lab = (label_events(data.interactions, [task]).filter((pl.col("split") == split) & (pl.col("label") == 1))
           .with_columns(pl.col("timestamp").dt.epoch("us").alias("t")))
    per = lab.group_by("member_id").agg(pl.col("item_id"), pl.col("t")).sort("member_id")
    first = dict(data.interactions.group_by("item_id").agg(pl.col("timestamp").min().dt.epoch("us")).iter_rows())
    created = dict(data.items.select("item_id", pl.col("created_at").dt.epoch("us")).iter_rows())
    sampler = (CatalogueSampler(catalogue_pool(data.items, data.interactions)) if pool == "catalogue"
               else NegativeSampler(impression_pool(data.interactions, data.items)))
    pos, neg = [], []
    for m, (_member, items, times) in enumerate(per.iter_rows()):
        rng = np.random.default_rng([0, m])
        anchors = list(zip(times, items, strict=True))
        pos += anchors
        if pool == "catalogue":
            neg += [(t, it) for it, t in sampler.draw(rng, task.item_type, anchors, set(items), k)]
        else:
            got = sampler.sample(rng, task.item_type, task.surface, min(times), set(items), k)
            neg += list(zip(sorted(times), got, strict=False))
    never = np.iinfo(np.int64).max

    def feats(pairs):
        age = np.array([(t - (created.get(it) or t)) / DAY_US for t, it in pairs])
        new = np.array([first.get(it, never) >= t for t, it in pairs], dtype=float)
        return age, new

    (ap, np_), (an, nn) = feats(pos), feats(neg)
    y = np.r_[np.ones(len(ap)), np.zeros(len(an))]
    return {"positives": len(ap), "negatives": len(an), "new_share_pos": np_.mean(), "new_share_neg": nn.mean(),
            "age_ks": ks_2samp(ap, an).statistic, "auc_newer": roc_auc(-np.r_[ap, an], y),
            "auc_is_new": roc_auc(np.r_[np_, nn], y)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--split-dir", required=True, help="a split stage output (runs/<profile>/artifacts/split/<key>)")
    ap.add_argument("--split", default="test", choices=["train", "valid", "test"])
    ap.add_argument("--negatives", type=int, default=4, help="sampled negatives per list (promptify's default)")
    ap.add_argument("--domain", default="professional")
    args = ap.parse_args(argv)
    data = BaselineData.from_split_dir(args.split_dir)
    rows = []
    for task in (t for t in load_tasks().for_domain(args.domain) if t.negatives != "logged"):
        for pool in ("impressions", "catalogue"):
            rows.append({"task": task.id, "pool": pool, **check(data, task, args.split, args.negatives, pool)})
    with pl.Config(tbl_rows=-1, tbl_cols=-1, float_precision=3, tbl_width_chars=200):
        print(pl.DataFrame(rows))


if __name__ == "__main__":
    main()
