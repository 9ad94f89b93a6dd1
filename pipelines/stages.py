"""The stages of the rankbrew pipeline: thin wrappers that call components.

Each function takes a :class:`~pipelines.dag.StageContext`, writes into ``ctx.out_dir``
and returns the numbers worth logging (row counts first: they are what an on-call
engineer checks when a downstream metric moves).
"""

from __future__ import annotations

import json
from pathlib import Path

from components.config import PipelineConfig, config_hash
from pipelines.dag import Pipeline, Stage, StageContext, fingerprint_paths
from pipelines.tasks import load_pipeline_tasks


def source_actions(cfg: PipelineConfig) -> list[str]:
    """The legal action vocabulary: the config's list, else the source's own."""
    data = cfg.data
    if data.actions:
        return sorted(data.actions)
    if data.source == "synthetic":
        from components.data.synthetic import ALL_ACTIONS

        return sorted(ALL_ACTIONS)
    if data.source == "movielens":
        from components.data.movielens import MOVIELENS_ACTIONS

        return sorted(MOVIELENS_ACTIONS)
    from components.data.mapping import legal_actions, load_mapping_spec

    assert data.mapping is not None
    return sorted(legal_actions(load_mapping_spec(data.mapping.spec)))


def _source_fingerprint(cfg: PipelineConfig) -> str:
    """Identity of the source files (the config alone does not see them change)."""
    data = cfg.data
    if data.source == "movielens":
        root = Path(data.movielens.path)
        return fingerprint_paths(p for p in root.glob("u.*") if p.is_file()) if root.is_dir() else "missing"
    if data.source == "mapping":
        from components.data.mapping import load_mapping_spec, source_files

        assert data.mapping is not None
        spec_path = Path(data.mapping.spec)
        return fingerprint_paths([spec_path, *source_files(load_mapping_spec(spec_path), spec_path)])
    return "synthetic"


def ingest(ctx: StageContext) -> dict[str, float]:
    """Source -> canonical tables (unvalidated), plus the legal action vocabulary."""
    from components.data.tables import read_table, write_tables

    data = ctx.cfg.data
    if data.source == "synthetic":
        from components.data.synthetic import generate_world

        summary = generate_world(data.synthetic, ctx.out_dir, progress=True)
        ctx.log(f"synthetic world: {summary}")
    else:
        if data.source == "movielens":
            from components.data.movielens import read_movielens

            tables = read_movielens(Path(data.movielens.path))
        else:
            from components.data.mapping import read_mapped

            assert data.mapping is not None
            tables = read_mapped(Path(data.mapping.spec))
        write_tables(tables, ctx.out_dir)
    (ctx.out_dir / "actions.json").write_text(json.dumps(source_actions(ctx.cfg)))
    return {
        f"rows.{t}": float(read_table(ctx.out_dir, t).height)
        for t in ("members", "items", "interactions")
    }


def validate(ctx: StageContext) -> dict[str, float]:
    """Clean tables + quarantine + ``report.json``; rows in = kept + quarantined."""
    from components.data.validate import validate_dataset

    src = ctx.inputs["ingest"]
    actions = json.loads((src / "actions.json").read_text())
    report = validate_dataset(src, ctx.out_dir, actions, ctx.cfg.validation)
    for line in report.summary_lines():
        (ctx.note if "WARNING" in line else ctx.log)(line)
    ctx.log_artifact(ctx.out_dir / "report.json")
    return report.metrics()


def split(ctx: StageContext) -> dict[str, float]:
    """Temporal train/valid/test split with cold members and items marked."""
    import polars as pl

    from components.data.plots import activity_buckets, plot_split
    from components.data.split import split_dataset

    metrics = split_dataset(ctx.inputs["validate"], ctx.out_dir, ctx.cfg.split)
    cutoffs = json.loads((ctx.out_dir / "cutoffs.json").read_text())
    ctx.log(f"cutoffs {cutoffs}; rows {metrics}")
    inter = pl.read_parquet(ctx.out_dir / "interactions", columns=["member_id", "timestamp", "split"])
    ctx.log_artifact(plot_split(inter, cutoffs, ctx.out_dir / "plots" / "split.png"), "plots")
    ctx.log_artifact(ctx.out_dir / "cutoffs.json")
    for bucket, members in activity_buckets(inter).iter_rows():
        metrics[f"members_with_events.{bucket.replace('>', 'over_')}"] = float(members)
    return metrics


def _tasks_fingerprint(cfg: PipelineConfig) -> str:
    from components.promptify.tasks import TASKS_DIR

    files = [Path(p) for p in cfg.promptify.tasks] if cfg.promptify.tasks else sorted(TASKS_DIR.glob("*.yaml"))
    return config_hash({str(f.name): f.read_text() for f in files})


def steering_by_partition(cfg: PipelineConfig, tasks):
    """The steering tasks' relabel, streamed by member partition
    (``components.promptify.steering.steering_ranked_relabel``); None without steering
    tasks or synthetic data (the hidden utility it ranks by is the synthetic world's)."""
    if cfg.data.source != "synthetic":
        return None
    from components.promptify.steering import steering_ranked_relabel

    return steering_ranked_relabel(tasks, cfg.data.synthetic)


def prepare(ctx: StageContext) -> dict[str, float]:
    """Labels every event for every task and verbalizes events/items (vectorized Polars)."""
    from components.promptify.examples import prepare_member_table

    tasks = load_pipeline_tasks(ctx.cfg)
    _, stats = prepare_member_table(ctx.inputs["split"], tasks, ctx.cfg.promptify, ctx.out_dir,
                                    relabel=steering_by_partition(ctx.cfg, tasks))
    ctx.log(f"{len(tasks)} tasks; {stats}")
    return {**stats, "tasks": float(len(tasks)), "tasks_held_out": float(sum(t.held_out for t in tasks))}


def tokenizer(ctx: StageContext) -> dict[str, float]:
    """Train a byte-level BPE on the verbalized corpus (or copy a given local tokenizer)."""
    import shutil

    import polars as pl

    from components.promptify.tokenizer import load_tokenizer, train_bpe_tokenizer
    from components.promptify.verbalize import STYLES

    tcfg = ctx.cfg.tokenizer
    dest = ctx.out_dir / "tokenizer"
    metrics: dict[str, float] = {}
    if tcfg.path is not None:
        load_tokenizer(Path(tcfg.path))  # checks the answer tokens
        shutil.copytree(tcfg.path, dest)
    else:
        prep = ctx.inputs["prepare"]
        rows = pl.read_parquet(prep / "member_rows")
        rows = rows.sample(min(rows.height, 2000), seed=ctx.cfg.promptify.seed)
        texts: list[str] = []
        for s in STYLES:
            texts += rows[f"profile_{s}"].drop_nulls().to_list()
            for lines in rows[f"hist_{s}"].to_list():
                texts += (lines or [])[-50:]
        items = pl.read_parquet(prep / "items_text.parquet")
        for s in STYLES:
            texts += items[f"full_{s}"].drop_nulls().to_list()
        for t in load_pipeline_tasks(ctx.cfg):
            texts += [t.instruction, t.question] * 20
        texts += ["## Instruction ## Member profile ## Past activity ## Question ### Candidate "
                  "Answer: Yes Answer: No instruction: member: history: question: candidate"] * 50
        rng_order = pl.Series(texts).sample(fraction=1.0, shuffle=True, seed=0).to_list()
        corpus = rng_order[: tcfg.sample_texts]
        train_bpe_tokenizer(corpus, tcfg.vocab_size, dest)
        if tcfg.fit_to_prompts:  # second pass: the same corpus plus prompts built with the first
            from components.promptify.examples import PreparedData
            from components.promptify.tokenizer import prompt_texts

            first = ctx.out_dir / "tokenizer_first_pass"
            shutil.move(dest, first)
            extra = prompt_texts(PreparedData.from_dir(prep), first, load_pipeline_tasks(ctx.cfg),
                                 ctx.cfg.promptify, tcfg.prompt_members, ctx.cfg.promptify.seed)
            train_bpe_tokenizer(pl.Series(corpus + extra).sample(fraction=1.0, shuffle=True, seed=0)
                                .to_list(), tcfg.vocab_size, dest)
            shutil.rmtree(first)
            metrics["prompt_texts"] = float(len(extra))
    tok = load_tokenizer(dest)
    return {"vocab_size": float(len(tok)), **metrics}


def promptify(ctx: StageContext) -> dict[str, float]:
    """Ray Data job: member rows -> prompts with candidates and labels (Parquet)."""
    import polars as pl

    from components.promptify.examples import PreparedData, example_accounting
    from pipelines.dag import MANIFEST
    from pipelines.promptify_job import run_promptify_job

    prep = ctx.inputs["prepare"]
    prepared = PreparedData.from_dir(prep)
    tasks = load_pipeline_tasks(ctx.cfg)
    dest = run_promptify_job(prepared, ctx.inputs["tokenizer"] / "tokenizer", tasks,
                             ctx.cfg.promptify, ctx.out_dir)
    ex = pl.scan_parquet(str(dest / "*.parquet"))
    counts = ex.group_by("split").agg(
        pl.len().alias("prompts"), pl.col("labels").list.len().sum().alias("questions"),
        pl.col("labels").list.sum().sum().alias("positives"),
    ).collect()
    members_in = pl.scan_parquet(str(prep / "member_rows" / "*.parquet")).select(pl.len()).collect().item()
    members_out = ex.select(pl.col("member_id").n_unique()).collect().item()
    prepare_stats = json.loads((prep / MANIFEST).read_text())["metrics"]
    accounting = example_accounting(ex, prepare_stats)
    if not accounting["balanced"]:
        raise AssertionError(f"promptify accounting does not add up (a bug): {accounting}")
    metrics: dict[str, float] = {"members_in": float(members_in), "members_with_prompts": float(members_out),
                                 **{f"accounting.{k}": v for k, v in accounting.items()}}
    for split_name, prompts, questions, positives in counts.iter_rows():
        metrics[f"{split_name}.prompts"] = float(prompts)
        metrics[f"{split_name}.questions"] = float(questions)
        metrics[f"{split_name}.positives"] = float(positives)
    ctx.log(f"{metrics}")
    return metrics


# ``code``: the modules and packages (besides this module) whose code changes a stage's
# output; their contents are in its cache key (docs/pipelines.md). Over-declaring what an
# upstream stage already declares costs nothing (its key changes anyway, and so do the
# keys after it); forgetting a module reuses stale artifacts.
DATA_CODE = ("components.data",)
PROMPT_CODE = ("components.promptify", "components.data", "pipelines.tasks")

DATA_STAGES = (
    Stage("ingest", ingest, config_keys=("data",), fingerprint=_source_fingerprint,
          code=DATA_CODE, description="source -> canonical Parquet tables"),
    Stage("validate", validate, deps=("ingest",), code=DATA_CODE, config_keys=("validation",),
          description="schema checks, quarantine with reasons, row accounting"),
    Stage("split", split, deps=("validate",), config_keys=("split",), version="2",
          code=DATA_CODE, description="temporal train/valid/test split, cold members/items"),
)


PROMPT_STAGES = (
    Stage("prepare", prepare, deps=("split",), config_keys=("promptify",),
          fingerprint=_tasks_fingerprint, code=PROMPT_CODE,
          description="label events per task, verbalize events/items (Polars)"),
    Stage("tokenizer", tokenizer, deps=("prepare",), config_keys=("tokenizer",),
          code=PROMPT_CODE, description="train a byte-level BPE on the corpus (or load a local one)"),
    Stage("promptify", promptify, deps=("prepare", "tokenizer"), config_keys=("promptify",),
          fingerprint=_tasks_fingerprint, num_cpus=0, version="2",
          code=(*PROMPT_CODE, "pipelines.promptify_job"),
          description="Ray Data: member rows -> prompts, candidates, labels"),
)


def build_pipeline(cfg: PipelineConfig) -> Pipeline:
    """The full stage graph for a profile (later stages join as they are built)."""
    from pipelines.eval_stage import EVALUATE_MODEL_STAGE, EVALUATE_STAGE
    from pipelines.teacher_stages import TEACHER_STAGES

    stages = DATA_STAGES + PROMPT_STAGES
    if cfg.evaluate.enabled and cfg.evaluate.model is not None:
        # a model trained elsewhere is scored: nothing to train here
        return Pipeline(cfg.run.name, stages + (EVALUATE_MODEL_STAGE,))
    if cfg.train.enabled:
        from dataclasses import replace

        from pipelines.compress_stages import compress_stages

        chain = compress_stages(cfg)
        stages += TEACHER_STAGES + chain
        if cfg.evaluate.enabled:  # the evaluation needs the teacher (and scores the chain)
            stages += (replace(EVALUATE_STAGE, deps=(*EVALUATE_STAGE.deps, *(s.name for s in chain)),
                               code=(*EVALUATE_STAGE.code, "components.compress",
                                     "pipelines.compress_stages", "pipelines.compress_report")),)
    return Pipeline(cfg.run.name, stages)
