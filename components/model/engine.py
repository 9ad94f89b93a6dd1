"""ScoringEngine: text in, P(yes) per candidate out; the one API later stages call.

Training-time evaluation, offline batch scoring and Ray Serve replicas all hold one
engine per process. It owns the tokenization contract (below), picks the attention
path by device (FlexAttention on CUDA, a dense SDPA mask on CPU), bounds each forward
by ``max_tokens_per_pass`` and returns numpy arrays. No Ray, no MLflow: the GPU machine
imports this module directly.

Tokenization contract: the prefix and each candidate are tokenized *separately* and
concatenated as ids. The prefix ids are then identical for every candidate (a joint
tokenization could merge the prefix's last bytes with a candidate's first), and
per-item and multi-item scoring see the same ids by construction. Candidates rendered
by ``components.promptify.verbalize.render_candidate`` start with a newline, so the
split falls on a natural token boundary. No special tokens are added, except a BOS
before the prefix for tokenizers that declare ``add_bos_token`` (Llama-style).
Training must tokenize the same way: use ``tokenize_request``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from components.model.calibration import Calibration
from components.model.multi_item import score_per_item_reference, score_requests
from components.model.scoring import (
    KNOWN_MODEL_TYPES,
    ScoringError,
    decoder_body,
    label_head,
    verify_label_head,
)
from components.model.shared_prefix import SHARED_PREFIX
from components.model.shared_prefix import register as register_shared_prefix
from components.promptify.tokenizer import ANSWER_NO, ANSWER_YES, answer_token_ids

#: Default token budget per forward pass (memory bound). CPU: the dense mask is Q x K.
#: CUDA: a 0.6B model's request of 2,000 + 500 x 32 = 18,000 tokens fits one pass.
DEFAULT_MAX_TOKENS = {"cpu": 8192, "cuda": 32768}
#: Default cap on candidate tokens per pass over a cached prefix (speed, not memory): the
#: dense CPU mask computes masked pairs too, so smaller chunks waste less (see
#: multi_item.score_requests); FlexAttention skips them, so CUDA takes all at once.
DEFAULT_CANDIDATE_TOKENS = {"cpu": 512, "cuda": None}


def tokenize_request(tokenizer, prefix: str, candidates: Sequence[str]
                     ) -> tuple[list[int], list[list[int]]]:
    """``(prefix_ids, [candidate_ids, ...])`` under the engine's tokenization contract."""
    prefix_ids = list(tokenizer.encode(prefix, add_special_tokens=False))
    bos = getattr(tokenizer, "bos_token_id", None)
    if getattr(tokenizer, "add_bos_token", False) and bos is not None:
        prefix_ids = [bos, *prefix_ids]
    cand_ids: list[list[int]] = []
    if candidates:
        cand_ids = [list(x) for x in tokenizer(list(candidates), add_special_tokens=False)
                    ["input_ids"]]
    return prefix_ids, cand_ids


class ScoringEngine:
    """Multi-item scorer around a causal LM and its tokenizer.

    Args:
        model: a ``*ForCausalLM`` (built by ``build_model`` or loaded). The engine moves it
            to ``device``, puts it in eval mode and sets its attention implementation
            (the caller's object is changed; pass a copy to keep yours as it was).
        tokenizer: the model's tokenizer; " Yes" and " No" must be single tokens.
        device: ``None`` picks CUDA when available, else CPU.
        max_tokens_per_pass: token budget of one forward (prefix included); longer requests
            are chunked, shorter ones batched. Default per device (``DEFAULT_MAX_TOKENS``).
        attention: ``"auto"`` (flex_attention on CUDA, sdpa elsewhere), ``"sdpa"``,
            ``"flex_attention"``, ``"shared_prefix"`` (no mask: a maskless flash call for
            candidates -> prefix plus per-candidate triangles, merged by log-sum-exp; one
            request per pass; module ``shared_prefix``) or ``"eager"``.
        reuse_prefix_cache: for chunked requests, run the prefix once and reuse its KV cache.
        candidate_tokens_per_pass: with ``reuse_prefix_cache``, cap the candidate tokens of
            one pass over the cached prefix; default per device (``DEFAULT_CANDIDATE_TOKENS``),
            none with ``shared_prefix`` (it computes no masked pairs); 0 means no cap.
        compile: ``torch.compile`` each decoder layer (regional compilation: the layers share
            one compiled block). Fuses the norms, rotary embedding and activations around
            the matmuls; each new request shape pays a compile, so use it where shapes
            repeat (a server with fixed buckets, benchmarks), mostly on GPU. Passes over a
            cached prefix (chunked requests) stay eager.
        kernel_options: FlexAttention kernel options (``BLOCK_M``, ``BLOCK_N``,
            ``num_warps``, ``num_stages``) for every pass; GPU tuning, flex_attention only.
        quantization: a ``components.compress.quantize.QuantRecipe`` applied to the model
            on its device (torchao; the LM head stays fp32 unless the recipe says not).
            ``from_pretrained`` passes the directory's ``quantization.json``.
    """

    def __init__(self, model, tokenizer, device: str | torch.device | None = None,
                 max_tokens_per_pass: int | None = None, attention: str = "auto",
                 reuse_prefix_cache: bool = True, candidate_tokens_per_pass: int | None = None,
                 yes: str = ANSWER_YES, no: str = ANSWER_NO,
                 calibration: Calibration | None = None, compile: bool = False,
                 kernel_options: dict | None = None, quantization=None) -> None:
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if attention == "auto":
            attention = "flex_attention" if self.device.type == "cuda" else "sdpa"
        if attention == "shared_prefix":
            attention = register_shared_prefix()
        if attention not in ("sdpa", "flex_attention", "eager", SHARED_PREFIX):
            raise ValueError(f"attention={attention!r}: use 'auto', 'sdpa', 'flex_attention', "
                             f"'shared_prefix' or 'eager'")
        self.model = model.to(self.device).eval()
        self.quantization = quantization
        if quantization is not None:  # on the device: FP8 kernels need CUDA tensors
            from components.compress.quantize import quantize_model

            quantize_model(self.model, quantization)
        if self.model.config._attn_implementation != attention:
            self.model.set_attn_implementation(attention)
        self.attention = self.model.config._attn_implementation
        self.compiled = compile
        if kernel_options and attention != "flex_attention":
            raise ValueError(f"kernel_options are FlexAttention's; attention is {attention!r}")
        self.model_kwargs = {"kernel_options": dict(kernel_options)} if kernel_options else {}
        if compile:
            for layer in decoder_body(self.model).layers:
                layer.compile()
        self.tokenizer = tokenizer
        self.yes_id, self.no_id = answer_token_ids(tokenizer, yes, no)
        self.pad_id = next((t for t in (tokenizer.pad_token_id, tokenizer.eos_token_id)
                            if t is not None), 0)
        if max_tokens_per_pass is None:
            max_tokens_per_pass = DEFAULT_MAX_TOKENS.get(self.device.type, 8192)
        if max_tokens_per_pass < 2:
            raise ValueError(f"max_tokens_per_pass={max_tokens_per_pass}: must be >= 2")
        self.max_tokens_per_pass = max_tokens_per_pass
        self.reuse_prefix_cache = reuse_prefix_cache
        if candidate_tokens_per_pass is None and self.attention != SHARED_PREFIX:
            candidate_tokens_per_pass = DEFAULT_CANDIDATE_TOKENS.get(self.device.type)
        self.candidate_tokens_per_pass = candidate_tokens_per_pass or None
        self.calibration = calibration  # applied to P(yes), never to margins
        self.head = label_head(self.model, self.yes_id, self.no_id)
        if self.model.config.model_type not in KNOWN_MODEL_TYPES:
            verify_label_head(self.model, self.head)

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, device: str | torch.device | None = None,
                        dtype: str | None = None, calibrated: bool = True,
                        **kwargs) -> ScoringEngine:
        """An engine over a directory written by ``save_model`` (safetensors only); applies
        the directory's ``calibration.json`` when there is one and ``calibrated``, and its
        ``quantization.json`` (the quantization recipe: the weights stay fp32 on disk and
        are quantized at load, deterministically) when there is one."""
        from components.compress.quantize import read_recipe
        from components.model.factory import load_model

        model, tokenizer = load_model(Path(model_dir), dtype=dtype)
        cal = Calibration.load(Path(model_dir)) if calibrated else None
        kwargs.setdefault("quantization", read_recipe(Path(model_dir)))
        return cls(model, tokenizer, device=device, calibration=cal, **kwargs)

    def tokenize(self, prefix: str, candidates: Sequence[str]) -> tuple[list[int], list[list[int]]]:
        """Token ids exactly as ``score`` uses them (see the module docstring)."""
        return tokenize_request(self.tokenizer, prefix, candidates)

    def score(self, prefix: str, candidates: Sequence[str], margins: bool = False,
              task: str | None = None) -> np.ndarray:
        """P(yes) per candidate, float32, in input order (``margins=True``: the fp32 logit
        difference ``logit_yes - logit_no`` instead, which does not saturate). ``task``: the
        task id, for its calibration offset (none: the global map)."""
        return self.score_batch([(prefix, candidates)], margins=margins,
                                tasks=None if task is None else [task])[0]

    def score_batch(self, requests: Sequence[tuple[str, Sequence[str]]], margins: bool = False,
                    tasks: Sequence[str | None] | None = None) -> list[np.ndarray]:
        """Score many ``(prefix, candidates)`` requests (members); one array per request.

        Requests are packed one sequence each and right-padded into shared batches under
        the token budget; see ``multi_item.score_requests``. ``tasks``: one task id (or
        None) per request, for the calibration's per-task offsets.
        """
        tokenized = [self.tokenize(p, c) for p, c in requests]
        return self.score_ids_batch(tokenized, margins=margins, tasks=tasks)

    def score_ids_batch(self, requests: Sequence[tuple[Sequence[int], Sequence[Sequence[int]]]],
                        margins: bool = False, tasks: Sequence[str | None] | None = None
                        ) -> list[np.ndarray]:
        """``score_batch`` on token ids (for callers that tokenized already)."""
        if tasks is not None and len(tasks) != len(requests):
            raise ValueError(f"score: {len(tasks)} task ids for {len(requests)} requests: give one "
                             f"per request (None for no task)")
        out = score_requests(self.model, requests, self.head, self.pad_id,
                             self.max_tokens_per_pass, self.reuse_prefix_cache,
                             self.candidate_tokens_per_pass, self.model_kwargs)
        if margins:
            return [m.numpy().astype(np.float32) for m in out]
        return [self.probabilities(m, None if tasks is None else tasks[i]) for i, m in enumerate(out)]

    def probabilities(self, margins: torch.Tensor | np.ndarray, task: str | None = None) -> np.ndarray:
        """P(yes) from margins as served: through ``calibration`` (with ``task``'s offset
        when it has one) when the engine has one, else ``sigmoid(margin)``; float32."""
        if self.calibration is not None:
            return self.calibration.apply(np.asarray(margins), task)
        return torch.sigmoid(torch.as_tensor(margins)).numpy().astype(np.float32)

    def score_per_item(self, prefix: str, candidates: Sequence[str]) -> np.ndarray:
        """Reference scores: each candidate alone after the prefix, the model's full forward.

        For tests and benchmarks; the same token ids as ``score``."""
        prefix_ids, cand_ids = self.tokenize(prefix, candidates)
        probs = score_per_item_reference(self.model, prefix_ids, cand_ids, self.yes_id,
                                         self.no_id).double()
        if self.calibration is None:
            return probs.numpy().astype(np.float32)
        return self.probabilities(torch.log(probs) - torch.log1p(-probs))


__all__ = ["DEFAULT_CANDIDATE_TOKENS", "DEFAULT_MAX_TOKENS", "ScoringEngine", "ScoringError", "tokenize_request"]
