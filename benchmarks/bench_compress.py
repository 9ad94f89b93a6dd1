"""CPU latency per scored item of one model directory, fp32 vs its torchao recipes (issue 17).

One request: a real validation prompt's prefix and its candidates cycled to N (the probe
of the pipeline's chain table), scored through the multi-item ``ScoringEngine`` as
served; median of ``--repeats`` calls after a warm-up, per thread count. Each variant is
the same fp32 safetensors quantized at load (``quantization.json`` semantics), so the
ratio is the recipe's alone. With ``--examples`` the AUC of each variant on the first
``--auc-prompts`` validation prompts is printed too (the same prompts for all).

    python -m benchmarks.bench_compress --model runs/local/artifacts/distill_small/<key>/model \\
        --examples runs/local/artifacts/promptify/<key>/examples --n 100 --threads 1 2

Imports torch, transformers, torchao and components only (no Ray, no MLflow).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    import numpy as np
    import torch

    from benchmarks.bench_scoring import machine
    from components.compress.measure import latency_per_item
    from components.compress.quantize import QuantRecipe, weight_bytes
    from components.model.engine import ScoringEngine
    from components.model.factory import load_model
    from components.train.data import read_examples
    from components.train.loop import roc_auc

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True, help="a save_pretrained directory (fp32)")
    ap.add_argument("--examples", type=Path, required=True, help="the promptify stage's examples/")
    ap.add_argument("--n", type=int, default=100, help="candidates per request")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--auc-prompts", type=int, default=300)
    ap.add_argument("--methods", nargs="+", default=["int8_dynamic", "int8_weight_only"])
    args = ap.parse_args(argv)

    rows = read_examples(args.examples, "valid", False, args.auc_prompts)
    prefix, cands = rows["prefix"][0], list(rows["candidates"][0])
    out = {"machine": machine(), "model": str(args.model), "n": args.n, "torch": torch.__version__,
           "variants": {}}
    for method in ["fp32", *args.methods]:
        model, tok = load_model(args.model, dtype="float32")
        recipe = None if method == "fp32" else QuantRecipe(method=method)
        eng = ScoringEngine(model, tok, device="cpu", quantization=recipe)
        res: dict = {"weight_bytes": weight_bytes(eng.model)}
        for th in args.threads:  # the pipeline's probe, per thread count
            res[f"ms_per_item_{th}t"] = 1e3 * latency_per_item(eng, prefix, cands, args.n,
                                                               args.repeats, th)
        margins = eng.score_batch([(p, list(c)) for p, c in zip(rows["prefix"], rows["candidates"],
                                                                 strict=True)], margins=True)
        s = np.concatenate(margins)
        y = np.concatenate([np.asarray(v) for v in rows["labels"]])
        res["valid_auc_pooled"] = roc_auc(s, y)
        out["variants"][method] = res
    base = out["variants"]["fp32"]
    for res in out["variants"].values():
        for th in args.threads:
            res[f"speedup_{th}t"] = base[f"ms_per_item_{th}t"] / res[f"ms_per_item_{th}t"]
        res["auc_drop"] = base["valid_auc_pooled"] - res["valid_auc_pooled"]
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
