"""Verbalization: a member's profile, history and candidate items as prompt text.

360Brew's core move is to turn every ranking question into text. Three styles are
built in, and the style is drawn per example from a seed, so the model learns the
content rather than one layout (and a new layout at serving time does not break it):

* ``markdown``: sectioned, history grouped by action (the 360Brew talk's example);
* ``compact``: ``key=value`` lines, history interleaved in time order;
* ``narrative``: sentences, history interleaved in time order.

Per-event and per-item text is built with vectorized Polars string expressions (one
pass over the table, not one Python call per event); only the final assembly of a
prompt from its pieces happens per example. A prompt is ``prefix + candidate`` where
the prefix (instruction, profile, history, question) is shared by every candidate and
each candidate segment ends with ``Answer:``; the answer token (" Yes" / " No")
follows it. Training prompts chain several candidate+answer segments after one prefix.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import polars as pl

STYLES = ("markdown", "compact", "narrative")
ANSWER_CUE = "Answer:"
TRUNCATION_MARKER = " [...]"

# Columns that are bookkeeping, not something a member or item "says".
MEMBER_SKIP = {"member_id", "joined_at", "first_seen_at", "cold"}
# ``created_at`` is shown (as "posted"): with today's date in the prefix, the model reads an
# item's age and time to expiry as the feature baselines read them (equal information).
ITEM_SKIP = {"item_id", "item_type", "first_seen_at", "cold", "release_date"}
#: Display names of fields whose column name reads badly.
FIELD_LABELS = {"created_at": "posted", "expires_at": "expires"}
#: Item dates: in the candidate's full text, not in the short text of history lines.
DATE_FIELDS = {"created_at", "expires_at"}

#: How an action reads in a sentence; ``{value}`` is the event's value (e.g. a rating).
VERBS = {
    "apply": "applied to",
    "save": "saved",
    "view": "viewed",
    "dismiss": "dismissed",
    "impression": "was shown",
    "like": "liked",
    "comment": "commented on",
    "share": "shared",
    "hide": "hid",
    "enroll": "enrolled in",
    "click": "clicked",
    "rate": "rated {value}/5",
}


def _label(col: str) -> str:
    return FIELD_LABELS.get(col, col).replace("_", " ").capitalize()


def _text_expr(col: str, dtype: pl.DataType, max_words: int) -> pl.Expr:
    """A column as display text (lists joined, numbers plain), truncated to ``max_words``."""
    c = pl.col(col)
    if isinstance(dtype, pl.List):
        c = c.list.eval(pl.element().cast(pl.Utf8)).list.join(", ")
    elif dtype == pl.Float64 or dtype == pl.Float32:
        c = c.round(2).cast(pl.Utf8)
    elif isinstance(dtype, pl.Datetime) or dtype == pl.Date:
        c = c.dt.strftime("%Y-%m-%d")
    else:
        c = c.cast(pl.Utf8)
    words = c.str.split(" ")
    return (
        pl.when(words.list.len() > max_words)
        .then(words.list.head(max_words).list.join(" ") + pl.lit(TRUNCATION_MARKER))
        .otherwise(c)
    )


def text_columns(df: pl.DataFrame, skip: set[str]) -> list[str]:
    """Columns worth verbalizing, title first, in a stable order."""
    cols = [c for c in df.columns if c not in skip and not c.startswith("_")]
    return sorted(cols, key=lambda c: (c != "title", c != "headline", df.columns.index(c)))


def _fields_expr(df: pl.DataFrame, cols: Sequence[str], style: str, max_words: int) -> pl.Expr:
    """One expression rendering ``cols`` of a row in ``style`` (null fields are left out)."""
    parts = []
    for col in cols:
        value = _text_expr(col, df.schema[col], max_words)
        if style == "markdown":
            piece = pl.lit(f"- {_label(col)}: ") + value
        elif style == "compact":
            piece = pl.lit(f"{FIELD_LABELS.get(col, col)}=") + value
        else:
            piece = pl.lit(f"{_label(col).lower()}: ") + value
        parts.append(pl.when(value.is_not_null() & (value != "")).then(piece))
    if not parts:  # e.g. members derived from the interactions: ids only, no profile text
        return pl.lit("", dtype=pl.String)
    sep = {"markdown": "\n", "compact": "; ", "narrative": "; "}[style]
    return pl.concat_list(parts).list.drop_nulls().list.join(sep)


def item_texts(items: pl.DataFrame, max_field_words: int = 40, short_fields: int = 4,
               short_field_words: int = 12) -> pl.DataFrame:
    """Per item and style: the full candidate text and the short text used in histories.

    Returns ``item_id, item_type`` plus ``full_<style>`` and ``short_<style>`` columns.
    """
    cols = text_columns(items, ITEM_SKIP)
    short_cols = [c for c in cols if c not in DATE_FIELDS][:short_fields]
    out = [pl.col("item_id"), pl.col("item_type")]
    for style in STYLES:
        out.append(_fields_expr(items, cols, style, max_field_words).alias(f"full_{style}"))
        short_style = "compact" if style != "narrative" else "narrative"
        out.append(
            _fields_expr(items, short_cols, short_style, short_field_words)
            .str.replace_all("\n", " | ")
            .alias(f"short_{style}")
        )
    return items.select(out)


def profile_texts(members: pl.DataFrame, max_field_words: int = 40) -> pl.DataFrame:
    """Per member and style: the verbalized profile (``member_id`` + ``profile_<style>``)."""
    cols = text_columns(members, MEMBER_SKIP)
    return members.select(
        pl.col("member_id"),
        *[_fields_expr(members, cols, s, max_field_words).alias(f"profile_{s}") for s in STYLES],
    )


def event_lines(events: pl.DataFrame, items_text: pl.DataFrame) -> pl.DataFrame:
    """Per event and style: one history line (vectorized over all events).

    ``events`` needs ``member_id, item_id, action, timestamp`` and optional ``value``.
    """
    verb = pl.col("action").replace_strict(VERBS, default=pl.col("action"), return_dtype=pl.Utf8)
    if "value" in events.columns:
        value = pl.col("value").round(1).cast(pl.Utf8).str.replace(r"\.0$", "")
        verb = verb.str.replace("{value}", value.fill_null("?"), literal=True)
    else:
        verb = verb.str.replace("/5", "").str.replace(" {value}", "", literal=True)
    date = pl.col("timestamp").dt.strftime("%Y-%m-%d")
    df = events.join(items_text, on="item_id", how="left")
    what = pl.col("item_type").fill_null("item")
    return df.with_columns(
        (pl.lit("- ") + date + pl.lit(": ") + verb + pl.lit(" ") + what + pl.lit(": ")
         + pl.col("short_markdown").fill_null(pl.col("item_id"))).alias("line_markdown"),
        (date + pl.lit(" ") + pl.col("action") + pl.lit(" ") + what + pl.lit(" ")
         + pl.col("short_compact").fill_null(pl.col("item_id"))).alias("line_compact"),
        (pl.lit("On ") + date + pl.lit(" the member ") + verb + pl.lit(" the ") + what
         + pl.lit(" (") + pl.col("short_narrative").fill_null(pl.col("item_id")) + pl.lit(").")
         ).alias("line_narrative"),
    ).drop([c for c in items_text.columns if c not in ("item_id", "item_type")])


@dataclass(frozen=True)
class PromptPieces:
    """Everything a prompt is made of, before the history is cut to its token budget."""

    instruction: str
    profile: str
    history: Sequence[str]          # chronological lines, oldest first
    history_actions: Sequence[str]  # the action of each line (for grouping)
    question: str
    today: str = ""                 # the cutoff date (YYYY-MM-DD): items' dates are read against it


def render_history(lines: Sequence[str], actions: Sequence[str], style: str) -> str:
    """The history section body; ``markdown`` groups by action (first-seen order)."""
    if not lines:
        return {"markdown": "- (no earlier activity)", "compact": "(none)",
                "narrative": "The member has no earlier activity."}[style]
    if style != "markdown":
        return "\n".join(lines) if style == "compact" else " ".join(lines)
    groups: dict[str, list[str]] = {}
    for line, action in zip(lines, actions, strict=True):
        groups.setdefault(action, []).append(line)
    return "\n".join(
        f"### {VERBS.get(a, a).split(' {')[0].capitalize()}\n" + "\n".join(g) for a, g in groups.items()
    )


#: The profile text of a member without profile fields (a log with no members table).
NO_PROFILE = "(no profile: only the activity below)"


def render_prefix(p: PromptPieces, history_body: str, style: str) -> str:
    """The shared prefix: instruction, today's date, profile, history, question
    (candidates follow)."""
    if style == "markdown":
        today = f"Today: {p.today}\n\n" if p.today else ""
        return (f"## Instruction\n{p.instruction}\n\n{today}## Member profile\n{p.profile}\n\n"
                f"## Past activity\n{history_body}\n\n## Question\n{p.question}\n")
    if style == "compact":
        today = f"today: {p.today}\n" if p.today else ""
        return (f"instruction: {p.instruction}\n{today}member: {p.profile}\nhistory:\n{history_body}\n"
                f"question: {p.question}\n")
    today = f"Today is {p.today}. " if p.today else ""
    return (f"{p.instruction}\n\n{today}About the member: {p.profile}.\n\n{history_body}\n\n"
            f"{p.question}\n")


def render_candidate(item_text: str, item_type: str, style: str, question: str | None = None) -> str:
    """One candidate segment; ends with the answer cue so the next token is the answer.

    ``question`` (``promptify.question_in_candidates``): the task's question repeated right
    before the cue ("... Will the member dismiss this job? Answer:"). Why: in the prefix the
    question is hundreds of tokens from each answer, and a small model that never learns to
    attend that far answers every task alike (apply and dismiss scored the same, issue 14);
    a few tokens before the answer it is as close as the item's own words."""
    cue = f"{question} {ANSWER_CUE}" if question else ANSWER_CUE
    if style == "markdown":
        return f"\n### Candidate {item_type}\n{item_text}\n{cue}"
    if style == "compact":
        return f"\ncandidate {item_type}: {item_text}\n{cue}"
    return f"\nThe candidate {item_type}: {item_text}.\n{cue}"


def swap_candidate_question(segment: str, old: str, new: str) -> str:
    """``segment`` asking ``new`` instead of ``old`` where :func:`render_candidate` put the
    question before the cue; unchanged when it carries no question (the default)."""
    tail = f"{old} {ANSWER_CUE}"
    if not segment.endswith(tail):
        return segment
    return segment[: -len(tail)] + f"{new} {ANSWER_CUE}"
