"""Per-task AUC of the ID-based baselines on a pipeline run's evaluation prompts.

Fits ``popularity``, ``lightgbm``, ``lightgbm_ids`` and ``sasrec``
(components/evaluate/baselines/) on the train split of a split-stage output and scores the prompts of one evaluation split
of a promptify-stage output; prints one row per task (pooled AUC over the task's
candidates, lists = prompts), the popularity variant chosen per task, a mean over
tasks, and the mean per-task AUC per slice (activity buckets, new items).

    python -m benchmarks.eval_baselines                      # newest run under runs/local
    python -m benchmarks.eval_baselines --split test --n-boot 200
    python -m benchmarks.eval_baselines --split-dir runs/local/artifacts/split/<key> \\
        --examples-dir runs/local/artifacts/promptify/<key>/examples --baselines lightgbm
    python -m benchmarks.eval_baselines --baselines sasrec --set sasrec_task_aware=false  # ablation

Steering tasks (``steering:``) are trained on the same relabelled targets as the
prepare stage when the run's ingest manifest names a synthetic world (the manifests
are followed from the split directory); ``--no-relabel`` trains them on action labels.
Plain Python: no Ray, no MLflow.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from components.evaluate.baselines import BASELINES

ARTIFACTS = Path(__file__).resolve().parents[1] / "runs" / "local" / "artifacts"


def newest(stage: str) -> Path:
    dirs = sorted((ARTIFACTS / stage).glob("*/"), key=lambda p: p.stat().st_mtime)
    if not dirs:
        sys.exit(f"no {stage} output under {ARTIFACTS / stage}: run `make run` first or pass --{stage}-dir")
    return dirs[-1]


def world_config(split_dir: Path):
    """The synthetic world config of the run that produced ``split_dir``, or None."""
    from components.config import SyntheticWorldConfig

    path = split_dir
    for _ in range(4):  # split -> validate -> ingest
        manifest = path / "_rankbrew_manifest.json"
        if not manifest.exists():
            return None
        m = json.loads(manifest.read_text())
        data = m.get("config", {}).get("data")
        if data is not None:
            return SyntheticWorldConfig(**data["synthetic"]) if data.get("source") == "synthetic" else None
        inputs = list(m.get("inputs", {}).values())
        if not inputs:
            return None
        path = Path(inputs[0])
    return None


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--split-dir", type=Path, default=None, help="default: newest split output")
    ap.add_argument("--examples-dir", type=Path, default=None, help="default: newest promptify examples/")
    ap.add_argument("--split", default="valid", choices=["valid", "test"])
    ap.add_argument("--baselines", nargs="+", default=list(BASELINES), choices=list(BASELINES),
                    help="space-separated (default: all)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="BaselineConfig field, value as JSON (bare words are strings): "
                    "--set sasrec_task_epochs=0 --set sasrec_attributes=[]")
    ap.add_argument("--tasks", type=Path, nargs="*", default=None, help="task YAML files (default: built-in)")
    ap.add_argument("--no-relabel", action="store_true")
    ap.add_argument("--n-boot", type=int, default=0, help="bootstrap replicates for AUC intervals")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    overrides = {}
    for kv in args.overrides:
        key, sep, value = kv.partition("=")
        if not sep:
            sys.exit(f"--set {kv!r}: expected KEY=VALUE, e.g. --set sasrec_task_aware=false")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value

    import numpy as np
    import polars as pl

    from components.evaluate.baselines import (
        BaselineConfig,
        BaselineData,
        fit_baselines,
        score_baselines,
    )
    from components.evaluate.metrics import bootstrap_auc_ci, roc_auc
    from components.evaluate.slices import CUMULATIVE_ACTIVITY, candidate_rows, slice_flags
    from components.promptify.tasks import load_tasks

    split_dir = args.split_dir or newest("split")
    examples_dir = args.examples_dir or newest("promptify") / "examples"
    print(f"split dir:    {split_dir}\nexamples dir: {examples_dir}\nsplit:        {args.split}")
    data = BaselineData.from_split_dir(split_dir)
    examples = pl.read_parquet(examples_dir).filter(pl.col("split") == args.split).sort("example_id")
    if examples.height == 0:
        sys.exit(f"no '{args.split}' rows in {examples_dir}")
    wanted = set(examples["task_id"].unique().to_list())
    tasks = [t for t in load_tasks(args.tasks).tasks if t.id in wanted]
    missing = wanted - {t.id for t in tasks}
    if missing:
        sys.exit(f"tasks {sorted(missing)} of the examples are not in the registry: pass --tasks")

    relabel = None
    world = None if args.no_relabel else world_config(split_dir)
    if world is not None and any(t.steering for t in tasks):
        from components.promptify.steering import steering_relabel

        def relabel(labeled, members, items):
            return steering_relabel(labeled, tasks, members, items, world)
    print(f"steering tasks trained on: {'relabelled targets' if relabel else 'action labels'}")

    fitted, seconds = {}, {}
    groups = [[b for b in args.baselines if b != "sasrec"], [b for b in args.baselines if b == "sasrec"]]
    for names in (g for g in groups if g):
        cfg = BaselineConfig(**{**overrides, "baselines": names, "seed": args.seed})
        t0 = time.perf_counter()
        fitted.update(fit_baselines(data, tasks, cfg, relabel=relabel))
        seconds["+".join(names)] = time.perf_counter() - t0
    t0 = time.perf_counter()
    scored = score_baselines(fitted, data, examples)
    seconds["score"] = time.perf_counter() - t0

    rows = candidate_rows(examples)
    for name in fitted:
        s = scored.filter(pl.col("baseline") == name)["scores"].explode().to_numpy()
        rows = rows.with_columns(pl.Series(name, s, dtype=pl.Float64))
    rows = slice_flags(rows, data.items)

    names = list(fitted)
    pop = fitted.get("popularity")
    width = max(len(t.id) for t in tasks)
    head = f"| {'task':<{width}} | held out | lists | cands | pos | " + " | ".join(f"{n:>10}" for n in names)
    head += " | popularity variant |" if pop else " |"
    print(f"\nAUC on the {args.split} split (pooled over each task's candidates)\n")
    print(head)
    print("|" + "|".join("---" for _ in range(head.count("|") - 1)) + "|")
    per_task = {n: [] for n in names}
    for t in sorted(tasks, key=lambda t: (t.held_out, t.id)):
        part = rows.filter(pl.col("task_id") == t.id)
        y = part["label"].to_numpy()
        cells = []
        for n in names:
            ci = bootstrap_auc_ci(part[n].to_numpy(), y, part["example_id"].to_numpy(), n=args.n_boot)
            per_task[n].append((t.held_out, ci.auc))
            cell = f"{ci.auc:.3f}" + (f" [{ci.low:.3f}, {ci.high:.3f}]" if args.n_boot else "")
            cells.append(f"{cell:>10}")
        line = (f"| {t.id:<{width}} | {'yes' if t.held_out else 'no':>8} | {part['example_id'].n_unique():>5} | "
                f"{part.height:>5} | {int(y.sum()):>4} | " + " | ".join(cells))
        line += f" | {pop.variant.get(t.id, '-')} |" if pop else " |"
        print(line)
    for label, keep in (("mean, trained tasks", False), ("mean, held-out tasks", True)):
        vals = [np.nanmean([a for h, a in per_task[n] if h == keep] or [np.nan]) for n in names]
        print(f"| {label:<{width}} |          |       |       |      | "
              + " | ".join(f"{v:>10.3f}" for v in vals) + (" | |" if pop else " |"))

    print(f"\nMean per-task AUC by slice ({args.split}; tasks with both classes in the slice)\n")
    slices = ["all", *CUMULATIVE_ACTIVITY, "new_item", "cold_item"]
    print("| slice | cands | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(names))
    for sl in slices:
        part = rows.filter(pl.col(sl))
        vals = []
        for n in names:
            aucs = [roc_auc(g[n].to_numpy(), g["label"].to_numpy()) for _, g in part.group_by("task_id")]
            vals.append(np.nanmean(aucs) if any(not np.isnan(a) for a in aucs) else np.nan)
        print(f"| {sl} | {part.height} | " + " | ".join(f"{v:.3f}" for v in vals) + " |")
    for name in ("lightgbm", "lightgbm_ids"):
        if name in fitted and fitted[name].fallback:
            print(f"\n{name} fell back to popularity for: {fitted[name].fallback}")
    print("\nseconds: " + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items()))


if __name__ == "__main__":
    main()
