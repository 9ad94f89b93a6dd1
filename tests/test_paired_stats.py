"""Paired statistics of the evaluation: member bootstrap of AUC deltas, verdicts, one-class
warnings, and ``rankbrew compare`` over several runs (a real MLflow sqlite store)."""

from __future__ import annotations

import math
import re

import numpy as np
import polars as pl
import pytest
from scipy.stats import t as student_t

from components.evaluate.metrics import (
    _auc_plan,
    _auc_replicates,
    paired_bootstrap_auc_delta,
    roc_auc,
)
from components.evaluate.report import (
    HELD_OUT_MEAN,
    TRAINED_MEAN,
    EvalRecord,
    across_runs_table,
    model_task_metrics,
    paired_across_runs,
    paired_delta_table,
    single_class_warnings,
    summary_table,
    tasks_above,
    verdict,
)


# ---------------------------------------------------------------------------- the bootstrap
def test_weighted_replicates_are_the_auc_of_the_resampled_rows():
    rng = np.random.default_rng(0)
    n = 60
    s = rng.integers(0, 8, n).astype(float)  # many ties
    y = rng.integers(0, 2, n)
    w = rng.integers(0, 4, size=(5, n)).astype(float)
    got = _auc_replicates(_auc_plan(s, y), w)
    for b in range(5):
        reps = w[b].astype(int)
        assert got[b] == pytest.approx(roc_auc(np.repeat(s, reps), np.repeat(y, reps)), abs=1e-12)
    assert np.isnan(_auc_replicates(_auc_plan(s, y), np.where(y > 0, 1.0, 0.0)[None, :]))[0]


def test_identical_models_give_zero_delta_and_a_zero_width_interval():
    rng = np.random.default_rng(1)
    n = 400
    s, y = rng.normal(size=n), rng.integers(0, 2, n)
    members, tasks = rng.integers(0, 50, n), rng.integers(0, 3, n)
    res = paired_bootstrap_auc_delta(s, s.copy(), y, members, tasks, n=200, seed=0)
    for d in [*res.per_task.values(), *res.means.values()]:
        assert (d.delta, d.low, d.high, d.n_valid) == (0.0, 0.0, 0.0, 200)


def _world(rng, n_members: int, rows_per_member: int, member_sd: float, edge: float = 0.6):
    """Members with a shared latent effect on their labels and both scores; model a sees
    the label signal more clearly than model b."""
    m = np.repeat(np.arange(n_members), rows_per_member)
    u = rng.normal(scale=member_sd, size=n_members)[m]
    x = rng.normal(size=m.size)
    y = (rng.random(m.size) < 1 / (1 + np.exp(-(x + u - 1.0)))).astype(int)
    a = x + u + rng.normal(scale=0.8, size=m.size)
    b = x + u + rng.normal(scale=0.8 + edge, size=m.size)
    return a, b, y, m


def test_interval_covers_the_true_delta_on_simulated_members():
    rng = np.random.default_rng(2)
    a, b, y, _ = _world(rng, 40_000, 5, member_sd=1.0)
    true = roc_auc(a, y) - roc_auc(b, y)  # the population delta (200k rows: error ~0.002)
    covered, widths = 0, []
    for _ in range(100):
        a, b, y, m = _world(rng, 150, 5, member_sd=1.0)
        d = paired_bootstrap_auc_delta(a, b, y, m, n=300, seed=int(rng.integers(1 << 30))).means["mean"]
        covered += d.low <= true <= d.high
        widths.append(d.high - d.low)
    assert 0.88 <= covered / 100 <= 0.99, covered
    assert true > np.median(widths) / 2  # intervals mostly exclude 0: the case is not vacuous


def _uneven_edge(rng, n_members: int, rows_per_member: int, boost: float = 2.5, good=None):
    """Model a ranks the candidates of half the members (``good``) well and the others at
    chance; model b is mediocre for everybody: the delta is correlated within a member."""
    m = np.repeat(np.arange(n_members), rows_per_member)
    good = rng.random(n_members) < 0.5 if good is None else good
    y = rng.integers(0, 2, m.size)
    a = np.where(good[m], boost, 0.0) * y + rng.normal(size=m.size)
    b = 0.8 * y + rng.normal(size=m.size)
    return a, b, y, m


def test_member_clustering_widens_the_interval_over_row_resampling():
    rng = np.random.default_rng(3)
    a, b, y, m = _uneven_edge(rng, 120, 12, boost=2.0)
    by_member = paired_bootstrap_auc_delta(a, b, y, m, n=400, seed=0).means["mean"]
    by_row = paired_bootstrap_auc_delta(a, b, y, np.arange(y.size), n=400, seed=0).means["mean"]
    assert by_member.delta == by_row.delta
    assert (by_member.high - by_member.low) > 1.25 * (by_row.high - by_row.low)  # 1.42 here


def test_task_mean_resamples_members_once_for_all_tasks():
    """A member's edge for model a is shared by every task: the per-task deltas move
    together, so the mean's interval is wider than independent per-task draws would say."""
    rng = np.random.default_rng(4)
    n_members, n_tasks = 150, 4
    good = rng.random(n_members) < 0.5
    rows = [(*_uneven_edge(rng, n_members, 8, good=good), np.full(n_members * 8, t)) for t in range(n_tasks)]
    a, b, y, m, t = (np.concatenate(c) for c in zip(*rows, strict=True))
    joint = paired_bootstrap_auc_delta(a, b, y, m, t, n=600, seed=0)
    assert joint.means["mean"].delta == pytest.approx(np.mean([d.delta for d in joint.per_task.values()]))
    widths = [paired_bootstrap_auc_delta(*r[:4], n=600, seed=10 + i).means["mean"]
              for i, r in enumerate(rows)]
    independent = math.sqrt(sum((w.high - w.low) ** 2 for w in widths)) / n_tasks
    assert joint.means["mean"].high - joint.means["mean"].low > 1.25 * independent  # 1.52 here


def test_bootstrap_is_deterministic_and_chunking_does_not_change_it():
    rng = np.random.default_rng(5)
    a, b, y, m = _world(rng, 80, 6, member_sd=1.0)
    t = rng.integers(0, 3, y.size)
    groups = {"first two": [0, 1], "all": [0, 1, 2]}
    one = paired_bootstrap_auc_delta(a, b, y, m, t, groups, n=250, seed=7)
    assert one == paired_bootstrap_auc_delta(a, b, y, m, t, groups, n=250, seed=7, max_cells=300)
    assert one.means != paired_bootstrap_auc_delta(a, b, y, m, t, groups, n=250, seed=8).means
    assert one.mean_tasks == {"first two": [0, 1], "all": [0, 1, 2]}
    for k in range(3):
        sel = t == k
        assert one.per_task[k].delta == roc_auc(a[sel], y[sel]) - roc_auc(b[sel], y[sel])
        assert one.per_task[k].low < one.per_task[k].delta < one.per_task[k].high
    with pytest.raises(ValueError, match="members has"):
        paired_bootstrap_auc_delta(a, b, y, m[:-1])
    with pytest.raises(ValueError, match="no rows"):
        paired_bootstrap_auc_delta(a, b, y, m, t, {"x": [9]})


def test_a_task_with_one_class_is_left_out_of_the_mean():
    rng = np.random.default_rng(6)
    a, b, y, m = _world(rng, 60, 5, member_sd=0.5)
    t = np.zeros(y.size, dtype=int)
    t[:20], y[:20] = 1, 0  # task 1: negatives only
    res = paired_bootstrap_auc_delta(a, b, y, m, t, n=100, seed=0)
    assert math.isnan(res.per_task[1].delta) and res.per_task[1].n_valid == 0
    assert res.mean_tasks["mean"] == [0] and res.means["mean"].delta == res.per_task[0].delta


# ---------------------------------------------------------------------------- tables and verdicts
def _scores(seed: int = 0, n_members: int = 120, teacher_edge: float = 1.0) -> pl.DataFrame:
    """Per-row scores as the evaluate stage writes them: 3 trained tasks, 1 held out."""
    rng = np.random.default_rng(seed)
    rows = []
    for task in ("t_a", "t_b", "t_c", "h_z"):
        for e in range(80):
            k = int(rng.integers(2, 5))
            y = (rng.random(k) < 0.3).astype(int)
            mem = f"m{rng.integers(n_members)}"
            rows += [(task, f"{task}:{e}", p, mem, int(y[p]), task.startswith("h"), int(rng.integers(0, 30)))
                     for p in range(k)]
    base = pl.DataFrame(rows, schema=["task_id", "example_id", "position", "member_id", "label", "held_out",
                                      "n_prior_events"], orient="row")
    out = []
    for model, w in (("teacher", teacher_edge), ("popularity", 0.4), ("lightgbm", 1.6)):
        out.append(base.with_columns(pl.lit(model).alias("model"),
                                     (pl.col("label") * w + pl.Series(rng.normal(size=base.height))).alias("score")))
    return pl.concat(out)


def _records(scores: pl.DataFrame) -> list[EvalRecord]:
    out = []
    for (model, task), part in sorted(scores.partition_by("model", "task_id", as_dict=True).items()):
        part = part.with_columns((pl.col("n_prior_events") <= 5).alias("activity<=5"))
        out.append(EvalRecord(model, task, bool(part["held_out"][0]), model_task_metrics(part, n_boot=20)))
    return out


def test_paired_delta_table_rows_means_and_verdict():
    scores = _scores()
    copy = scores.filter(pl.col("model") == "teacher").with_columns(pl.lit("copy").alias("model"))
    d = paired_delta_table(pl.concat([scores, copy]), n_boot=200, seed=0)
    assert d["task"].to_list()[:3] == ["t_a"] * 3 and set(d["baseline"]) == {"popularity", "lightgbm", "copy"}
    assert d.filter(pl.col("is_mean"))["task"].unique().sort().to_list() == sorted([TRAINED_MEAN, HELD_OUT_MEAN])
    zero = d.filter(pl.col("baseline") == "copy")
    assert (zero["delta"] == 0).all() and (zero["low"] == 0).all() and (zero["high"] == 0).all()
    table = summary_table(_records(scores))
    for r in d.filter(~pl.col("is_mean")).iter_rows(named=True):
        want = table.filter(pl.col("task") == r["task"]).row(0, named=True)
        if r["baseline"] != "copy":
            assert r["delta"] == pytest.approx(want["teacher"] - want[r["baseline"]], abs=1e-12)
            assert r["low"] <= r["delta"] <= r["high"]
    trained = d.filter(pl.col("is_mean") & ~pl.col("held_out") & (pl.col("baseline") == "popularity")).row(0, named=True)
    assert trained["tasks"] == 3
    assert trained["delta"] == pytest.approx(trained["teacher_auc"] - trained["baseline_auc"])
    assert trained["teacher_auc"] == pytest.approx(table.filter(pl.col("task") == TRAINED_MEAN)["teacher"][0])
    above, of = tasks_above(d, "popularity")
    assert of == 3 and above == int((d.filter(~pl.col("is_mean") & ~pl.col("held_out")
                                              & (pl.col("baseline") == "popularity"))["delta"] > 0).sum())
    line = verdict(d, "popularity")
    assert re.fullmatch(r"teacher vs popularity: paired delta of mean AUC [+-]\d\.\d{3} \[[+-]\d\.\d{3}, "
                        r"[+-]\d\.\d{3}\] \(95% member bootstrap, 200 replicates\); above on \d/3 trained "
                        r"tasks \(descriptive\)", line), line
    assert f"{trained['delta']:+.3f} [{trained['low']:+.3f}, {trained['high']:+.3f}]" in line
    assert "held-out tasks" in verdict(d, "lightgbm", held_out=True)
    assert verdict(d, "sasrec") is None


def test_single_class_slices_are_warned_about():
    recs = [EvalRecord(m, "t", False, {"n_candidates": 10.0, "n_positives": 3.0, "auc": 0.6,
                                       "n_candidates.activity_le_5": 4.0, "n_positives.activity_le_5": 0.0,
                                       "n_candidates.new_item": 3.0, "n_positives.new_item": 3.0,
                                       "n_candidates.cold_item": 0.0, "n_positives.cold_item": 0.0,
                                       "n_candidates.activity_gt_100": 6.0, "n_positives.activity_gt_100": 3.0})
            for m in ("teacher", "popularity")]
    recs.append(EvalRecord("teacher", "u", True, {"n_candidates": 5.0, "n_positives": 0.0}))
    w = single_class_warnings(recs)
    assert len(w) == 3
    assert w[0].startswith("warning: slice `all candidates`") and "u (5 candidates, no positive; teacher)" in w[0]
    assert "`activity<=5`" in w[1] and "t (4 candidates, no positive)" in w[1]
    assert "`new_item`" in w[2] and "all positive" in w[2]
    assert not any("cold_item" in x or "activity>100" in x for x in w)  # empty / both classes


# ---------------------------------------------------------------------------- several runs
def test_across_runs_mean_sd_and_t_interval():
    runs = [_scores(seed=s, teacher_edge=e) for s, e in ((0, 0.6), (1, 1.0), (2, 1.4))]
    tables = [summary_table(_records(s)) for s in runs]
    deltas = [paired_delta_table(s, n_boot=100, seed=0) for s in runs]
    across = across_runs_table(tables)
    row = across.filter(pl.col("task") == "t_b").row(0, named=True)
    vals = [t.filter(pl.col("task") == "t_b")["teacher"][0] for t in tables]
    assert row["runs"] == 3 and row["teacher"] == pytest.approx(np.mean(vals))
    assert row["teacher.sd"] == pytest.approx(np.std(vals, ddof=1))
    paired = paired_across_runs(deltas)
    r = paired.filter((pl.col("task") == TRAINED_MEAN) & (pl.col("baseline") == "popularity")).row(0, named=True)
    ds = [d.filter((pl.col("task") == TRAINED_MEAN) & (pl.col("baseline") == "popularity")).row(0, named=True)
          for d in deltas]
    mean, sd = np.mean([x["delta"] for x in ds]), np.std([x["delta"] for x in ds], ddof=1)
    half = student_t.ppf(0.975, 2) * sd / math.sqrt(3)
    assert r["runs"] == 3 and r["mean_delta"] == pytest.approx(mean) and r["sd_delta"] == pytest.approx(sd)
    assert (r["t_low"], r["t_high"]) == pytest.approx((mean - half, mean + half))
    assert r["delta_runs"] == pytest.approx([x["delta"] for x in ds])
    assert r["low_runs"] == pytest.approx([x["low"] for x in ds]) and r["run_index"] == [0, 1, 2]
    assert r["runs_above"] == sum(x["delta"] > 0 for x in ds)
    one = paired_across_runs(deltas[:1])
    assert one["t_low"].is_nan().all()  # one run: no spread, no interval


def _log_run(client, exp_id: str, scores: pl.DataFrame, tmp, name: str, stage_key: str,
             n_boot: int = 100) -> str:
    """A pipeline run as the evaluate stage leaves it: nested eval runs and the
    evaluate/paired_deltas.csv artifact on the parent."""
    parent = client.create_run(exp_id, tags={"rankbrew.kind": "pipeline", "rankbrew.profile": "test",
                                             "rankbrew.git_sha": "abc"}, run_name=name).info.run_id
    for rec in _records(scores):
        run = client.create_run(exp_id, tags={
            "mlflow.parentRunId": parent, "rankbrew.kind": "eval", "rankbrew.model": rec.model,
            "rankbrew.task": rec.task_id, "rankbrew.held_out": str(rec.held_out).lower(),
            "rankbrew.eval_split": "test", "rankbrew.stage_key": stage_key}).info.run_id
        for k, v in rec.metrics.items():
            client.log_metric(run, k, float(v))
        client.set_terminated(run, "FINISHED")
    path = tmp / f"{name}" / "paired_deltas.csv"
    path.parent.mkdir(parents=True)
    paired_delta_table(scores, n_boot=n_boot, seed=0).write_csv(path)
    client.log_artifact(parent, str(path), "evaluate")
    client.set_terminated(parent, "FINISHED")
    return parent


def _log_cached_run(client, exp_id: str, stage_key: str) -> str:
    """A later pipeline run whose evaluate stage was cached: only a stage run with the key."""
    parent = client.create_run(exp_id, tags={"rankbrew.kind": "pipeline", "rankbrew.profile": "test",
                                             "rankbrew.git_sha": "abc"}).info.run_id
    stage = client.create_run(exp_id, tags={"mlflow.parentRunId": parent, "rankbrew.stage": "evaluate",
                                            "rankbrew.stage_key": stage_key}).info.run_id
    client.set_terminated(stage, "FINISHED")
    client.set_terminated(parent, "FINISHED")
    return parent


def test_compare_over_three_runs_in_a_real_mlflow_store(tmp_path):
    import time

    import mlflow
    from mlflow.tracking import MlflowClient
    from typer.testing import CliRunner

    from pipelines.cli import app
    from pipelines.compare import CompareError, compare, compare_many

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("seeds", artifact_location=(tmp_path / "art").as_uri())
    runs = [_scores(seed=s, teacher_edge=e) for s, e in ((0, 0.6), (1, 1.0), (2, 1.4))]
    ids = []
    for i, s in enumerate(runs):
        ids.append(_log_run(client, exp, s, tmp_path, f"seed{i}", stage_key=f"key{i}"))
        time.sleep(0.01)  # distinct start times: "newest" is well defined
    cached = _log_cached_run(client, exp, "key2")  # the newest run reuses seed2's evaluation

    got = compare_many(uri, run_ids=ids)
    tables = [summary_table(_records(s)) for s in runs]
    deltas = [paired_delta_table(s, n_boot=100, seed=0) for s in runs]
    row = got.table.filter(pl.col("task") == TRAINED_MEAN).row(0, named=True)
    vals = [t.filter(pl.col("task") == TRAINED_MEAN)["teacher"][0] for t in tables]
    assert row["teacher"] == pytest.approx(np.mean(vals)) and row["teacher.sd"] == pytest.approx(np.std(vals, ddof=1))
    r = got.paired.filter((pl.col("task") == "t_a") & (pl.col("baseline") == "lightgbm")).row(0, named=True)
    ds = [d.filter((pl.col("task") == "t_a") & (pl.col("baseline") == "lightgbm"))["delta"][0] for d in deltas]
    assert r["mean_delta"] == pytest.approx(np.mean(ds)) and r["sd_delta"] == pytest.approx(np.std(ds, ddof=1))
    assert "teacher vs popularity, trained tasks, 3 runs: mean paired delta of mean AUC" in got.markdown
    assert "## AUC over runs (mean ± s.d. over runs)" in got.markdown and "t_a" in got.markdown

    # --last 3: the cached newest run repeats seed2's evaluation and counts once
    last = compare_many(uri, "seeds", last=3)
    assert [r.evaluated_in for r in last.runs] == [ids[2], ids[1], ids[0]]
    assert last.runs[0].run_id == cached
    dup = compare_many(uri, run_ids=[ids[0], ids[2], cached])
    assert len(dup.runs) == 2 and "counted once" in dup.skipped[0]
    with pytest.raises(CompareError, match="at least 2"):
        compare_many(uri, run_ids=[ids[2], cached])

    # one run: the paired deltas come back from the artifact, with the verdict lines
    single = compare(uri, run_id=ids[1])
    assert single.deltas.equals(deltas[1]) and single.verdicts[0].startswith("teacher vs popularity")
    assert "## Paired deltas" in single.markdown and single.verdicts[0] in single.markdown

    cli = CliRunner()
    out = cli.invoke(app, ["compare", "--tracking-uri", uri, "--runs", ids[0], ids[1], ids[2]])
    assert out.exit_code == 0, out.output
    assert "Evaluation over 3 runs" in out.output and "per run (95% member bootstrap)" in out.output
    out = cli.invoke(app, ["compare", "--tracking-uri", uri, "--experiment", "seeds", "--last", "2"])
    assert out.exit_code == 0 and "Evaluation over 2 runs" in out.output, out.output
    bad = cli.invoke(app, ["compare", "--tracking-uri", uri, "--runs", ids[0], "--against", ids[1]])
    assert bad.exit_code == 2 and "use one or the other" in bad.output
    stray = cli.invoke(app, ["compare", "--tracking-uri", uri, ids[0]])
    assert stray.exit_code == 2 and "unexpected argument" in stray.output
