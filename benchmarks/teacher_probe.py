"""What does a tiny teacher learn from the promptified data? One process, no Ray.

Trains a small Llama on a run's promptify examples (optionally CPT first) and prints the
per-task validation AUC, scored by the serving engine's multi-item path. ``--probe``
swaps the labels for a deterministic function of the text, to isolate a skill:

* ``match``: "Yes" iff the candidate's industry equals the member's (cross-segment
  comparison, the skill the ranking tasks need); prompts where either does not parse
  are dropped;
* ``lexical``: "Yes" iff the candidate mentions healthcare (a word in the candidate
  only: a sanity check of the data path).

``--warm-probe match --warm-steps K`` trains K steps on the ``match`` labels first, under
their own instruction line ("is the candidate's industry the member's?"), then ``--steps``
on the real labels: a pretext task that grows the profile-candidate comparison before the
noisy real labels.

The table in docs/training.md ("What the tiny teacher learns") came from::

    python -m benchmarks.teacher_probe --probe match --steps 1000 --lm-weight 1.0
    python -m benchmarks.teacher_probe --steps 1000 --lm-weight 1.0
    python -m benchmarks.teacher_probe --stage align --steps 1000 --lm-weight 1.0
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import re
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import polars as pl

RUN = Path("runs/local/artifacts")
_INDUSTRY = re.compile(r"(?:Industry: |industry=|in the )([A-Z][A-Za-z &]+?)(?:\n|;|$| industry)")


def _newest(pattern: str) -> Path:
    hits = sorted(glob.glob(str(RUN / pattern)), key=lambda p: Path(p).stat().st_mtime)
    if not hits:
        raise SystemExit(f"no {RUN / pattern}: run `make run` first or pass the directory")
    return Path(hits[-1])


def _industry(text: str) -> str | None:
    m = _INDUSTRY.search(text)
    return m.group(1) if m else None


MATCH_INSTRUCTION = ("instruction: Predict whether the candidate's industry is the same as "
                     "the member's industry.")


def with_instruction(df: pl.DataFrame, line: str) -> pl.DataFrame:
    """Replace the first line of every prefix (the task instruction) with ``line``."""
    return df.with_columns(pl.col("prefix").str.replace(r"^[^\n]*", line))


def relabel(df: pl.DataFrame, probe: str) -> pl.DataFrame:
    """Probe labels (see the module docstring)."""
    labels = []
    for prefix, cands in zip(df["prefix"], df["candidates"], strict=True):
        if probe == "lexical":
            labels.append([int("ealthcare" in c) for c in cands])
            continue
        member, items = _industry(prefix), [_industry(c) for c in cands]
        labels.append(None if member is None or None in items
                      else [int(i == member) for i in items])
    return (df.with_columns(pl.Series("labels", labels, dtype=pl.List(pl.Int8)))
            .filter(pl.col("labels").is_not_null()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__)
    ap.add_argument("--examples-dir", type=Path, default=None,
                    help="promptify examples/ (default: the newest under runs/local)")
    ap.add_argument("--tokenizer-dir", type=Path, default=None)
    ap.add_argument("--member-rows-dir", type=Path, default=None, help="for --cpt-steps")
    ap.add_argument("--probe", choices=["none", "match", "lexical"], default="none")
    ap.add_argument("--stage", choices=["sft", "align"], default="sft")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--cpt-steps", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--lm-weight", type=float, default=0.0)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--train-prompts", type=int, default=0, help="0: all")
    ap.add_argument("--valid-prompts", type=int, default=1500)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warm-tasks", default=None,
                    help="regex of task ids for a warm-up phase before --steps on all tasks")
    ap.add_argument("--warm-steps", type=int, default=0)
    ap.add_argument("--warm-probe", choices=["match"], default=None,
                    help="warm-up phase on these probe labels (own instruction), all tasks")
    ap.add_argument("--out", type=Path, default=Path("runs/bench/teacher_probe"))
    args = ap.parse_args()

    import torch

    from components.promptify.tokenizer import answer_token_ids, load_tokenizer
    from components.train import (
        TrainConfig,
        build_cpt_dataset,
        build_tiny_llama,
        read_member_rows,
        tokenize_prompts,
        train,
    )
    from components.train.loop import roc_auc, score_prompts

    torch.set_num_threads(args.threads)
    examples = args.examples_dir or _newest("promptify/*/examples")
    tok_dir = args.tokenizer_dir or _newest("tokenizer/*/tokenizer")
    tok = load_tokenizer(tok_dir)
    yes, no = answer_token_ids(tok)
    ex = pl.read_parquet(examples).filter(~pl.col("held_out"))
    tr = ex.filter(pl.col("split") == "train").sample(fraction=1.0, shuffle=True, seed=0)
    if args.train_prompts:
        tr = tr.head(args.train_prompts)
    va = ex.filter(pl.col("split") == "valid")
    va = va.sample(n=min(args.valid_prompts, va.height), seed=1)
    if args.probe != "none":
        tr, va = relabel(tr, args.probe), relabel(va, args.probe)
    train_set = tokenize_prompts(tr, tok, yes, no, 1024, "multi_item")
    valid_set = tokenize_prompts(va, tok, yes, no, 4096, "multi_item", with_answers=False)
    lm = build_tiny_llama(len(tok), hidden_size=args.hidden, num_layers=args.layers,
                          num_heads=max(2, args.hidden // 32),
                          num_kv_heads=max(1, args.hidden // 64),
                          intermediate_size=4 * args.hidden, pad_token_id=tok.pad_token_id)
    log = lambda m: print({k: round(v, 4) for k, v in m.items()}, flush=True)  # noqa: E731
    t0 = time.perf_counter()
    if args.cpt_steps:
        rows_dir = args.member_rows_dir or _newest("prepare/*/member_rows")
        cut = json.loads(_newest("split/*/cutoffs.json").read_text())["valid_start"]
        cpt = build_cpt_dataset(read_member_rows(rows_dir), tok, 512, datetime.fromisoformat(cut))
        lm = train(lm, cpt, TrainConfig(stage="cpt", max_steps=args.cpt_steps, batch_size=8,
                                        lr=3e-3, warmup_steps=50, checkpoint_every=0,
                                        log_every=100),
                   args.out / "cpt", yes_id=yes, no_id=no, pad_id=tok.pad_token_id,
                   on_log=log).module.lm
    if args.warm_steps and (args.warm_tasks or args.warm_probe):
        wdf = tr.filter(pl.col("task_id").str.contains(args.warm_tasks or ""))
        if args.warm_probe:
            wdf = with_instruction(relabel(wdf, args.warm_probe), MATCH_INSTRUCTION)
        warm = tokenize_prompts(wdf, tok, yes, no, 1024, "multi_item")
        wcfg = TrainConfig(stage=args.stage, max_steps=args.warm_steps, batch_size=args.batch_size,
                           lr=args.lr, warmup_steps=min(50, args.warm_steps // 10),
                           checkpoint_every=0, log_every=50, lm_weight=args.lm_weight)
        lm = train(lm, warm, wcfg, args.out / "warm", yes_id=yes, no_id=no,
                   pad_id=tok.pad_token_id, on_log=log).module.lm
    cfg = TrainConfig(stage=args.stage, max_steps=args.steps, batch_size=args.batch_size,
                      lr=args.lr, warmup_steps=min(50, args.steps // 10), checkpoint_every=0,
                      log_every=50, lm_weight=args.lm_weight)
    res = train(lm, train_set, cfg, args.out / args.stage, yes_id=yes, no_id=no,
                pad_id=tok.pad_token_id, on_log=log)
    seconds = time.perf_counter() - t0
    scores, labels, prompt = score_prompts(res.module, valid_set, tok.pad_token_id)
    tasks = va["task_id"].to_numpy()[prompt]
    per_task = {}
    for t in np.unique(tasks):
        a = roc_auc(scores[tasks == t], labels[tasks == t])
        if not math.isnan(a):
            per_task[str(t)] = round(a, 3)
    engage = [a for t, a in per_task.items() if "dismiss" not in t and "hide" not in t]
    print(json.dumps({"seconds": round(seconds), "per_task_auc": per_task,
                      "mean_auc_engagement_tasks": round(float(np.mean(engage)), 3),
                      "tasks_above_0.6": f"{sum(a > 0.6 for a in engage)}/{len(engage)}",
                      "args": {k: str(v) for k, v in vars(args).items()}}, indent=1))


if __name__ == "__main__":
    main()
