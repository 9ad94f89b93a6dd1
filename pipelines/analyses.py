"""``rankbrew analyze`` (issue 6 item 5): the MLflow wiring of the analyses in
``components/analyses/``.

It finds a finished pipeline run's stage directories through the tracking store
(:func:`find_run_artifacts`), runs the analyses on them (:func:`analyze`) and logs each
as one MLflow run (tags ``rankbrew.kind=analysis``, ``rankbrew.analysis=<name>``) nested
under the pipeline run it analyses, with one metric per sweep point
(``auc_mean.budget_64``), a CSV table and a PNG plot (:class:`AnalysisRunLogger`). Not
part of ``rankbrew run`` (time budget). See docs/evaluation.md, "Analyses (issue 6 item 5)".
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from components import tracking
from components.analyses import (
    AnalysisError,
    AnalysisResult,
    RunInputs,
    analyses_to_run,
    run_analyses,
)
from components.config import PipelineConfig
from pipelines.compare import search_all_runs
from pipelines.dag import MANIFEST

ANALYSIS_KIND = "analysis"
TAG_ANALYSIS = "rankbrew.analysis"
TAG_SKIPPED = "rankbrew.skipped"
PARENT_TAG = "mlflow.parentRunId"


# ============================================================================ the run's artifacts
@dataclass(frozen=True)
class RunArtifacts:
    """The stage directories of one pipeline run (``<artifacts>/<stage>/<key>``): the
    :class:`~components.analyses.AnalysedRun` the analyses read."""

    stage_dirs: Mapping[str, Path]
    pipeline_run_id: str | None = None
    experiment_id: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)

    def stage(self, name: str) -> Path:
        path = self.stage_dirs.get(name)
        if path is None or not (path / MANIFEST).exists():
            raise AnalysisError(f"the pipeline run has no finished '{name}' stage "
                                f"(looked for {path}): run `rankbrew run` to build it")
        return path

    def config(self, stage: str) -> dict[str, Any]:
        """The config sections the stage was built with (from its manifest)."""
        return json.loads((self.stage(stage) / MANIFEST).read_text())["config"]

    @property
    def model_dir(self) -> Path:
        from pipelines.teacher_stages import MODEL_DIR

        return self.stage("align") / MODEL_DIR

    @property
    def examples_dir(self) -> Path:
        return self.stage("promptify") / "examples"

    @property
    def key(self) -> str:
        return self.stage("align").name

    def eval_prompts(self, split: str, max_per_task: int | None, seed: int,
                     tasks: Sequence[str] | None = None) -> pl.DataFrame:
        """The prompts of ``split`` sampled as the evaluate stage samples them."""
        from pipelines.eval_stage import select_eval_rows

        return select_eval_rows(self.examples_dir, split, max_per_task, seed,
                                None if tasks is None else list(tasks))

    @classmethod
    def from_stage_dir(cls, stage_dir: Path, **kwargs: Any) -> RunArtifacts:
        """Every stage upstream of ``stage_dir`` (e.g. an align artifact), found through
        the manifests' ``inputs``."""
        dirs: dict[str, Path] = {}
        todo = [Path(stage_dir)]
        while todo:
            d = todo.pop()
            manifest = json.loads((d / MANIFEST).read_text())
            dirs[manifest["stage"]] = d
            todo += [Path(p) for s, p in manifest["inputs"].items() if s not in dirs]
        return cls(dirs, **kwargs)


def _stage_dirs_of(client, run, artifacts_root: Path) -> dict[str, Path]:
    """Stage name -> artifact directory, from the pipeline run's stage runs (cached stages
    have stage runs too, carrying the key of the artifact they reused)."""
    stages = search_all_runs(client, [run.info.experiment_id],
                     f"tags.`{PARENT_TAG}` = '{run.info.run_id}' and tags.`{tracking.TAG_KIND}` = 'stage'")
    return {r.data.tags[tracking.TAG_STAGE]: Path(artifacts_root) / r.data.tags[tracking.TAG_STAGE]
            / r.data.tags[tracking.TAG_STAGE_KEY] for r in stages
            if tracking.TAG_STAGE in r.data.tags and tracking.TAG_STAGE_KEY in r.data.tags}


def find_run_artifacts(tracking_uri: str, experiment: str, artifacts_root: Path,
                       run_id: str | None = None) -> RunArtifacts:
    """The artifacts of pipeline run ``run_id``, or of the newest finished pipeline run of
    ``experiment`` whose trained teacher (``align/<key>/model``) is on disk."""
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri.removeprefix("sqlite:///")).exists():
        raise AnalysisError(f"no MLflow store at {tracking_uri.removeprefix('sqlite:///')}: run the "
                            f"pipeline first (`make run`) or pass --tracking-uri / --profile")
    tracking.configure(tracking_uri)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    keep = (tracking.TAG_GIT_SHA, tracking.TAG_CONFIG_HASH, tracking.TAG_PROFILE)

    def artifacts(run) -> RunArtifacts:
        return RunArtifacts(_stage_dirs_of(client, run, artifacts_root), run.info.run_id,
                            run.info.experiment_id, {k: v for k, v in run.data.tags.items() if k in keep})

    if run_id is not None:
        try:
            run = client.get_run(run_id)
        except Exception as err:  # MlflowException: RESOURCE_DOES_NOT_EXIST
            raise AnalysisError(f"run '{run_id}' is not in the tracking store {tracking_uri}: pass "
                                f"the id of a pipeline (parent) run, as `rankbrew run` prints it") from err
        kind = run.data.tags.get(tracking.TAG_KIND, "?")
        if kind != "pipeline":
            raise AnalysisError(f"run '{run_id}' is a '{kind}' run, not a pipeline run: pass the "
                                f"pipeline's parent run id")
        art = artifacts(run)
        art.stage("align")  # a clear error when it has no teacher
        return art
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise AnalysisError(f"no experiment '{experiment}' in {tracking_uri}: run the pipeline "
                            f"first or pass --experiment / --profile")
    runs = search_all_runs(client, [exp.experiment_id], f"tags.`{tracking.TAG_KIND}` = 'pipeline'",
                   order_by=["attributes.start_time DESC"])
    for run in runs:
        if run.info.status != "FINISHED":
            continue
        art = artifacts(run)
        align = art.stage_dirs.get("align")
        if align is not None and (align / MANIFEST).exists():
            return art
    raise AnalysisError(f"no finished pipeline run of experiment '{experiment}' has a trained "
                        f"teacher on disk under {artifacts_root}/align ({len(runs)} pipeline runs): "
                        f"run `rankbrew run` with train.enabled")


def run_inputs(art: RunArtifacts, profile: PipelineConfig) -> RunInputs:
    """What the run was built with: ``profile`` with the data and promptify settings of
    the run's manifests, and the tasks they give."""
    from components.config import DataConfig, PromptifyConfig
    from pipelines.tasks import load_pipeline_tasks

    update: dict[str, Any] = {
        "promptify": PromptifyConfig.model_validate(art.config("promptify")["promptify"])}
    if "ingest" in art.stage_dirs:
        update["data"] = DataConfig.model_validate(art.config("ingest")["data"])
    cfg = profile.model_copy(update=update)
    return RunInputs(cfg, {t.id: t for t in load_pipeline_tasks(cfg)})


# ============================================================================ MLflow and the driver
class AnalysisRunLogger:
    """One MLflow run per analysis, nested under the analysed pipeline run when there is
    one, carrying that run's git sha, config hash and profile tags."""

    def __init__(self, tracking_uri: str, art: RunArtifacts, experiment: str, artifacts_root: str | None):
        tracking.configure(tracking_uri)
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.experiment_id = art.experiment_id or tracking.experiment_id(experiment, artifacts_root)
        self.tags = {**art.tags, tracking.TAG_KIND: ANALYSIS_KIND}
        if art.pipeline_run_id:
            self.tags[PARENT_TAG] = art.pipeline_run_id
        if "align" in art.stage_dirs:
            self.tags[tracking.TAG_STAGE_KEY] = art.stage_dirs["align"].name

    def log(self, result: AnalysisResult) -> str:
        from mlflow.entities import Metric, Param

        tags = {**self.tags, TAG_ANALYSIS: result.name}
        if result.skipped:
            tags[TAG_SKIPPED] = result.skipped[:5000]
        run = self.client.create_run(self.experiment_id, tags=tags, run_name=f"analysis/{result.name}")
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, 0) for k, v in sorted(result.metrics.items())]
        metrics.append(Metric("analysis_seconds", float(result.seconds), now, 0))
        params = [Param(k, str(v)[:6000]) for k, v in sorted(result.params.items())]
        for i in range(0, max(len(metrics), 1), 900):  # MLflow takes at most 1000 per batch
            self.client.log_batch(run.info.run_id, metrics=metrics[i:i + 900],
                                  params=params if i == 0 else [])
        for p in result.files:
            self.client.log_artifact(run.info.run_id, str(p))
        self.client.set_terminated(run.info.run_id, "FINISHED")
        return run.info.run_id


def analyze(cfg: PipelineConfig, art: RunArtifacts, only: Sequence[str] | None = None,
            tracking_uri: str | None = None, out_root: Path | None = None,
            log: Callable[[str], None] = print) -> list[AnalysisResult]:
    """Run the analyses (``only``, else ``cfg.analyses.run``) on the run ``art``; log each
    as an MLflow run when ``tracking_uri`` is given. Files go to
    ``<out_root or run.work_dir/analyses>/<align key>/<analysis>/``."""
    names = analyses_to_run(cfg, only)  # config errors before reading the run
    inputs = run_inputs(art, cfg)
    root = Path(out_root or Path(cfg.run.work_dir) / "analyses") / art.key
    logger = None
    if tracking_uri is not None:
        logger = AnalysisRunLogger(tracking_uri, art, cfg.run.name, tracking.artifact_root(
            tracking_uri, Path(cfg.run.work_dir), cfg.run.mlflow_artifact_root))

    def log_to_mlflow(result: AnalysisResult) -> None:
        if logger is not None:
            result.run_id = logger.log(result)

    return run_analyses(cfg, art, inputs, root, names, log, log_to_mlflow)
