"""Model references for evaluate.model (components/tracking/models.py)."""

from __future__ import annotations

import json

import pytest

from components.tracking.models import (
    ModelRefError,
    pinned_reference,
    resolve_model,
    trained_tasks,
    write_trained_tasks,
)


def test_a_directory_resolves_to_the_hf_dir_inside(tmp_path):
    hf = tmp_path / "pyfunc" / "artifacts" / "model"
    hf.mkdir(parents=True)
    (hf / "config.json").write_text("{}")
    assert resolve_model(str(hf), None, tmp_path / "dl") == hf
    assert resolve_model(str(tmp_path / "pyfunc"), None, tmp_path / "dl") == hf  # found inside
    assert pinned_reference(str(hf), None) == str(hf.resolve())


def test_bad_references_name_the_reference_and_the_fix(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelRefError, match="no config.json"):
        resolve_model(str(tmp_path / "empty"), None, tmp_path / "dl")
    (tmp_path / "f.bin").write_text("x")
    with pytest.raises(ModelRefError, match="is a file"):
        resolve_model(str(tmp_path / "f.bin"), None, tmp_path / "dl")
    with pytest.raises(ModelRefError, match="not a directory, a models:/ or runs:/ URI"):
        resolve_model("my-teacher", None, tmp_path / "dl")


def test_an_unknown_run_id_says_where_it_looked(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.raises(ModelRefError, match="no such run"):
        resolve_model("0" * 32, uri, tmp_path / "dl")


def test_trained_tasks_travel_with_the_model(tmp_path):
    assert trained_tasks(tmp_path) is None  # a foreign checkpoint: every task is zero-shot
    p = write_trained_tasks(tmp_path, ["b", "a"], ["z"])
    assert json.loads(p.read_text()) == {"trained": ["a", "b"], "held_out": ["z"]}
    assert trained_tasks(tmp_path) == {"a", "b"}
