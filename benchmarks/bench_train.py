"""Training throughput and model FLOPs utilization (MFU) of the training loop (issue 5).

Runs the real loop (``components.train.loop.train``: batching, the stage loss,
clipping, fused AdamW, checkpoint at the end) in one process on synthetic token ids of
the shape the stages see, and reports tokens/s and MFU over the steps after a warm-up
(the first steps pay compilation):

* ``--stage cpt``: documents of random length packed into ``--seq-len`` blocks with the
  document mask (``data.pack_documents``), full next-token loss over the vocabulary.
* ``--stage sft``: multi-item prompts (``data.layout_prompt``): a ``--prefix``-token
  prefix and candidates of ``--item`` tokens, loss on the answers only.

MFU = model FLOPs / time / peak. Model FLOPs per step = 6 x (matmul parameters) x tokens
+ 12 x layers x (heads x head_dim) x (query-key pairs the mask allows), i.e. attention
counted on the pairs actually allowed (causal, within a document or candidate), not on
the full square; the LM head counts only where it is computed (every token for cpt). The
pairs are counted on the first step's batch and applied to every step: for the default CPT
data that batch has 758 allowed pairs per token against 824 over all blocks, so attention
(14% of the 0.6B CPT FLOPs) and the MFU are slightly undercounted (~1% relative).
Peak: ``--peak-tflops`` (default 989 for an H100 SXM, dense bf16, the datasheet number);
the run also times a bf16 8192^3 matmul and reports MFU against that measured ceiling.

    python -m benchmarks.bench_train --device cuda --compile           # H100: 0.6B, cpt
    python -m benchmarks.bench_train --device cpu --preset tiny --steps 6 --batch-size 2

Imports torch, transformers, components.model/train only (no Ray, no MLflow).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from datetime import date

from benchmarks.bench_scoring import machine


def allowed_pairs(segment_ids) -> int:
    """Query-key pairs the training mask allows: segment 0 is a prefix every later token
    sees, segments > 0 see the prefix and themselves (causally), padding (-1) nothing."""
    import numpy as np

    total = 0
    for row in segment_ids:
        row = np.asarray(row)
        p = int((row == 0).sum())
        total += p * (p + 1) // 2
        _, counts = np.unique(row[row > 0], return_counts=True)
        total += int(sum(c * p + c * (c + 1) // 2 for c in counts))
    return total


def matmul_params(lm, with_head: bool) -> int:
    """Parameters used in matrix products per token: every Linear in the decoder layers
    (all experts' share for MoE is not handled: dense models only), plus the LM head when
    logits are computed for every token."""
    from torch import nn

    body = lm.get_decoder()
    n = sum(m.weight.numel() for m in body.layers.modules() if isinstance(m, nn.Linear))
    if with_head:
        n += lm.get_output_embeddings().weight.numel()
    return n


def measured_matmul_tflops(device: str) -> float | None:
    import torch

    if device != "cuda":
        return None
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        a @ b
    end.record()
    torch.cuda.synchronize()
    return 10 * 2 * 8192**3 / (start.elapsed_time(end) / 1e3) / 1e12


def synthetic_dataset(args, vocab: int, yes: int, no: int):
    import numpy as np

    from components.train.data import (
        PackedDataset,
        PromptDataset,
        TokenizeStats,
        layout_prompt,
        pack_documents,
    )

    rng = np.random.default_rng(0)
    need = args.batch_size * args.grad_accum * (args.steps + 2)
    if args.stage == "cpt":
        docs, tokens = [], 0
        while tokens < need * args.seq_len:
            n = int(rng.integers(args.doc_min, args.doc_max + 1))
            docs.append(rng.integers(10, vocab, n).tolist())
            tokens += n + 1
        ds: PackedDataset | PromptDataset = pack_documents(docs, eos_id=1, pad_id=0,
                                                           seq_len=args.seq_len)
        return ds
    stats = TokenizeStats()
    prompts = []
    for r in range(need):
        prefix = rng.integers(10, vocab, args.prefix).tolist()
        cands = [rng.integers(10, vocab, args.item).tolist() for _ in range(args.candidates)]
        labels = (rng.random(args.candidates) < 0.3).astype(int).tolist()
        prompts.append(layout_prompt(prefix, cands, labels, yes, no, args.seq_len,
                                     "multi_item", True, stats, row=r))
    return PromptDataset(prompts, stats, layout="multi_item", with_answers=True)


def run(args: argparse.Namespace) -> dict:
    import torch

    from components.model import build_model, count_parameters, preset
    from components.train.config import TrainConfig
    from components.train.loop import train

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device here")
    vocab = args.vocab or (151_936 if args.preset == "0.6b" else 4096)
    cfg = preset(args.preset, dtype="float32")  # fp32 master weights; bf16 via autocast
    torch.manual_seed(0)
    with torch.device(args.device):
        lm = build_model(cfg, vocab)
    yes, no = 5, 6
    ds = synthetic_dataset(args, vocab, yes, no)
    tcfg = TrainConfig(stage=args.stage, max_steps=args.steps, batch_size=args.batch_size,
                       grad_accum=args.grad_accum,
                       lr=1e-4, warmup_steps=1, checkpoint_every=0, log_every=1,
                       compile=args.compile, attention=args.attention, seed=0,
                       lm_loss_chunk_tokens=args.lm_loss_chunk)
    first = [ds[i] for i in range(args.batch_size * args.grad_accum)]
    pairs = allowed_pairs([x.segment_ids for x in first])
    tokens = sum(int((x.segment_ids != -1).sum()) for x in first)
    n_mm = matmul_params(lm, with_head=args.stage == "cpt")
    c = lm.config
    d_attn = c.num_attention_heads * (c.head_dim or c.hidden_size // c.num_attention_heads)
    flops_per_step = 6 * n_mm * tokens + 12 * c.num_hidden_layers * d_attn * pairs

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        with profiler(args) as on_step:
            res = train(lm, ds, tcfg, tmp, yes_id=yes, no_id=no, pad_id=0, device=args.device,
                        on_step=on_step)
        wall = time.perf_counter() - t0
    timed = [h for h in res.history if h["step"] > args.warmup]
    tps = statistics.median(h["tokens_per_s"] for h in timed)
    step_s = tokens / tps
    achieved = flops_per_step / step_s / 1e12
    ceiling = measured_matmul_tflops(args.device)
    out = dict(params=count_parameters(lm), matmul_params=n_mm, tokens_per_step=tokens,
               tokens_per_s=tps, step_s=step_s, tflops=achieved,
               mfu=achieved / args.peak_tflops, ceiling=ceiling,
               mfu_vs_ceiling=achieved / ceiling if ceiling else None,
               first_loss=res.history[0]["loss"], last_loss=res.history[-1]["loss"],
               attention=lm.config._attn_implementation, wall=wall,
               mem_gb=(torch.cuda.max_memory_allocated() / 2**30
                       if args.device == "cuda" else None))
    print(f"\nMachine: {machine()}; {date.today().isoformat()}.")
    print(f"Command: `python -m benchmarks.bench_train {' '.join(sys.argv[1:])}`.")
    print(f"Model `{args.preset}` ({out['params']:,} parameters, {n_mm:,} in matmuls), stage "
          f"{args.stage}, batch {args.batch_size} x {args.seq_len} x {args.grad_accum} micro-batches ({tokens:,} real tokens), "
          f"attention {out['attention']}, compile={args.compile}; median of steps "
          f"{args.warmup + 1}-{args.steps}.")
    print("| tokens/s | step (s) | model TFLOP/s | MFU (vs peak) | MFU (vs measured matmul) "
          "| peak mem (GiB) | loss first -> last |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    ceil = f"{out['mfu_vs_ceiling']:.1%} of {ceiling:.0f}" if ceiling else "-"
    mem = f"{out['mem_gb']:.1f}" if out["mem_gb"] is not None else "-"
    print(f"| {tps:,.0f} | {step_s:.3f} | {achieved:.1f} | {out['mfu']:.1%} of "
          f"{args.peak_tflops:.0f} | {ceil} | {mem} | {out['first_loss']:.3f} -> "
          f"{out['last_loss']:.3f} |")
    return out


@contextlib.contextmanager
def profiler(args: argparse.Namespace):
    """``on_step`` hook for ``train``: with ``--profile PATH``, profile two steps after the
    warm-up and write the top operators to PATH."""
    if not args.profile:
        yield None
        return
    from torch.profiler import ProfilerActivity, profile, schedule

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device == "cuda" else [])
    with profile(activities=acts, schedule=schedule(wait=args.warmup, warmup=1, active=2,
                                                    repeat=1)) as prof:
        yield lambda step, metrics: prof.step()
    key = "cuda_time_total" if args.device == "cuda" else "cpu_time_total"
    with open(args.profile, "w") as f:
        f.write(prof.key_averages().table(sort_by=key, row_limit=50))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--preset", default="0.6b", help="model preset (0.6b, tiny, ...)")
    ap.add_argument("--vocab", type=int, default=None,
                    help="vocabulary (default: 151,936 for 0.6b, 4,096 otherwise)")
    ap.add_argument("--stage", choices=["cpt", "sft"], default="cpt")
    ap.add_argument("--seq-len", type=int, default=4096, help="block / prompt length cap")
    ap.add_argument("--batch-size", type=int, default=4, help="sequences per step")
    ap.add_argument("--grad-accum", type=int, default=1, help="micro-batches per step")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--warmup", type=int, default=5, help="steps left out of the median")
    ap.add_argument("--doc-min", type=int, default=200, help="cpt: shortest document")
    ap.add_argument("--doc-max", type=int, default=3000, help="cpt: longest document")
    ap.add_argument("--prefix", type=int, default=1500, help="sft: prefix tokens")
    ap.add_argument("--item", type=int, default=32, help="sft: tokens per candidate")
    ap.add_argument("--candidates", type=int, default=16, help="sft: candidates per prompt")
    ap.add_argument("--compile", action="store_true", help="torch.compile each decoder layer")
    ap.add_argument("--profile", metavar="PATH", default=None,
                    help="write a torch.profiler table of two steps after the warm-up")
    ap.add_argument("--attention", default="auto", choices=["auto", "sdpa", "flex_attention"])
    ap.add_argument("--lm-loss-chunk", type=int, default=0, metavar="TOKENS",
                    help="chunked linear + cross-entropy, TOKENS per chunk (0: full logits)")
    ap.add_argument("--peak-tflops", type=float, default=989.0,
                    help="the device's dense bf16 peak (H100 SXM datasheet: 989)")
    args = ap.parse_args()
    if args.warmup >= args.steps:
        ap.error("--warmup must be below --steps")
    run(args)


if __name__ == "__main__":
    main()
