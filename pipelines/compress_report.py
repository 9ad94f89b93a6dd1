"""The evaluate stage's section on the compression chain: sizes and latency of every
model measured here, one after another on the same request (so the latencies compare),
then ``components.compress.report.chain_table`` on the fan-out's records and scores."""

from __future__ import annotations

import polars as pl

from components.evaluate.report import TEACHER


def compression_report(ctx, records, scores: pl.DataFrame, students: list[str], logger) -> dict[str, float]:
    """Write ``compression.csv`` and a ``summary.md`` section; return per-model metrics
    (``chain.<model>.<column>``)."""
    from components.compress.report import chain_markdown, chain_table
    from pipelines.compress_stages import compressed_models, model_report
    from pipelines.eval_stage import teacher_model_dir
    from pipelines.teacher_stages import MODEL_DIR

    stages = compressed_models(ctx.cfg)
    dirs = {TEACHER: teacher_model_dir(ctx), **{m: ctx.inputs[stages[m]] / MODEL_DIR for m in students}}
    facts = {}
    for i, (m, d) in enumerate(dirs.items()):
        facts[m] = model_report(ctx, d)
        ctx.progress(i + 1, len(dirs), "models", f"latency {m}")
    ecfg = ctx.cfg.evaluate
    table = chain_table(records, scores, list(dirs), facts, ecfg.bootstrap_samples, ecfg.seed)
    path = ctx.out_dir / "compression.csv"
    table.write_csv(path)
    md = ("\n## Go small: the compression chain on the same candidates\n\n"
          f"CPU latency: one request of {ctx.cfg.compress.latency_candidates} candidates, "
          f"{ctx.cfg.compress.latency_threads} thread(s), median of 5, measured in this stage one "
          "model after another. Deltas: paired member bootstrap, trained tasks. Lift kept: "
          "(AUC - popularity) / (teacher - popularity).\n\n" + chain_markdown(table))
    summary = ctx.out_dir / "summary.md"
    summary.write_text(summary.read_text() + md)
    ctx.log_artifact(path)
    if logger is not None:
        logger.log_artifacts([path, summary], "evaluate")
    ctx.note(md)
    out = {}
    for r in table.iter_rows(named=True):
        for k, v in r.items():
            if k != "model" and isinstance(v, int | float) and v == v:
                out[f"chain.{r['model']}.{k}"] = float(v)
    return out
