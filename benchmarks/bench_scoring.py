"""Multi-item vs per-item scoring speed (issue 4).

One request = a prefix of P tokens and N candidates of I tokens. Per-item scoring runs
N forwards of P + I tokens (the reference, ``score_per_item_reference``); multi-item runs
P + N I tokens in one packed pass (chunked under ``max_tokens_per_pass``, the prefix's KV
cache reused across chunks). The speedup is reported next to the token-count ratio
N (P + I) / (P + N I). Token ids are random (tokenization is not timed); the model has
random weights (speed does not depend on them).

Per-item scoring at N = 500 takes minutes on a CPU: it is timed on the first
``--per-item-cap`` candidates and extrapolated linearly (each candidate is an
independent forward of the same length, so the time is linear in N); the table marks
extrapolated rows.

    python -m benchmarks.bench_scoring                    # CPU, tiny model, P=1500, I=32
    python -m benchmarks.bench_scoring --family moe --n 10 100
    python -m benchmarks.bench_scoring --gpu-shape        # CUDA only: 0.6B shape, bf16

Imports torch, transformers and components.model only (no Ray, no MLflow), so it runs
on the GPU machine as is.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from datetime import date


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    dev = (f"{torch.cuda.get_device_name()}, " if torch.cuda.is_available() else "")
    return (f"{dev}{cpu}, {torch.get_num_threads()} torch threads; torch {torch.__version__}, "
            f"Python {platform.python_version()}")


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, repeats: int) -> float:
    """Median wall seconds of ``repeats`` calls after one warm-up call."""
    fn()
    _sync()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def request(n: int, p: int, i: int, vocab: int, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    prefix = torch.randint(0, vocab, (p,), generator=g).tolist()
    return prefix, [torch.randint(0, vocab, (i,), generator=g).tolist() for _ in range(n)]


def run(args: argparse.Namespace) -> None:
    import numpy as np
    import torch

    from components.model import (
        ScoringEngine,
        build_model,
        count_parameters,
        preset,
        score_per_item_reference,
    )
    from components.promptify.tokenizer import ANSWER_NO, ANSWER_YES

    if args.gpu_shape:
        if not torch.cuda.is_available():
            sys.exit("--gpu-shape needs CUDA (FlexAttention path, 0.6B model in bf16); "
                     "none found here")
        cfg, vocab, device = preset("0.6b"), 151_936, "cuda"
        args.prefix, args.item, args.n = 2000, 32, args.n if args.n_given else [500]
    else:
        name = "tiny" if args.family == "dense" else "tiny-moe"
        cfg, vocab, device = preset(name), args.vocab, "cpu"
    torch.manual_seed(0)
    with torch.device(device):
        model = build_model(cfg, vocab)
    tok = _IdsTokenizer(vocab)
    engine = ScoringEngine(model, tok, device=device, max_tokens_per_pass=args.max_tokens_per_pass,
                           candidate_tokens_per_pass=args.candidate_tokens_per_pass,
                           attention=args.attention, compile=args.compile,
                           kernel_options=json.loads(args.kernel_options) if args.kernel_options
                           else None)
    yes, no = tok.ids[ANSWER_YES], tok.ids[ANSWER_NO]

    rows = []
    for n in args.n:
        prefix, cands = request(n, args.prefix, args.item, vocab)
        t_multi = timed(lambda p=prefix, c=cands: engine.score_ids_batch([(p, c)]), args.repeats)
        k = min(n, args.per_item_cap)
        t_sub = timed(lambda p=prefix, c=cands[:k]: score_per_item_reference(model, p, c, yes, no),
                      1 if k > 4 else args.repeats)
        t_per = t_sub * n / k
        multi = engine.score_ids_batch([(prefix, cands[:k])])[0]
        ref = score_per_item_reference(model, prefix, cands[:k], yes, no).numpy()
        passes = _count_passes(engine, prefix, cands)
        ratio = n * (args.prefix + args.item) / (args.prefix + n * args.item)
        rows.append((n, t_per, k < n, t_multi, passes, t_per / t_multi, ratio,
                     attention_pair_ratio(n, args.prefix, args.item), n / t_multi,
                     float(np.abs(multi - ref).max())))
        print(f"N={n}: per-item {t_per:.3f}s{' (extrapolated)' if k < n else ''}, "
              f"multi {t_multi:.3f}s", file=sys.stderr)

    if args.profile:
        profile(engine, *request(args.n[-1], args.prefix, args.item, vocab), args.profile)
    cmd = "python -m benchmarks.bench_scoring " + " ".join(sys.argv[1:])
    print(f"\nMachine: {machine()}; {date.today().isoformat()}.")
    print(f"Command: `{cmd.strip()}`.")
    print(f"Model: `{'0.6b' if args.gpu_shape else name}` preset, {count_parameters(model):,} "
          f"parameters, vocab {vocab:,}, {cfg.dtype}, attention `{engine.attention}`; "
          f"P = {args.prefix}, I = {args.item}; max_tokens_per_pass = "
          f"{engine.max_tokens_per_pass}, candidate_tokens_per_pass = "
          f"{engine.candidate_tokens_per_pass}; compile={engine.compiled}, kernel_options={args.kernel_options}; median of {args.repeats} runs after a warm-up.\n")
    print("| N | per-item (s) | multi-item (s) | passes | speedup | token ratio N(P+I)/(P+NI) "
          "| attention-pair ratio | items/s (multi) | max abs diff |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n, tp, extra, tm, passes, sp, ratio, pairs, ips, diff in rows:
        star = "*" if extra else ""
        print(f"| {n} | {tp:.3f}{star} | {tm:.3f} | {passes} | {sp:.1f}x | {ratio:.1f}x | "
              f"{pairs:.1f}x | {ips:,.0f} | {diff:.1e} |")
    if any(r[2] for r in rows):
        print(f"\n\\* per-item time measured on the first {args.per_item_cap} candidates and "
              f"scaled linearly to N; the max abs diff (multi-item vs per-item scores) is over "
              f"those candidates.")


def profile(engine, prefix, cands, path: str) -> None:
    """Write the top operators of one multi-item request (torch.profiler) to ``path``."""
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with torch_profile(activities=acts) as prof:
        engine.score_ids_batch([(prefix, cands)])
        _sync()
    key = "cuda_time_total" if torch.cuda.is_available() else "cpu_time_total"
    with open(path, "w") as f:
        f.write(prof.key_averages().table(sort_by=key, row_limit=40))


def attention_pair_ratio(n: int, p: int, i: int) -> float:
    """Query-key pairs attended by per-item scoring over those the multi-item mask allows.

    Per-item: N causal triangles of P + I tokens. Multi-item: the prefix triangle, plus
    each candidate token's P prefix keys and its own causal triangle. Tokens count the
    linear layers' work; pairs count attention's.
    """
    per_item = n * (p + i) * (p + i + 1) / 2
    multi = p * (p + 1) / 2 + n * (i * p + i * (i + 1) / 2)
    return per_item / multi


def _count_passes(engine, prefix, cands) -> int:
    """Forward passes of the decoder body for one request (prefix pass included)."""
    from components.model.scoring import decoder_body

    calls = []
    hook = decoder_body(engine.model).register_forward_hook(lambda *_: calls.append(1))
    try:
        engine.score_ids_batch([(prefix, cands)])
    finally:
        hook.remove()
    return len(calls)


class _IdsTokenizer:
    """Just enough tokenizer for the engine when requests are token ids: " Yes" -> 5,
    " No" -> 6, padding 0 (the benchmark never tokenizes text)."""

    def __init__(self, vocab: int) -> None:
        self.ids = {" Yes": 5, " No": 6}
        self.pad_token_id, self.eos_token_id = 0, None
        self.vocab = vocab

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [self.ids[text]] if text in self.ids else [7, 8]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=None,
                    help="candidates per request (default: 1 10 100 500)")
    ap.add_argument("--prefix", type=int, default=1500, help="prefix tokens P")
    ap.add_argument("--item", type=int, default=32, help="tokens per candidate I")
    ap.add_argument("--family", choices=["dense", "moe"], default="dense",
                    help="CPU model: tiny (dense) or tiny-moe")
    ap.add_argument("--vocab", type=int, default=4096, help="CPU model vocabulary")
    ap.add_argument("--max-tokens-per-pass", type=int, default=None,
                    help="engine token budget (default: 8192 on CPU, 32768 on CUDA)")
    ap.add_argument("--candidate-tokens-per-pass", type=int, default=None,
                    help="engine cap on candidate tokens per pass over a cached prefix "
                    "(default: 512 on CPU, none on CUDA; 0 = one packed pass)")
    ap.add_argument("--per-item-cap", type=int, default=20,
                    help="time per-item scoring on at most this many candidates, extrapolate")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--attention", default="auto",
                    choices=["auto", "sdpa", "flex_attention", "shared_prefix"],
                    help="auto: flex_attention on CUDA, sdpa on CPU")
    ap.add_argument("--kernel-options", default=None, metavar="JSON",
                    help='FlexAttention kernel options, e.g. \'{"BLOCK_M": 128, "BLOCK_N": 64}\'')
    ap.add_argument("--profile", metavar="PATH", default=None,
                    help="write a torch.profiler table of one request at the largest N")
    ap.add_argument("--compile", action="store_true",
                    help="torch.compile the decoder layers (ScoringEngine(compile=True))")
    ap.add_argument("--gpu-shape", action="store_true",
                    help="CUDA only: 0.6B Qwen3-shaped model in bf16, P=2000, N=500, I=32")
    args = ap.parse_args()
    args.n_given = args.n is not None
    args.n = args.n or [1, 10, 100, 500]
    run(args)


if __name__ == "__main__":
    main()
