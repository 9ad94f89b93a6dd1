"""Typed configuration for every rankbrew stage, loaded from YAML profiles.

Why pydantic with ``extra="forbid"``: a typo in a YAML profile (``memebrs: 1000``)
must stop the run with the key's path and the fix, not be silently ignored.
Why a content hash: stage artifacts are cached by (stage, config hash, input hashes),
so two configs that mean the same thing must hash the same and any change must not.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

# config_base has no rankbrew imports: component configs below use it too (no cycle)
from components.config_base import ConfigError, StrictModel
from components.data.validate import ValidationConfig
from components.model.factory import ModelConfig
from components.train.config import TrainConfig, TrainDataConfig

PROFILE_DIR = Path(__file__).resolve().parents[2] / "pipelines" / "configs"


class RunConfig(StrictModel):
    """Where a pipeline run writes and how it is tracked."""

    name: str = Field("rankbrew", description="Pipeline name; also the MLflow experiment name.")
    work_dir: Path = Field(
        Path("runs/local"),
        description="Artifacts, caches and the default MLflow store live here (relative paths "
        "are resolved against the directory the command is run from).",
    )
    mlflow_tracking_uri: str | None = Field(
        None, description="Defaults to sqlite:///<work_dir>/mlflow.db (absolute, so Ray workers agree)."
    )
    seed: int = 0


class RayConfig(StrictModel):
    """How to reach Ray: ``address: null`` starts a local Ray for the run."""

    address: str | None = None
    num_cpus: int | None = Field(None, description="CPUs for a local Ray (default: all).")
    include_dashboard: bool = Field(True, description="Start the Ray dashboard with a local "
                                    "Ray (http://127.0.0.1:8265). It also serves the State "
                                    "API, which Ray Train's placement-group cleaner polls: "
                                    "without it every Train stage logs 'State API may be "
                                    "temporarily unavailable' every few seconds.")


class SyntheticWorldConfig(StrictModel):
    """Size and shape of the synthetic professional world (see docs/synthetic-world.md)."""

    members: int = Field(1000, ge=1)
    companies: int = Field(200, ge=1)
    jobs: int = Field(2000, ge=1)
    posts: int = Field(3000, ge=1)
    courses: int = Field(500, ge=1)
    days: int = Field(180, ge=7, description="Length of the simulated period.")
    start_date: datetime = datetime(2026, 1, 1)
    members_per_file: int = Field(
        50_000, ge=1, description="Members per output chunk; bounds memory at any scale."
    )
    seed: int = 0


class MovieLensConfig(StrictModel):
    """MovieLens-100K in its original files (u.data, u.user, u.item, u.genre, u.occupation)."""

    path: Path = Path("../shared/data/ml-100k")


class MappingSourceConfig(StrictModel):
    """Onboard any CSV/Parquet/JSON-lines logs with a column-mapping YAML (no code)."""

    spec: Path


class DataConfig(StrictModel):
    """Which dataset feeds the pipeline and which actions are legal in it."""

    source: Literal["synthetic", "movielens", "mapping"] = "synthetic"
    synthetic: SyntheticWorldConfig = SyntheticWorldConfig()
    movielens: MovieLensConfig = MovieLensConfig()
    mapping: MappingSourceConfig | None = None
    actions: list[str] | None = Field(
        None,
        description="Legal action values; rows with any other action are quarantined. "
        "Default: the source's own action vocabulary.",
    )

    @model_validator(mode="after")
    def _mapping_needs_spec(self) -> DataConfig:
        if self.source == "mapping" and self.mapping is None:
            raise ValueError("data.source is 'mapping' but data.mapping.spec is not set: "
                             "add `mapping: {spec: path/to/mapping.yaml}` under `data`")
        return self


class SplitConfig(StrictModel):
    """Temporal train/validation/test split.

    ``method: fraction`` puts the cutoffs at quantiles of event time (the last
    ``test_fraction`` of events is test); ``method: date`` uses explicit dates.
    Members and items first seen at or after the validation cutoff are *cold*.
    """

    method: Literal["fraction", "date"] = "fraction"
    valid_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    valid_start: datetime | None = None
    test_start: datetime | None = None

    @model_validator(mode="after")
    def _consistent(self) -> SplitConfig:
        if self.method == "fraction" and self.valid_fraction + self.test_fraction >= 1.0:
            raise ValueError("split.valid_fraction + split.test_fraction must be < 1 "
                             "(something must be left for training)")
        if self.method == "date":
            if self.valid_start is None or self.test_start is None:
                raise ValueError("split.method is 'date': set both split.valid_start and split.test_start")
            if self.valid_start > self.test_start:
                raise ValueError("split.valid_start must not be after split.test_start")
        return self


class TokenizerConfig(StrictModel):
    """Train a byte-level BPE on the verbalized corpus, or load a local HF tokenizer."""

    path: Path | None = Field(None, description="A local Hugging Face tokenizer directory; "
                              "null trains one on the corpus.")
    vocab_size: int = Field(4096, ge=300)
    sample_texts: int = Field(50_000, ge=100, description="Texts sampled to train the BPE.")


class PromptifyConfig(StrictModel):
    """How interactions become prompts (see docs/promptify.md)."""

    tasks: list[Path] | None = Field(None, description="Task YAML files; default: the built-in registry.")
    domain: str | None = Field(None, description="Task domain to use; default from data.source "
                               "(synthetic -> professional, movielens -> movielens).")
    styles: list[Literal["markdown", "compact", "narrative"]] = ["markdown", "compact", "narrative"]
    eval_style: Literal["markdown", "compact", "narrative"] = "markdown"
    history_token_budget: int = Field(384, ge=16, description="Real tokenizer tokens for the history.")
    history_exclude_actions: list[str] = Field(
        ["impression"], description="Actions left out of histories (shown-but-ignored rows "
        "would fill the budget with little signal)."
    )
    max_field_words: int = Field(40, ge=1, description="Per-field truncation of item/profile text.")
    questions_per_prompt: int = Field(8, ge=1, description="Training questions sharing one prefix.")
    negatives_per_positive: float = Field(2.0, ge=0.0, description="Training: logged negatives kept per positive.")
    sampled_negatives: int = Field(4, ge=0, description="Sampled negatives per prompt for tasks that sample.")
    negative_pool: Literal["catalogue", "impressions"] = Field(
        "catalogue", description="Where sampled negatives come from. catalogue: per positive, "
        "at its time, a live item created close to it (age-matched; items nobody touched yet "
        "included). impressions: items shown in negative_window_days before the list's cutoff "
        "(components/promptify/negatives.py).")
    hard_negatives: bool = Field(True, description="impressions pool: sample among items shown "
                                 "on the task's surface.")
    negative_window_days: float = Field(
        3.0, gt=0, description="impressions pool: items shown in this many days before the "
        "question (widened when too few).")
    max_prompts_per_member_task: int = Field(4, ge=1, description="Training prompts per (member, task).")
    negative_only_prompt_rate: float = Field(
        0.1, ge=0.0, le=1.0, description="Training: share of chunks without a positive that "
        "are kept. Most (member, task) chunks of logged events hold no positive (5-10% "
        "positives for most tasks); as prompts they teach only the base rate (measured with "
        "them dropped at 0.1: teacher mean test AUC 0.508 -> 0.549, docs/benchmarks.md). "
        "1.0 keeps them all.")
    max_eval_candidates: int = Field(50, ge=2)
    blocks: int = Field(8, ge=1, description="Member partitions for the Ray Data job.")
    seed: int = 0
    item_stats: bool = Field(
        False, description="Verbalize as-of item statistics in candidate text: ratings and "
        "mean rating from events strictly before the prompt's cutoff "
        "(components/promptify/item_stats.py).")
    item_stats_actions: list[str] = Field(
        ["rate"], min_length=1, description="Actions counted by promptify.item_stats.")
    match_hints: bool = Field(
        False, description="Append what the candidate shares with the member to its text: "
        "matching profile fields (same industry, city, shared skills) and how many history "
        "events were on items with its company / industry / topic, as of the cutoff. Derived "
        "from text already in the prompt; lets a small from-scratch model read the comparison "
        "instead of growing it (components/promptify/matches.py).")
    question_in_candidates: bool = Field(
        False, description="Repeat the task's question at the end of every candidate, right "
        "before 'Answer:' (besides its place after the history). Lets a small model tell "
        "opposite tasks (apply / dismiss) apart at the answer token; costs the question's "
        "tokens once per candidate (components/promptify/verbalize.py render_candidate).")
    match_fields: dict[str, str] | None = Field(
        None, description="match_hints: {member column: item column} to compare; default: the "
        "columns both tables have (ids, dates and free text excluded).")
    match_history_fields: list[str] | None = Field(
        None, description="match_hints: item columns counted in the member's history; default "
        "company, industry, topic where the items table has them; []: no history hint.")


class TrainingConfig(StrictModel):
    """The teacher's training stages, ``cpt -> sft -> align``, each a Ray Train run.

    ``data`` shapes the token sequences (its directories are filled in by the stages from
    the upstream artifacts: leave them null); ``cpt`` / ``sft`` / ``align`` are each
    stage's optimisation settings (``max_steps: 0`` skips a stage: its output is its
    input model).
    """

    enabled: bool = Field(True, description="false: the pipeline ends after promptify.")
    num_workers: int = Field(2, ge=1, description="Ray Train workers (FSDP2 shards).")
    cpus_per_worker: float | None = Field(
        None, gt=0, description="Ray CPUs per worker (default: fits the cluster, leaving room "
        "for the controller).")
    use_gpu: bool = Field(False, description="One GPU per worker, NCCL, bf16 autocast.")
    max_failures: int = Field(2, ge=0, description="Worker-group restarts from the last "
                              "checkpoint before a stage fails.")
    data: TrainDataConfig = TrainDataConfig()
    cpt: TrainConfig = TrainConfig(stage="cpt")
    sft: TrainConfig = TrainConfig(stage="sft")
    align: TrainConfig = TrainConfig(stage="align")
    calibrate: bool = Field(True, description="align: fit a Platt calibration of P(yes) on "
                            "the validation prompts and save it with the teacher (training "
                            "prompts over-sample positives, so raw P(yes) runs high).")
    registered_model_name: str | None = Field(
        "rankbrew-teacher", description="MLflow registry name of the aligned teacher (null: "
        "log the model without registering it).")

    @model_validator(mode="before")
    @classmethod
    def _stage_names(cls, raw: Any) -> Any:
        # ``sft: {max_steps: 300}`` in YAML means a TrainConfig of stage sft.
        if isinstance(raw, dict):
            raw = dict(raw)
            for stage in ("cpt", "sft", "align"):
                if isinstance(raw.get(stage), dict):
                    raw[stage] = {**raw[stage], "stage": stage}
        return raw

    @model_validator(mode="after")
    def _no_dirs(self) -> TrainingConfig:
        for name in ("examples_dir", "member_rows_dir", "history_cutoff"):
            if getattr(self.data, name) is not None:
                raise ValueError(f"train.data.{name} is set by the pipeline from the upstream "
                                 f"stages: remove it from the profile")
        return self


class EvaluateConfig(StrictModel):
    """The evaluation stage: the teacher and the ID-based baselines on one evaluation
    split, per task and per slice, one MLflow run per (model, task); see
    docs/evaluation.md."""

    enabled: bool = Field(True, description="false: no evaluation stage after the teacher.")
    split: Literal["valid", "test"] = Field("test", description="Evaluation window to report.")
    max_prompts_per_task: int | None = Field(
        None, ge=1, description="Prompts (candidate lists) per task, a seeded sample; null: all. "
        "Bounds the teacher's CPU time (local profile: 150).")
    tasks: list[str] | None = Field(None, description="Task ids to evaluate; null: every task "
                                    "of the split, held-out ones included.")
    model: str | None = Field(
        None, description="Evaluate this model instead of training a teacher: a model directory, "
        "models:/<name>/<version> or models:/<name>@<alias>, runs:/<run id>/<path>, or a pipeline "
        "run id (its registered teacher). Tasks it was not trained on are reported as zero-shot "
        "(components/tracking/models.py). null: this run's teacher.")
    baselines: list[Literal["popularity", "lightgbm", "lightgbm_ids", "sasrec"]] = Field(
        ["popularity", "lightgbm", "lightgbm_ids", "sasrec"], description="ID-based baselines "
        "fitted on the train split (components/evaluate/baselines/).")
    opposite_tasks: list[list[str]] | None = Field(
        None, description="Pairs [A, B] of tasks that should rank in opposite orders; A's "
        "prompts are scored again asked as B (components/evaluate/opposites.py). null: derived "
        "from the registry (apply vs dismiss, like vs hide, rate >= 4 vs <= 2).")
    opposite_max_prompts: int = Field(
        30, ge=0, description="Prompts of A per opposite pair scored with B's question; 0: no "
        "opposite-task check.")
    bootstrap_samples: int = Field(1000, ge=0, description="Bootstrap replicates of each AUC "
                                   "interval (whole lists resampled); 0: no interval.")
    ece_bins: int = Field(10, ge=1, description="Equal-mass bins of the ECE and the calibration plot.")
    seed: int = 0


ANALYSIS_NAMES = ("context_budget", "data_amount", "model_size", "steering")


class ContextBudgetAnalysisConfig(StrictModel):
    """AUC of the trained teacher vs the history token budget (no training: re-render and
    score)."""

    budgets: list[int] = Field(
        [0, 32, 64, 128, 256], min_length=1, description="History token budgets the evaluation "
        "prefixes are re-rendered with; the run's promptify.history_token_budget is always "
        "added. 0: no history lines at all.")
    max_prompts_per_task: int = Field(50, ge=1, description="Evaluation prompts (whole "
                                      "candidate lists) per task, a seeded sample.")

    @model_validator(mode="after")
    def _budgets(self) -> ContextBudgetAnalysisConfig:
        bad = [b for b in self.budgets if b < 0]
        if bad:
            raise ValueError(f"analyses.context_budget.budgets holds negative budgets {bad}: "
                             f"use 0 (no history) or more tokens")
        return self


class SweepTrainingConfig(StrictModel):
    """How each point of the data-amount and model-size sweeps is trained: one process,
    no Ray, answer-token SFT from a random init with the profile's ``train.sft`` settings
    except the ones below. Every point gets the same steps (equal compute per step)."""

    steps: int = Field(150, ge=2, description="Optimizer steps per sweep point (on 1 CPU "
                       "thread a 128-wide, 2-layer model does about 2.5 steps/s).")
    batch_size: int | None = Field(None, ge=1, description="Prompts per step; null: "
                                   "train.sft.batch_size.")
    lr: float | None = Field(None, gt=0, description="Peak learning rate; null: train.sft.lr.")
    valid_prompts_per_task: int = Field(15, ge=1, description="Validation prompts per trained "
                                        "task scored after training (a fixed seeded sample, "
                                        "the same for every point).")


class DataAmountAnalysisConfig(StrictModel):
    """AUC vs the share of the training prompts used, at equal steps."""

    fractions: list[float] = Field(
        [0.003, 0.015, 1.0], min_length=1, description="Shares of the training prompts (nested "
        "seeded subsets). At equal steps a point sees steps x batch_size prompts: a share "
        "smaller than that is repeated (epochs > 1), a larger one is not seen in full.")

    @model_validator(mode="after")
    def _fractions(self) -> DataAmountAnalysisConfig:
        bad = [f for f in self.fractions if not 0.0 < f <= 1.0]
        if bad:
            raise ValueError(f"analyses.data_amount.fractions holds {bad}: each share must be "
                             f"in (0, 1]")
        return self


class ModelSizeAnalysisConfig(StrictModel):
    """AUC vs model width at equal steps: the profile's ``model`` with another
    ``hidden_size`` (head size and the MLP/hidden ratio kept, heads scaled)."""

    hidden_sizes: list[int] = Field([64, 128, 192], min_length=1, description="Widths to "
                                    "train; each must be a multiple of the profile's head size.")
    num_layers: int | None = Field(None, ge=1, description="Layers of every point; null: "
                                   "model.num_layers.")
    data_fraction: float = Field(1.0, gt=0.0, le=1.0, description="Share of the training "
                                 "prompts every point trains on.")

    @model_validator(mode="after")
    def _sizes(self) -> ModelSizeAnalysisConfig:
        bad = [h for h in self.hidden_sizes if h < 8]
        if bad:
            raise ValueError(f"analyses.model_size.hidden_sizes holds {bad}: widths must be >= 8")
        return self


class SteeringAnalysisConfig(StrictModel):
    """Instruction steering: the steering tasks' candidate lists scored under their own
    (steered) instruction and under their base task's instruction."""

    max_prompts_per_task: int = Field(100, ge=1, description="Evaluation prompts per steering "
                                      "task, a seeded sample.")
    base_tasks: dict[str, str] = Field(
        {}, description="steering task id -> the task whose instruction is the unsteered "
        "baseline. Unlisted steering tasks get the registry task that asks the closest "
        "question: same item type, most shared positive / negative actions, same surface.")


class AnalysesConfig(StrictModel):
    """``rankbrew analyze``: analyses of a finished pipeline run, each one MLflow run with a
    CSV table and a plot (see docs/evaluation.md, "Analyses"). Not part of ``rankbrew run``.
    The defaults fit the embedded default on 2 CPU cores (about 10 minutes in all); GPU
    profiles can set larger sweeps."""

    run: list[Literal["context_budget", "data_amount", "model_size", "steering"]] = Field(
        list(ANALYSIS_NAMES), min_length=1, description="Analyses `rankbrew analyze` runs "
        "(--only overrides).")
    split: Literal["valid", "test"] = Field("test", description="Evaluation window of the "
                                            "context_budget and steering analyses.")
    threads: int = Field(2, ge=1, description="torch threads for training and scoring.")
    seed: int = Field(0, description="Prompt samples, data subsets, model init.")
    context_budget: ContextBudgetAnalysisConfig = ContextBudgetAnalysisConfig()
    training: SweepTrainingConfig = SweepTrainingConfig()
    data_amount: DataAmountAnalysisConfig = DataAmountAnalysisConfig()
    model_size: ModelSizeAnalysisConfig = ModelSizeAnalysisConfig()
    steering: SteeringAnalysisConfig = SteeringAnalysisConfig()


class PipelineConfig(StrictModel):
    """A whole profile (one YAML file in pipelines/configs/)."""

    run: RunConfig = RunConfig()
    ray: RayConfig = RayConfig()
    data: DataConfig = DataConfig()
    split: SplitConfig = SplitConfig()
    validation: ValidationConfig = ValidationConfig()
    tokenizer: TokenizerConfig = TokenizerConfig()
    promptify: PromptifyConfig = PromptifyConfig()
    model: ModelConfig = ModelConfig()
    train: TrainingConfig = TrainingConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    analyses: AnalysesConfig = AnalysesConfig()


def with_absolute_paths(cfg: PipelineConfig, base: Path | None = None) -> PipelineConfig:
    """Resolve relative paths against ``base`` (default: the current directory).

    Done once on the driver: Ray workers run in other directories, so a relative path
    would mean something else there.
    """
    base = Path(base or Path.cwd())

    def absolute(p: Path) -> Path:
        return p if p.is_absolute() else (base / p).resolve()

    data = cfg.data.model_copy(update={
        "movielens": cfg.data.movielens.model_copy(update={"path": absolute(cfg.data.movielens.path)}),
        "mapping": cfg.data.mapping.model_copy(update={"spec": absolute(cfg.data.mapping.spec)})
        if cfg.data.mapping else None,
    })
    run = cfg.run.model_copy(update={"work_dir": absolute(cfg.run.work_dir)})
    promptify = cfg.promptify.model_copy(update={
        "tasks": [absolute(Path(t)) for t in cfg.promptify.tasks] if cfg.promptify.tasks else cfg.promptify.tasks})
    tokenizer = cfg.tokenizer.model_copy(update={
        "path": absolute(cfg.tokenizer.path) if cfg.tokenizer.path else None})
    model = cfg.model.model_copy(update={
        "checkpoint": absolute(cfg.model.checkpoint) if cfg.model.checkpoint else None})
    ev = cfg.evaluate
    if ev.model is not None and not Path(ev.model).is_absolute() and (base / ev.model).exists():
        ev = ev.model_copy(update={"model": str((base / ev.model).resolve())})  # a local model dir
    return cfg.model_copy(update={"data": data, "run": run, "promptify": promptify, "tokenizer": tokenizer,
                                  "model": model, "evaluate": ev})


def config_hash(model: BaseModel | dict[str, Any], length: int = 16) -> str:
    """Stable content hash: same meaning, same hash, across processes and machines.

    Paths are hashed as written (not resolved), so moving a checkout keeps caches valid.
    """
    payload = model.model_dump(mode="json") if isinstance(model, BaseModel) else model
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid config {source}:"]
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "<root>"
        if e["type"] == "extra_forbidden":
            lines.append(f"  - unknown key '{where}': remove it or fix its spelling "
                         f"(see the fields of {_owner_hint(e['loc'])})")
        else:
            lines.append(f"  - {where}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def _owner_hint(loc: tuple[Any, ...]) -> str:
    model: type[BaseModel] = PipelineConfig
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        ann = getattr(field, "annotation", None)
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        else:
            break
    return f"{model.__name__}: {', '.join(model.model_fields)}"


def resolve_profile_path(profile: str | Path) -> Path:
    """A profile name (``local``) or a path to a YAML file."""
    p = Path(profile)
    if p.suffix in (".yaml", ".yml") and p.exists():
        return p
    candidate = PROFILE_DIR / f"{profile}.yaml"
    if candidate.exists():
        return candidate
    known = sorted(x.stem for x in PROFILE_DIR.glob("*.yaml"))
    raise ConfigError(f"profile '{profile}' not found: give a YAML path or one of {known}")


def load_config(profile: str | Path = "local", overrides: dict[str, Any] | None = None) -> PipelineConfig:
    """Load a profile and apply dotted overrides (``{"data.synthetic.members": 500}``)."""
    path = resolve_profile_path(profile)
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(raw).__name__}")
    for dotted, value in (overrides or {}).items():
        node = raw
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, str(path))) from None


__all__ = [
    "ANALYSIS_NAMES",
    "AnalysesConfig",
    "ConfigError",
    "DataConfig",
    "EvaluateConfig",
    "MappingSourceConfig",
    "ModelConfig",
    "MovieLensConfig",
    "PipelineConfig",
    "PromptifyConfig",
    "TokenizerConfig",
    "RayConfig",
    "RunConfig",
    "SplitConfig",
    "StrictModel",
    "SyntheticWorldConfig",
    "TrainConfig",
    "TrainDataConfig",
    "TrainingConfig",
    "config_hash",
    "load_config",
    "with_absolute_paths",
]
