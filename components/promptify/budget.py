"""Cutting a history to a token budget, keeping the most recent events.

Why real tokens, not characters: the model's context is counted in tokens, and the
ratio of characters to tokens varies a lot between a skills list and a sentence; a
character budget either wastes context or overflows it.

The cut is exact: per-line token counts (one batched tokenizer call) pick the
candidate suffix quickly, then the rendered section is re-tokenized and more old lines
are dropped until it fits, because BPE merges across line joins and section headers
cost tokens too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


def count_tokens(tokenizer, texts: Sequence[str]) -> np.ndarray:
    """Token counts of many texts in one batched (Rust, multi-threaded) call."""
    if not texts:
        return np.zeros(0, dtype=np.int64)
    enc = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    return np.fromiter((len(x) for x in enc), dtype=np.int64, count=len(enc))


def fit_to_budget(
    line_tokens: np.ndarray,
    budget: int,
    render: Callable[[int], str],
    tokenizer,
) -> tuple[int, int]:
    """How many of the most recent lines fit; returns (kept, tokens of the rendered section).

    ``line_tokens[i]`` is the token count of line ``i`` (oldest first) including its
    separator; ``render(k)`` renders the section from the last ``k`` lines.
    """
    n = len(line_tokens)
    if budget <= 0 or n == 0:
        text = render(0)
        return 0, len(tokenizer.encode(text, add_special_tokens=False))
    # largest k with sum(line_tokens[n-k:]) <= budget
    suffix = np.cumsum(line_tokens[::-1])
    k = int(np.searchsorted(suffix, budget, side="right"))
    while True:
        used = len(tokenizer.encode(render(k), add_special_tokens=False))
        if used <= budget or k == 0:
            return k, used
        # drop about as many lines as the overflow needs (at least one)
        over = used - budget
        drop, acc = 0, 0
        while acc < over and drop < k:
            acc += int(line_tokens[n - k + drop])
            drop += 1
        k -= max(1, drop)
