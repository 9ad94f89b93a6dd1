"""The ``rankbrew`` command line: run pipelines, inspect configs and stages, make data.

The CLI stays small (frozen flags, like torchtitan's): new knobs go into the YAML
profiles, and ``--set section.key=value`` overrides any of them for one run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.table import Table

from components.config import ConfigError, PipelineConfig, config_hash, load_config

app = typer.Typer(
    help="rankbrew: an open platform for LLM-based personalized ranking (360Brew-style).",
    no_args_is_help=True,
    add_completion=False,
)
console = Console(soft_wrap=True)  # keep paths and URIs on one line, copyable

ProfileOpt = Annotated[
    str, typer.Option("--profile", "-p", help="Profile name in pipelines/configs/ or a YAML path.")
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a config value: --set data.synthetic.members=500"),
]


def _parse_overrides(pairs: list[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise typer.BadParameter(f"--set expects key=value, got '{pair}'")
        key, value = pair.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


def _load(profile: str, overrides: list[str] | None) -> PipelineConfig:
    try:
        return load_config(profile, _parse_overrides(overrides))
    except ConfigError as err:
        console.print(f"[red]{err}[/red]")
        raise typer.Exit(2) from None


@app.command()
def run(
    profile: ProfileOpt = "local",
    set_: SetOpt = None,
    force: Annotated[
        list[str] | None, typer.Option("--force", help="Rerun this stage and all downstream.")
    ] = None,
    stop_after: Annotated[
        str | None, typer.Option("--stop-after", help="Run only this stage and its ancestors.")
    ] = None,
) -> None:
    """Run the pipeline for a profile; finished stages are reused from the artifact cache."""
    from pipelines.dag import PipelineError, run_pipeline
    from pipelines.stages import build_pipeline

    cfg = _load(profile, set_)
    pipeline = build_pipeline(cfg)
    console.print(f"[bold]rankbrew[/bold] pipeline '{pipeline.name}' profile={profile} "
                  f"config={config_hash(cfg)} stages={' -> '.join(pipeline.order)}")
    try:
        result = run_pipeline(pipeline, cfg, profile=profile, force=force or (), stop_after=stop_after)
    except PipelineError as err:
        console.print(f"[red]{err}[/red]")
        raise typer.Exit(1) from None
    console.print("[green]pipeline finished[/green]")
    for line in result.summary_lines():
        console.print(line)
    console.print(f"outputs:  {result.work_dir / 'artifacts'}")
    console.print(f"MLflow:   {result.tracking_uri}  (parent run {result.parent_run_id})")
    console.print(f"browse:   make mlflow-ui   (mlflow ui --backend-store-uri {result.tracking_uri})")
    evaluation = result.results.get("evaluate")
    if evaluation is not None:
        from pipelines.eval_stage import summary_path

        summary = summary_path(evaluation.path)
        if summary.exists():
            console.print()
            console.print(summary.read_text(), markup=False, highlight=False)
            console.print(f"summary:  {summary}  (plots beside it; `rankbrew compare` reads it back "
                          f"from MLflow)")


@app.command()
def compare(
    run_id: Annotated[str | None, typer.Option(
        "--run", help="Pipeline (parent) run id, as `rankbrew run` prints it. Default: the newest "
        "finished pipeline run of the experiment that has evaluation results.")] = None,
    against: Annotated[str | None, typer.Option(
        "--against", help="A second pipeline run id: print both runs side by side (each model's "
        "AUC in both, and the teacher's delta).")] = None,
    tracking_uri: Annotated[str | None, typer.Option(
        "--tracking-uri", help="MLflow tracking URI. Default: the profile's store "
        "(run.mlflow_tracking_uri, else sqlite:///<run.work_dir>/mlflow.db).")] = None,
    experiment: Annotated[str | None, typer.Option(
        "--experiment", help="MLflow experiment to search. Default: the profile's run.name.")] = None,
    profile: ProfileOpt = "local",
    set_: SetOpt = None,
) -> None:
    """Print the evaluation of a pipeline run, read back from MLflow.

    Reads the nested runs the evaluate stage logged (one per model and task,
    tag rankbrew.kind=eval) and prints, for the teacher and each baseline:
    the AUC per trained task and the teacher's gain over the best baseline;
    the same for the held-out (zero-shot) tasks; the means over both groups;
    the cold-start table (AUC by the member's prior events, and on new items).
    With --against, two pipeline runs side by side.

    Examples:

      rankbrew compare                          # newest evaluated run, local profile

      rankbrew compare --profile movielens

      rankbrew compare --run RUN_ID --against OTHER_RUN_ID

      rankbrew compare --tracking-uri sqlite:////abs/mlflow.db --experiment rankbrew-local
    """
    from components.tracking import default_tracking_uri
    from pipelines.compare import CompareError
    from pipelines.compare import compare as compare_runs

    cfg = _load(profile, set_)
    uri = tracking_uri or cfg.run.mlflow_tracking_uri or default_tracking_uri(cfg.run.work_dir)
    try:
        result = compare_runs(uri, experiment or cfg.run.name, run_id, against)
    except CompareError as err:
        console.print(f"[red]{err}[/red]")
        raise typer.Exit(1) from None
    console.print(result.markdown, markup=False, highlight=False)


@app.command("config")
def show_config(profile: ProfileOpt = "local", set_: SetOpt = None) -> None:
    """Print the resolved config of a profile and its hash."""
    cfg = _load(profile, set_)
    console.print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    console.print(f"config hash: {config_hash(cfg)}")


@app.command()
def stages(profile: ProfileOpt = "local") -> None:
    """List the stages of the pipeline, their inputs and the config sections they use."""
    from pipelines.stages import build_pipeline

    pipeline = build_pipeline(_load(profile, None))
    table = Table("stage", "after", "config", "what")
    for name in pipeline.order:
        s = pipeline.stages[name]
        table.add_row(name, ", ".join(s.deps) or "-", ", ".join(s.config_keys) or "-", s.description)
    console.print(table)


@app.command()
def generate(
    out: Annotated[Path, typer.Option(help="Output directory for the canonical tables.")],
    members: Annotated[int, typer.Option(help="Number of members.")] = 1000,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same world).")] = 0,
    members_per_file: Annotated[int, typer.Option(help="Members per Parquet part file.")] = 50_000,
) -> None:
    """Generate a synthetic professional world (members, items, interactions)."""
    from components.config import SyntheticWorldConfig
    from components.data.synthetic import generate_world

    cfg = SyntheticWorldConfig(members=members, seed=seed, members_per_file=members_per_file)
    summary = generate_world(cfg, out, progress=True)
    console.print(summary)


if __name__ == "__main__":
    app()
