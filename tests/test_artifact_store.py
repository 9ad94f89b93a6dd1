"""``run.artifact_root``: finished stages published to a pyarrow filesystem URI and restored
from it by a run whose work dir lacks them (a new cluster, a node without the shared mount),
on a real local Ray with a real MLflow store."""

from __future__ import annotations

import sys
from pathlib import Path

import cloudpickle
import pytest

from components.config import load_config
from pipelines.artifact_store import ArtifactStore
from pipelines.dag import MANIFEST, Pipeline, Stage
from pipelines.ray_runner import run_pipeline

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import tests/


def _counted(counter: Path, name: str, reads: str | None = None):
    def stage(ctx):
        calls = counter / name
        calls.write_text(str(int(calls.read_text()) + 1 if calls.exists() else 1))
        text = (ctx.inputs[reads] / "out" / "data.txt").read_text() if reads else "hello"
        (ctx.out_dir / "out").mkdir()
        (ctx.out_dir / "out" / "data.txt").write_text(text + f" {name}")
        return {"chars": len(text)}

    return stage


def _pipeline(counter: Path) -> Pipeline:
    return Pipeline("p", [Stage("first", _counted(counter, "first")),
                          Stage("second", _counted(counter, "second", reads="first"), deps=("first",))])


def _calls(counter: Path) -> dict[str, int]:
    return {p.name: int(p.read_text()) for p in counter.iterdir()}


@pytest.mark.parametrize("scheme", ["path", "file"])
def test_a_fresh_work_dir_restores_finished_stages_from_the_store(ray_local, tmp_path, scheme):
    counter = tmp_path / "calls"
    counter.mkdir()
    store = tmp_path / "store"
    root = str(store) if scheme == "path" else store.as_uri()

    def cfg(work: str):
        return load_config("local", {"run.work_dir": str(tmp_path / work), "run.name": "store-test",
                                     "run.artifact_root": root,
                                     "run.mlflow_tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"})

    first = run_pipeline(_pipeline(counter), cfg("a"))
    assert _calls(counter) == {"first": 1, "second": 1}
    for name, r in first.results.items():
        assert (store / name / r.key / MANIFEST).exists()
        assert (store / name / r.key / "out" / "data.txt").read_text() == \
            (r.path / "out" / "data.txt").read_text()

    again = run_pipeline(_pipeline(counter), cfg("b"))  # an empty work dir, the same store
    assert _calls(counter) == {"first": 1, "second": 1}, "a published stage ran again"
    assert all(r.cached for r in again.results.values())
    assert (again.results["second"].path / "out" / "data.txt").read_text() == "hello first second"
    assert str(again.results["second"].path).startswith(str(tmp_path / "b"))

    # only the first stage published: the second runs, on the restored input
    import shutil

    shutil.rmtree(store / "second")
    third = run_pipeline(_pipeline(counter), cfg("c"))
    assert _calls(counter) == {"first": 1, "second": 2}
    assert third.results["first"].cached and not third.results["second"].cached
    assert (store / "second" / third.results["second"].key / MANIFEST).exists()  # published again

    # a forced rerun replaces the published artifact (a stale file of the old one goes)
    stale = store / "first" / third.results["first"].key / "out" / "stale.txt"
    stale.write_text("old")
    run_pipeline(_pipeline(counter), cfg("c"), force=["first"])
    assert _calls(counter) == {"first": 2, "second": 3}
    assert not stale.exists() and (stale.parent / "data.txt").exists()


def test_an_upload_without_its_manifest_is_not_a_finished_stage(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "part.parquet").write_bytes(b"x" * 10)
    (src / MANIFEST).write_text("{}")
    store = ArtifactStore(str(tmp_path / "store"), MANIFEST)
    store.publish(src, "stage", "k1")
    (tmp_path / "store" / "stage" / "k1" / MANIFEST).unlink()  # as if cut before the last file
    assert not store.has("stage", "k1")
    assert not store.restore("stage", "k1", tmp_path / "local" / "stage" / "k1")
    assert not (tmp_path / "local" / "stage" / "k1").exists()
    with pytest.raises(ValueError, match="run.artifact_root"):
        ArtifactStore("nosuchscheme://bucket/x", MANIFEST)
