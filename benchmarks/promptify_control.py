"""Issue 3 control: does the prompt builder scale over 2 plain processes (no Ray)?

Builds a synthetic world of N members (default 10,000), prepares it and trains its
tokenizer, then runs ``PromptBuilder`` over the member files in 1 and then 2
``multiprocessing`` processes (one thread each) and prints prompts/s. Compare with the
Ray Data job on the same world size (``python -m benchmarks.bench_promptify --members N``)
to see what Ray costs; docs/benchmarks.md has both.

    python -m benchmarks.promptify_control --members 10000
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import time
from pathlib import Path

_ONE_THREAD = {"TOKENIZERS_PARALLELISM": "false", "POLARS_MAX_THREADS": "1",
               "RAYON_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
_STATE: dict = {}


def _init(tok_dir: str, prep_dir: str) -> None:
    """Per process: load the builder once (not timed by the caller's warm-up pass)."""
    from components.config import PromptifyConfig
    from components.promptify.examples import PreparedData, PromptBuilder
    from components.promptify.tasks import load_tasks

    prep = Path(prep_dir)
    prepared = PreparedData.from_dir(prep)
    _STATE["builder"] = PromptBuilder(tok_dir, prepared, load_tasks().for_domain("professional"),
                                      PromptifyConfig(blocks=16))


def _work(path: str) -> int:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    return sum(_STATE["builder"](table.slice(i, 64)).num_rows for i in range(0, table.num_rows, 64))


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--members", type=int, default=10_000)
    ap.add_argument("--root", type=Path, default=Path("runs/bench/promptify_control"))
    args = ap.parse_args(argv)
    os.environ.update(_ONE_THREAD)

    import polars as pl

    from components.config import PromptifyConfig, SplitConfig, SyntheticWorldConfig
    from components.data.split import split_dataset
    from components.data.synthetic import ALL_ACTIONS, generate_world
    from components.data.validate import validate_dataset
    from components.promptify.examples import prepare_member_table
    from components.promptify.tasks import load_tasks
    from components.promptify.tokenizer import train_bpe_tokenizer

    root = args.root / f"m{args.members}"
    if not (root / "tok").exists():
        generate_world(SyntheticWorldConfig(members=args.members), root / "world")
        validate_dataset(root / "world", root / "clean", ALL_ACTIONS)
        split_dataset(root / "clean", root / "split", SplitConfig())
        prepared, _ = prepare_member_table(root / "split", load_tasks().for_domain("professional"),
                                           PromptifyConfig(blocks=16), root / "prep")
        rows = pl.read_parquet(prepared.members_dir).sample(2000, seed=0)
        texts = [x for lines in rows["hist_markdown"].to_list() for x in (lines or [])[-30:]]
        train_bpe_tokenizer(texts, 4096, root / "tok")
    files = [str(f) for f in sorted((root / "prep" / "member_rows").glob("*.parquet"))]
    results = []
    for procs in (1, 2):
        ctx = mp.get_context("spawn")
        with ctx.Pool(procs, initializer=_init, initargs=(str(root / "tok"), str(root / "prep"))) as pool:
            pool.map(_work, files[:procs])  # warm-up: builders loaded, caches filled
            t = time.perf_counter()
            n = sum(pool.map(_work, files))
            seconds = time.perf_counter() - t
        results.append({"processes": procs, "prompts": n, "seconds": round(seconds, 1),
                        "prompts_per_s": round(n / seconds)})
        print(json.dumps(results[-1]), flush=True)
    return results


if __name__ == "__main__":
    main()
