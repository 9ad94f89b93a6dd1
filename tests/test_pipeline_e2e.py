"""The pipeline end to end: real local Ray, real MLflow sqlite, real Parquet."""

from __future__ import annotations

import json

import polars as pl
import pytest

from components.config import load_config
from components.data.tables import read_table
from pipelines.dag import run_pipeline
from pipelines.stages import build_pipeline


def _run(cfg, stop_after=None):
    return run_pipeline(build_pipeline(cfg), cfg, profile="test", stop_after=stop_after)


def test_synthetic_data_pipeline_then_cache_hit(ray_local, tmp_path):
    import mlflow

    cfg = load_config("local", {
        "run.work_dir": str(tmp_path / "work"), "run.name": "data-e2e",
        "data.synthetic.members": 300, "data.synthetic.members_per_file": 100,
    })
    first = _run(cfg)
    assert list(first.results) == ["ingest", "validate", "split", "prepare", "tokenizer", "promptify"]
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
    kids = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == first.parent_run_id]
    by_stage = {r.data.tags["rankbrew.stage"]: r for r in kids}
    assert set(by_stage) == set(first.results)
    assert by_stage["validate"].data.metrics["interactions.rows_in"] == report["interactions"]["rows_in"]
    assert by_stage["ingest"].data.params["data.synthetic.members"] == "300"
    plots = mlflow.artifacts.list_artifacts(run_id=by_stage["split"].info.run_id, artifact_path="plots")
    assert [p.path for p in plots] == ["plots/split.png"]
    assert sum(v for k, v in by_stage["split"].data.metrics.items() if k.startswith("members_with_events.")) > 0


@pytest.mark.movielens
def test_movielens_data_pipeline(ray_local, tmp_path, ml100k_dir):
    cfg = load_config("movielens", {
        "run.work_dir": str(tmp_path / "work"), "data.movielens.path": str(ml100k_dir)})
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
