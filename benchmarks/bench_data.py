"""Data-layer benchmark: synthetic world generation and validation at scale.

Each step runs in its own subprocess so its peak resident memory (ru_maxrss) is its
own. Results are printed as a markdown table and saved to runs/bench/data.json; copy
the table into docs/benchmarks.md with the machine and date.

    python -m benchmarks.bench_data                      # 100k and 1M members
    python -m benchmarks.bench_data --members 10000      # a quick look
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path


def _child(step: str, members: int, root: Path, members_per_file: int) -> None:
    """Run one step in this process and print a JSON line with its numbers."""
    world, clean = root / "world", root / "clean"
    t0 = time.perf_counter()
    if step == "generate":
        from components.config import SyntheticWorldConfig
        from components.data.synthetic import generate_world

        summary = generate_world(
            SyntheticWorldConfig(members=members, members_per_file=members_per_file), world
        )
        rows = int(summary["rows"]["interactions"]) if "rows" in summary else None
    else:
        from components.data.synthetic import ALL_ACTIONS
        from components.data.validate import validate_dataset

        report = validate_dataset(world, clean, ALL_ACTIONS)
        rows = report.tables["interactions"].rows_in
    seconds = time.perf_counter() - t0
    if rows is None:
        import polars as pl

        rows = pl.scan_parquet(str(world / "interactions" / "*.parquet")).select(pl.len()).collect().item()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"step": step, "members": members, "interactions": rows,
                      "seconds": round(seconds, 2), "rows_per_s": round(rows / seconds),
                      "peak_rss_mb": round(peak_mb)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--members", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--members-per-file", type=int, default=50_000)
    ap.add_argument("--root", type=Path, default=Path("runs/bench/data"))
    ap.add_argument("--child", choices=["generate", "validate"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args.child, args.members[0], args.root, args.members_per_file)
        return
    results = []
    for n in args.members:
        root = args.root / f"m{n}"
        shutil.rmtree(root, ignore_errors=True)
        for step in ("generate", "validate"):
            out = subprocess.run(
                [sys.executable, "-m", "benchmarks.bench_data", "--child", step, "--members", str(n),
                 "--root", str(root), "--members-per-file", str(args.members_per_file)],
                check=True, capture_output=True, text=True,
            ).stdout.strip().splitlines()[-1]
            results.append(json.loads(out))
            print(out, flush=True)
        shutil.rmtree(root, ignore_errors=True)
    lines = [
        f"machine: {platform.node()} {platform.machine()} cpus={len(__import__('os').sched_getaffinity(0))}, "
        f"date: {time.strftime('%Y-%m-%d')}, command: python -m benchmarks.bench_data "
        f"--members {' '.join(map(str, args.members))}",
        "",
        "| step | members | interactions | seconds | rows/s | peak RSS (MB) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['step']} | {r['members']:,} | {r['interactions']:,} | {r['seconds']} | "
        f"{r['rows_per_s']:,} | {r['peak_rss_mb']:,} |" for r in results
    ]
    print("\n".join(lines))
    args.root.parent.mkdir(parents=True, exist_ok=True)
    (args.root.parent / "data.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
