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
