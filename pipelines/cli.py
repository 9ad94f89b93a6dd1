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
from components.tracking import TrackingServerError

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
TrackingUriOpt = Annotated[str | None, typer.Option(
    "--tracking-uri", help="MLflow tracking URI. Default: the profile's store "
    "(run.mlflow_tracking_uri, else sqlite:///<run.work_dir>/mlflow.db).")]
ExperimentOpt = Annotated[str | None, typer.Option(
    "--experiment", help="MLflow experiment to search. Default: the profile's run.name.")]


def _parse_overrides(pairs: list[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise typer.BadParameter(f"--set expects key=value, got '{pair}'")
        key, value = pair.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


def _load(profile: str, overrides: list[str] | None, extra: dict[str, Any] | None = None) -> PipelineConfig:
    try:
        return load_config(profile, {**_parse_overrides(overrides), **(extra or {})})
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
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Also show Ray's driver and worker "
                                          "output and every stage log line (they always go to the run log).")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Resolve every path and print the plan "
                                          "(stages, cache hits, resources per stage); start nothing. "
                                          "Exits 1 when a path cannot be used.")] = False,
) -> None:
    """Run the pipeline for a profile; finished stages are reused from the artifact cache."""
    cfg = _load(profile, set_)
    if dry_run:
        _dry_run(cfg, profile, force, stop_after)
        return
    _run_pipeline(cfg, profile, force, stop_after, verbose)


def _dry_run(cfg: PipelineConfig, profile: str, force: list[str] | None, stop_after: str | None) -> None:
    from pipelines.plan import plan_run, render
    from pipelines.stages import build_pipeline

    try:
        plan = plan_run(build_pipeline(cfg), cfg, profile=profile, force=force or (), stop_after=stop_after)
    except ValueError as err:
        console.print(f"[red]{err}[/red]", highlight=False)
        raise typer.Exit(2) from None
    render(plan, console)
    if plan.problems():
        raise typer.Exit(1)


@app.command()
def evaluate(
    model: Annotated[str, typer.Option("--model", "-m", help="The model to score: a model directory, "
                                       "models:/<name>/<version|@alias>, runs:/<run id>/<path>, or a "
                                       "pipeline run id (its registered teacher).")],
    profile: ProfileOpt = "local",
    set_: SetOpt = None,
    force: Annotated[
        list[str] | None, typer.Option("--force", help="Rerun this stage and all downstream.")
    ] = None,
) -> None:
    """Score a profile's test split with a model trained elsewhere, beside the baselines:
    the data and prompt stages of the profile, then the evaluation (no training). Tasks the
    model never trained on are reported as zero-shot. To see it next to another run in
    `rankbrew compare`, log into that run's store: --set run.mlflow_tracking_uri=sqlite:///..."""
    # the reference is passed as is (not through YAML: a run id of digits could read as a number)
    cfg = _load(profile, set_, {"evaluate.model": model, "evaluate.enabled": True})
    _run_pipeline(cfg, profile, force, None, False)


def _run_pipeline(cfg: PipelineConfig, profile: str, force: list[str] | None, stop_after: str | None,
                  verbose: bool) -> None:
    import logging

    from pipelines.dag import PipelineError
    from pipelines.ray_runner import run_pipeline
    from pipelines.stages import build_pipeline

    if not verbose:  # MLflow's store set-up lines ("Creating initial MLflow database tables")
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
        logging.getLogger("alembic").setLevel(logging.WARNING)
    pipeline = build_pipeline(cfg)
    console.print(f"[bold]rankbrew[/bold] pipeline '{pipeline.name}' profile={profile} "
                  f"config={config_hash(cfg)} stages={' -> '.join(pipeline.order)}")
    try:
        result = run_pipeline(pipeline, cfg, profile=profile, force=force or (), stop_after=stop_after,
                              console=console, verbose=verbose)
    except TrackingServerError as err:
        console.print(str(err), style="red", markup=False, highlight=False)
        raise typer.Exit(1) from None
    except PipelineError as err:
        console.print(str(err), style="red", markup=False, highlight=False)
        import shlex
        import sys

        again = " ".join(["rankbrew", *map(shlex.quote, sys.argv[1:])])
        console.print(f"resume:   {again}  (the same command: finished stages are reused)", highlight=False)
        raise typer.Exit(1) from None
    console.print("[green]pipeline finished[/green]")
    console.print(f"outputs:  {result.work_dir / 'artifacts'}")
    if result.log_path is not None:
        console.print(f"log:      {result.log_path}  (Ray's logs: {result.log_path.with_suffix('.ray')})")
    console.print(f"MLflow:   {result.tracking_uri}  (parent run {result.parent_run_id})")
    from components.tracking import is_server

    if is_server(result.tracking_uri):
        console.print(f"browse:   {result.tracking_uri}  (the tracking server's UI)")
    else:
        console.print(f"browse:   make mlflow-ui   (mlflow ui --backend-store-uri {result.tracking_uri})")
    evaluation = result.results.get("evaluate")
    if evaluation is not None:
        from pipelines.eval_stage import console_summary, summary_path

        summary = summary_path(evaluation.path)
        if summary.exists():
            console.print()
            console.print(console_summary(summary.read_text()), markup=False, highlight=False)
            console.print(f"summary:  {summary}  (per-task tables, paired deltas, calibration; plots "
                          f"beside it; `rankbrew compare` reads it back from MLflow)")


@app.command(context_settings={"allow_extra_args": True})
def compare(
    ctx: typer.Context,
    run_id: Annotated[str | None, typer.Option(
        "--run", help="Pipeline (parent) run id, as `rankbrew run` prints it. Default: the newest "
        "finished pipeline run of the experiment that has evaluation results.")] = None,
    against: Annotated[str | None, typer.Option(
        "--against", help="A second pipeline run id: print both runs side by side (each model's "
        "AUC in both, and the teacher's delta).")] = None,
    runs: Annotated[list[str] | None, typer.Option(
        "--runs", help="Several pipeline run ids treated as seeds: --runs A B C (or A,B,C, or "
        "--runs A --runs B): mean and s.d. over runs, paired deltas over runs.")] = None,
    last: Annotated[int | None, typer.Option(
        "--last", help="The newest N evaluated pipeline runs of the experiment, treated as seeds "
        "(as --runs).", min=2)] = None,
    tracking_uri: TrackingUriOpt = None,
    experiment: ExperimentOpt = None,
    profile: ProfileOpt = "local",
    set_: SetOpt = None,
) -> None:
    """Print the evaluation of a pipeline run, read back from MLflow.

    Reads the nested runs the evaluate stage logged (one per model and task,
    tag rankbrew.kind=eval) and prints, for the teacher and each baseline:
    the pooled and per-list AUC means, the paired teacher-minus-baseline
    deltas (95% member bootstrap) with a one-line verdict per baseline; the
    AUC per trained task and the teacher's gain over the best baseline; the
    same for the held-out (zero-shot) tasks; the cold-start table (AUC by the
    member's prior events, and on new items). With --against, two pipeline
    runs side by side. With --runs / --last, several runs as seeds: per task
    and for the means, each model's mean and s.d. over runs, the mean paired
    delta with a t-interval over runs and each run's bootstrap interval.

    Examples:

      rankbrew compare                          # newest evaluated run, local profile

      rankbrew compare --profile movielens

      rankbrew compare --run RUN_ID --against OTHER_RUN_ID

      rankbrew compare --runs RUN_A RUN_B RUN_C # three seeds of one recipe

      rankbrew compare --last 4

      rankbrew compare --tracking-uri sqlite:////abs/mlflow.db --experiment rankbrew-local
    """
    from components.tracking import default_tracking_uri
    from pipelines.compare import CompareError, compare_many
    from pipelines.compare import compare as compare_runs

    extra = list(ctx.args)
    if extra and runs is None:
        console.print(f"[red]unexpected argument(s) {extra}: run ids go after --runs[/red]")
        raise typer.Exit(2)
    run_ids = [r for v in [*(runs or []), *extra] for r in v.split(",") if r.strip()]
    if (run_ids or last) and (run_id or against):
        console.print("[red]--runs / --last compare several runs as seeds; --run / --against one "
                      "run or two side by side: use one or the other[/red]")
        raise typer.Exit(2)
    if run_ids and last:
        console.print("[red]give either --runs RUN_ID ... or --last N, not both[/red]")
        raise typer.Exit(2)
    cfg = _load(profile, set_)
    uri = tracking_uri or cfg.run.mlflow_tracking_uri or default_tracking_uri(cfg.run.work_dir)
    try:
        if run_ids or last:
            result = compare_many(uri, experiment or cfg.run.name, run_ids or None, last)
        else:
            result = compare_runs(uri, experiment or cfg.run.name, run_id, against)
    except (CompareError, TrackingServerError) as err:
        console.print(str(err), style="red", markup=False, highlight=False)
        raise typer.Exit(1) from None
    console.print(result.markdown, markup=False, highlight=False)


@app.command()
def analyze(
    run_id: Annotated[str | None, typer.Option(
        "--run-id", help="Pipeline (parent) run id to analyse, as `rankbrew run` prints it. "
        "Default: the newest finished pipeline run whose trained teacher is on disk.")] = None,
    only: Annotated[str | None, typer.Option(
        "--only", help="Comma-separated analyses to run (context_budget, data_amount, "
        "model_size, steering). Default: the profile's analyses.run (all four).")] = None,
    tracking_uri: TrackingUriOpt = None,
    experiment: ExperimentOpt = None,
    profile: ProfileOpt = "local",
    set_: SetOpt = None,
) -> None:
    """Analyse a finished pipeline run: AUC vs context, data, model size; steering.

    Four analyses, each one MLflow run nested under the pipeline run (tags
    rankbrew.kind=analysis, rankbrew.analysis=NAME) with a metric per sweep
    point, a CSV table and a PNG plot (files under <work_dir>/analyses/):

      context_budget  the trained teacher's mean per-task AUC (and that of
                      the cold-start bucket) with the evaluation prefixes
                      re-rendered at other history token budgets

      data_amount     teachers trained on shares of the training prompts at
                      equal steps (one process, no Ray); AUC per share

      model_size      the same for model widths: AUC vs parameters

      steering        steering tasks scored under their own and under their
                      base task's instruction: AUC against the steered
                      labels under each, and the Spearman correlation of
                      the score change with the named criteria's utility
                      (synthetic data only)

    Sizes, steps and samples: the profile's `analyses:` section (--set
    overrides them). Not part of `rankbrew run`: the sweeps train models
    (about 10 minutes on 2 cores with the local profile's defaults).

    Examples:

      rankbrew analyze                          # newest run, local profile

      rankbrew analyze --only context_budget,steering      # no training

      rankbrew analyze --run-id RUN_ID --set analyses.training.steps=300
    """
    from components.analyses import AnalysisError
    from components.tracking import default_tracking_uri
    from pipelines.analyses import analyze as run_analyses
    from pipelines.analyses import find_run_artifacts

    cfg = _load(profile, set_)
    work_dir = cfg.run.work_dir.resolve()
    uri = tracking_uri or cfg.run.mlflow_tracking_uri or default_tracking_uri(work_dir)
    names = [n.strip() for n in only.split(",") if n.strip()] if only else None
    try:
        art = find_run_artifacts(uri, experiment or cfg.run.name, work_dir / "artifacts", run_id)
        console.print(f"[bold]rankbrew analyze[/bold] pipeline run {art.pipeline_run_id}, teacher "
                      f"{art.model_dir}")
        results = run_analyses(cfg, art, names, tracking_uri=uri, out_root=work_dir / "analyses",
                               log=lambda m: console.print(m, markup=False, highlight=False))
    except (AnalysisError, ConfigError, TrackingServerError) as err:
        console.print(str(err), style="red", markup=False, highlight=False)
        raise typer.Exit(1) from None
    console.print()
    for r in results:
        console.print(r.markdown(), markup=False, highlight=False)
    console.print(f"files:  {work_dir / 'analyses' / art.key}")
    console.print(f"MLflow: {uri}  (runs nested under {art.pipeline_run_id}, tag rankbrew.kind=analysis)")


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


serve_app = typer.Typer(help="The ranker on Ray Serve: start, stop, status, redeploy, rollback "
                        "(docs/serving.md).", no_args_is_help=True)
app.add_typer(serve_app, name="serve")
PortOpt = Annotated[int, typer.Option("--port", help="HTTP port on 127.0.0.1.")]
ModelOpt = Annotated[str | None, typer.Option(
    "--model", help="Registry reference to serve (default models:/rankbrew-ranker@champion, falling back "
    "to models:/rankbrew-teacher@champion until the compression chain registers a ranker).")]


def _serve_target(profile: str, set_: list[str] | None, port: int, model: str | None = None):
    from pipelines.serve_ctl import target_from_profile

    return target_from_profile(profile, _parse_overrides(set_), port=port, model=model)


@serve_app.command("start")
def serve_start(profile: ProfileOpt = "local", set_: SetOpt = None, port: PortOpt = 8000,
                model: ModelOpt = None) -> None:
    """Start the app in the background (its own local Ray) and wait until it is ready."""
    from components.serve.registry import ServedModelError
    from pipelines.serve_ctl import start

    target = _serve_target(profile, set_, port, model)
    try:
        with console.status(f"starting the Serve app (log: {target.state_path.parent / 'serve.log'}) ..."):
            state = start(target)
    except (ServedModelError, RuntimeError, TimeoutError) as e:
        console.print(str(e), style="red", markup=False, highlight=False)
        raise typer.Exit(1) from None
    console.print(f"[green]serving[/green] {state['model']} (alias {state['alias']}) at {state['url']}  "
                  f"docs: {state['url']}/docs   stop: make serve-stop", highlight=False)


@serve_app.command("stop")
def serve_stop(profile: ProfileOpt = "local", set_: SetOpt = None, port: PortOpt = 8000) -> None:
    """Stop the app `serve start` launched (and only that)."""
    from pipelines.serve_ctl import stop

    console.print("stopped" if stop(_serve_target(profile, set_, port)) else "no app was running")


@serve_app.command("status")
def serve_status(profile: ProfileOpt = "local", set_: SetOpt = None, port: PortOpt = 8000) -> None:
    """The live model (version, alias), the replicas and their health."""
    from pipelines.serve_ctl import connect, live_model, read_state

    target = _serve_target(profile, set_, port)
    if read_state(target) is None:
        console.print(f"no app is running for {target.work_dir} (start one with `make serve`)")
        raise typer.Exit(1)
    connect(target)  # before ray is imported (see connect)
    from ray import serve

    from pipelines.serve_app import APP_NAME
    table = Table("deployment", "status", "replicas")
    for name, dep in serve.status().applications[APP_NAME].deployments.items():
        table.add_row(name, str(dep.status.value), ", ".join(f"{k.value if hasattr(k, 'value') else k}: {v}"
                                                          for k, v in dep.replica_states.items()))
    console.print(f"live: {live_model(target)}  at {target.url}", highlight=False)
    console.print(table)


@serve_app.command("redeploy")
def serve_redeploy(profile: ProfileOpt = "local", set_: SetOpt = None, port: PortOpt = 8000,
                   model: ModelOpt = None,
                   version: Annotated[str | None, typer.Option(help="Deploy this version instead of "
                                                               "the alias's.")] = None) -> None:
    """Roll the live app to the version the alias points to now (or --version N), in place."""
    from pipelines.serve_ctl import connect, deploy, live_model

    target = _serve_target(profile, set_, port, model)
    connect(target)
    before = live_model(target)
    if version is not None and model is None:  # a version of what is live (the teacher, say)
        target.model = f"models:/{before['name']}@{before['alias'] or 'champion'}"
    with console.status("redeploying (replicas load the new version beside the old, then swap) ..."):
        deploy(target, version)
    after = live_model(target)
    console.print(f"{before['uri']} -> {after['uri']} (alias {after['alias']})", highlight=False)


@serve_app.command("rollback")
def serve_rollback(profile: ProfileOpt = "local", set_: SetOpt = None, port: PortOpt = 8000,
                   alias: Annotated[str, typer.Option(help="The alias to move back.")] = "champion") -> None:
    """Move the alias back to the version deployed before the live one, and redeploy."""
    from pipelines.serve_ctl import connect, rollback

    target = _serve_target(profile, set_, port)
    connect(target)
    with console.status("rolling back ..."):
        was, now = rollback(target, alias)
    console.print(f"'{alias}': version {was} -> {now}, redeployed", highlight=False)


if __name__ == "__main__":
    app()
