"""The pipeline end to end: real local Ray, real MLflow sqlite, real Parquet."""

from __future__ import annotations

import json

import polars as pl
import pytest

from components.config import load_config
from components.data.tables import read_table
from tests.tiny_run import run as _run


def test_synthetic_pipeline_then_cache_hit(tiny_run):
    import mlflow

    cfg, first = tiny_run
    assert list(first.results) == ["ingest", "validate", "split", "prepare", "tokenizer", "promptify",
                                   "cpt", "sft", "align", "distill_mid", "distill_small", "quantize",
                                   "evaluate"]
    assert not any(r.cached for r in first.results.values())

    ingest, validate, split = (first.results[s] for s in ("ingest", "validate", "split"))
    report = json.loads((validate.path / "report.json").read_text())
    for table in ("members", "items", "interactions"):
        t = report[table]
        assert t["balanced"] and t["rows_in"] == t["rows_kept"] + t["rows_quarantined"]
    # the synthetic world is clean: nothing is quarantined, nothing is lost
    assert report["interactions"]["rows_kept"] == ingest.metrics["rows.interactions"]
    inter = read_table(split.path, "interactions")
    assert inter.height == report["interactions"]["rows_kept"]
    assert set(inter["split"].unique()) == {"train", "valid", "test"}
    assert len(list((ingest.path / "interactions").glob("*.parquet"))) == 3

    second = _run(cfg)
    assert all(r.cached for r in second.results.values())
    assert {n: r.path for n, r in second.results.items()} == {n: r.path for n, r in first.results.items()}

    # a split change reruns the split (and what follows), not what comes before it
    third = _run(cfg.model_copy(update={"split": cfg.split.model_copy(update={"test_fraction": 0.3})}),
                 stop_after="split")
    assert [third.results[s].cached for s in ("ingest", "validate", "split")] == [True, True, False]

    # promptify accounted for its members and wrote prompts for every split
    prompts = first.results["promptify"].metrics
    assert prompts["members_with_prompts"] <= prompts["members_in"] > 0
    assert all(prompts[f"{s}.prompts"] > 0 for s in ("train", "valid", "test"))
    assert prompts["accounting.balanced"] == 1.0

    mlflow.set_tracking_uri(first.tracking_uri)
    runs = mlflow.search_runs(experiment_names=["data-e2e"], output_format="list")
    kids = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == first.parent_run_id
            and r.data.tags.get("rankbrew.kind") == "stage"]  # the eval runs are nested there too
    by_stage = {r.data.tags["rankbrew.stage"]: r for r in kids}
    assert set(by_stage) == set(first.results)
    assert by_stage["validate"].data.metrics["interactions.rows_in"] == report["interactions"]["rows_in"]
    assert by_stage["ingest"].data.params["data.synthetic.members"] == "300"
    plots = mlflow.artifacts.list_artifacts(run_id=by_stage["split"].info.run_id, artifact_path="plots")
    assert [p.path for p in plots] == ["plots/split.png"]
    assert sum(v for k, v in by_stage["split"].data.metrics.items() if k.startswith("members_with_events.")) > 0

    # the teacher stages: each continued from the previous model, logged curves and plots
    for stage in ("cpt", "sft", "align"):
        res = first.results[stage]
        assert res.metrics["steps"] == 3
        assert any((res.path / "model").glob("*.safetensors"))
        m = by_stage[stage].data.metrics
        assert f"{stage}.loss" in m and "tokens_per_s_median" in m
        hist = mlflow.tracking.MlflowClient().get_metric_history(by_stage[stage].info.run_id, f"{stage}.loss")
        assert [h.step for h in hist] == [1, 2, 3]
        plots = mlflow.artifacts.list_artifacts(run_id=by_stage[stage].info.run_id, artifact_path="plots")
        assert [p.path for p in plots] == [f"plots/{stage}_loss.png"]
    for stage in ("sft", "align"):
        m = by_stage[stage].data.metrics
        assert 0.0 <= m["valid_task_auc_mean"] <= 1.0 and m["valid_log_loss"] > 0
    assert "delta_vs_sft.valid_task_auc_mean" in by_stage["align"].data.metrics
    # the evaluation: one nested run per (model, task) under the parent, the summary logged
    ev = first.results["evaluate"]
    evals = [r for r in runs if r.data.tags.get("rankbrew.kind") == "eval"
             and r.data.tags.get("mlflow.parentRunId") == first.parent_run_id]
    models = {r.data.tags["rankbrew.model"] for r in evals}
    tasks = {r.data.tags["rankbrew.task"] for r in evals}
    assert models == {"teacher", "student_mid", "student_small", "quantized", "popularity", "lightgbm",
                      "lightgbm_ids", "sasrec"}
    assert len(evals) == len(models) * len(tasks) == ev.metrics["eval_runs"]
    assert any(r.data.tags["rankbrew.held_out"] == "true" for r in evals)
    assert all("auc" in r.data.metrics and "ndcg_at_10" in r.data.metrics for r in evals)
    assert (ev.path / "summary.md").exists() and "mean over trained tasks" in (ev.path / "summary.md").read_text()
    for run_id, where in ((first.parent_run_id, "evaluate"), (by_stage["evaluate"].info.run_id, None)):
        logged = {a.path for a in mlflow.artifacts.list_artifacts(run_id=run_id, artifact_path=where)}
        assert f"{where + '/' if where else ''}summary.md" in logged
    versions = mlflow.tracking.MlflowClient().search_model_versions("name='rankbrew-teacher'")
    assert [v.run_id for v in versions] == [by_stage["align"].info.run_id]
    # the popularity gate: a 3-step teacher has learned nothing, so it is said and not promoted
    align_m = by_stage["align"].data.metrics
    assert align_m["gate.passed"] == 0.0 and align_m["gate.low"] <= 0.0
    assert by_stage["align"].data.tags["rankbrew.gate"] == "not better than popularity"
    assert versions[0].tags["gate"] == "not better than popularity"
    assert versions[0].aliases == []
    # the registered teacher loads anywhere and scores like the stage's model directory
    scorer = mlflow.pyfunc.load_model(f"models:/rankbrew-teacher/{versions[0].version}")
    ex = pl.read_parquet(first.results["promptify"].path / "examples").filter(pl.col("split") == "valid").head(2)
    got = scorer.predict(ex.select("prefix", "candidates").to_pandas())
    from components.model.engine import ScoringEngine

    want = ScoringEngine.from_pretrained(first.results["align"].path / "model").score_batch(
        list(zip(ex["prefix"], [list(c) for c in ex["candidates"]], strict=True)))
    assert [len(g) for g in got] == [len(c) for c in ex["candidates"]]
    for g, w in zip(got, want, strict=True):
        assert max(abs(a - float(b)) for a, b in zip(g, w, strict=True)) < 1e-5
    # with a task_id column, each row gets its task's calibration offset, as the engine does
    got_t = scorer.predict(ex.select("prefix", "candidates", "task_id").to_pandas())
    want_t = ScoringEngine.from_pretrained(first.results["align"].path / "model").score_batch(
        list(zip(ex["prefix"], [list(c) for c in ex["candidates"]], strict=True)), tasks=ex["task_id"].to_list())
    for g, w in zip(got_t, want_t, strict=True):
        assert max(abs(a - float(b)) for a, b in zip(g, w, strict=True)) < 1e-5
    # the chain: a pruned then distilled student, a random one, int8 with an fp32 head; each
    # smaller than its parent, each in the evaluation's chain table
    from transformers import AutoConfig

    mid, small, quant = (first.results[s] for s in ("distill_mid", "distill_small", "quantize"))
    assert AutoConfig.from_pretrained(mid.path / "model").intermediate_size == 32
    assert AutoConfig.from_pretrained(small.path / "model").hidden_size == 16
    assert "pruned_init.valid_task_auc_mean.trained" in mid.metrics
    assert "pruned_init.valid_task_auc_mean.trained" not in small.metrics
    assert mid.metrics["non_embedding_parameters"] < \
        first.results["evaluate"].metrics["chain.teacher.non_embedding_parameters"]
    assert (quant.path / "model" / "quantization.json").exists()
    assert quant.metrics["head_fp32"] == 1.0 and quant.metrics["quantized_linear_layers"] > 0
    assert "ablation_head_quantized.valid_ece.trained" in quant.metrics
    # the gate reads the out-of-fold ECE (each member scored by a fit on the other members)
    assert quant.metrics["gate.ece"] == quant.metrics["valid_ece.trained_out_of_fold"]
    # ... beside the ECE a calibrated model would show on the same candidates; every stage
    # reports on the same sample (the teacher's calibrating report and the quantized one)
    assert 0 < quant.metrics["valid_ece.trained_out_of_fold_floor"] < 1
    assert quant.metrics["valid_ece.trained_candidates"] == \
        first.results["align"].metrics["valid_ece.trained_candidates"]
    assert {"distill_mid", "distill_small", "quantize"} <= set(by_stage)
    assert "kd" in " ".join(by_stage["distill_mid"].data.metrics)  # the KD term was logged
    chain = pl.read_csv(ev.path / "compression.csv")
    assert chain["model"].to_list() == ["teacher", "student_mid", "student_small", "quantized"]
    assert "compression chain" in (ev.path / "summary.md").read_text()
    # rankbrew compare: the chain in its own table, not among the baselines
    from pipelines.compare import compare

    cmp = compare(first.tracking_uri, "data-e2e")
    assert "compression chain" in cmp.markdown and "student_small" in cmp.markdown
    assert not any(c.startswith("student_") or c == "quantized" for c in cmp.table.columns)
    # a 3-step teacher is not better than popularity: nothing is promoted to rankbrew-ranker
    ranker = mlflow.tracking.MlflowClient().search_model_versions("name='rankbrew-ranker'")
    assert quant.metrics["gate.passed"] == 0.0 and ranker == []

    # the opposite-task check ran on the teacher's prompts
    assert ev.metrics["opposite_pairs"] > 0 and (ev.path / "opposites.csv").exists()

    # evaluate.model: the registered teacher scored by reference on the same data, no training;
    # the tasks it trained on travel with it, so trained / zero-shot stay as they were
    from pipelines.eval_stage import load_records

    recs = load_records(ev.path)
    trained = next(r.task_id for r in recs if r.model == "teacher" and not r.held_out)
    held = next(r.task_id for r in recs if r.model == "teacher" and r.held_out)
    ecfg = cfg.evaluate.model_copy(update={"model": f"models:/rankbrew-teacher/{versions[0].version}",
                                           "tasks": [trained, held], "baselines": ["popularity"]})
    by_ref = _run(cfg.model_copy(update={"evaluate": ecfg}))
    assert list(by_ref.results) == ["ingest", "validate", "split", "prepare", "tokenizer", "promptify",
                                    "evaluate"]
    assert all(by_ref.results[s].cached for s in list(by_ref.results)[:-1])
    again = {(r.task_id, r.held_out): r.metrics["auc"] for r in load_records(by_ref.results["evaluate"].path)
             if r.model == "teacher"}
    before = {(r.task_id, r.held_out): r.metrics["auc"] for r in recs
              if r.model == "teacher" and r.task_id in (trained, held)}
    assert again.keys() == before.keys() and all(abs(again[k] - before[k]) < 1e-9 for k in again)

    # max_steps 0 skips a training stage: its model is the untrained input, saved as a model dir
    tcfg = cfg.train.model_copy(update={"cpt": cfg.train.cpt.model_copy(update={"max_steps": 0})})
    skipped = _run(cfg.model_copy(update={"train": tcfg}), stop_after="cpt")
    assert not skipped.results["cpt"].cached and skipped.results["cpt"].metrics["steps"] == 0
    assert any((skipped.results["cpt"].path / "model").glob("*.safetensors"))
    ScoringEngine.from_pretrained(skipped.results["cpt"].path / "model")  # loads and would score


@pytest.mark.movielens
def test_movielens_data_pipeline(ray_local, tmp_path, ml100k_dir):
    cfg = load_config("movielens", {
        "run.work_dir": str(tmp_path / "work"), "data.movielens.path": str(ml100k_dir),
        "train.enabled": False})  # the data stages only: training is tested above
    run = _run(cfg)
    report = json.loads((run.results["validate"].path / "report.json").read_text())
    assert report["interactions"]["rows_in"] == 100_000
    assert report["interactions"]["rows_kept"] + report["interactions"]["rows_quarantined"] == 100_000
    assert report["members"]["rows_kept"] == 943 and report["items"]["rows_kept"] == 1682
    inter = read_table(run.results["split"].path, "interactions")
    test = inter.filter(pl.col("split") == "test")
    assert abs(test.height / inter.height - 0.2) < 0.01
    # most test rows belong to members with few earlier ratings? at least some are cold
    assert test["member_cold"].sum() > 0
