"""The evaluation stage: Ray fan-out, nested MLflow runs, summary tables, `rankbrew compare`.

One small world (200 members) runs the data and prompt stages, a stand-in ``align``
stage saves an untrained 1-layer teacher (the stage's wiring is under test, not the
teacher's quality), and the evaluate stage scores three tasks (one held out) with the
teacher and the three baselines: 12 Ray tasks, 12 nested MLflow runs.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from components.config import load_config
from components.evaluate.metrics import group_auc, log_loss, ndcg_at_k, roc_auc
from components.evaluate.report import (
    EvalRecord,
    cold_start_table,
    summary_table,
)
from pipelines.dag import Pipeline, Stage
from pipelines.eval_stage import EVALUATE_STAGE, select_eval_rows
from pipelines.ray_runner import run_pipeline
from pipelines.stages import DATA_STAGES, PROMPT_STAGES

TASKS = ["post_view_feed", "job_apply_any_sampled", "course_view_learning"]  # the last is held out
MODELS = {"teacher", "popularity", "lightgbm", "lightgbm_ids", "sasrec"}
PER_TASK = 30


def _tiny_teacher_stage():
    """A stand-in for the align stage: an untrained 1-layer Llama + the run's tokenizer
    in ``<artifact>/model`` (a closure, so Ray pickles it by value)."""

    def align(ctx):
        from components.model.factory import ModelConfig, build_model, save_model
        from components.promptify.tokenizer import load_tokenizer

        tok = load_tokenizer(ctx.inputs["tokenizer"] / "tokenizer")
        model = build_model(ModelConfig(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                                        intermediate_size=64), len(tok), tok.pad_token_id)
        save_model(model, tok, ctx.out_dir / "model")
        from components.model.calibration import Calibration

        Calibration(0.5, -1.0).save(ctx.out_dir / "model")  # as align saves a Platt fit
        return {"steps": 0}

    return Stage("align", align, deps=("tokenizer",))


@pytest.fixture(scope="module")
def evaluated(ray_local, tmp_path_factory):
    root = tmp_path_factory.mktemp("evalstage")
    cfg = load_config("local", {
        "run.work_dir": str(root / "work"), "run.name": "eval-test",
        "data.synthetic.members": 200, "data.synthetic.members_per_file": 100,
        "promptify.styles": ["markdown"], "promptify.blocks": 2, "tokenizer.sample_texts": 3000,
        "evaluate.tasks": TASKS, "evaluate.max_prompts_per_task": PER_TASK,
        "evaluate.bootstrap_samples": 50,
    })
    pipeline = Pipeline("eval-test", [*DATA_STAGES, *PROMPT_STAGES, _tiny_teacher_stage(), EVALUATE_STAGE])
    first = run_pipeline(pipeline, cfg, profile="test")
    second = run_pipeline(pipeline, cfg, profile="test")  # everything cached
    return {"cfg": cfg, "first": first, "second": second, "dir": first.results["evaluate"].path}


def _eval_runs(run):
    import mlflow

    mlflow.set_tracking_uri(run.tracking_uri)
    runs = mlflow.search_runs(experiment_names=[run.experiment], output_format="list")
    return [r for r in runs if r.data.tags.get("rankbrew.kind") == "eval"
            and r.data.tags.get("mlflow.parentRunId") == run.parent_run_id]


def test_fanout_logs_nested_runs_that_compare_reads_back(evaluated):
    import mlflow
    from typer.testing import CliRunner

    from pipelines.cli import app
    from pipelines.compare import compare

    first, second = evaluated["first"], evaluated["second"]
    runs = _eval_runs(first)
    assert sorted((r.data.tags["rankbrew.model"], r.data.tags["rankbrew.task"]) for r in runs) == sorted(
        (m, t) for m in MODELS for t in TASKS)
    stage_key = first.results["evaluate"].key
    ex = pl.read_parquet(first.results["promptify"].path / "examples", columns=["task_id", "split"])
    available = dict(ex.filter(pl.col("split") == "test").group_by("task_id").len().iter_rows())
    for r in runs:
        tags, m = r.data.tags, r.data.metrics
        assert tags["rankbrew.held_out"] == ("true" if tags["rankbrew.task"] == "course_view_learning" else "false")
        assert tags["rankbrew.stage_key"] == stage_key and tags["rankbrew.eval_split"] == "test"
        assert {"auc", "auc_ci_low", "auc_ci_high", "ndcg_at_10", "auc.activity_le_5",
                "auc.activity_gt_100", "auc.new_item", "n_candidates.activity_le_5"} <= set(m)
        assert m["n_prompts"] == min(PER_TASK, available[tags["rankbrew.task"]])
        probabilistic = tags["rankbrew.model"] == "teacher" or (
            tags["rankbrew.model"] in ("lightgbm", "lightgbm_ids") and "lightgbm_fallback" not in r.data.params)
        assert ({"log_loss", "ece"} <= set(m)) == probabilistic, tags["rankbrew.model"]
        if not math.isnan(m["auc"]):
            assert m["auc_ci_low"] <= m["auc"] <= m["auc_ci_high"]
    assert _eval_runs(second) == [], "a cached evaluate stage must not log its runs again"

    # the stage's summary went to its own run and to the pipeline's parent run
    stage_run = mlflow.get_run(first.results["evaluate"].mlflow_run_id)
    assert stage_run.data.metrics["eval_runs"] == len(MODELS) * len(TASKS)
    assert "mean_auc.trained.teacher" in stage_run.data.metrics
    logged = {a.path for a in mlflow.artifacts.list_artifacts(run_id=stage_run.info.run_id)}
    assert {"summary.md", "summary.csv", "plots"} <= logged
    parent = {a.path for a in mlflow.artifacts.list_artifacts(run_id=first.parent_run_id,
                                                              artifact_path="evaluate")}
    assert {"evaluate/summary.md", "evaluate/summary.csv", "evaluate/plots", "evaluate/paired_deltas.csv",
            "evaluate/scores.parquet"} <= parent
    assert {"paired_delta.trained.popularity", "paired_delta.trained.popularity_low",
            "mean_group_auc.trained.teacher"} <= set(stage_run.data.metrics)
    plots = {a.path for a in mlflow.artifacts.list_artifacts(run_id=first.parent_run_id,
                                                             artifact_path="evaluate/plots")}
    assert plots == {f"evaluate/plots/{p}.png" for p in ("task_auc", "cold_start_gain", "teacher_calibration")}

    # compare: the newest run reused the cached stage; its records are found by stage key
    got = compare(first.tracking_uri, "eval-test")
    assert got.run.run_id == second.parent_run_id and got.run.evaluated_in == first.parent_run_id
    want = pl.read_csv(evaluated["dir"] / "summary.csv")
    assert got.table["task"].to_list() == want["task"].to_list()
    for col in ("teacher", "popularity", "lightgbm", "lightgbm_ids", "sasrec", "gain_vs_best_baseline", "candidates"):
        np.testing.assert_allclose(got.table[col].to_numpy().astype(float), want[col].to_numpy().astype(float),
                                   rtol=1e-9, equal_nan=True, err_msg=col)
    assert "course_view_learning (held out)" in got.markdown and "Cold start" in got.markdown
    want_deltas = pl.read_csv(evaluated["dir"] / "paired_deltas.csv")
    np.testing.assert_allclose(got.deltas["delta"].to_numpy(), want_deltas["delta"].to_numpy(), equal_nan=True)
    assert got.verdicts and got.verdicts[0].startswith("teacher vs popularity: paired delta of mean AUC")

    both = compare(first.tracking_uri, run_id=second.parent_run_id, against=first.parent_run_id)
    assert both.table.filter(~pl.col("is_mean"))["delta_teacher"].abs().max() == 0.0

    out = CliRunner().invoke(app, ["compare", "--tracking-uri", first.tracking_uri, "--experiment", "eval-test"])
    assert out.exit_code == 0, out.output
    assert "post_view_feed" in out.output and "mean over held-out tasks" in out.output
    bad = CliRunner().invoke(app, ["compare", "--tracking-uri", first.tracking_uri, "--run", runs[0].info.run_id])
    assert bad.exit_code == 1 and "not a pipeline run" in bad.output


def test_summary_numbers_equal_metrics_recomputed_from_scores(evaluated):
    from components.model.engine import ScoringEngine

    d = evaluated["dir"]
    scores = pl.read_parquet(d / "scores.parquet")
    table = pl.read_csv(d / "summary.csv")
    tasks = table.filter(~pl.col("is_mean"))
    for row in tasks.iter_rows(named=True):
        part = scores.filter(pl.col("task_id") == row["task"])
        for m in MODELS:
            s = part.filter(pl.col("model") == m)
            assert s.height == row["candidates"]
            want = roc_auc(s["score"].to_numpy(), s["label"].to_numpy())
            assert (math.isnan(want) and row[m] is None) or row[m] == pytest.approx(want, abs=1e-12)
        best = max(("popularity", "lightgbm", "lightgbm_ids", "sasrec"), key=lambda b: row[b])
        assert row["best_baseline"] == best
        assert row["gain_vs_best_baseline"] == pytest.approx(row["teacher"] - row[best])
    trained = table.filter(pl.col("is_mean") & ~pl.col("held_out")).row(0, named=True)
    for m in MODELS:
        assert trained[m] == pytest.approx(np.mean(tasks.filter(~pl.col("held_out"))[m].to_numpy()))

    # per-list AUC beside the pooled one; the paired deltas are teacher minus baseline of the table
    for row in tasks.iter_rows(named=True):
        for m in MODELS:
            s = scores.filter((pl.col("task_id") == row["task"]) & (pl.col("model") == m))
            want = group_auc(s["score"].to_numpy(), s["label"].to_numpy(), s["example_id"].to_numpy())
            got = row[f"group_auc.{m}"]
            assert (math.isnan(want) and got is None) or got == pytest.approx(want, abs=1e-12)
    deltas = pl.read_csv(d / "paired_deltas.csv")
    assert set(deltas["baseline"]) == MODELS - {"teacher"}
    for r in deltas.filter(~pl.col("is_mean")).iter_rows(named=True):
        want = tasks.filter(pl.col("task") == r["task"]).row(0, named=True)
        if want["teacher"] is not None and want[r["baseline"]] is not None:
            assert r["delta"] == pytest.approx(want["teacher"] - want[r["baseline"]], abs=1e-12)
            assert r["low"] <= r["delta"] <= r["high"] and r["n_boot"] == 50
    md = (d / "summary.md").read_text()
    assert "## Paired deltas" in md and "per-list AUC" in md and "(descriptive)" in md
    assert "teacher vs popularity: paired delta of mean AUC" in md
    assert trained["gain_vs_best_baseline"] == pytest.approx(
        trained["teacher"] - max(trained[b] for b in ("popularity", "lightgbm", "lightgbm_ids", "sasrec")))

    # the logged nDCG and log loss are those of the stored scores
    import mlflow

    runs = {(r.data.tags["rankbrew.model"], r.data.tags["rankbrew.task"]): r.data.metrics
            for r in _eval_runs(evaluated["first"])}
    t = scores.filter((pl.col("model") == "teacher") & (pl.col("task_id") == "post_view_feed"))
    m = runs[("teacher", "post_view_feed")]
    assert m["ndcg_at_10"] == pytest.approx(ndcg_at_k(t["score"].to_numpy(), t["label"].to_numpy(),
                                                      t["example_id"].to_numpy()))
    assert m["log_loss"] == pytest.approx(log_loss(t["prob"].to_numpy(), t["label"].to_numpy()))
    assert mlflow.get_run(evaluated["first"].results["evaluate"].mlflow_run_id).data.metrics[
        "mean_auc.trained.teacher"] == pytest.approx(trained["teacher"])

    # the teacher's stored score of a candidate is the engine's margin for that candidate
    ex = pl.read_parquet(evaluated["first"].results["promptify"].path / "examples")
    eid = t["example_id"][0]
    row = ex.filter(pl.col("example_id") == eid).row(0, named=True)
    engine = ScoringEngine.from_pretrained(evaluated["first"].results["align"].path / "model")
    margins = engine.score(row["prefix"], list(row["candidates"]), margins=True)
    stored = t.filter(pl.col("example_id") == eid).sort("position")
    np.testing.assert_allclose(stored["score"].to_numpy(), margins, rtol=1e-5, atol=1e-6)
    assert stored["label"].to_list() == list(row["labels"])


def test_teacher_probabilities_go_through_the_models_calibration(evaluated):
    scores = pl.read_parquet(evaluated["dir"] / "scores.parquet").filter(pl.col("model") == "teacher")
    margin = scores["score"].to_numpy()
    np.testing.assert_allclose(scores["prob"].to_numpy(), 1 / (1 + np.exp(-(0.5 * margin - 1.0))),
                               atol=1e-6)


def test_slices_count_correctly(evaluated):

    first = evaluated["first"]
    scores = pl.read_parquet(evaluated["dir"] / "scores.parquet").filter(pl.col("model") == "teacher")
    inter = pl.read_parquet(first.results["split"].path / "interactions", columns=["item_id", "timestamp"])
    first_event = inter.group_by("item_id").agg(pl.col("timestamp").min().alias("first_ts"))
    ex = pl.read_parquet(first.results["promptify"].path / "examples", columns=["example_id", "cutoff"])
    rows = (scores.join(ex, on="example_id", how="left").join(first_event, on="item_id", how="left")
            .with_columns((pl.col("first_ts").is_null() | (pl.col("first_ts") >= pl.col("cutoff"))).alias("new")))
    runs = {r.data.tags["rankbrew.task"]: r.data.metrics for r in _eval_runs(first)
            if r.data.tags["rankbrew.model"] == "teacher"}
    for task, part in rows.partition_by("task_id", as_dict=True).items():
        m = runs[task[0]]
        a = part["n_prior_events"]
        for name, sel in (("activity_le_5", a <= 5), ("activity_le_10", a <= 10),
                          ("activity_le_100", a <= 100), ("activity_gt_100", a > 100),
                          ("new_item", part["new"])):
            assert m[f"n_candidates.{name}"] == sel.sum(), (task, name)
            assert m[f"n_positives.{name}"] == part.filter(sel)["label"].sum(), (task, name)
            want = roc_auc(part.filter(sel)["score"].to_numpy(), part.filter(sel)["label"].to_numpy()) \
                if sel.sum() else math.nan
            assert (math.isnan(want) and math.isnan(m[f"auc.{name}"])) or m[f"auc.{name}"] == pytest.approx(want)
        assert m["n_candidates"] == part.height and m["n_prompts"] == part["example_id"].n_unique()
    # the cold-start table is the mean over trained tasks of these per-task bucket AUCs
    recs = [EvalRecord("teacher", t, t == "course_view_learning", runs[t]) for t in runs]
    cold = cold_start_table(recs).row(1, named=True)  # activity <= 5
    vals = [runs[t]["auc.activity_le_5"] for t in TASKS[:2] if not math.isnan(runs[t]["auc.activity_le_5"])]
    assert cold["bucket"] == "<=5" and cold["teacher"] == pytest.approx(np.mean(vals))
    assert cold["candidates"] == sum(runs[t]["n_candidates.activity_le_5"] for t in TASKS[:2])
    assert summary_table(recs).filter(pl.col("is_mean"))["tasks"].to_list() == [2, 1]


def test_eval_rows_are_a_seeded_sample_per_task(evaluated):
    examples = evaluated["first"].results["promptify"].path / "examples"
    a = select_eval_rows(examples, "test", 10, seed=3)
    b = select_eval_rows(examples, "test", 10, seed=3, tasks=["post_view_feed"])
    assert a.group_by("task_id").len()["len"].max() == 10
    assert a.filter(pl.col("task_id") == "post_view_feed")["example_id"].to_list() == b["example_id"].to_list()
    assert select_eval_rows(examples, "test", 10, seed=4)["example_id"].to_list() != a["example_id"].to_list()
    assert a["held_out"].any() and (a["split"] == "test").all()
    with pytest.raises(ValueError, match="evaluate.tasks names \\['nope'\\]"):
        select_eval_rows(examples, "test", 10, tasks=["nope"])
