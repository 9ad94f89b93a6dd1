"""What the world's rows say in words: job descriptions, post and course texts, member
headlines and ``about`` sections.

Why apart from the sampling: these templates are what a language model reads, so they
are where wording changes go; they draw no randomness (template choices arrive as
arrays drawn in :mod:`.entities`), so editing them changes text, never the draws.
"""

from __future__ import annotations

import numpy as np
import polars as pl

def _a(word: str) -> str:
    return "an" if word[:1] in "AEIOU" else "a"


def _and(words: list[str]) -> str:
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"
