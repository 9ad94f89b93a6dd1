"""Promptification benchmark: prompts per second of the Ray Data job at 1 and 2 CPUs.

Builds a synthetic world (default 100,000 members), validates and splits it, runs the
vectorized ``prepare`` step and trains the tokenizer (timed separately), then runs the
Ray Data promptify job on a fresh local Ray with 1 CPU and with 2 CPUs. Peak memory is
the largest summed RSS of this process and all its descendants (Ray workers included),
sampled every 0.2 s.

    python -m benchmarks.bench_promptify                 # 100k members
    python -m benchmarks.bench_promptify --members 5000  # a quick look
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import shutil
import threading
import time
from pathlib import Path

import psutil


class PeakRSS:
    """Peak summed RSS of this process tree while the context is open."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()

    def _sample(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for p in [me, *me.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    total += p.memory_info().rss
            self.peak = max(self.peak, total)
            self._stop.wait(0.2)

    def __enter__(self) -> PeakRSS:
        self._t = threading.Thread(target=self._sample, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--members", type=int, default=100_000)
    ap.add_argument("--cpus", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--root", type=Path, default=Path("runs/bench/promptify"))
    args = ap.parse_args()

    import polars as pl
    import ray

    from components.config import PromptifyConfig, SplitConfig, SyntheticWorldConfig
    from components.data.split import split_dataset
    from components.data.synthetic import ALL_ACTIONS, generate_world
    from components.data.validate import validate_dataset
    from components.promptify.examples import prepare_member_table
    from components.promptify.tasks import load_tasks
    from components.promptify.tokenizer import train_bpe_tokenizer
    from pipelines.promptify_job import run_promptify_job

    root = args.root / f"m{args.members}"
    shutil.rmtree(root, ignore_errors=True)
    timings: dict[str, float] = {}
    t = time.perf_counter()
    generate_world(SyntheticWorldConfig(members=args.members), root / "world")
    validate_dataset(root / "world", root / "clean", ALL_ACTIONS)
    split_dataset(root / "clean", root / "split", SplitConfig())
    timings["data (generate+validate+split) s"] = time.perf_counter() - t

    tasks = load_tasks().for_domain("professional")
    cfg = PromptifyConfig(blocks=16)
    t = time.perf_counter()
    with PeakRSS() as mem:
        prepared, stats = prepare_member_table(root / "split", tasks, cfg, root / "prep")
    timings["prepare s"] = time.perf_counter() - t
    timings["prepare peak RSS MB"] = mem.peak / 2**20
    rows = pl.read_parquet(prepared.members_dir).sample(2000, seed=0)
    texts = [x for col in ("hist_markdown", "hist_compact", "hist_narrative")
             for lines in rows[col].to_list() for x in (lines or [])[-30:]]
    tok = train_bpe_tokenizer(texts, 4096, root / "tok")

    results = []
    for cpus in args.cpus:
        ray.init(num_cpus=cpus, include_dashboard=False, logging_level=logging.WARNING)
        try:
            t = time.perf_counter()
            with PeakRSS() as mem:
                dest = run_promptify_job(prepared, tok, tasks, cfg, root / f"out{cpus}", concurrency=cpus)
            seconds = time.perf_counter() - t
        finally:
            ray.shutdown()
        prompts = pl.scan_parquet(str(dest / "*.parquet")).select(pl.len()).collect().item()
        results.append({"cpus": cpus, "prompts": prompts, "seconds": round(seconds, 1),
                        "prompts_per_s": round(prompts / seconds), "peak_rss_mb": round(mem.peak / 2**20)})
        print(json.dumps(results[-1]), flush=True)

    base = results[0]["prompts_per_s"]
    lines = [
        f"machine: {platform.node()} {platform.machine()} cpus={len(os.sched_getaffinity(0))}, "
        f"date: {time.strftime('%Y-%m-%d')}, command: python -m benchmarks.bench_promptify "
        f"--members {args.members}",
        "",
        f"prepare (Polars, vectorized): {timings['prepare s']:.1f} s, peak RSS "
        f"{timings['prepare peak RSS MB']:.0f} MB; {stats}",
        "",
        "| CPUs | prompts | seconds | prompts/s | scaling vs 1 CPU | peak RSS (MB, all processes) |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [f"| {r['cpus']} | {r['prompts']:,} | {r['seconds']} | {r['prompts_per_s']:,} | "
              f"{r['prompts_per_s'] / base:.2f}x | {r['peak_rss_mb']:,} |" for r in results]
    print("\n".join(lines))
    (args.root / "promptify.json").write_text(json.dumps({"timings": timings, "results": results}, indent=2))
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
