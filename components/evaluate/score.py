"""One (model, task) of the evaluation: score the task's prompts with one model (the teacher
or a fitted baseline) and measure it. The body of the evaluate stage's fan-out tasks; no
Ray, no MLflow."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import polars as pl


def evaluate_model_on_task(model: str, examples: pl.DataFrame, flags: pl.DataFrame, scorer: Any,
                           data: Any, settings: Mapping[str, Any]) -> tuple[dict[str, float], pl.DataFrame]:
    """Score one task's prompts with one model and measure it (the body of a fan-out task).

    ``scorer`` is a language model's directory (a ``str``: the teacher or a student of the
    compression chain) or a fitted
    baseline (with ``data``, the split's :class:`BaselineData`). ``flags`` are the task's
    candidate rows with slice flags. Returns (metrics, scores) where scores holds
    ``example_id, position, score, prob`` (``prob`` null unless the model gives
    probabilities: the teacher's P(yes), LightGBM's on tasks it has a booster for).

    The teacher ranks by its logit margin (``logit_yes - logit_no``): P(yes) in float32
    saturates at 0 and 1 and would turn confident answers into ties."""
    import torch

    from components.evaluate.report import model_task_metrics

    torch.set_num_threads(1)  # one CPU per task (num_cpus=1)
    task_id = examples["task_id"][0]
    if isinstance(scorer, str):  # a language model's directory: the teacher or a student
        from components.model.engine import ScoringEngine

        engine = ScoringEngine.from_pretrained(scorer)
        lists = engine.score_batch([(p, list(c)) for p, c in zip(examples["prefix"], examples["candidates"],
                                                                  strict=True)], margins=True)
        lists = [np.asarray(x, dtype=np.float64) for x in lists]
        # P(yes) as served: through the model's calibration.json when it has one
        probs = [engine.probabilities(x, task_id).astype(np.float64) for x in lists]
    else:
        from components.evaluate.baselines import LIGHTGBM_BASELINES, score_lists

        lists = score_lists(scorer, data, examples)
        gives_probs = model in LIGHTGBM_BASELINES and getattr(scorer, "boosters", {}).get(task_id) is not None
        probs = lists if gives_probs else None
    sizes = [len(x) for x in lists]
    expected = examples["candidate_item_ids"].list.len().to_list()
    if sizes != expected:
        raise RuntimeError(f"{model} returned {sum(sizes)} scores for task {task_id} but its prompts "
                           f"hold {sum(expected)} candidates: a scorer must score every candidate")
    flat = np.concatenate(lists) if lists else np.zeros(0)
    scores = pl.DataFrame({
        "example_id": np.repeat(examples["example_id"].to_numpy(), sizes),
        "position": np.concatenate([np.arange(n) for n in sizes]).astype(np.int32),
        "score": flat,
    }, schema={"example_id": pl.Utf8, "position": pl.Int32, "score": pl.Float64})
    scores = scores.with_columns(pl.Series("prob", np.concatenate(probs), dtype=pl.Float64)
                                 if probs is not None else pl.lit(None, pl.Float64).alias("prob"))
    rows = flags.join(scores, on=["example_id", "position"], how="left")
    if rows["score"].null_count():
        raise RuntimeError(f"{rows['score'].null_count()} candidate rows of task {task_id} got no "
                           f"{model} score: the scores do not line up with the candidates (a bug)")
    metrics = model_task_metrics(rows, "score", "prob" if probs is not None else None,
                                 n_boot=settings["bootstrap_samples"], ece_bins=settings["ece_bins"],
                                 seed=settings["seed"])
    return metrics, scores
