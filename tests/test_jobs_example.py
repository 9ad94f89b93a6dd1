"""The job-board worked example (issue 15): a log of views only, applicant profiles over
several rows, `... UTC` timestamps and `NA` cells, onboarded by config alone
(examples/jobs/jobs.yaml, pipelines/configs/jobs-example.yaml) and run through the whole
pipeline to the evaluation. The data is a small seeded synthetic fixture written here
(examples/jobs/make_fixture.py): nothing real is committed."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from components.config import load_config
from components.data.mapping import SOURCE_ROWS
from components.data.tables import read_table
from pipelines.eval_stage import load_records
from pipelines.ray_runner import run_pipeline
from pipelines.stages import build_pipeline
from tests.conftest import REPO_ROOT

FIXTURE = REPO_ROOT / "examples" / "jobs" / "make_fixture.py"


def _fixture_module():
    # examples/ is not an installed package: load the generator by path
    spec = importlib.util.spec_from_file_location("jobs_make_fixture", FIXTURE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fixture_is_seeded_and_shaped_like_the_log(tmp_path: Path) -> None:
    make = _fixture_module()
    a, b = make.main(tmp_path / "a"), make.main(tmp_path / "b")
    assert a == b  # seeded
    for name in ("views.csv", "positions.csv"):
        assert (tmp_path / "a" / "data" / name).read_bytes() == (tmp_path / "b" / "data" / name).read_bytes()
    assert (tmp_path / "a" / "jobs.yaml").read_text() == make.SPEC.read_text()
    views = (tmp_path / "a" / "data" / "views.csv").read_text().splitlines()
    assert views[1].split(",")[2].endswith(" UTC") and any(",NA," in v for v in views)
    assert 2500 <= a["views"] <= 3500 and a["applicants"] == 150 and a["positions"] > 150


@pytest.mark.slow
def test_job_board_example_runs_by_config_alone(ray_local, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(REPO_ROOT)  # the profile names examples/jobs/tasks.yaml from the root
    counts = _fixture_module().main(tmp_path / "jobs")
    cfg = load_config("jobs-example", {
        "run.work_dir": str(tmp_path / "work"),
        "data.mapping.spec": str(tmp_path / "jobs" / "jobs.yaml"),
        "tokenizer.fit_to_prompts": True,  # the two-pass tokenizer stage, in a real run
    })
    run = run_pipeline(build_pipeline(cfg), cfg, profile="jobs-example")
    assert run.results["tokenizer"].metrics["prompt_texts"] > 0
    assert list(run.results) == ["ingest", "validate", "split", "prepare", "tokenizer", "promptify",
                                 "cpt", "sft", "align", "evaluate"]

    # aggregate / distinct merged the extra rows: every source row is in a merged row
    ingest = run.results["ingest"].path
    members, items, inter = (read_table(ingest, t) for t in ("members", "items", "interactions"))
    assert members.height == counts["applicants"] and members[SOURCE_ROWS].sum() == counts["positions"]
    assert items.height == counts["jobs_viewed"] and items[SOURCE_ROWS].sum() == counts["views"]
    assert inter.height == counts["views"]
    assert members["past_positions"].list.len().max() > 1 and members["positions"].max() > 1
    assert members["location"].null_count() < members.height // 10  # "{City}, {State.Code}"
    # every `... UTC` time parsed (views, job creation) and every NA start date is a null
    assert inter["timestamp"].null_count() == 0 and inter["_raw_timestamp"].null_count() == inter.height
    assert items["created_at"].null_count() == 0
    assert "_raw_started" not in members.columns or members["_raw_started"].null_count() == members.height

    report = json.loads((run.results["validate"].path / "report.json").read_text())
    for table in ("members", "items", "interactions"):
        t = report[table]
        assert t["balanced"] and t["rows_in"] == t["rows_kept"] + t["rows_quarantined"]
        assert not any(r.startswith(("duplicate_", "unparsable_", "missing_timestamp"))
                       for r in t["quarantined"]), t["quarantined"]
    # the one view the export lost the applicant of ('NA'), and nothing else
    assert report["interactions"]["quarantined"] == {"missing_member_id": 1}
    assert report["members"]["rows_quarantined"] == report["items"]["rows_quarantined"] == 0
    assert report["interactions"]["unknown_refs"] == {"unknown_member": 0, "unknown_item": 0}
    split = read_table(run.results["split"].path, "interactions")
    assert split.height == report["interactions"]["rows_kept"]
    assert set(split["split"].unique()) == {"train", "valid", "test"}

    # the evaluation ran the dataset's own task for the teacher and both baselines
    recs = load_records(run.results["evaluate"].path)
    auc = {(r.model, r.task_id): r.metrics["auc"] for r in recs}
    assert {m for m, _ in auc} == {"teacher", "popularity", "lightgbm"}
    assert {t for _, t in auc} == {"jobs_will_view"}
    for model in ("teacher", "popularity"):
        assert 0.0 <= auc[(model, "jobs_will_view")] <= 1.0
    summary = (run.results["evaluate"].path / "summary.md").read_text()
    assert "jobs_will_view" in summary
    # views lean towards the applicant's line of work and city: the features find it
    assert auc[("lightgbm", "jobs_will_view")] > 0.55
    assert all(r.metrics["n_prompts"] > 0 and r.metrics["n_positives"] > 0 for r in recs)
