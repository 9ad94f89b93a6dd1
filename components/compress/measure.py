"""What each model of the chain costs: parameters, bytes, CPU latency per scored item.

Latency is one request of N candidates (default 100) after one prefix, through the
multi-item ``ScoringEngine`` as served: the median of ``repeats`` timed calls after a
warm-up, divided by N. It is a probe taken inside a pipeline stage (other stages may run
beside it on a small machine); docs/benchmarks.md holds the numbers taken alone.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from pathlib import Path

from components.compress.prune import non_embedding_parameters
from components.compress.quantize import directory_bytes, read_recipe, weight_bytes


def model_facts(engine, model_dir: Path) -> dict[str, float]:
    """Sizes of an engine's model: parameters (all / outside the embedding and head),
    weight bytes in memory (int8 at its packed size) and on disk."""
    from components.model.factory import count_parameters

    model = engine.model
    return {"parameters": float(count_parameters(model)),
            "non_embedding_parameters": float(non_embedding_parameters(model)),
            "weight_bytes": float(weight_bytes(model)),
            "disk_bytes": float(directory_bytes(model_dir)),
            "quantized": float(read_recipe(model_dir) is not None)}


def latency_per_item(engine, prefix: str, candidates: Sequence[str], n: int = 100,
                     repeats: int = 5, threads: int | None = 1) -> float:
    """Seconds per scored item of one ``n``-candidate request (candidates cycled to ``n``)."""
    import torch

    if not candidates:
        raise ValueError("latency probe: give at least one candidate text")
    cands = [candidates[i % len(candidates)] for i in range(n)]
    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        engine.score(prefix, cands[: min(n, 8)])  # warm-up (allocations, kernel choice)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            engine.score(prefix, cands)
            times.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(old)
    return statistics.median(times) / n
