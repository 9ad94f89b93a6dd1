"""``rankbrew compare``: the evaluation tables of pipeline runs, read back from MLflow.

The evaluation stage logs one MLflow run per (model, task) nested under the pipeline's
parent run (``rankbrew.kind=eval``; see pipelines/eval_stage.py). This module reads
those runs (not the stage's CSV file, so any run in the store can be compared, also
from another machine) and rebuilds the tables with ``components.evaluate.report``: per
task and on average, the teacher vs each baseline, the zero-shot (held-out) tasks and
the cold-start buckets; for two runs, side by side; for several runs of the same recipe
(seeds, :func:`compare_many`), the mean and s.d. over runs and the paired deltas
(teacher minus each baseline) averaged over runs with a t-interval, beside each run's
own paired member-bootstrap intervals (the ``evaluate/paired_deltas.csv`` artifact the
stage logs to the pipeline run).

When a pipeline run reused a cached ``evaluate`` stage, its own parent run holds no
eval runs: they are found through the stage key (the eval runs carry the evaluate
stage's ``rankbrew.stage_key``), in the newest pipeline run that built them.
"""

from __future__ import annotations

import datetime as dt
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from components import tracking
from components.compress.report import chain_markdown, is_chain_model
from components.evaluate.report import (
    PAIRED_SCHEMA,
    EvalRecord,
    across_runs_table,
    cold_start_table,
    paired_across_runs,
    render_across_runs,
    render_markdown,
    render_side_by_side,
    side_by_side,
    single_class_warnings,
    summary_table,
    verdict_lines,
)
from pipelines.eval_stage import EVAL_KIND, TAG_EVAL_SPLIT, TAG_HELD_OUT, TAG_MODEL, TAG_TASK

PARENT_TAG = "mlflow.parentRunId"
#: Where the evaluate stage logs its paired deltas on the pipeline run (see eval_stage).
PAIRED_ARTIFACT = "evaluate/paired_deltas.csv"
#: The compression chain's table (pipelines/compress_report.py), when the run had one.
CHAIN_ARTIFACT = "evaluate/compression.csv"


class CompareError(RuntimeError):
    """Nothing to compare; the message says what is missing and the fix."""


@dataclass
class EvaluatedRun:
    """A pipeline run and the evaluation records that belong to it."""

    run_id: str
    experiment: str
    started: str
    profile: str
    git_sha: str
    split: str
    evaluated_in: str  # the pipeline run whose evaluate stage logged the records
    records: list[EvalRecord]

    def describe(self) -> str:
        via = "" if self.evaluated_in == self.run_id else (
            f" (evaluate stage cached: results logged by run {self.evaluated_in})")
        return (f"run `{self.run_id}` of experiment `{self.experiment}`, started {self.started}, "
                f"profile `{self.profile}`, git `{self.git_sha[:12]}`, split `{self.split}`, "
                f"{len(self.records)} (model, task) evaluations{via}")


@dataclass
class Comparison:
    """What :func:`compare` found: the run(s), the tables and their markdown."""

    run: EvaluatedRun
    against: EvaluatedRun | None
    table: pl.DataFrame
    cold_start: pl.DataFrame
    markdown: str
    deltas: pl.DataFrame | None = None
    verdicts: list[str] = field(default_factory=list)


@dataclass
class MultiComparison:
    """What :func:`compare_many` found: the runs (distinct evaluations), the per-run tables
    and the across-run tables (:func:`across_runs_table`, :func:`paired_across_runs`)."""

    runs: list[EvaluatedRun]
    tables: list[pl.DataFrame]
    deltas: list[pl.DataFrame | None]
    table: pl.DataFrame
    paired: pl.DataFrame | None
    markdown: str
    skipped: list[str] = field(default_factory=list)


def _q(value: str) -> str:
    return value.replace("'", "\\'")


def search_all_runs(client, experiment_ids: list[str], filter_string: str, order_by=None) -> list[Any]:
    runs, token = [], None
    while True:
        page = client.search_runs(experiment_ids, filter_string=filter_string, max_results=1000,
                                  order_by=order_by, page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            return runs


def _records(runs: list[Any]) -> list[EvalRecord]:
    """Eval runs -> records; a (model, task) logged twice keeps the newest run."""
    newest: dict[tuple[str, str], Any] = {}
    for r in runs:
        key = (r.data.tags.get(TAG_MODEL, "?"), r.data.tags.get(TAG_TASK, "?"))
        if key not in newest or r.info.start_time > newest[key].info.start_time:
            newest[key] = r
    return [EvalRecord(m, t, r.data.tags.get(TAG_HELD_OUT) == "true", dict(r.data.metrics))
            for (m, t), r in sorted(newest.items(), key=lambda kv: (kv[0][1], kv[0][0]))]


def eval_runs_of(client, pipeline_run) -> tuple[list[Any], str]:
    """The eval runs belonging to a pipeline run and the id of the run that logged them:
    its own nested runs, else (cached evaluate stage) those with its evaluate stage's key
    from the newest pipeline run that has them."""
    exp = [pipeline_run.info.experiment_id]
    run_id = pipeline_run.info.run_id
    kind = f"tags.`{tracking.TAG_KIND}` = '{EVAL_KIND}'"
    own = search_all_runs(client, exp, f"tags.`{PARENT_TAG}` = '{_q(run_id)}' and {kind}")
    if own:
        return own, run_id
    stage = search_all_runs(client, exp, f"tags.`{PARENT_TAG}` = '{_q(run_id)}' and "
                                 f"tags.`{tracking.TAG_STAGE}` = 'evaluate'")
    keys = {r.data.tags.get(tracking.TAG_STAGE_KEY) for r in stage} - {None}
    if not keys:
        return [], run_id
    key = next(iter(keys))
    same = search_all_runs(client, exp, f"tags.`{tracking.TAG_STAGE_KEY}` = '{_q(key)}' and {kind}")
    by_parent: dict[str, list[Any]] = {}
    for r in same:
        by_parent.setdefault(r.data.tags.get(PARENT_TAG, ""), []).append(r)
    if not by_parent:
        return [], run_id
    parent = max(by_parent, key=lambda p: max(r.info.start_time for r in by_parent[p]))
    return by_parent[parent], parent


def load_evaluated_run(client, run_id: str) -> EvaluatedRun:
    """The evaluation records of pipeline run ``run_id``; an error when it has none."""
    try:
        run = client.get_run(run_id)
    except Exception as err:  # MlflowException: RESOURCE_DOES_NOT_EXIST
        raise CompareError(f"run '{run_id}' is not in the tracking store: pass the id of a "
                           f"pipeline (parent) run, as `rankbrew run` prints it") from err
    if run.data.tags.get(tracking.TAG_KIND) != "pipeline":
        parent = run.data.tags.get(PARENT_TAG)
        hint = f" (its parent is {parent})" if parent else ""
        raise CompareError(f"run '{run_id}' is a '{run.data.tags.get(tracking.TAG_KIND, '?')}' run, "
                           f"not a pipeline run{hint}: pass the pipeline's parent run id")
    runs, source = eval_runs_of(client, run)
    if not runs:
        raise CompareError(f"pipeline run '{run_id}' has no evaluation runs: it ran without the "
                           f"evaluate stage (evaluate.enabled / train.enabled false, --stop-after, "
                           f"or it failed before it)")
    exp = client.get_experiment(run.info.experiment_id)
    started = dt.datetime.fromtimestamp(run.info.start_time / 1000, tz=dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    splits = sorted({r.data.tags.get(TAG_EVAL_SPLIT, "?") for r in runs})
    return EvaluatedRun(run_id, exp.name if exp else run.info.experiment_id, started,
                        run.data.tags.get(tracking.TAG_PROFILE, "?"),
                        run.data.tags.get(tracking.TAG_GIT_SHA, "?"), "/".join(splits), source,
                        _records(runs))


def latest_evaluated_run(client, experiment: str) -> EvaluatedRun:
    """The newest finished pipeline run of ``experiment`` that has evaluation results."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = sorted(e.name for e in client.search_experiments())
        raise CompareError(f"no experiment '{experiment}' in the tracking store (experiments: {names}): "
                           f"pass --experiment, or --profile of the run you want")
    runs = search_all_runs(client, [exp.experiment_id], f"tags.`{tracking.TAG_KIND}` = 'pipeline'",
                   order_by=["attributes.start_time DESC"])
    for run in runs:
        if run.info.status != "FINISHED":
            continue
        try:
            return load_evaluated_run(client, run.info.run_id)
        except CompareError:
            continue
    raise CompareError(f"no finished pipeline run of experiment '{experiment}' has evaluation runs "
                       f"({len(runs)} pipeline runs): run `rankbrew run` with the teacher and "
                       f"evaluate stages enabled")


def client_for(tracking_uri: str):
    """An ``MlflowClient`` on ``tracking_uri``; a missing SQLite file is a :class:`CompareError`
    (MLflow would create an empty store and report no runs). Used by the notebook too."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no bars in the table
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri.removeprefix("sqlite:///"))
        if not db.exists():  # MLflow would silently create an empty store
            raise CompareError(f"no MLflow store at {db}: run the pipeline first (`make run`) or pass "
                               f"--tracking-uri / --profile of an existing run")
    tracking.configure(tracking_uri)
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def paired_deltas_of(client, run: EvaluatedRun) -> pl.DataFrame | None:
    """The paired deltas the evaluate stage logged for ``run`` (artifact
    :data:`PAIRED_ARTIFACT` of the pipeline run that evaluated it), or None for runs
    evaluated before paired statistics existed."""
    names = {a.path for a in client.list_artifacts(run.evaluated_in, "evaluate")}
    if PAIRED_ARTIFACT not in names:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = client.download_artifacts(run.evaluated_in, PAIRED_ARTIFACT, tmp)
        return pl.read_csv(path, schema_overrides=PAIRED_SCHEMA)


def headline_records(records: list[EvalRecord]) -> list[EvalRecord]:
    """The teacher and the baselines: the models of the compression chain have a table of
    their own (a student is not a baseline the teacher must beat)."""
    return [r for r in records if not is_chain_model(r.model)]


def chain_of(client, run: EvaluatedRun) -> pl.DataFrame | None:
    """The chain table the evaluate stage logged (:data:`CHAIN_ARTIFACT`), if any."""
    names = {a.path for a in client.list_artifacts(run.evaluated_in, "evaluate")}
    if CHAIN_ARTIFACT not in names:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        return pl.read_csv(client.download_artifacts(run.evaluated_in, CHAIN_ARTIFACT, tmp))


def compare(tracking_uri: str, experiment: str | None = None, run_id: str | None = None,
            against: str | None = None) -> Comparison:
    """Tables of pipeline run ``run_id`` (default: the newest evaluated run of
    ``experiment``), or of it side by side with run ``against``."""
    client = client_for(tracking_uri)
    if run_id is None:
        if experiment is None:
            raise CompareError("give --run RUN_ID or an experiment (--experiment / --profile)")
        run = latest_evaluated_run(client, experiment)
    else:
        run = load_evaluated_run(client, run_id)
    records = headline_records(run.records)
    table = summary_table(records)
    cold = cold_start_table(records)
    if against is None:
        deltas = paired_deltas_of(client, run)
        notes = [f"From MLflow: {run.describe()}."]
        if deltas is None:
            notes.append("No paired deltas: this run was evaluated before the stage logged "
                         f"`{PAIRED_ARTIFACT}`; rerun `rankbrew run --force evaluate`.")
        md = render_markdown(table, cold, "Evaluation: teacher vs ID-based baselines", notes=notes,
                             cold_held_out=cold_start_table(records, held_out=True),
                             deltas=deltas, warnings=single_class_warnings(records))
        chain = chain_of(client, run)
        if chain is not None:
            md += "\n## The compression chain (same candidates)\n\n" + chain_markdown(chain)
        verdicts = verdict_lines(deltas) if deltas is not None and deltas.height else []
        return Comparison(run, None, table, cold, md, deltas, verdicts)
    other = load_evaluated_run(client, against)
    other_records = headline_records(other.records)
    both = side_by_side(table, summary_table(other_records))
    cold_both = side_by_side(cold, cold_start_table(other_records))
    md = render_side_by_side(both, cold_both, "Evaluation: two pipeline runs side by side",
                             notes=[f"- run: {run.describe()}", f"- against: {other.describe()}"])
    return Comparison(run, other, both, cold_both, md)


def newest_evaluated_runs(client, experiment: str, n: int) -> list[EvaluatedRun]:
    """The newest ``n`` finished pipeline runs of ``experiment`` with evaluation results,
    newest first, one per distinct evaluation (a run that reused a cached evaluate stage
    repeats an older run's results: it is not another seed)."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise CompareError(f"no experiment '{experiment}' in the tracking store: pass --experiment, "
                           f"or --profile of the runs you want")
    runs = search_all_runs(client, [exp.experiment_id], f"tags.`{tracking.TAG_KIND}` = 'pipeline'",
                           order_by=["attributes.start_time DESC"])
    out, seen = [], set()
    for run in runs:
        if len(out) == n:
            break
        if run.info.status != "FINISHED":
            continue
        try:
            ev = load_evaluated_run(client, run.info.run_id)
        except CompareError:
            continue
        if ev.evaluated_in not in seen:
            seen.add(ev.evaluated_in)
            out.append(ev)
    return out


def compare_many(tracking_uri: str, experiment: str | None = None, run_ids: list[str] | None = None,
                 last: int | None = None, alpha: float = 0.05) -> MultiComparison:
    """Several pipeline runs of one recipe treated as seeds: ``run_ids``, or the ``last``
    newest evaluated runs of ``experiment``.

    Per task and for the means: each model's AUC averaged over runs with its s.d.; the
    teacher-minus-baseline paired delta averaged over runs with a t-interval over runs
    (``alpha``), and each run's own paired member-bootstrap interval. Runs that share one
    evaluation (a cached evaluate stage) count once. Needs at least two distinct
    evaluations."""
    client = client_for(tracking_uri)
    skipped: list[str] = []
    if run_ids:
        runs, seen = [], {}
        for rid in run_ids:
            ev = load_evaluated_run(client, rid)
            if ev.evaluated_in in seen:
                skipped.append(f"run `{rid}` repeats the evaluation of run `{seen[ev.evaluated_in]}` "
                               f"(cached evaluate stage): counted once")
                continue
            seen[ev.evaluated_in] = rid
            runs.append(ev)
    else:
        if experiment is None or last is None:
            raise CompareError("give --runs RUN_ID RUN_ID ... or --last N with an experiment")
        if last < 2:
            raise CompareError(f"--last {last}: compare at least 2 runs (or use --run for one)")
        runs = newest_evaluated_runs(client, experiment, last)
        if len(runs) < last:
            skipped.append(f"asked for the last {last} runs: only {len(runs)} distinct evaluated runs "
                           f"in experiment '{experiment}'")
    if len(runs) < 2:
        raise CompareError(f"{len(runs)} distinct evaluated run(s): several runs need at least 2 "
                           f"(runs sharing a cached evaluate stage count once)")
    tables = [summary_table(headline_records(r.records)) for r in runs]
    deltas = [paired_deltas_of(client, r) for r in runs]
    for r, d in zip(runs, deltas, strict=True):
        if d is None:
            skipped.append(f"run `{r.run_id}` has no `{PAIRED_ARTIFACT}`: left out of the paired deltas")
    with_deltas = [d for d in deltas if d is not None]
    paired = paired_across_runs(with_deltas, alpha) if with_deltas else None
    across = across_runs_table(tables)
    labels = [r.run_id[:8] for r, d in zip(runs, deltas, strict=True) if d is not None]
    profiles = sorted({r.profile for r in runs})
    splits = sorted({r.split for r in runs})
    notes = [f"{len(runs)} runs treated as seeds (profile {', '.join(profiles)}; split "
             f"{', '.join(splits)}):", *[f"- `{r.run_id[:8]}`: {r.describe()}" for r in runs],
             *[f"- note: {s}" for s in skipped]]
    if len(profiles) > 1 or len(splits) > 1:
        notes.append("- note: the runs differ in profile or split: they are not seeds of one recipe")
    md = render_across_runs(across, paired, f"Evaluation over {len(runs)} runs", notes, labels)
    return MultiComparison(runs, tables, deltas, across, paired, md, skipped)
