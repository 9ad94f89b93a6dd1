"""Serving: a real local Ray Serve app over real HTTP, serving the tiny run's models.

Two versions are registered from the session's tiny pipeline run (the teacher and the
int8 student of its chain), so a redeploy and a rollback change what is served in a way
the scores show. Prompts come from the run's tables: a test prompt of the evaluation and
the same request over HTTP must score alike.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import polars as pl
import pytest
import requests

NAME = "rankbrew-serve-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _register(tracking_uri: str, stage: str, key: str, model_dir) -> str:
    """Log a model dir as a version of NAME from a run tagged like the stage's own run."""
    import mlflow

    from components.tracking import TAG_STAGE, TAG_STAGE_KEY
    from pipelines.registry import TeacherScorer

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment("serve-test")
    with mlflow.start_run(tags={TAG_STAGE: stage, TAG_STAGE_KEY: key}):
        info = mlflow.pyfunc.log_model(name="ranker", python_model=TeacherScorer(),
                                       artifacts={"model": str(model_dir)}, pip_requirements=["torch"],
                                       registered_model_name=NAME)
    return str(info.registered_model_version)


@pytest.fixture(scope="module")
def app(tiny_run):
    """The Serve app on the tiny run: version 1 = the teacher (alias champion), 2 = int8."""
    from mlflow.tracking import MlflowClient
    from ray import serve

    from pipelines import serve_ctl

    cfg, run = tiny_run
    align, quant = run.results["align"], run.results["quantize"]
    v1 = _register(run.tracking_uri, "align", align.key, align.path / "model")
    v2 = _register(run.tracking_uri, "quantize", quant.key, quant.path / "model")
    client = MlflowClient(run.tracking_uri)
    client.set_registered_model_alias(NAME, "champion", v1)
    port = _free_port()
    target = serve_ctl.ServeTarget(cfg.run.work_dir, run.tracking_uri, model=f"models:/{NAME}@champion",
                                   port=port, scorer_replicas=2,
                                   api={"max_candidates": 50, "max_body_bytes": 1_000_000},
                                   options={"scorer_max_ongoing": 4, "scorer_max_queued": 8,
                                            "ingress_max_ongoing": 32, "ingress_max_queued": 64})
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve_ctl.deploy(target)
    yield {"target": target, "url": target.url, "run": run, "cfg": cfg, "v1": v1, "v2": v2, "client": client}
    serve.shutdown()


def _test_example(run, min_candidates: int = 3) -> dict:
    ex = pl.read_parquet(run.results["promptify"].path / "examples")
    scores = pl.read_parquet(run.results["evaluate"].path / "scores.parquet").filter(pl.col("model") == "teacher")
    ex = ex.filter((pl.col("split") == "test") & ~pl.col("held_out")
                   & (pl.col("candidate_item_ids").list.len() >= min_candidates)
                   & pl.col("example_id").is_in(scores["example_id"].unique().implode()))
    row = ex.row(0, named=True)
    row["offline"] = scores.filter(pl.col("example_id") == row["example_id"]).sort("position")["prob"].to_list()
    return row


def _request(row: dict) -> dict:
    return {"task": row["task_id"], "member_id": row["member_id"], "candidates": row["candidate_item_ids"],
            "now": row["cutoff"].isoformat()}


def test_member_request_scores_as_the_evaluation_did(app):
    row = _test_example(app["run"])
    r = requests.post(f"{app['url']}/v1/score", json=_request(row), timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["item_ids"] == row["candidate_item_ids"]
    assert body["model"]["name"] == NAME and body["model"]["version"] == app["v1"]
    assert body["model"]["alias"] == "champion"
    assert len(body["scores"]) == len(row["offline"])
    assert max(abs(a - b) for a, b in zip(body["scores"], row["offline"], strict=True)) < 1e-5
    assert body["timings_ms"]["total"] > 0 and body["n_history_events"] >= 0


def test_inline_member_items_and_a_new_instruction(app):
    t = datetime(2026, 6, 1, tzinfo=UTC).isoformat()
    req = {"instruction": "Rank the jobs by how well they fit the member's skills.",
           "question": "Would this member apply to this job?",
           "profile": {"headline": "Data engineer", "skills": ["SQL", "Python"]},
           "history": [{"item": {"item_id": "x1", "item_type": "job", "title": "ETL developer"},
                        "action": "apply", "timestamp": t}],
           "candidates": [{"item_id": "n1", "item_type": "job", "title": "Analytics engineer",
                           "fields": {"skills": ["SQL"]}},
                          {"item_id": "n2", "item_type": "job", "title": "Chef"}]}
    r = requests.post(f"{app['url']}/v1/score", json=req, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["item_ids"] == ["n1", "n2"] and all(0 < s < 1 for s in r.json()["scores"])
    assert r.json()["n_history_events"] == 1


def test_health_ready_models_metrics_and_docs(app):
    url = app["url"]
    assert requests.get(f"{url}/healthz", timeout=10).json() == {"status": "ok"}
    ready = requests.get(f"{url}/readyz", timeout=10)
    assert ready.status_code == 200 and ready.json()["model"]["version"] == app["v1"]
    models = requests.get(f"{url}/v1/models", timeout=10).json()
    assert models["model"]["uri"] == f"models:/{NAME}/{app['v1']}" and models["member_lookup"] is True
    assert _test_example(app["run"])["task_id"] in models["tasks"]
    metrics = requests.get(f"{url}/metrics", timeout=10).text
    assert "rankbrew_requests_total" in metrics and "rankbrew_request_seconds_bucket" in metrics
    spec = requests.get(f"{url}/openapi.json", timeout=10).json()
    assert "/v1/score" in spec["paths"]
    assert requests.get(f"{url}/docs", timeout=10).status_code == 200


def _malformed_cases(row: dict) -> list[tuple[str, bytes | dict, tuple[int, ...], str | None]]:
    """(name, body, allowed statuses, field the error must name)."""
    ok = _request(row)
    t = "2026-06-01T00:00:00+00:00"
    item = {"item_id": "z", "title": "t"}
    return [
        ("bad json", b'{"task": ', (400,), "body"),
        ("empty body", b"", (400,), "body"),
        ("array body", b"[]", (422,), "body"),
        ("string body", b'"hello"', (422,), "body"),
        ("candidates a string", {**ok, "candidates": "abc"}, (422,), "candidates"),
        ("candidates ints", {**ok, "candidates": [1, 2]}, (422,), "candidates"),
        ("missing candidates", {k: v for k, v in ok.items() if k != "candidates"}, (422,), "candidates"),
        ("no member", {k: v for k, v in ok.items() if k != "member_id"}, (422,), None),
        ("member twice", {**ok, "profile": {"headline": "x"}}, (422,), None),
        ("unknown task", {**ok, "task": "no_such_task"}, (422,), "task"),
        ("no task no instruction", {k: v for k, v in ok.items() if k != "task"}, (422,), None),
        ("zero candidates", {**ok, "candidates": []}, (422,), "candidates"),
        ("too many candidates", {**ok, "candidates": [f"i{k}" for k in range(51)]}, (422,), "candidates"),
        ("10 MB body", b'{"task": "' + b"a" * 10_000_000 + b'"}', (413,), None),
        ("huge string", {**ok, "member_id": None, "profile": {"headline": "x" * 100_000}}, (422,), "profile"),
        ("invalid utf-8", b'{"task": "\xff\xfe"}', (400,), "body"),
        ("NaN", b'{"task": "x", "profile": {"a": NaN}, "candidates": ["a"]}', (400,), "body"),
        ("Infinity", b'{"task": "x", "profile": {"a": -Infinity}, "candidates": ["a"]}', (400,), "body"),
        ("1e400", b'{"task": "x", "profile": {"a": 1e400}, "candidates": ["a"]}', (422,), "profile"),
        ("deep nesting", b"[" * 100_000 + b"]" * 100_000, (422,), "body"),
        ("duplicate ids", {**ok, "candidates": ["a", "a"]}, (422,), None),
        ("unknown member", {**ok, "member_id": "nobody"}, (404,), "member_id"),
        ("unknown item", {**ok, "candidates": ["no-such-item"]}, (422,), "candidates[0]"),
        ("unknown field", {**ok, "memberid": "m1"}, (422,), "memberid"),
        ("history with member_id", {**ok, "history": [{"item": item, "action": "apply", "timestamp": t}]},
         (422,), None),
        ("naive timestamp", {**ok, "member_id": None, "profile": {"a": "b"},
                             "history": [{"item": item, "action": "apply", "timestamp": "2026-06-01T00:00:00"}]},
         (422,), "history"),
        ("garbage now", {**ok, "now": "yesterday"}, (422,), "now"),
        ("empty item id", {**ok, "candidates": [""]}, (422,), "candidates"),
        ("too many fields", {**ok, "member_id": None, "profile": {f"f{k}": "v" for k in range(100)}},
         (422,), "profile"),
        ("path as task", {**ok, "task": "../../etc/passwd"}, (422,), "task"),
        ("short instruction", {**ok, "instruction": "x"}, (422,), "instruction"),
        ("list too long", {**ok, "member_id": None, "profile": {"skills": ["s"] * 500}}, (422,), "profile"),
    ]


def test_malformed_requests_get_4xx_naming_the_field_and_the_server_keeps_serving(app):
    row = _test_example(app["run"])
    cases = _malformed_cases(row)
    assert len(cases) >= 25
    url = f"{app['url']}/v1/score"
    got = {}
    for name, body, allowed, fld in cases:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        r = requests.post(url, data=data, headers={"Content-Type": "application/json"}, timeout=60)
        got[name] = r.status_code
        assert r.status_code in allowed, (name, r.status_code, r.text[:300])
        err = r.json()
        assert err["error"], name
        if fld is not None:
            assert err.get("field", "").startswith(fld) or fld in err["error"], (name, err)
    assert not [n for n, s in got.items() if s >= 500]
    assert requests.get(url.replace("/v1/score", "/healthz"), timeout=10).status_code == 200
    assert requests.post(url, json=_request(row), timeout=60).status_code == 200
    assert requests.get(f"{app['url']}/v1/score", timeout=10).status_code == 405


def _load(url: str, req: dict, stop: threading.Event, statuses: list[int], workers: int = 3) -> list[threading.Thread]:
    def loop():
        s = requests.Session()
        while not stop.is_set():
            try:
                statuses.append(s.post(url, json=req, timeout=60).status_code)
            except requests.RequestException:
                statuses.append(-1)
    threads = [threading.Thread(target=loop, daemon=True) for _ in range(workers)]
    for t in threads:
        t.start()
    return threads


def test_redeploy_and_rollback_under_load_lose_no_request(app):
    from pipelines import serve_ctl

    target, client = app["target"], app["client"]
    row = _test_example(app["run"])
    req, url = _request(row), f"{app['url']}/v1/score"
    before = requests.post(url, json=req, timeout=60).json()
    stop, statuses = threading.Event(), []
    threads = _load(url, req, stop, statuses)
    try:
        time.sleep(1)
        client.set_registered_model_alias(NAME, "champion", app["v2"])  # a new champion...
        serve_ctl.deploy(target)                                           # ...rolled out live
        assert serve_ctl.live_model(target)["version"] == app["v2"]
        after = requests.post(url, json=req, timeout=60).json()
        assert after["model"]["quantization"] is not None and after["scores"] != before["scores"]
        back = serve_ctl.rollback(target)                                  # and back again
        assert back == (app["v2"], app["v1"])
        time.sleep(1)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert statuses and set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == app["v1"]
    restored = requests.post(url, json=req, timeout=60).json()
    assert restored["model"]["version"] == app["v1"]
    assert max(abs(a - b) for a, b in zip(restored["scores"], before["scores"], strict=True)) < 1e-6


def test_overload_answers_503_with_retry_after_and_recovers(app):
    """More concurrent requests than the scorers' slots (2 replicas x (4 ongoing + 8 queued))."""
    row = _test_example(app["run"])
    ids = pl.read_parquet(app["run"].results["promptify"].path / "examples").filter(
        pl.col("split") == "test")["candidate_item_ids"].explode().unique().head(50).to_list()
    req = {**_request(row), "candidates": ids}
    url = f"{app['url']}/v1/score"

    def one(_):
        r = requests.post(url, json=req, timeout=120)
        return r.status_code, r.headers.get("Retry-After")

    with ThreadPoolExecutor(64) as pool:
        results = list(pool.map(one, range(64)))
    codes = [c for c, _ in results]
    assert set(codes) <= {200, 503}, {c: codes.count(c) for c in set(codes)}
    assert 503 in codes and 200 in codes
    assert all(ra == "1" for c, ra in results if c == 503)
    assert requests.post(url, json=_request(row), timeout=60).status_code == 200


@pytest.fixture(scope="module")
def local_app(tiny_run):
    """The same API without Ray: uvicorn in a thread, the engine in-process, a bearer token."""
    import uvicorn

    from components.config import PromptifyConfig
    from components.model.engine import ScoringEngine
    from components.serve.api import ApiSettings, create_app
    from components.serve.prompts import RequestPrompter
    from components.serve.registry import Served, run_inputs, stage_config
    from components.serve.service import LocalBackend, ScoringService
    from pipelines.dag import MANIFEST
    from pipelines.tasks import load_pipeline_tasks

    cfg, run = tiny_run
    align = run.results["align"]
    inputs = run_inputs(align.path, MANIFEST)
    pcfg = PromptifyConfig.model_validate(stage_config(inputs["promptify"], MANIFEST)["promptify"])
    prompter = RequestPrompter.from_run(inputs["tokenizer"] / "tokenizer", inputs["prepare"],
                                        load_pipeline_tasks(cfg), pcfg)
    served = Served("local", "0", None, "file", align.path / "model", None, align.path)
    service = ScoringService(served, ScoringEngine.from_pretrained(align.path / "model"), prompter)
    service.warm()
    backend = LocalBackend(service)
    api = create_app(lambda: backend, ApiSettings(auth_token="s3cret", max_candidates=50))
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(api, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(100):
        if server.started:
            break
        time.sleep(0.1)
    yield f"http://127.0.0.1:{port}", run
    server.should_exit = True
    thread.join(timeout=10)


def test_without_ray_with_a_bearer_token(local_app):
    url, run = local_app
    row = _test_example(run)
    assert requests.post(f"{url}/v1/score", json=_request(row), timeout=60).status_code == 401
    bad = requests.post(f"{url}/v1/score", json=_request(row), headers={"Authorization": "Bearer nope"}, timeout=60)
    assert bad.status_code == 401 and bad.headers["WWW-Authenticate"] == "Bearer"
    assert requests.get(f"{url}/v1/models", timeout=10).status_code == 401
    assert requests.get(f"{url}/healthz", timeout=10).status_code == 200  # probes stay open
    ok = requests.post(f"{url}/v1/score", json=_request(row), headers={"Authorization": "Bearer s3cret"},
                       timeout=60)
    assert ok.status_code == 200, ok.text
    # the same engine and prompt as the evaluation stage: the same probabilities
    assert max(abs(a - b) for a, b in zip(ok.json()["scores"], row["offline"], strict=True)) < 1e-5


@pytest.mark.parametrize("name", ["local.yaml", "cluster.yaml"])
def test_serve_config_files_are_valid_serve_configs(name):
    import yaml
    from ray.serve.schema import ServeDeploySchema

    from pipelines.serve_app import build_app
    from tests.conftest import REPO_ROOT

    raw = yaml.safe_load((REPO_ROOT / "infra" / "serve" / name).read_text())
    schema = ServeDeploySchema.model_validate(raw)
    assert schema.applications[0].import_path == "pipelines.serve_app:build_app"
    build_app(raw["applications"][0]["args"])  # the args validate (unknown keys are refused)
    with pytest.raises(ValueError):
        build_app({**raw["applications"][0]["args"], "scorer_replica": 3})


def test_components_serve_imports_without_ray():
    import subprocess
    import sys

    code = ("import sys, components.serve.api, components.serve.service, components.serve.prompts; "
            "sys.exit(1 if 'ray' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
