"""CPU latency per scored item of one model directory, fp32 vs its torchao recipes (issue 17).

One request: a real validation prompt's prefix and its candidates cycled to N (the probe
of the pipeline's chain table), scored through the multi-item ``ScoringEngine`` as
served; median of ``--repeats`` calls after a warm-up, per thread count. Each variant is
the same fp32 safetensors quantized at load (``quantization.json`` semantics), so the
ratio is the recipe's alone. With ``--examples`` the AUC of each variant on the first
``--auc-prompts`` validation prompts is printed too (the same prompts for all).

    python -m benchmarks.bench_compress --model runs/local/artifacts/distill_small/<key>/model \\
        --examples runs/local/artifacts/promptify/<key>/examples --n 100 --threads 1 2

``--hidden 128 256 512 1024`` (the width sweep) measures the same recipes on randomly
initialised dense models of those widths instead (``--layers`` deep, 4x-wide MLP, head dim
32, the ``--model``'s tokenizer and prompt): where on this CPU int8 starts to pay. Latency
does not depend on the weights' values, so no AUC is printed for them.

    python -m benchmarks.bench_compress --model <model dir> --examples <examples> \\
        --hidden 128 256 512 1024 --layers 2 --threads 1 2

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
    from components.compress.prune import non_embedding_parameters
    from components.compress.quantize import QuantRecipe, weight_bytes
    from components.model.engine import ScoringEngine
    from components.model.factory import ModelConfig, build_model, load_model, save_model
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
    ap.add_argument("--hidden", type=int, nargs="*", default=[],
                    help="width sweep: random dense models of these hidden sizes (latency only)")
    ap.add_argument("--layers", type=int, default=2, help="width sweep: decoder layers")
    args = ap.parse_args(argv)

    rows = read_examples(args.examples, "valid", False, args.auc_prompts)
    prefix, cands = rows["prefix"][0], list(rows["candidates"][0])
    out = {"machine": machine(), "model": str(args.model), "n": args.n, "torch": torch.__version__}

    def variants(model_dir: Path, auc: bool) -> dict:
        found: dict = {}
        for method in ["fp32", *args.methods]:
            model, tok = load_model(model_dir, dtype="float32")
            recipe = None if method == "fp32" else QuantRecipe(method=method)
            eng = ScoringEngine(model, tok, device="cpu", quantization=recipe)
            res: dict = {"weight_bytes": weight_bytes(eng.model)}
            for th in args.threads:  # the pipeline's probe, per thread count
                res[f"ms_per_item_{th}t"] = 1e3 * latency_per_item(eng, prefix, cands, args.n,
                                                                   args.repeats, th)
            if auc:
                margins = eng.score_batch([(p, list(c)) for p, c in
                                           zip(rows["prefix"], rows["candidates"], strict=True)],
                                          margins=True)
                y = np.concatenate([np.asarray(v) for v in rows["labels"]])
                res["valid_auc_pooled"] = roc_auc(np.concatenate(margins), y)
            found[method] = res
        base = found["fp32"]
        for res in found.values():
            for th in args.threads:
                res[f"speedup_{th}t"] = base[f"ms_per_item_{th}t"] / res[f"ms_per_item_{th}t"]
            if auc:
                res["auc_drop"] = base["valid_auc_pooled"] - res["valid_auc_pooled"]
        return found

    if not args.hidden:
        out["variants"] = variants(args.model, auc=True)
    else:
        import tempfile

        _, tok = load_model(args.model, dtype="float32")
        out["sweep"] = {}
        with tempfile.TemporaryDirectory() as tmp:
            for h in args.hidden:
                cfg = ModelConfig(family="dense", hidden_size=h, num_layers=args.layers,
                                  num_heads=max(1, h // 32), num_kv_heads=max(1, h // 64),
                                  intermediate_size=4 * h)
                torch.manual_seed(0)
                model = build_model(cfg, len(tok), tok.pad_token_id)
                d = save_model(model, tok, Path(tmp) / f"h{h}")
                res = variants(d, auc=False)
                res["non_embedding_parameters"] = non_embedding_parameters(model)
                out["sweep"][str(h)] = res
                print(f"hidden {h}: " + ", ".join(
                    f"{m} {r[f'speedup_{args.threads[0]}t']:.2f}x" for m, r in res.items()
                    if isinstance(r, dict)), flush=True)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
