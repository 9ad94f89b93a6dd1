"""Prompts for one request, built by the same code as the offline examples.

A serving request carries a member's profile, their recent events, the candidate
items, and optionally a custom instruction ("Focus on skills and location more than
other criteria"): 360Brew steers the model with text, not with new features. Using
the offline verbalization and budgeting here keeps training and serving prompts
identical, which is what the scores' calibration depends on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import polars as pl

from components.promptify.budget import count_tokens, fit_to_budget
from components.promptify.verbalize import (
    NO_PROFILE,
    PromptPieces,
    event_lines,
    item_texts,
    profile_texts,
    render_candidate,
    render_history,
    render_prefix,
)


def request_prefix(
    profile: Mapping[str, Any],
    events: Sequence[Mapping[str, Any]],
    instruction: str,
    question: str,
    tokenizer,
    *,
    now: datetime | None = None,
    style: str = "markdown",
    history_token_budget: int = 384,
    max_field_words: int = 40,
) -> tuple[str, int]:
    """(prefix, history events kept) for an inline member: the profile and ``events`` (dicts
    with ``item`` (an item dict with item_id, item_type, title, ...), ``action``,
    ``timestamp`` and optional ``value``). Events at or after ``now`` are ignored (a client
    clock skew must not leak the future into a prompt)."""
    member = pl.DataFrame([{"member_id": "request", **profile}])
    profile_text = (profile_texts(member, max_field_words)[f"profile_{style}"][0] if profile else "") or ""
    ev = sorted((e for e in events if now is None or e["timestamp"] < now), key=lambda e: e["timestamp"])
    lines, actions = [], []
    if ev:
        items = {str(e["item"]["item_id"]): e["item"] for e in ev}
        items_df = pl.DataFrame(list(items.values()), infer_schema_length=None).with_columns(
            pl.col("item_id").cast(pl.Utf8))
        ev_df = pl.DataFrame([
            {"member_id": "request", "item_id": str(e["item"]["item_id"]), "action": e["action"],
             "timestamp": e["timestamp"], "value": e.get("value")} for e in ev
        ]).with_columns(pl.col("value").cast(pl.Float64))
        df = event_lines(ev_df, item_texts(items_df, max_field_words=max_field_words))
        lines, actions = df[f"line_{style}"].to_list(), df["action"].to_list()
    sep = "\n" if style != "narrative" else " "
    tokens = count_tokens(tokenizer, [ln + sep for ln in lines])
    n = len(lines)

    def render(k: int) -> str:
        return render_history(lines[n - k:] if k else [], actions[n - k:] if k else [], style)

    kept, _ = fit_to_budget(tokens, history_token_budget, render, tokenizer)
    today = (now or datetime.now(UTC)).strftime("%Y-%m-%d")
    prefix = render_prefix(PromptPieces(instruction, profile_text or NO_PROFILE, (), (), question, today=today),
                           render(kept), style)
    return prefix, kept


def candidate_segments(candidates: Sequence[Mapping[str, Any]], style: str = "markdown", *,
                       question: str | None = None, max_field_words: int = 40) -> list[str]:
    """Rendered candidate segments of inline item dicts (``question``: repeated in each
    segment, as with ``promptify.question_in_candidates``)."""
    if not candidates:
        return []
    items_df = pl.DataFrame(list(candidates), infer_schema_length=None).with_columns(
        pl.col("item_id").cast(pl.Utf8))
    itext = item_texts(items_df, max_field_words=max_field_words)
    by_id = dict(zip(itext["item_id"], itext[f"full_{style}"], strict=True))
    return [render_candidate(by_id[str(c["item_id"])], str(c.get("item_type", "item")), style, question)
            for c in candidates]

