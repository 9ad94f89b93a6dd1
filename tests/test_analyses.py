"""`rankbrew analyze`: the four analyses, their MLflow runs, files and what they measure.

One small world (200 members) runs the data and prompt stages in this process (no Ray:
the promptify stage is the same ``PromptBuilder`` called directly), a stand-in ``align``
stage saves an untrained 1-layer teacher, and every stage logs its MLflow run under a
pipeline run as ``rankbrew run`` does, so the analyses find the run the way the CLI does.
The teacher is untrained: the wiring is under test; the steering correlation is tested
with scorers whose answer is known (one follows the instruction, one does the opposite).
The compute is ``components.analyses`` (``an``), the MLflow wiring ``pipelines.analyses``
(``pa``).
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
import yaml

from components import analyses as an
from components import tracking
from components.analyses import instruction_steering
from components.config import load_config, with_absolute_paths
from components.evaluate.metrics import roc_auc
from pipelines import analyses as pa
from pipelines.dag import RunInfo, Stage, execute_stage
from pipelines.stages import DATA_STAGES, PROMPT_STAGES

OVERRIDES = {
    "run.name": "analyses-test",
    "data.synthetic.members": 200, "data.synthetic.members_per_file": 100,
    "promptify.styles": ["markdown"], "promptify.blocks": 2, "tokenizer.sample_texts": 3000,
    "model.hidden_size": 32, "model.num_layers": 1, "model.num_heads": 2, "model.num_kv_heads": 1,
    "model.intermediate_size": 64, "train.sft.batch_size": 2,
    "analyses.threads": 1,
    "analyses.context_budget.budgets": [0, 16, 64], "analyses.context_budget.max_prompts_per_task": 4,
    "analyses.training.steps": 3, "analyses.training.valid_prompts_per_task": 3,
    "analyses.data_amount.fractions": [0.2, 1.0],
    "analyses.model_size.hidden_sizes": [16, 32],
    "analyses.steering.max_prompts_per_task": 12,
}


def _promptify_in_process(ctx):
    """The promptify stage without Ray Data: the same PromptBuilder on all member rows."""
    from components.promptify.examples import PreparedData, PromptBuilder
    from pipelines.tasks import load_pipeline_tasks

    prep = ctx.inputs["prepare"]
    prepared = PreparedData.from_dir(prep)
    builder = PromptBuilder(str(ctx.inputs["tokenizer"] / "tokenizer"), prepared,
                            load_pipeline_tasks(ctx.cfg), ctx.cfg.promptify)
    table = pq.read_table(sorted(prepared.members_dir.glob("*.parquet")))
    (ctx.out_dir / "examples").mkdir()
    pq.write_table(builder(table), ctx.out_dir / "examples" / "part-0.parquet")
    return {}


def _tiny_align(ctx):
    from components.model.factory import build_model, save_model
    from components.promptify.tokenizer import load_tokenizer

    tok = load_tokenizer(ctx.inputs["tokenizer"] / "tokenizer")
    save_model(build_model(ctx.cfg.model, len(tok), tok.pad_token_id), tok, ctx.out_dir / "model")
    return {}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("analyses")
    cfg = with_absolute_paths(load_config("local", {**OVERRIDES, "run.work_dir": str(root / "work")}))
    uri = tracking.default_tracking_uri(cfg.run.work_dir)
    old_uri = os.environ.get("MLFLOW_TRACKING_URI")
    tracking.configure(uri)
    client = MlflowClient(uri)
    exp = tracking.experiment_id(cfg.run.name, cfg.run.work_dir / "mlartifacts")
    tags = {tracking.TAG_GIT_SHA: "test", tracking.TAG_CONFIG_HASH: "test", tracking.TAG_PROFILE: "test"}
    parent = client.create_run(exp, tags={**tags, tracking.TAG_KIND: "pipeline"}, run_name="pipeline")
    info = RunInfo(cfg.run.work_dir / "artifacts", uri, exp, parent.info.run_id, tags)
    stages = [*DATA_STAGES, *[s for s in PROMPT_STAGES if s.name != "promptify"],
              Stage("promptify", _promptify_in_process, deps=("prepare", "tokenizer"), config_keys=("promptify",)),
              Stage("align", _tiny_align, deps=("promptify", "tokenizer"), config_keys=("model",))]
    done = {}
    for st in stages:
        done[st.name] = execute_stage(st, cfg, info, *[done[d] for d in st.deps])
    client.set_terminated(parent.info.run_id, "FINISHED")
    # a newer pipeline run that failed: the analyses must skip it
    failed = client.create_run(exp, tags={**tags, tracking.TAG_KIND: "pipeline"}, run_name="failed")
    client.set_terminated(failed.info.run_id, "FAILED")
    yield {"cfg": cfg, "uri": uri, "parent": parent.info.run_id, "stages": done, "client": client, "root": root}
    if old_uri is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = old_uri


@pytest.fixture(scope="module")
def analysed(world):
    cfg = world["cfg"]
    art = pa.find_run_artifacts(world["uri"], cfg.run.name, cfg.run.work_dir / "artifacts")
    results = pa.analyze(cfg, art, tracking_uri=world["uri"], log=lambda m: None)
    return {"art": art, "results": {r.name: r for r in results}}


def test_each_analysis_logs_one_nested_run_with_metrics_csv_and_plot(world, analysed):
    import mlflow

    art = analysed["art"]
    assert art.pipeline_run_id == world["parent"], "the newest *finished* pipeline run"
    assert art.model_dir == world["stages"]["align"].path / "model"
    runs = [r for r in mlflow.search_runs(experiment_names=["analyses-test"], output_format="list")
            if r.data.tags.get("rankbrew.kind") == "analysis"]
    by_name = {r.data.tags["rankbrew.analysis"]: r for r in runs}
    assert sorted(by_name) == ["context_budget", "data_amount", "model_size", "steering"] and len(runs) == 4
    for name, r in by_name.items():
        assert r.data.tags["mlflow.parentRunId"] == world["parent"]
        assert r.data.tags["rankbrew.stage_key"] == world["stages"]["align"].key
        assert r.info.status == "FINISHED" and "rankbrew.skipped" not in r.data.tags
        files = {a.path for a in mlflow.artifacts.list_artifacts(run_id=r.info.run_id)}
        assert {f"{name}.csv", f"{name}.png"} <= files, files
        png = mlflow.artifacts.download_artifacts(run_id=r.info.run_id, artifact_path=f"{name}.png")
        assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    m = by_name["context_budget"].data.metrics
    run_budget = world["cfg"].promptify.history_token_budget
    for b in (0, 16, 64, run_budget):
        assert {f"auc_mean.budget_{b}", f"auc_cold_start.budget_{b}", f"history_tokens_max.budget_{b}",
                f"history_lines_mean.budget_{b}"} <= set(m)
    assert m["history_lines_mean.budget_0"] == 0.0
    assert m["history_lines_mean.budget_0"] <= m["history_lines_mean.budget_64"] <= \
        m[f"history_lines_mean.budget_{run_budget}"]
    assert m[f"history_lines_mean.budget_{run_budget}"] > 0, "the world's members have histories"
    # the CSV is the table the metrics came from
    csv = pl.read_csv(mlflow.artifacts.download_artifacts(run_id=by_name["context_budget"].info.run_id,
                                                          artifact_path="context_budget.csv"))
    assert csv["budget"].to_list() == [0, 16, 64, run_budget]
    for row in csv.iter_rows(named=True):
        want = m[f"auc_mean.budget_{row['budget']}"]
        assert (math.isnan(want) and row["auc_mean"] is None) or row["auc_mean"] == pytest.approx(want)

    d = by_name["data_amount"].data.metrics
    assert {"auc_mean.fraction_0.2", "auc_mean.fraction_1", "train_prompts.fraction_0.2", "epochs.fraction_1"} <= set(d)
    assert d["train_prompts.fraction_0.2"] < d["train_prompts.fraction_1"]
    s = by_name["model_size"].data.metrics
    assert {"auc_mean.hidden_16", "auc_mean.hidden_32", "params.hidden_16"} <= set(s)
    assert s["params.hidden_16"] < s["params.hidden_32"]
    # the profile's own shape on all the data is the same point in both sweeps (trained once)
    assert s["auc_mean.hidden_32"] == d["auc_mean.fraction_1"]

    st = by_name["steering"].data.metrics
    table = analysed["results"]["steering"].table
    assert table.height >= 3, "the world must have prompts for several steering tasks"
    for task in table["task_id"]:
        assert {f"auc_base_instruction.{task}", f"auc_steered_instruction.{task}",
                f"shift_spearman.{task}", f"shift_spearman_null95.{task}"} <= set(st)
    assert dict(zip(table["task_id"], table["base_task"], strict=True))["post_fit_feed_focus_topic"] == "post_engage_feed"


def test_context_budget_rerenders_promptify_exactly_and_respects_the_budget(world, analysed):
    from components.promptify.tokenizer import load_tokenizer

    cfg = world["cfg"]
    art = analysed["art"]
    inputs = pa.run_inputs(art, cfg)
    ctx = an.AnalysisContext(cfg, art, inputs, world["root"] / "unused")
    rows = an.eval_rows(ctx, 6)
    renderer = an.PrefixRenderer(art, inputs, rows["member_id"].unique().to_list())
    renderer.check_reproduces(rows)  # the run's budget gives the stored prefixes back
    tampered = rows.with_columns(pl.col("prefix").str.replace("## Past activity", "## Past events"))
    with pytest.raises(an.AnalysisError, match="differ from the stored ones"):
        renderer.check_reproduces(tampered)

    tok = load_tokenizer(art.stage("tokenizer") / "tokenizer")
    section = re.compile(r"## Past activity\n(.*)\n\n## Question\n", re.S)
    kept_before = np.zeros(rows.height)
    for budget in (0, 16, 64, 200):
        out = renderer.render(rows, budget=budget)
        kept = out["history_lines"].to_numpy()
        assert (kept >= kept_before).all(), "a larger budget never keeps fewer lines"
        kept_before = kept
        for prefix, lines in zip(out["prefix"], kept, strict=True):
            body = section.search(prefix).group(1)
            if budget == 0:
                assert lines == 0 and body == "- (no earlier activity)"
            elif lines:
                assert len(tok.encode(body, add_special_tokens=False)) <= budget
        if budget == 200:
            assert kept.sum() > 0
            # only the history changed: instruction, profile and question are the stored ones
            for new, old in zip(out["prefix"], rows["prefix"], strict=True):
                assert new.split("## Past activity")[0] == old.split("## Past activity")[0]
                assert new.split("## Question")[1] == old.split("## Question")[1]


def test_shift_correlation_sees_direction_not_list_level_or_chance():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(60), 8)
    crit = rng.normal(size=groups.size)
    offsets = rng.normal(scale=50.0, size=60)[groups]  # a member-level shift carries no ranking
    follows = crit + 0.1 * rng.normal(size=groups.size) + offsets
    assert an.shift_correlation(follows, crit, groups) > 0.95
    assert an.shift_correlation(-follows, crit, groups) < -0.95
    shuffled = follows.copy()
    for g in range(60):
        idx = np.flatnonzero(groups == g)
        shuffled[idx] = shuffled[rng.permutation(idx)]
    null = an.shift_correlation_null(follows, crit, groups, n=100)
    assert abs(an.shift_correlation(shuffled, crit, groups)) < null < 0.3
    assert math.isnan(an.shift_correlation(offsets, crit, groups)), "constant within every list"
    singletons = np.arange(groups.size)
    assert math.isnan(an.shift_correlation(follows, crit, singletons)), "one-candidate lists rank nothing"


class _KnownScorer:
    """Scores ``sign * criterion utility`` under the steering instruction (the stored prefix)
    and 0 under any other instruction: a model that moves exactly as told (sign=1)."""

    def __init__(self, lookup, sign):
        self.lookup, self.sign, self.unknown = lookup, sign, 0

    def score_batch(self, requests, margins=False):
        out = []
        for prefix, cands in requests:
            if prefix in self.lookup:
                out.append(self.sign * self.lookup[prefix])
            else:
                self.unknown += 1
                out.append(np.zeros(len(cands)))
        return out


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_steering_measures_how_the_ranking_moves(world, analysed, monkeypatch, sign):
    from components.data.synthetic import steering_weights, utility, utility_components

    cfg, art = world["cfg"], analysed["art"]
    inputs = pa.run_inputs(art, cfg)
    split = art.stage("split")
    members, items = pl.read_parquet(split / "members"), pl.read_parquet(split / "items")
    ex = pl.read_parquet(art.examples_dir).filter(pl.col("split") == cfg.analyses.split)
    steer = ex.filter(pl.col("task_id").is_in([t for t, s in inputs.tasks.items() if s.steering]))
    pairs = steer.select("prefix", "task_id", "member_id", pl.col("cutoff").alias("timestamp"),
                         pl.col("candidate_item_ids").alias("item_id")).explode("item_id")
    comps = utility_components(members, items, pairs, cfg.data.synthetic)
    parts = []
    for (task,), part in comps.group_by("task_id", maintain_order=True):
        weights = steering_weights(inputs.tasks[task].steering)
        parts.append(part.select("prefix", utility(part, weights).alias("u")))
    lookup = {p: np.asarray(u) for p, u in pl.concat(parts).group_by("prefix", maintain_order=True)
              .agg("u").iter_rows()}
    scorer = _KnownScorer(lookup, sign)
    monkeypatch.setattr(instruction_steering, "load_engine", lambda *a, **k: scorer)
    ctx = an.AnalysisContext(cfg, art, inputs, world["root"] / f"steering_{sign}", log=lambda m: None)
    result = an.steering(ctx)
    assert scorer.unknown > 0, "the base instruction's prefixes differ from the steered ones"
    defined = result.table.filter(pl.col("shift_spearman").is_not_nan())
    assert defined.height >= 3
    for row in defined.iter_rows(named=True):
        assert row["shift_spearman"] == pytest.approx(sign, abs=1e-9), row["task_id"]
        assert abs(row["shift_spearman"]) > row["shift_spearman_null95"]
        if not math.isnan(row["auc_criterion_utility"]):  # both classes in the sample
            assert row["auc_base_instruction"] == pytest.approx(0.5)  # all ties
            assert row["auc_steered_instruction"] == pytest.approx(
                row["auc_criterion_utility"] if sign > 0 else 1 - row["auc_criterion_utility"])
    # the criteria's utility is what the steered labels were made from
    scores = pl.read_parquet(ctx.out_dir / "steering_scores.parquet")
    for (task,), part in scores.group_by("task_id"):
        auc = roc_auc(part["criterion_utility"].to_numpy(), part["label"].to_numpy())
        assert math.isnan(auc) or auc > 0.85, (task, auc)


def test_cli_analyze_finds_the_newest_run_and_prints_the_table(world, tmp_path):
    from typer.testing import CliRunner

    from pipelines.cli import app

    profile = tmp_path / "profile.yaml"
    profile.write_text(yaml.safe_dump(world["cfg"].model_dump(mode="json")))
    out = CliRunner().invoke(app, ["analyze", "--profile", str(profile), "--only", "context_budget"])
    assert out.exit_code == 0, out.output
    assert "context_budget" in out.output and "auc_mean" in out.output and world["parent"] in out.output
    bad = CliRunner().invoke(app, ["analyze", "--profile", str(profile), "--only", "bogus"])
    assert bad.exit_code == 1 and "unknown analyses" in bad.output
    stage_run = world["stages"]["align"].mlflow_run_id
    bad = CliRunner().invoke(app, ["analyze", "--profile", str(profile), "--run-id", stage_run])
    assert bad.exit_code == 1 and "not a pipeline run" in bad.output


def test_movielens_like_data_skips_steering_with_a_reason(world, analysed):
    cfg, art = world["cfg"], analysed["art"]
    inputs = pa.run_inputs(art, cfg)
    ml = inputs.cfg.model_copy(update={"data": inputs.cfg.data.model_copy(update={"source": "movielens"})})
    ctx = an.AnalysisContext(cfg, art, an.RunInputs(ml, inputs.tasks), world["root"] / "ml")
    result = an.steering(ctx)
    assert result.skipped and "movielens" in result.skipped and "synthetic" in result.skipped
    assert "skipped" in result.markdown()
