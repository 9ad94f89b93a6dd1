"""The stage graph on a real local Ray with a real MLflow sqlite store."""

from __future__ import annotations

import ast
import importlib
import inspect
import sys
import textwrap
from pathlib import Path

import cloudpickle
import pytest

from components.config import load_config
from pipelines.dag import Pipeline, PipelineError, Stage, code_files, stage_key
from pipelines.ray_runner import run_pipeline

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


# ----------------------------------------------------------------------------- code in the key


def _code_package(root: Path, name: str, monkeypatch) -> Path:
    """A tiny importable package ``name`` under ``root``: ``fast.py`` and ``slow.py``."""
    pkg = root / name
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "fast.py").write_text("SCALE = 1\n")
    (pkg / "slow.py").write_text("SCALE = 1\n")
    monkeypatch.syspath_prepend(str(root))
    importlib.invalidate_caches()
    return pkg


def test_stage_key_covers_the_declared_code_by_content(tmp_path, monkeypatch):
    pkg = _code_package(tmp_path / "src", "rb_code_a", monkeypatch)
    cfg = load_config("local")
    on_module = Stage("s", _noop, code=("rb_code_a.fast",))
    on_package = Stage("s", _noop, code=("rb_code_a",))
    assert set(code_files(on_module)) == {"tests.test_dag (stage module)", "rb_code_a.fast"}
    assert {"rb_code_a/fast.py", "rb_code_a/slow.py", "rb_code_a/__init__.py"} <= set(code_files(on_package))
    keys = {s: stage_key(s, cfg, {}) for s in (on_module, on_package)}
    # a touch (new mtime, same bytes) is no change
    (pkg / "fast.py").write_text("SCALE = 1\n")
    assert {s: stage_key(s, cfg, {}) for s in keys} == keys
    (pkg / "slow.py").write_text("SCALE = 2\n")
    assert stage_key(on_module, cfg, {}) == keys[on_module], "an undeclared module moved the key"
    assert stage_key(on_package, cfg, {}) != keys[on_package]
    (pkg / "fast.py").write_text("SCALE = 2  # any edit counts\n")
    assert stage_key(on_module, cfg, {}) != keys[on_module]
    with pytest.raises(ValueError, match="stage 'bad'.*'rb_code_a.nope'.*Stage\\(code="):
        code_files(Stage("bad", _noop, code=("rb_code_a.nope",)))


def test_a_packages_config_module_is_not_code_its_values_are_in_the_key(tmp_path, monkeypatch):
    pkg = _code_package(tmp_path / "src", "rb_code_c", monkeypatch)
    (pkg / "config.py").write_text('"""Settings."""\n')
    cfg = load_config("local")
    on_package = Stage("s", _noop, code=("rb_code_c",))
    assert "rb_code_c/config.py" not in code_files(on_package)
    key = stage_key(on_package, cfg, {})
    (pkg / "config.py").write_text('"""Settings, better described."""\n')
    assert stage_key(on_package, cfg, {}) == key
    (pkg / "fast.py").write_text("SCALE = 3\n")  # the package's code still counts
    assert stage_key(on_package, cfg, {}) != key


def test_changed_code_reruns_its_stage_and_those_after_it_only(ray_local, tmp_path, monkeypatch):
    pkg = _code_package(tmp_path / "src", "rb_code_b", monkeypatch)
    calls = {n: tmp_path / f"calls_{n}" for n in ("first", "second", "third")}
    pipeline = Pipeline("p", [
        Stage("first", _write_counter(calls["first"])),
        Stage("second", _write_counter(calls["second"]), deps=("first",), code=("rb_code_b.fast",)),
        Stage("third", _write_counter(calls["third"]), deps=("second",)),
    ])
    cfg = load_config("local", {"run.work_dir": str(tmp_path / "work"), "run.name": "dag-code-test"})
    first = run_pipeline(pipeline, cfg)
    assert not any(r.cached for r in first.results.values())
    manifest = (first.results["second"].path / "_rankbrew_manifest.json").read_text()
    assert "rb_code_b.fast" in manifest  # the manifest says which code built the artifact

    assert all(r.cached for r in run_pipeline(pipeline, cfg).results.values())
    (pkg / "fast.py").write_text("SCALE = 3\n")  # the stage's code changed
    after = run_pipeline(pipeline, cfg)
    assert {n: r.cached for n, r in after.results.items()} == {"first": True, "second": False, "third": False}
    assert after.results["first"].key == first.results["first"].key
    assert {n: p.read_text() for n, p in calls.items()} == {"first": "1", "second": "2", "third": "2"}


def _rankbrew_imports(fn, seen=None) -> set[str]:
    """The components.* / pipelines.* modules a function's body imports, and those of the
    functions of its own module that it calls (``cpt`` -> ``_run`` -> ``run_training``)."""
    seen = set() if seen is None else seen
    seen.add(fn)
    out = set()
    for node in ast.walk(ast.parse(textwrap.dedent(inspect.getsource(fn)))):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.Name):
            helper = fn.__globals__.get(node.id)
            if (inspect.isfunction(helper) and helper.__module__ == fn.__module__
                    and helper not in seen):
                out |= _rankbrew_imports(helper, seen)
    return {m for m in out if m.split(".")[0] in ("components", "pipelines")}


def test_every_stage_declares_the_code_it_imports():
    from pipelines.stages import build_pipeline

    pipeline = build_pipeline(load_config("local", {"train.enabled": True, "evaluate.enabled": True}))
    assert {"cpt", "sft", "align", "evaluate"} <= set(pipeline.stages)
    # config values are in the key already; the runner does not change what a stage writes
    not_output = {"components.config", "components.tracking", "pipelines.dag", "pipelines.ray_runner", "pipelines.keys",
                  "pipelines.console"}
    for stage in pipeline.stages.values():
        files = code_files(stage)  # every declared name resolves
        assert f"{stage.run.__module__} (stage module)" in files
        covered = (stage.run.__module__, *stage.code)
        missing = [m for m in _rankbrew_imports(stage.run) - not_output
                   if not any(m == c or m.startswith(c + ".") for c in covered)]
        assert not missing, f"stage '{stage.name}' imports {missing} but does not declare them in code="
