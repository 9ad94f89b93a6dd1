"""Config of promptification: the tokenizer and how prompts are built (styles, history
budget, candidates, negatives, hints). Lives next to the code that reads it."""

from __future__ import annotations

import bisect
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from components.config_base import StrictModel


class TokenizerConfig(StrictModel):
    """Train a byte-level BPE on the verbalized corpus, or load a local HF tokenizer."""

    path: Path | None = Field(None, description="A local Hugging Face tokenizer directory; "
                              "null trains one on the corpus.")
    vocab_size: int = Field(4096, ge=300)
    sample_texts: int = Field(50_000, ge=100, description="Texts sampled to train the BPE.")
    fit_to_prompts: bool = Field(
        False, description="Train the BPE twice: the second time on the corpus plus the "
        "training prompts of `prompt_members` members as the promptify code builds them with "
        "the first (headings, 'Answer:', dates, item statistics, match hints). Fewer tokens "
        "per prompt and whole words in the scaffolding (components/promptify/tokenizer.py).")
    prompt_members: int = Field(300, ge=1, description="fit_to_prompts: members whose "
                                "training prompts join the corpus.")


class MeanWords(StrictModel):
    """One word for the band of an item's (shrunk) mean rating, appended to its numbers.

    Why: the tiny from-scratch teacher did not learn to read "mean 3.8" against
    "mean 4.2" (BPE splits them into digit pieces; MovieLens ``ml_will_like`` stayed at
    0.617 while the mean alone ranks at 0.688, docs/benchmarks.md); one whole word per
    band is a token it can tie to the answer. The word is derived only from the two
    numbers already in the text, so the baselines still see the same information.

    The band is read from the mean shrunk towards ``prior_mean`` by ``prior_weight``
    pseudo-ratings, ``(mean * n + prior_mean * prior_weight) / (n + prior_weight)``, so a
    single 5-star rating is not "acclaimed" (with the raw mean, small counts make the
    word noise). Band ``i`` is ``edges[i-1] <= shrunk < edges[i]``. ``n`` is the count of
    counted events, the shown count; where some carry no value the mean is over fewer
    (on MovieLens every rating has one).
    """

    edges: list[float] = Field(..., min_length=1, description="Ascending band edges on the "
                               "rating scale (e.g. [3.0, 3.5, 4.0] on 1-5 stars).")
    words: list[str] = Field(..., min_length=2, description="One word per band, lowest "
                             "first: len(edges) + 1 of them (e.g. [panned, mixed, liked, acclaimed]).")
    prior_mean: float = Field(3.5, description="Mean the shrinkage pulls towards.")
    prior_weight: float = Field(5.0, ge=0, description="Pseudo-ratings of the prior (0: raw mean).")

    @model_validator(mode="after")
    def _bands(self) -> MeanWords:
        if len(self.words) != len(self.edges) + 1:
            raise ValueError(f"promptify.item_stats_words: {len(self.edges)} edges make "
                             f"{len(self.edges) + 1} bands but {len(self.words)} words are given: "
                             f"give one word per band")
        if any(b <= a for a, b in zip(self.edges, self.edges[1:], strict=False)):
            raise ValueError(f"promptify.item_stats_words.edges {self.edges} must be strictly ascending")
        bad = [w for w in self.words if not w.isalpha()]
        if bad:
            raise ValueError(f"promptify.item_stats_words.words {bad}: use plain words (letters only)")
        return self

    def word(self, n_events: int, mean: float | None) -> str | None:
        """The band word of a mean over ``n_events`` ratings (None without a mean)."""
        if mean is None:
            return None
        shrunk = (mean * n_events + self.prior_mean * self.prior_weight) / (n_events + self.prior_weight)
        return self.words[bisect.bisect_right(self.edges, shrunk)]


class PromptifyConfig(StrictModel):
    """How interactions become prompts (see docs/promptify.md)."""

    tasks: list[Path] | None = Field(None, description="Task YAML files; default: the built-in registry.")
    domain: str | None = Field(None, description="Task domain to use; default from data.source "
                               "(synthetic -> professional, movielens -> movielens).")
    styles: list[Literal["markdown", "compact", "narrative"]] = ["markdown", "compact", "narrative"]
    eval_style: Literal["markdown", "compact", "narrative"] = "markdown"
    history_token_budget: int = Field(384, ge=16, description="Real tokenizer tokens for the history.")
    history_exclude_actions: list[str] = Field(
        ["impression"], description="Actions left out of histories (shown-but-ignored rows "
        "would fill the budget with little signal)."
    )
    max_field_words: int = Field(40, ge=1, description="Per-field truncation of item/profile text.")
    questions_per_prompt: int = Field(8, ge=1, description="Training questions sharing one prefix.")
    negatives_per_positive: float = Field(2.0, ge=0.0, description="Training: logged negatives kept per positive.")
    sampled_negatives: int = Field(4, ge=0, description="Sampled negatives per prompt for tasks that sample.")
    negative_pool: Literal["catalogue", "impressions"] = Field(
        "catalogue", description="Where sampled negatives come from. catalogue: per positive, "
        "at its time, a live item created close to it (age-matched; items nobody touched yet "
        "included). impressions: items shown in negative_window_days before the list's cutoff "
        "(components/promptify/negatives.py).")
    hard_negatives: bool = Field(True, description="impressions pool: sample among items shown "
                                 "on the task's surface.")
    negative_window_days: float = Field(
        3.0, gt=0, description="impressions pool: items shown in this many days before the "
        "question (widened when too few).")
    max_prompts_per_member_task: int = Field(4, ge=1, description="Training prompts per (member, task).")
    negative_only_prompt_rate: float = Field(
        0.1, ge=0.0, le=1.0, description="Training: share of chunks without a positive that "
        "are kept. Most (member, task) chunks of logged events hold no positive (5-10% "
        "positives for most tasks); as prompts they teach only the base rate (measured with "
        "them dropped at 0.1: teacher mean test AUC 0.508 -> 0.549, docs/benchmarks.md). "
        "1.0 keeps them all.")
    max_eval_candidates: int = Field(50, ge=2)
    blocks: int = Field(8, ge=1, description="Member partitions (at least): prepare builds and "
                        "writes one at a time, the Ray Data job reads them as its blocks.")
    members_per_block: int = Field(
        20_000, ge=1, description="Most members per partition: prepare uses max(blocks, "
        "ceil(members / members_per_block)) partitions, so its memory follows a partition, "
        "not the log (docs/benchmarks.md 'Prepare + promptify at scale').")
    seed: int = 0
    item_stats: bool = Field(
        False, description="Verbalize as-of item statistics in candidate text: ratings and "
        "mean rating from events strictly before the prompt's cutoff "
        "(components/promptify/item_stats.py).")
    item_stats_actions: list[str] = Field(
        ["rate"], min_length=1, description="Actions counted by promptify.item_stats.")
    item_stats_words: MeanWords | None = Field(
        None, description="item_stats: a word for the band of the item's shrunk mean rating "
        "after the number ('mean 3.8 (liked)'); derived from the numbers shown, so no new "
        "information (MeanWords above). null: numbers only.")
    match_hints: bool = Field(
        False, description="Append what the candidate shares with the member to its text: "
        "matching profile fields (same industry, city, shared skills) and how many history "
        "events were on items with its company / industry / topic, as of the cutoff. Derived "
        "from text already in the prompt; lets a small from-scratch model read the comparison "
        "instead of growing it (components/promptify/matches.py).")
    question_in_candidates: bool = Field(
        False, description="Repeat the task's question at the end of every candidate, right "
        "before 'Answer:' (besides its place after the history), so the answer token can read it "
        "nearby; costs the question's tokens once per candidate. Measured on the embedded "
        "default (one seed): it did not make the tiny teacher tell apply from dismiss "
        "(opposite-task correlation +0.88 vs +0.93; docs/benchmarks.md), hence off.")
    match_fields: dict[str, str] | None = Field(
        None, description="match_hints: {member column: item column} to compare; default: the "
        "columns both tables have (ids, dates and free text excluded).")
    match_history_fields: list[str] | None = Field(
        None, description="match_hints: item columns counted in the member's history; default "
        "company, industry, topic where the items table has them; []: no history hint.")

    @model_validator(mode="after")
    def _words_need_stats(self) -> PromptifyConfig:
        if self.item_stats_words is not None and not self.item_stats:
            raise ValueError("promptify.item_stats_words is set but promptify.item_stats is off: "
                             "the words follow the statistics; set item_stats: true or remove the words")
        return self
