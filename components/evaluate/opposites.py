"""Does the question matter? Score correlation between tasks that should disagree.

A ranker that ignores the instruction scores a candidate the same whether it is asked
"will the member apply?" or "will the member dismiss?". Its per-task AUCs can still look
fine (the dismiss task's AUC comes out below 0.5, which a mean hides), so this is
measured directly: take task A's evaluation prompts, swap A's instruction and question
for those of an opposite task B (same member, history and candidates; only the words of
the question change), score both, and take the Spearman correlation of the two score
vectors within each list. A model that reads the question gives opposite tasks a
**negative** correlation; one that ignores it gives ~+1 (on a small real review log the
teacher's "will like" and the held-out "will dislike" correlated at 0.975, issue 14).

Opposite pairs are derived from the task registry (:func:`opposite_pairs`) unless the
evaluation config names them: two tasks on the same item type and surface where each
one's positive actions are among the other's negative actions (apply vs dismiss, like vs
hide), or with the same positive actions and disjoint ``label_value`` ranges (rate >= 4
vs rate <= 2).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import polars as pl
from scipy.stats import spearmanr

from components.promptify.tasks import TaskSpec
from components.promptify.verbalize import swap_candidate_question


def _disjoint_values(a: TaskSpec, b: TaskSpec) -> bool:
    ra, rb = a.label_value, b.label_value
    if ra is None or rb is None:
        return False
    lo_a, hi_a = ra.at_least if ra.at_least is not None else -np.inf, ra.at_most if ra.at_most is not None else np.inf
    lo_b, hi_b = rb.at_least if rb.at_least is not None else -np.inf, rb.at_most if rb.at_most is not None else np.inf
    return hi_a < lo_b or hi_b < lo_a


def are_opposite(a: TaskSpec, b: TaskSpec) -> bool:
    """Whether ``a`` and ``b`` should rank a member's candidates in opposite orders."""
    if a.id == b.id or a.item_type != b.item_type or a.surface != b.surface or a.domain != b.domain:
        return False
    if a.steering or b.steering:
        return False
    if (set(a.positive_actions) <= set(b.negative_actions)
            and set(b.positive_actions) <= set(a.negative_actions)):
        return True
    return set(a.positive_actions) == set(b.positive_actions) and _disjoint_values(a, b)


def opposite_pairs(tasks: Sequence[TaskSpec], named: Sequence[Sequence[str]] | None = None
                   ) -> list[tuple[str, str]]:
    """``[(A, B)]``, each unordered pair once (A before B in registry order).

    ``named`` (``evaluate.opposite_tasks``): those pairs, each id checked against
    ``tasks``; default: every pair :func:`are_opposite` accepts."""
    ids = [t.id for t in tasks]
    if named is not None:
        out = []
        for pair in named:
            if len(pair) != 2:
                raise ValueError(f"evaluate.opposite_tasks: {list(pair)} is not a pair: write [task_a, task_b]")
            missing = [p for p in pair if p not in ids]
            if missing:
                raise ValueError(f"evaluate.opposite_tasks names {missing}, which are not evaluated "
                                 f"tasks; evaluated: {ids}")
            out.append((pair[0], pair[1]))
        return out
    return [(a.id, b.id) for i, a in enumerate(tasks) for b in tasks[i + 1:] if are_opposite(a, b)]


def swap_question(prefix: str, src: TaskSpec, dst: TaskSpec) -> str:
    """``prefix`` (rendered for ``src``) asking ``dst``'s instruction and question instead.

    The renderers insert both verbatim in every style, so an exact replacement suffices;
    a prefix that does not contain them raises (it was rendered for another task)."""
    for part in ("instruction", "question"):
        old = getattr(src, part)
        if old not in prefix:
            raise ValueError(f"the prompt does not contain task '{src.id}''s {part} ({old[:60]!r}...): "
                             f"it was rendered for another task or with a custom instruction")
    out = prefix.replace(src.instruction, dst.instruction, 1)
    # the question comes after the history: replace its last occurrence
    head, sep, tail = out.rpartition(src.question)
    return head + dst.question + tail


def list_correlations(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> np.ndarray:
    """Spearman correlation within each pair of score lists (lists with < 3 candidates or
    constant scores are left out: no correlation is defined)."""
    out = []
    for x, y in zip(a, b, strict=True):
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
            continue
        out.append(float(spearmanr(x, y).statistic))
    return np.asarray(out, dtype=np.float64)


def opposite_correlations(examples: pl.DataFrame, tasks: Sequence[TaskSpec], pairs: Sequence[tuple[str, str]],
                          score: Callable[[list[tuple[str, list[str]]]], list[np.ndarray]],
                          asked_scores: Mapping[str, np.ndarray] | None = None,
                          max_prompts: int = 50, n_boot: int = 1000, seed: int = 0) -> pl.DataFrame:
    """For each pair (A, B), the mean within-list Spearman correlation between a model's
    scores on A's prompts as asked and as asked with B's question (one direction: A's
    prompts, A first in the pair; the held-out task second makes it a zero-shot test).

    ``score([(prefix, candidates), ...])`` returns one score array per prompt;
    ``asked_scores`` (example id -> scores in candidate order), when given, are used for
    the prompts as asked instead of scoring them again. Returns ``task, opposite, lists,
    mean_corr, corr_low, corr_high, share_negative`` (a 95% bootstrap interval over
    lists); a pair whose first task has no prompts is left out."""
    by_id = {t.id: t for t in tasks}
    rows = []
    rng = np.random.default_rng(seed)
    for src, dst in pairs:
        ex = examples.filter(pl.col("task_id") == src).sort("example_id").head(max_prompts)
        if ex.height == 0:
            continue
        asked = [(p, list(c)) for p, c in zip(ex["prefix"], ex["candidates"], strict=True)]
        swapped = [(swap_question(p, by_id[src], by_id[dst]),
                    [swap_candidate_question(s, by_id[src].question, by_id[dst].question) for s in c])
                   for p, c in asked]
        if asked_scores is not None:
            as_asked = [asked_scores[e] for e in ex["example_id"]]
        else:
            as_asked = score(asked)
        corr = list_correlations(as_asked, score(swapped))
        if corr.size == 0:
            continue
        boot = rng.choice(corr, size=(max(n_boot, 1), corr.size)).mean(axis=1)
        rows.append({"task": src, "opposite": dst, "lists": corr.size, "mean_corr": float(corr.mean()),
                     "corr_low": float(np.quantile(boot, 0.025)), "corr_high": float(np.quantile(boot, 0.975)),
                     "share_negative": float((corr < 0).mean())})
    schema = {"task": pl.String, "opposite": pl.String, "lists": pl.Int64, "mean_corr": pl.Float64,
              "corr_low": pl.Float64, "corr_high": pl.Float64, "share_negative": pl.Float64}
    return pl.DataFrame(rows, schema=schema)


def opposite_verdict(table: pl.DataFrame) -> str | None:
    """One line for the console and the report, or None without pairs."""
    if table.height == 0:
        return None
    mean = float(table["mean_corr"].mean())
    worst = table.sort("mean_corr", descending=True).row(0, named=True)
    reads = ("reads the question" if float(table["corr_high"].max()) < 0
             else "does NOT reliably read the question")
    return (f"teacher {reads}: score correlation between opposite tasks {mean:+.2f} on average "
            f"over {table.height} pairs (highest {worst['mean_corr']:+.2f} "
            f"[{worst['corr_low']:+.2f}, {worst['corr_high']:+.2f}]: {worst['task']} asked as "
            f"{worst['opposite']}; ignoring the question gives ~+1, reading it < 0)")
