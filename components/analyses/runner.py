"""Run the analyses by name on one finished run: names checked before any work, one
output directory per analysis, one shared cache (the two training sweeps share their
tokenized prompts and their common point)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from components.analyses.context import AnalysedRun, AnalysisContext, AnalysisResult, RunInputs
from components.analyses.history_budget import context_budget
from components.analyses.instruction_steering import steering
from components.analyses.sweeps import data_amount, model_size, width_model_config
from components.config import ANALYSIS_NAMES, ConfigError, PipelineConfig

RUNNERS: dict[str, Callable[[AnalysisContext], AnalysisResult]] = {
    "context_budget": context_budget, "data_amount": data_amount, "model_size": model_size,
    "steering": steering,
}


def analyses_to_run(cfg: PipelineConfig, only: Sequence[str] | None = None) -> list[str]:
    """The analyses to run: ``only``, else ``cfg.analyses.run``. Raises ``ConfigError`` for
    an unknown name, or for a ``model_size`` width that is not a multiple of the model's
    head size, before anything is read or trained."""
    names = list(only or cfg.analyses.run)
    unknown = [n for n in names if n not in ANALYSIS_NAMES]
    if unknown:
        raise ConfigError(f"unknown analyses {unknown}: choose from {list(ANALYSIS_NAMES)}")
    if "model_size" in names:  # shape errors before any training
        for h in cfg.analyses.model_size.hidden_sizes:
            width_model_config(cfg, h, cfg.analyses.model_size.num_layers)
    return names


def run_analyses(cfg: PipelineConfig, art: AnalysedRun, inputs: RunInputs, out_dir: Path,
                 only: Sequence[str] | None = None, log: Callable[[str], None] = print,
                 on_result: Callable[[AnalysisResult], None] | None = None) -> list[AnalysisResult]:
    """Run the analyses (``only``, else ``cfg.analyses.run``) on the run ``art`` built with
    ``inputs``; each writes its files to ``out_dir/<analysis>/``. ``on_result`` is called
    with each result as it is done (the CLI logs it to MLflow there). Returns the results
    in the order run."""
    import torch

    names = analyses_to_run(cfg, only)
    torch.set_num_threads(cfg.analyses.threads)
    cache: dict[Any, Any] = {}
    # one tokenization of the training prompts serves both sweeps
    shares = [*(cfg.analyses.data_amount.fractions if "data_amount" in names else []),
              *([cfg.analyses.model_size.data_fraction] if "model_size" in names else [])]
    if shares:
        cache["max_fraction"] = max(shares)
    results = []
    for name in names:
        t0 = time.perf_counter()
        ctx = AnalysisContext(cfg, art, inputs, Path(out_dir) / name, log, cache)
        result = RUNNERS[name](ctx)
        result.seconds = time.perf_counter() - t0
        if result.skipped:
            log(f"{name}: skipped: {result.skipped}")
        if on_result is not None:
            on_result(result)
        results.append(result)
    return results
