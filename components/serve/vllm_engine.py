"""A vLLM scorer with the :class:`~components.model.engine.ScoringEngine` interface.

vLLM has no multi-item mask: each candidate is its own prompt, ``prefix ids + candidate
ids`` under the engine's tokenization contract (``tokenize_request``), so the prefix ids
are identical across a request's candidates and vLLM's prefix caching computes the shared
prefix once (full KV blocks only). One generated token with ``logprob_token_ids=[yes, no]``
gives the two label log-probs; their difference is the engine's margin (the softmax
normaliser cancels), and P(yes) goes through the model's ``calibration.json`` as the torch
engine does. The weights load as saved (fp32 safetensors); a ``quantization.json`` recipe
is torchao's and is not applied here (vLLM would need its own quantization).

Optional: ``pip install -e '.[vllm]'`` (``make setup-vllm``); nothing imports this module
unless the serving config selects ``backend: vllm``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def vllm_available() -> str | None:
    """None when vLLM imports, else the reason (for skips and errors)."""
    try:
        import vllm  # noqa: F401
    except Exception as e:  # ImportError, or a broken extension beside this torch
        return f"vllm is not usable here ({type(e).__name__}: {e}); install it with make setup-vllm"
    return None


class VllmEngine:
    """``score_batch`` like ``ScoringEngine``'s, on a vLLM ``LLM`` with prefix caching."""

    def __init__(self, model_dir: str | Path, dtype: str = "float32", calibrated: bool = True,
                 kv_cache_gib: int = 2, max_model_len: int | None = None):
        from vllm import LLM, SamplingParams

        from components.model.calibration import Calibration
        from components.promptify.tokenizer import answer_token_ids, load_tokenizer

        model_dir = Path(model_dir)
        self.tokenizer = load_tokenizer(model_dir)
        self.yes_id, self.no_id = answer_token_ids(self.tokenizer)
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gib))  # GiB of host memory
        # the engine core in this process: a spawned core re-imports the caller's __main__,
        # which inside a Ray Serve replica or pytest is not a script that can be re-run
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        kwargs = {"max_model_len": max_model_len} if max_model_len else {}
        self.llm = LLM(model=str(model_dir), skip_tokenizer_init=True, enable_prefix_caching=True,
                       dtype=dtype, **kwargs)
        self.params = SamplingParams(max_tokens=1, temperature=0.0,
                                     logprob_token_ids=[self.yes_id, self.no_id])
        self.calibration = Calibration.load(model_dir) if calibrated else None

    def tokenize(self, prefix: str, candidates: Sequence[str]) -> tuple[list[int], list[list[int]]]:
        from components.model.engine import tokenize_request

        return tokenize_request(self.tokenizer, prefix, candidates)

    def score_batch(self, requests: Sequence[tuple[str, Sequence[str]]], margins: bool = False,
                    tasks: Sequence[str | None] | None = None) -> list[np.ndarray]:
        from vllm.inputs import TokensPrompt

        prompts, sizes = [], []
        for prefix, cands in requests:
            p_ids, c_ids = self.tokenize(prefix, cands)
            prompts += [TokensPrompt(prompt_token_ids=p_ids + c) for c in c_ids]
            sizes.append(len(c_ids))
        outs = self.llm.generate(prompts, self.params, use_tqdm=False)
        flat = np.empty(len(outs), dtype=np.float64)
        for i, out in enumerate(outs):
            lp = out.outputs[0].logprobs[0]
            flat[i] = lp[self.yes_id].logprob - lp[self.no_id].logprob
        out_lists, k = [], 0
        for i, n in enumerate(sizes):
            m = flat[k:k + n]
            k += n
            out_lists.append(m.astype(np.float32) if margins
                             else self.probabilities(m, None if tasks is None else tasks[i]))
        return out_lists

    def probabilities(self, margins: np.ndarray, task: str | None = None) -> np.ndarray:
        if self.calibration is not None:
            return self.calibration.apply(np.asarray(margins), task)
        return (1.0 / (1.0 + np.exp(-np.asarray(margins, dtype=np.float64)))).astype(np.float32)
