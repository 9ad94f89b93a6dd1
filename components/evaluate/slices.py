"""Evaluation slices: which candidate rows belong to which named subset.

360Brew's claims are about slices, not the average: members with little history
("<=5 interactions"), items nobody has engaged with yet, a later time window, tasks
never trained on. A slice is a boolean column over candidate rows (one row per
(prompt, candidate)), so a metric per slice is a filter and a group-by.

Slices (a row may be in several):

| slice | rows |
|---|---|
| ``all`` | every row |
| ``activity<=5``, ``activity<=10``, ``activity<=100``, ``activity>100`` | cumulative buckets of the member's prior events, as in 360Brew's cold-start figure |
| ``activity=0-5``, ``activity=6-10``, ``activity=11-100``, ``activity=>100`` | the same boundaries, disjoint (for a bar chart that adds up) |
| ``new_item`` | the candidate item had no event of anyone before the prompt's cutoff |
| ``cold_item`` | the item's first event is at/after the training cutoff (split's ``item_cold``) |
| ``window=valid``, ``window=test`` | the evaluation window; ``test`` is the later one |
| ``task=held_out``, ``task=trained`` | zero-shot tasks vs tasks with training examples |

Activity is ``n_prior_events`` of the prompt (history-eligible events before its
cutoff: what the model could read), unless another column is named.
"""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

from components.evaluate.metrics import summarize

ACTIVITY_LIMITS = (5, 10, 100)
CUMULATIVE_ACTIVITY = ("activity<=5", "activity<=10", "activity<=100", "activity>100")
DISJOINT_ACTIVITY = ("activity=0-5", "activity=6-10", "activity=11-100", "activity=>100")
SLICES = (
    "all", *CUMULATIVE_ACTIVITY, *DISJOINT_ACTIVITY, "new_item", "cold_item",
    "window=valid", "window=test", "task=held_out", "task=trained",
)

_EXAMPLE_COLUMNS = ("example_id", "member_id", "task_id", "split", "held_out", "cutoff",
                    "candidate_item_ids", "labels")


def _require(df: pl.DataFrame, cols: Sequence[str], what: str, fix: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ValueError(f"{what} lacks column(s) {missing}: {fix}")


def candidate_rows(examples: pl.DataFrame, score_columns: Sequence[str] = ()) -> pl.DataFrame:
    """One row per (prompt, candidate) from promptify example rows.

    Keeps ``example_id, member_id, task_id, split, held_out, cutoff, n_prior_events``
    and adds ``position`` (index in the list), ``item_id`` and ``label``; list columns
    named in ``score_columns`` (one value per candidate) are exploded alongside."""
    _require(examples, _EXAMPLE_COLUMNS, "the examples frame",
             "pass rows of the promptify stage's examples/ Parquet")
    keep = [c for c in (*_EXAMPLE_COLUMNS[:6], "n_prior_events") if c in examples.columns]
    lists = ["candidate_item_ids", "labels", *score_columns]
    return (
        examples.select(*keep, *lists)
        .with_columns(pl.int_ranges(0, pl.col("candidate_item_ids").list.len()).alias("position"))
        .explode([*lists, "position"])
        .rename({"candidate_item_ids": "item_id", "labels": "label"})
        .with_columns(pl.col("position").cast(pl.Int32), pl.col("label").cast(pl.Int8))
    )


def slice_flags(rows: pl.DataFrame, items: pl.DataFrame | None = None,
                activity_col: str = "n_prior_events") -> pl.DataFrame:
    """``rows`` plus one boolean column per slice of :data:`SLICES` that can be decided.

    ``rows`` needs ``item_id, cutoff, split, held_out`` and ``activity_col``;
    ``items`` (the split stage's items table, with ``first_seen_at`` and ``cold``) is
    needed for ``new_item`` and ``cold_item``, which are left out without it."""
    _require(rows, ["item_id", "cutoff", "split", "held_out", activity_col], "the candidate rows",
             "build them with candidate_rows(examples) or name the activity column")
    a = pl.col(activity_col)
    lo = (-1, *ACTIVITY_LIMITS)
    flags = [pl.lit(True).alias("all")]
    flags += [(a <= lim).alias(name) for lim, name in zip(ACTIVITY_LIMITS, CUMULATIVE_ACTIVITY, strict=False)]
    flags.append((a > ACTIVITY_LIMITS[-1]).alias(CUMULATIVE_ACTIVITY[-1]))
    flags += [
        ((a > lo[i]) & (a <= ACTIVITY_LIMITS[i])).alias(DISJOINT_ACTIVITY[i])
        for i in range(len(ACTIVITY_LIMITS))
    ]
    flags.append((a > ACTIVITY_LIMITS[-1]).alias(DISJOINT_ACTIVITY[-1]))
    flags += [
        (pl.col("split") == "valid").alias("window=valid"),
        (pl.col("split") == "test").alias("window=test"),
        pl.col("held_out").alias("task=held_out"),
        (~pl.col("held_out")).alias("task=trained"),
    ]
    out = rows.with_columns(flags)
    if items is not None:
        _require(items, ["item_id", "first_seen_at", "cold"], "the items table",
                 "pass the split stage's items table (split/<key>/items), which adds them")
        seen = items.select("item_id", pl.col("first_seen_at").alias("__first"), pl.col("cold").alias("__cold"))
        out = (
            out.join(seen, on="item_id", how="left")
            .with_columns(
                (pl.col("__first").is_null() | (pl.col("__first") >= pl.col("cutoff"))).alias("new_item"),
                pl.col("__cold").fill_null(True).alias("cold_item"),
            )
            .drop("__first", "__cold")
        )
    return out


def slice_names(flags: pl.DataFrame) -> list[str]:
    """The slices of :data:`SLICES` present as columns of ``flags``, in canonical order."""
    return [s for s in SLICES if s in flags.columns]


def slice_membership(flags: pl.DataFrame) -> pl.DataFrame:
    """The long form: one ``(row, slice)`` pair per row and slice it belongs to
    (``row`` is the row's index in ``flags``)."""
    names = slice_names(flags)
    return (
        flags.select(pl.int_range(pl.len(), dtype=pl.Int64).alias("row"), *names)
        .unpivot(index="row", on=names, variable_name="slice", value_name="member")
        .filter(pl.col("member"))
        .select("row", "slice")
        .sort("row", "slice")
    )


def metrics_by_slice(flags: pl.DataFrame, score_col: str = "score", prob_col: str | None = None,
                     by: Sequence[str] = ("task_id",), slices: Sequence[str] | None = None,
                     n_boot: int = 0, k: int = 10) -> pl.DataFrame:
    """:func:`summarize` per (slice, ``by`` columns), lists = ``example_id``.

    Returns one row per non-empty (slice, group) with the ``summarize`` keys as columns."""
    _require(flags, [score_col, "label", "example_id", *by], "the flagged rows",
             f"add a '{score_col}' column (one score per candidate row) and keep the ids")
    out = []
    for name in slices or slice_names(flags):
        part = flags.filter(pl.col(name))
        groups = part.partition_by(list(by), as_dict=True, maintain_order=True) if by else {(): part}
        for key, g in sorted(groups.items(), key=lambda kv: tuple(str(x) for x in kv[0])):
            probs = g[prob_col].to_numpy() if prob_col else None
            m = summarize(g[score_col].to_numpy(), g["label"].to_numpy(), g["example_id"].to_numpy(),
                          probs=probs, k=k, n_boot=n_boot)
            out.append({"slice": name, **dict(zip(by, key, strict=True)), **m})
    if not out:
        return pl.DataFrame({"slice": []}, schema={"slice": pl.Utf8})
    return pl.DataFrame(out)
