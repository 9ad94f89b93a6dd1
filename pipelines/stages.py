"""The stages of the rankbrew pipeline: thin wrappers that call components.

Each function takes a :class:`~pipelines.dag.StageContext`, writes into ``ctx.out_dir``
and returns the numbers worth logging (row counts first: they are what an on-call
engineer checks when a downstream metric moves).
"""

from __future__ import annotations

import json
from pathlib import Path

from components.config import PipelineConfig
from pipelines.dag import Pipeline, Stage, StageContext, fingerprint_paths


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
    report = validate_dataset(src, ctx.out_dir, actions)
    for line in report.summary_lines():
        ctx.log(line)
    ctx.log_artifact(ctx.out_dir / "report.json")
    return report.metrics()


def split(ctx: StageContext) -> dict[str, float]:
    """Temporal train/valid/test split with cold members and items marked."""
    from components.data.split import split_dataset

    metrics = split_dataset(ctx.inputs["validate"], ctx.out_dir, ctx.cfg.split)
    cutoffs = json.loads((ctx.out_dir / "cutoffs.json").read_text())
    ctx.log(f"cutoffs {cutoffs}; rows {metrics}")
    return metrics


DATA_STAGES = (
    Stage("ingest", ingest, config_keys=("data",), fingerprint=_source_fingerprint,
          description="source -> canonical Parquet tables"),
    Stage("validate", validate, deps=("ingest",),
          description="schema checks, quarantine with reasons, row accounting"),
    Stage("split", split, deps=("validate",), config_keys=("split",),
          description="temporal train/valid/test split, cold members/items"),
)


def build_pipeline(cfg: PipelineConfig) -> Pipeline:
    """The full stage graph for a profile (later stages join as they are built)."""
    return Pipeline(cfg.run.name, DATA_STAGES)
