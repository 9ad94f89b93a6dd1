"""The stage graph on a real local Ray with a real MLflow sqlite store."""

from __future__ import annotations

import sys
from pathlib import Path

import cloudpickle
import pytest

from components.config import load_config
from pipelines.dag import Pipeline, PipelineError, Stage, run_pipeline, stage_key

# Ray workers cannot import modules under tests/: ship this module's functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _noop(ctx):
    return {}


def test_graph_is_validated():
    with pytest.raises(ValueError, match="unknown stage"):
        Pipeline("p", [Stage("a", _noop, deps=("zzz",))])
    with pytest.raises(ValueError, match="cycle"):
        Pipeline("p", [Stage("a", _noop, deps=("b",)), Stage("b", _noop, deps=("a",))])
    with pytest.raises(ValueError, match="used twice"):
        Pipeline("p", [Stage("a", _noop), Stage("a", _noop)])
    p = Pipeline("p", [Stage("c", _noop, deps=("b",)), Stage("b", _noop, deps=("a",)), Stage("a", _noop)])
    assert p.order == ["a", "b", "c"]
    assert p.downstream_of(["b"]) == {"b", "c"}


def test_stage_key_depends_on_its_config_and_inputs_only():
    cfg = load_config("local")
    split = Stage("split", _noop, deps=("validate",), config_keys=("split",))
    base = stage_key(split, cfg, {"validate": "k1"})
    assert stage_key(split, cfg, {"validate": "k1"}) == base
    assert stage_key(split, load_config("local", {"data.synthetic.members": 7}), {"validate": "k1"}) == base
    assert stage_key(split, load_config("local", {"split.test_fraction": 0.3}), {"validate": "k1"}) != base
    assert stage_key(split, cfg, {"validate": "k2"}) != base


def _write_counter(path: Path):
    def stage(ctx):
        n = int(path.read_text()) + 1 if path.exists() else 1
        path.write_text(str(n))
        (ctx.out_dir / "data.txt").write_text("hello")
        return {"calls": n}

    return stage


def _fail_if(flag: Path):
    def stage(ctx):
        assert (ctx.inputs["first"] / "data.txt").read_text() == "hello"
        if flag.exists():
            raise RuntimeError("simulated crash")
        (ctx.out_dir / "ok").write_text("1")
        return {"ok": 1}

    return stage


def test_crashed_stage_resumes_and_finished_stages_are_skipped(ray_local, tmp_path):
    import mlflow

    counter, flag = tmp_path / "calls", tmp_path / "crash"
    flag.write_text("1")
    pipeline = Pipeline("p", [
        Stage("first", _write_counter(counter)),
        Stage("second", _fail_if(flag), deps=("first",)),
    ])
    cfg = load_config("local", {"run.work_dir": str(tmp_path / "work"), "run.name": "dag-test"})
    with pytest.raises(PipelineError, match="stage 'second' failed.*simulated crash"):
        run_pipeline(pipeline, cfg)
    assert counter.read_text() == "1"
    # nothing half-written is left where a finished artifact would be
    second_dirs = list((tmp_path / "work" / "artifacts" / "second").iterdir())
    assert all(".partial-" in d.name for d in second_dirs)

    flag.unlink()
    run = run_pipeline(pipeline, cfg)
    assert counter.read_text() == "1", "the finished stage ran again instead of being reused"
    assert run.results["first"].cached and not run.results["second"].cached
    assert (run.results["second"].path / "ok").exists()
    assert run.results["first"].metrics == {"calls": 1.0}

    # MLflow: a FAILED then a FINISHED parent; child runs nested under them
    mlflow.set_tracking_uri(run.tracking_uri)
    runs = mlflow.search_runs(experiment_names=["dag-test"], output_format="list")
    parents = [r for r in runs if r.data.tags.get("rankbrew.kind") == "pipeline"]
    assert sorted(r.info.status for r in parents) == ["FAILED", "FINISHED"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == run.parent_run_id]
    assert {r.data.tags["rankbrew.stage"]: r.data.tags["rankbrew.cached"] for r in children} == {
        "first": "true", "second": "false"}
    assert all(r.data.tags["rankbrew.config_hash"] for r in children)

    forced = run_pipeline(pipeline, cfg, force=["first"])
    assert not forced.results["first"].cached and not forced.results["second"].cached
    assert counter.read_text() == "2"
