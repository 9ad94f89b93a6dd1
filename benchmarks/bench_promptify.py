"""Prepare + promptify at a member count: wall time, peak RSS, scaling (issues 3 and 19).

Builds a synthetic world (default 100,000 members; generate, validate and split are timed
and their peak RSS reported, but they are not part of the target), then runs the
pipeline's ``prepare`` (the embedded default's promptify config: match hints, steering
relabel, member partitions) and the Ray Data promptify job on a fresh local Ray with each
``--cpus`` value (default 2). The tokenizer is trained in between on a sample of one
partition and left out of the times. Peak memory is the largest summed RSS of this
process and all its descendants (Ray's raylet, GCS and workers included), sampled every
0.2 s; shared pages (Ray's object store) count once per process that maps them, so the
number errs high.

The target of issue 19: prepare + promptify (2 CPUs) of the 1M-member world with peak RSS
<= 8 GB and time(1M) <= 1.2 x 10 x time(100k). Each run saves
``<root>/promptify-m<members>.json``; a run prints its scaling ratio against every other
member count saved there: time(N) / ((N / M) x time(M)).

    python -m benchmarks.bench_promptify                   # 100k members, 2 CPUs
    python -m benchmarks.bench_promptify --members 1000000 # the target
    python -m benchmarks.bench_promptify --members 5000 --cpus 1 2  # a quick look, scaling
    python -m benchmarks.bench_promptify --prepare-only    # the data steps and prepare alone
"""

from __future__ import annotations

import argparse
import contextlib
import glob
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


def _timed(label: str, timings: dict[str, float], fn, *args, **kwargs):
    """Run ``fn``; record its seconds and the process tree's peak RSS (MB) under ``label``."""
    t = time.perf_counter()
    with PeakRSS() as mem:
        out = fn(*args, **kwargs)
    timings[f"{label} s"] = round(time.perf_counter() - t, 1)
    timings[f"{label} peak RSS MB"] = round(mem.peak / 2**20)
    print(f"{label}: {timings[f'{label} s']} s, peak RSS {timings[f'{label} peak RSS MB']:,} MB", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--members", type=int, default=100_000)
    ap.add_argument("--cpus", type=int, nargs="+", default=[2])
    ap.add_argument("--root", type=Path, default=Path("runs/bench/promptify"))
    ap.add_argument("--prepare-only", action="store_true",
                    help="stop after prepare (its time and memory; no tokenizer, no Ray job)")
    args = ap.parse_args()

    import polars as pl
    import ray

    from components.config import SyntheticWorldConfig, load_config
    from components.data.split import split_dataset
    from components.data.synthetic import ALL_ACTIONS, generate_world
    from components.data.validate import validate_dataset
    from components.promptify.examples import member_blocks, prepare_member_table
    from components.promptify.tasks import load_tasks
    from components.promptify.tokenizer import train_bpe_tokenizer
    from pipelines.promptify_job import run_promptify_job
    from pipelines.stages import steering_by_partition

    root = args.root / f"m{args.members}"
    shutil.rmtree(root, ignore_errors=True)
    timings: dict[str, float] = {}
    world = SyntheticWorldConfig(members=args.members)
    _timed("generate", timings, generate_world, world, root / "world")
    _timed("validate", timings, validate_dataset, root / "world", root / "clean", ALL_ACTIONS)
    default = load_config("local")
    _timed("split", timings, split_dataset, root / "clean", root / "split", default.split)
    shutil.rmtree(root / "world")
    shutil.rmtree(root / "clean")

    tasks = load_tasks().for_domain("professional")
    cfg = default.promptify  # the embedded default's: match hints on, 8 partitions at least
    # the steering relabel as the pipeline's prepare stage runs it (streamed by partition)
    relabel = steering_by_partition(default.model_copy(update={"data": default.data.model_copy(
        update={"synthetic": world})}), tasks)
    prepared, stats = _timed("prepare", timings, prepare_member_table, root / "split", tasks, cfg,
                             root / "prep", relabel=relabel)
    if args.prepare_only:
        print(json.dumps({"members": args.members, "blocks": member_blocks(cfg, args.members),
                          "load_average": os.getloadavg()[0], **timings, **stats}, indent=1))
        shutil.rmtree(root, ignore_errors=True)
        return
    one_part = sorted(prepared.members_dir.glob("*.parquet"))[0]
    rows = pl.read_parquet(one_part)
    rows = rows.sample(min(rows.height, 2000), seed=0)
    texts = [x for col in ("hist_markdown", "hist_compact", "hist_narrative")
             for lines in rows[col].to_list() for x in (lines or [])[-30:]]
    tok = train_bpe_tokenizer(texts, 4096, root / "tok")
    del rows, texts

    results = []
    for cpus in args.cpus:
        def job(cpus: int = cpus) -> Path:
            ray.init(num_cpus=cpus, include_dashboard=False, logging_level=logging.WARNING)
            try:
                return run_promptify_job(prepared, tok, tasks, cfg, root / f"out{cpus}", concurrency=cpus)
            finally:
                ray.shutdown()

        dest = _timed(f"promptify {cpus} CPU", timings, job)
        prompts = pl.scan_parquet(str(dest / "*.parquet")).select(pl.len()).collect().item()
        seconds = timings[f"promptify {cpus} CPU s"]
        results.append({"cpus": cpus, "prompts": prompts, "seconds": seconds,
                         "prompts_per_s": round(prompts / seconds),
                         "peak_rss_mb": timings[f"promptify {cpus} CPU peak RSS MB"]})
        shutil.rmtree(dest)  # ~3 KB per prompt on disk

    last = results[-1]
    target = {"members": args.members, "interactions": int(stats["prepare.events_in"]),
              "blocks": member_blocks(cfg, args.members), "cpus": last["cpus"],
              "seconds": round(timings["prepare s"] + last["seconds"], 1),
              "peak_rss_mb": max(timings["prepare peak RSS MB"], last["peak_rss_mb"])}
    base = results[0]["prompts_per_s"]
    lines = [
        f"machine: {platform.node()} {platform.processor() or platform.machine()} "
        f"cpus={len(os.sched_getaffinity(0))}, date: {time.strftime('%Y-%m-%d')}, load average at the "
        f"end {os.getloadavg()[0]:.1f}, command: python -m benchmarks.bench_promptify --members "
        f"{args.members} --cpus {' '.join(map(str, args.cpus))}",
        "",
        f"data (not the target): generate {timings['generate s']} s / {timings['generate peak RSS MB']:,} MB, "
        f"validate {timings['validate s']} s / {timings['validate peak RSS MB']:,} MB, split "
        f"{timings['split s']} s / {timings['split peak RSS MB']:,} MB",
        f"prepare ({target['blocks']} member partitions): {timings['prepare s']} s, peak RSS "
        f"{timings['prepare peak RSS MB']:,} MB; {stats}",
        "",
        "| CPUs | prompts | seconds | prompts/s | scaling vs first | peak RSS (MB, all processes) |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [f"| {r['cpus']} | {r['prompts']:,} | {r['seconds']} | {r['prompts_per_s']:,} | "
              f"{r['prompts_per_s'] / base:.2f}x | {r['peak_rss_mb']:,} |" for r in results]
    lines += ["", f"prepare + promptify ({target['cpus']} CPUs): {target['seconds']} s, peak RSS "
              f"{target['peak_rss_mb']:,} MB ({target['members']:,} members, "
              f"{target['interactions']:,} interactions)"]
    args.root.mkdir(parents=True, exist_ok=True)
    for other in sorted(glob.glob(str(args.root / "promptify-m*.json"))):
        prev = json.loads(Path(other).read_text()).get("target")
        if not prev or prev["members"] == args.members or prev["cpus"] != target["cpus"]:
            continue
        ratio = target["seconds"] / (target["members"] / prev["members"] * prev["seconds"])
        lines.append(f"scaling: time({target['members']:,}) / ({target['members'] / prev['members']:g} x "
                     f"time({prev['members']:,})) = {ratio:.2f} (1.0 = linear)")
    print("\n".join(lines))
    (args.root / f"promptify-m{args.members}.json").write_text(json.dumps(
        {"timings": timings, "results": results, "target": target, "stats": stats, "report": lines}, indent=2))
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
