"""Upcycled MoE vs from-scratch MoE vs dense, at equal training steps. One process, no Ray.

Three arms share a two-phase schedule (each phase a fresh ``train()``: AdamW, warmup,
cosine; phase 2 reads the training prompts in another seeded order):

* **upcycled**: dense, ``--dense-steps`` of SFT -> ``upcycle_to_moe`` -> ``--moe-steps``;
* **scratch MoE**: a random MoE of the same shape, ``--dense-steps`` + ``--moe-steps``;
* **dense**: the same dense model continued ``--moe-steps``.

So every arm gets the same steps, batches and learning-rate schedule; only the model
(dense or MoE) and the initialisation differ. Shapes: the dense model is the ``model:``
section of ``--profile`` (local.yaml: hidden 128, 2 layers, 4/2 heads, SwiGLU 512); the
MoE has ``--experts`` experts of that width, ``--top-k`` per token. SFT with
``lm_weight=1.0``, multi_item layout, ``--batch-size`` 8, ``--lr`` 3e-3 (the first table
in docs/model.md used 1e-3, at which these models do not learn to rank).

Validation: ``--valid-prompts`` non-held-out validation prompts (a seeded sample), scored
with ``score_prompts`` (multi-item mask, no answers in the context), AUC per task, then
the mean over tasks whose id has neither 'dismiss' nor 'hide' (the engagement tasks,
as in ``benchmarks.teacher_probe``).

The tables in docs/model.md ("Upcycling") came from::

    nice -n 10 python -m benchmarks.upcycle_compare --dense-steps 300 --moe-steps 300 \\
        --valid-prompts 1000 --threads 1 --lr 1e-3
    nice -n 10 python -m benchmarks.upcycle_compare --dense-steps 1000 --moe-steps 500 \\
        --router-aux-weight 0.01 --valid-prompts 1000 --threads 1 --lr 3e-3
"""

from __future__ import annotations

import argparse
import copy
import glob
import json
import math
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl

RUN = Path("runs/local/artifacts")


def default_inputs(examples: Path | None, tokenizer: Path | None) -> tuple[Path, Path]:
    """The newest complete promptify run's examples and the tokenizer it was made with
    (from its manifest), unless given."""
    if examples is None:
        done = sorted(glob.glob(str(RUN / "promptify/*/_rankbrew_manifest.json")),
                      key=lambda p: Path(p).stat().st_mtime)
        if not done:
            raise SystemExit(f"no complete {RUN}/promptify/*: run `make run` first or pass "
                             f"--examples-dir and --tokenizer-dir")
        examples = Path(done[-1]).parent / "examples"
    if tokenizer is None:
        manifest = examples.parent / "_rankbrew_manifest.json"
        if not manifest.exists():
            raise SystemExit(f"{examples} has no manifest naming its tokenizer: pass "
                             f"--tokenizer-dir")
        tokenizer = Path(json.loads(manifest.read_text())["inputs"]["tokenizer"]) / "tokenizer"
    return examples, tokenizer


def engagement_auc(scores: np.ndarray, labels: np.ndarray, tasks: np.ndarray
                   ) -> tuple[float, dict[str, float]]:
    """(mean AUC over engagement tasks, AUC per task); tasks with one class are left out."""
    from components.train.loop import roc_auc

    per_task = {}
    for t in np.unique(tasks):
        a = roc_auc(scores[tasks == t], labels[tasks == t])
        if not math.isnan(a):
            per_task[str(t)] = a
    engage = [a for t, a in per_task.items() if "dismiss" not in t and "hide" not in t]
    return (float(np.mean(engage)) if engage else float("nan")), per_task


def parameter_counts(model) -> tuple[int, int]:
    """(total, active per token): a MoE token runs top-k of its experts."""
    from components.model import count_parameters

    total = count_parameters(model)
    cfg = model.config
    n_exp = getattr(cfg, "num_local_experts", 0)
    if not n_exp:
        return total, total
    experts = model.get_decoder().layers[0].mlp.experts
    per_expert = (experts.gate_up_proj[0].numel() + experts.down_proj[0].numel())
    idle = (n_exp - cfg.num_experts_per_tok) * per_expert * cfg.num_hidden_layers
    return total, total - idle


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__)
    ap.add_argument("--examples-dir", type=Path, default=None,
                    help="promptify examples/ (default: the newest complete one under "
                    "runs/local)")
    ap.add_argument("--tokenizer-dir", type=Path, default=None,
                    help="default: the tokenizer named in the examples' manifest")
    ap.add_argument("--profile", type=Path, default=Path("pipelines/configs/local.yaml"),
                    help="the dense shape is this profile's model: section")
    ap.add_argument("--dense-steps", type=int, default=300, help="phase 1 steps")
    ap.add_argument("--moe-steps", type=int, default=300, help="phase 2 steps")
    ap.add_argument("--experts", type=int, default=4)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--router-std", type=float, default=1e-3)
    ap.add_argument("--router-aux-weight", type=float, default=0.0,
                    help="load-balancing loss weight for the MoE phases (0: none, as measured)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-3,
                    help="3e-3: the local SFT default; at 1e-3 the tiny models stay at the "
                    "base rates for 1,500 steps (docs/training.md)")
    ap.add_argument("--lm-weight", type=float, default=1.0)
    ap.add_argument("--train-prompts", type=int, default=0, help="0: all")
    ap.add_argument("--valid-prompts", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--out", type=Path, default=Path("runs/bench/upcycle_compare"))
    args = ap.parse_args()

    import torch
    import yaml

    from components.model import (
        ModelConfig,
        build_model,
        expert_spread,
        upcycle_to_moe,
        upcycled_model_config,
    )
    from components.promptify.tokenizer import answer_token_ids, load_tokenizer
    from components.train import TrainConfig, tokenize_prompts, train
    from components.train.loop import score_prompts

    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    examples, tok_dir = default_inputs(args.examples_dir, args.tokenizer_dir)
    tok = load_tokenizer(tok_dir)
    yes, no, pad = *answer_token_ids(tok), tok.pad_token_id
    dense_cfg = ModelConfig(**yaml.safe_load(args.profile.read_text())["model"])
    if dense_cfg.checkpoint is not None or dense_cfg.family != "dense":
        raise SystemExit(f"{args.profile}: model: must be a built-in dense shape "
                         f"(family dense, no checkpoint) to compare from scratch")
    moe_cfg = upcycled_model_config(dense_cfg, args.experts, args.top_k)

    ex = pl.read_parquet(examples).filter(~pl.col("held_out"))
    tr = ex.filter(pl.col("split") == "train").sample(fraction=1.0, shuffle=True, seed=0)
    if args.train_prompts:
        tr = tr.head(args.train_prompts)
    va = ex.filter(pl.col("split") == "valid")
    va = va.sample(n=min(args.valid_prompts, va.height), seed=1)
    train_set = tokenize_prompts(tr, tok, yes, no, 1024, "multi_item")
    valid_set = tokenize_prompts(va, tok, yes, no, 4096, "multi_item", with_answers=False)
    task_of_row = va["task_id"].to_numpy()
    print(f"data: {examples}, tokenizer {tok_dir}")
    print(f"data: {len(train_set)} train prompts, {len(valid_set)} valid prompts "
          f"({time.perf_counter() - t_start:.0f} s)", flush=True)

    device = torch.device(args.device)

    def run(lm, steps: int, seed: int, name: str):
        """One phase; returns (trained lm, history, seconds)."""
        cfg = TrainConfig(stage="sft", max_steps=steps, batch_size=args.batch_size,
                          lr=args.lr, warmup_steps=min(50, steps // 10), checkpoint_every=0,
                          log_every=1, lm_weight=args.lm_weight, seed=seed,
                          threads=args.threads, router_aux_weight=args.router_aux_weight)
        t0 = time.perf_counter()
        res = train(lm, train_set, cfg, args.out / name, yes_id=yes, no_id=no, pad_id=pad,
                    device=device)
        seconds = time.perf_counter() - t0
        h = res.history
        print(f"{name}: {steps} steps in {seconds:.0f} s, loss {h[0]['loss']:.3f} -> "
              f"{h[-1]['loss']:.3f}", flush=True)
        return res.module.lm, h, seconds

    def evaluate(lm) -> dict:
        from components.train.losses import RankingLM

        t0 = time.perf_counter()
        s, y, prompt = score_prompts(RankingLM(lm, yes, no).to(device), valid_set, pad,
                                     batch_size=2, device=device)
        rows = np.array([valid_set.prompts[int(i)].row for i in prompt])
        mean, per_task = engagement_auc(s, y, task_of_row[rows])
        from components.train.loop import roc_auc

        return {"valid_task_auc_mean": mean, "valid_auc": roc_auc(s, y),
                "per_task_auc": per_task, "eval_s": time.perf_counter() - t0}

    def tail(h: list[dict], key: str) -> float:
        n = max(1, min(20, len(h) // 10))
        return float(np.mean([x.get(key, math.nan) for x in h[-n:]]))

    results: dict[str, dict] = {}

    def record(name: str, lm, h: list[dict], seconds: float, steps: int) -> None:
        total, active = parameter_counts(lm)
        ev = evaluate(lm)
        results[name] = {"steps": steps, "params": total, "active_params": active,
                         "loss": tail(h, "loss"), "loss_sft": tail(h, "loss_sft"),
                         "loss_lm": tail(h, "loss_lm"), "train_s": seconds, **ev}
        if getattr(lm.config, "num_local_experts", 0):
            results[name]["expert_spread"] = expert_spread(lm)
        print(f"  {name}: valid_task_auc_mean {ev['valid_task_auc_mean']:.3f} "
              f"(scored in {ev['eval_s']:.0f} s)", flush=True)

    n, k = args.dense_steps, args.moe_steps
    torch.manual_seed(0)
    dense0 = build_model(dense_cfg, len(tok), pad).to(device)
    dense, h1, s1 = run(dense0, n, 0, "dense_phase1")
    record(f"dense @{n}", dense, h1, s1, n)

    t0 = time.perf_counter()
    up = upcycle_to_moe(dense, args.experts, args.top_k, router_std=args.router_std)
    up_s = time.perf_counter() - t0
    up, h2, s2 = run(up, k, 1, "upcycled_phase2")
    record("upcycled MoE", up, h2, s1 + up_s + s2, n + k)

    cont, h3, s3 = run(copy.deepcopy(dense), k, 1, "dense_phase2")
    record("dense (continued)", cont, h3, s1 + s3, n + k)

    torch.manual_seed(0)
    scratch0 = build_model(moe_cfg, len(tok), pad).to(device)
    scratch, h4, s4 = run(scratch0, n, 0, "scratch_phase1")
    scratch, h5, s5 = run(scratch, k, 1, "scratch_phase2")
    record("scratch MoE", scratch, h5, s4 + s5, n + k)

    date = datetime.now(UTC).strftime("%Y-%m-%d")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "result.json").write_text(json.dumps(
        {"date": date, "examples": str(examples), "tokenizer": str(tok_dir),
         "args": {a: str(v) for a, v in vars(args).items()},
         "train_prompts": len(train_set), "valid_prompts": len(valid_set),
         "results": results}, indent=1))
    print(f"\n{date}, {args.device}, threads {args.threads}; {len(valid_set)} valid prompts; "
          f"final loss = mean of the last 10% of steps (at most 20), sft + lm terms\n")
    print("| model | steps | params (active) | final loss (sft / lm) | valid AUC, task mean "
          "| valid AUC, pooled | train s |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        params = f"{r['params'] / 1e6:.2f}M ({r['active_params'] / 1e6:.2f}M)"
        loss = f"{r['loss']:.3f} ({r['loss_sft']:.3f} / {r['loss_lm']:.3f})"
        print(f"| {name} | {r['steps']} | {params} | {loss} | {r['valid_task_auc_mean']:.3f} "
              f"| {r['valid_auc']:.3f} | {r['train_s']:.0f} |")
    total_s = time.perf_counter() - t_start
    print(f"\nresults: {args.out / 'result.json'}; total {total_s:.0f} s")


if __name__ == "__main__":
    main()
