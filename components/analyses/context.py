"""What every analysis gets and returns: the run it reads, the run's inputs, the
settings, and the result it hands back to be printed and logged."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import polars as pl

from components.config import PipelineConfig


class AnalysisError(RuntimeError):
    """Nothing to analyse, or inputs that do not fit; the message names the fix."""


class AnalysedRun(Protocol):
    """What an analysis reads of a finished pipeline run. ``pipelines.analyses.RunArtifacts``
    implements it over the artifact store (``<artifacts>/<stage>/<key>``); a test can
    implement it over any directories."""

    def stage(self, name: str) -> Path:
        """The directory of the run's finished stage ``name``; :class:`AnalysisError` when
        the run has none."""
        ...

    @property
    def model_dir(self) -> Path:
        """The trained teacher (the align stage's saved model)."""
        ...

    @property
    def examples_dir(self) -> Path:
        """The promptify stage's examples (Parquet)."""
        ...

    def eval_prompts(self, split: str, max_per_task: int | None, seed: int,
                     tasks: Sequence[str] | None = None) -> pl.DataFrame:
        """The prompts of ``split`` sampled as the evaluate stage samples them: per task at
        most ``max_per_task`` whole lists, seeded by (``seed``, task id)."""
        ...


@dataclass
class RunInputs:
    """What the run was built with: its data and promptify settings and its tasks."""

    cfg: PipelineConfig   # the profile, with data / promptify as the run had them
    tasks: dict[str, Any]  # task id -> TaskSpec


@dataclass
class AnalysisResult:
    """What one analysis produced (and, once logged, its MLflow run id)."""

    name: str
    table: pl.DataFrame = field(default_factory=pl.DataFrame)
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    summary_columns: tuple[str, ...] = ()
    skipped: str | None = None
    seconds: float = 0.0
    run_id: str | None = None

    def markdown(self) -> str:
        from components.evaluate.report import markdown_table

        if self.skipped:
            return f"### {self.name}: skipped\n\n{self.skipped}\n"
        cols = [c for c in self.summary_columns if c in self.table.columns] or self.table.columns
        run = f", MLflow run `{self.run_id}`" if self.run_id else ""
        return (f"### {self.name} ({self.seconds:.0f}s{run})\n\n"
                f"{markdown_table(self.table.select(cols))}\n")


@dataclass
class AnalysisContext:
    """What an analysis gets: the profile, the run, where to write, a log and a cache."""

    cfg: PipelineConfig
    art: AnalysedRun
    inputs: RunInputs
    out_dir: Path
    log: Callable[[str], None] = print
    cache: dict[Any, Any] = field(default_factory=dict)

    @property
    def acfg(self):
        return self.cfg.analyses


def eval_rows(ctx: AnalysisContext, max_per_task: int, tasks: Sequence[str] | None = None) -> pl.DataFrame:
    """The evaluation prompts (``analyses.split``), a seeded sample per task, with the
    columns re-rendering needs."""
    rows = ctx.art.eval_prompts(ctx.acfg.split, max_per_task, ctx.acfg.seed, tasks)
    extra = pl.read_parquet(ctx.art.examples_dir, columns=["example_id", "style", "history_tokens",
                                                           "n_history_kept"])
    return rows.join(extra, on="example_id", how="left")


def write_csv(df: pl.DataFrame, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    df.write_csv(path)
    return path
