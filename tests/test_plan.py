"""Cluster and GPU profiles, ``extends`` and ``${VAR}`` in profiles, and ``rankbrew run
--dry-run``: the plan resolves paths and predicts cache hits without starting anything."""

from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from components.config import ConfigError, load_config
from pipelines.cli import app
from pipelines.plan import plan_run, resolve_uri
from pipelines.stages import build_pipeline

runner = CliRunner()


def test_extends_merges_sections_and_replaces_lists(tmp_path):
    child = tmp_path / "child.yaml"
    child.write_text(yaml.safe_dump({"extends": "local", "model": {"num_layers": 3},
                                     "compress": {"chain": [{"name": "only", "num_layers": 1}]}}))
    cfg, base = load_config(child), load_config("local")
    assert cfg.model.num_layers == 3 and cfg.model.hidden_size == base.model.hidden_size
    assert [s.name for s in cfg.compress.chain] == ["only"]  # a list replaces, never merges
    assert cfg.train.sft == base.train.sft


def test_extends_cycle_is_named(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")


def test_env_values_and_defaults(tmp_path, monkeypatch):
    prof = tmp_path / "p.yaml"
    prof.write_text("extends: local\nray: {address: '${RB_TEST_ADDR:-}'}\n"
                    "train: {num_workers: '${RB_TEST_WORKERS:-3}'}\n")
    monkeypatch.delenv("RB_TEST_ADDR", raising=False)
    cfg = load_config(prof)
    assert cfg.ray.address is None and cfg.train.num_workers == 3  # empty -> null; "3" -> 3
    monkeypatch.setenv("RB_TEST_ADDR", "10.0.0.1:6379")
    assert load_config(prof).ray.address == "10.0.0.1:6379"
    prof.write_text("extends: local\nrun: {mlflow_tracking_uri: '${RB_TEST_UNSET_VAR}'}\n")
    monkeypatch.delenv("RB_TEST_UNSET_VAR", raising=False)
    with pytest.raises(ConfigError, match=r"run\.mlflow_tracking_uri reads \$\{RB_TEST_UNSET_VAR\}.*export"):
        load_config(prof)


def test_cluster_profile_reads_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("RAY_ADDRESS", "ray-head:6379")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.ml.svc:5000")
    monkeypatch.setenv("RANKBREW_WORK_DIR", str(tmp_path / "shared"))
    monkeypatch.setenv("RANKBREW_MLFLOW_ARTIFACTS", "s3://ml-bucket/mlflow")
    monkeypatch.setenv("RANKBREW_TRAIN_WORKERS", "8")
    cfg = load_config("cluster")
    assert (cfg.ray.address, cfg.run.mlflow_tracking_uri, cfg.run.mlflow_artifact_root) == (
        "ray-head:6379", "http://mlflow.ml.svc:5000", "s3://ml-bucket/mlflow")
    assert cfg.train.num_workers == 8 and cfg.train.use_gpu
    assert cfg.model.num_layers == 28 and cfg.compress.quantize.recipe.method == "fp8_dynamic"


def test_gpu_profile_is_the_0_6b_teacher_and_a_quarter_size_student():
    from components.model.factory import PRESETS

    cfg = load_config("gpu")
    shape = {k: getattr(cfg.model, k) for k in ("hidden_size", "num_layers", "num_heads",
                                                "num_kv_heads", "head_dim", "intermediate_size")}
    assert shape == {k: PRESETS["0.6b"][k] for k in shape}
    assert cfg.train.use_gpu and cfg.train.sft.attention == "flex_attention"

    def non_embedding(layers, kv, inter, h=1024, heads=16, hd=128):
        return layers * (h * heads * hd * 2 + 2 * h * kv * hd + 3 * h * inter)

    small = cfg.compress.chain[-1]
    assert non_embedding(small.num_layers, small.num_kv_heads, small.intermediate_size) <= \
        non_embedding(28, 8, 3072) / 4


@pytest.mark.parametrize("uri,ok", [("s3://bucket/prefix", True), ("gs://b/p", True),
                                    ("s3:///nobucket", False), ("ftp://host/x", False)])
def test_remote_uris_are_parsed_not_contacted(uri, ok):
    assert resolve_uri(uri)[2] is ok


def test_dry_run_starts_nothing_and_exits_1_on_a_missing_dataset(monkeypatch, tmp_path):
    import ray

    monkeypatch.setenv("RANKBREW_WORK_DIR", str(tmp_path / "work"))
    ray_before = ray.is_initialized()
    res = runner.invoke(app, ["run", "--profile", "cluster", "--dry-run", "--stop-after", "sft"])
    assert res.exit_code == 0, res.output
    assert "nothing was started" in res.output and "skipped" in res.output
    assert not (tmp_path / "work").exists()  # not even the work dir
    assert ray.is_initialized() == ray_before  # no Ray was started (or joined)
    res = runner.invoke(app, ["run", "--profile", "movielens", "--dry-run",
                              "--set", f"data.movielens.path={tmp_path / 'absent'}"])
    assert res.exit_code == 1 and "grouplens.org" in res.output
    res = runner.invoke(app, ["run", "--profile", "local", "--dry-run", "--stop-after", "nope"])
    assert res.exit_code == 2 and "unknown stage" in res.output


def test_plan_predicts_the_cache_of_a_finished_run(tiny_run):
    """Every stage of the session's tiny run is 'cached' in its plan (the same keys as the
    run computed), and a --force reruns exactly the stage and what follows it."""
    cfg, result = tiny_run
    plan = plan_run(build_pipeline(cfg), cfg, profile="test")
    assert {s.name: s.key for s in plan.stages} == {n: r.key for n, r in result.results.items()}
    assert {s.state for s in plan.stages} == {"cached"}
    forced = plan_run(build_pipeline(cfg), cfg, force=["sft"])
    states = {s.name: s.state for s in forced.stages}
    assert states["sft"] == states["align"] == states["evaluate"] == "forced"
    assert states["cpt"] == states["promptify"] == "cached"


def test_a_local_hf_checkpoint_resolves_in_the_plan_and_loads(tmp_path):
    """Bring your own base model: a directory transformers saved (here a tiny random Qwen3)
    is found by the plan and loaded by the model factory from the profile's settings."""
    import transformers as tf

    from components.model.factory import build_model

    ckpt = tmp_path / "qwen3-tiny"
    tf.AutoModelForCausalLM.from_config(tf.Qwen3Config(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, head_dim=32)).save_pretrained(ckpt)
    cfg = load_config("local", {"model.checkpoint": str(ckpt), "tokenizer.path": str(ckpt)})
    rows = {p.role: p for p in plan_run(build_pipeline(cfg), cfg).paths}
    assert rows["base model"].ok and rows["base model"].where == str(ckpt)
    assert build_model(cfg.model, 512).config.model_type == "qwen3"
    missing = load_config("local", {"model.checkpoint": str(tmp_path / "nope")})
    bad = {p.role: p for p in plan_run(build_pipeline(missing), missing).problems()}
    assert "model.checkpoint" in bad["base model"].status
