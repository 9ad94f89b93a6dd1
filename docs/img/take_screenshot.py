"""Screenshot of the MLflow UI's run comparison page for two pipeline runs' evaluations.

Starts ``mlflow ui`` on the store, opens ``#/compare-runs`` for the ``evaluate`` stage runs
of the two newest pipeline runs with distinct evaluations (or of ``--runs``) in headless
Chromium, writes the PNG and stops the server. docs/comparing-runs.md shows the result::

    .venv/bin/python docs/img/take_screenshot.py                       # runs/local/mlflow.db
    .venv/bin/python docs/img/take_screenshot.py --tracking-uri sqlite:////abs/mlflow.db \\
        --experiment data-e2e --out /tmp/compare.png

Needs ``chromium`` (Debian: ``apt-get install chromium``) and the project's .venv.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # run as a script from anywhere: the repository's packages

from components.config import load_config  # noqa: E402
from components.tracking import default_tracking_uri  # noqa: E402
from pipelines import compare as cmp  # noqa: E402


def evaluate_stage_runs(client, experiment: str, run_ids: list[str]) -> list:
    """The ``evaluate`` stage runs (the headline metrics) behind two pipeline runs: of
    ``run_ids``, else of the two newest with distinct evaluations (older first)."""
    runs = ([cmp.load_evaluated_run(client, r) for r in run_ids] if run_ids
            else cmp.newest_evaluated_runs(client, experiment, 2)[::-1])
    if len(runs) < 2:
        raise SystemExit(f"experiment '{experiment}' has {len(runs)} pipeline run(s) with a distinct "
                         "evaluation: the comparison page needs two (run the pipeline again with a change, "
                         "e.g. `rankbrew run --set evaluate.seed=1`, or pass --runs A B)")
    out = []
    for r in runs:
        exp_id = client.get_run(r.evaluated_in).info.experiment_id
        found = client.search_runs([exp_id], f"tags.`mlflow.parentRunId` = '{r.evaluated_in}' and "
                                             "tags.`rankbrew.stage` = 'evaluate'", max_results=1)
        if not found:
            raise SystemExit(f"pipeline run {r.evaluated_in} has eval runs but no evaluate stage run")
        out.append(found[0])
    return out


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for(url: str, timeout_s: float, server: subprocess.Popen) -> None:
    """Poll ``url`` until it answers 200; fail early when the server exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"mlflow ui exited with code {server.returncode} before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"mlflow ui did not answer {url} within {timeout_s:.0f} s")


def main() -> None:
    local = load_config("local")
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tracking-uri", default=default_tracking_uri(REPO / local.run.work_dir),
                    help="the MLflow store (default: runs/local/mlflow.db of this checkout)")
    ap.add_argument("--experiment", default=local.run.name, help="default: the local profile's run.name")
    ap.add_argument("--runs", nargs=2, metavar="RUN_ID", default=[], help="two pipeline run ids (A B)")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "img" / "mlflow-compare.png")
    ap.add_argument("--window-size", default="1600,2400",
                    help="Chromium's WIDTH,HEIGHT in pixels (2400 high: run details, params, metrics, artifacts)")
    ap.add_argument("--host", default="127.0.0.2",
                    help="loopback address to serve on; not 127.0.0.1 or localhost, where MLflow 3.x opens "
                         "its assistant panel over the page on first load")
    ap.add_argument("--wait-ms", type=int, default=20000,
                    help="Chromium's --virtual-time-budget: how long the page may load before the shot")
    args = ap.parse_args()

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("chromium not found on PATH: install it (Debian: `apt-get install chromium`)")
    client = cmp.client_for(args.tracking_uri)  # refuses a missing sqlite file
    stages = evaluate_stage_runs(client, args.experiment, args.runs)
    query = urllib.parse.urlencode({"runs": json.dumps([r.info.run_id for r in stages], separators=(",", ":")),
                                    "experiments": json.dumps(sorted({r.info.experiment_id for r in stages}), separators=(",", ":"))})
    port = free_port(args.host)
    origin = f"http://{args.host}:{port}"
    url = f"{origin}/#/compare-runs?{query}"
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    # the security middleware refuses other hosts and cross-origin POSTs: allow exactly this origin
    server = subprocess.Popen([str(mlflow_bin), "ui", "--backend-store-uri", args.tracking_uri,
                               "--host", args.host, "--port", str(port), "--workers", "1",
                               "--allowed-hosts", f"{args.host}:{port}", "--cors-allowed-origins", origin],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(f"{origin}/health", 300, server)  # a minute or more on a busy 2-core machine
        args.out.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        f"--window-size={args.window_size}", f"--virtual-time-budget={args.wait_ms}",
                        f"--screenshot={args.out.resolve()}", url],
                       check=True, timeout=180, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # mlflow ui forks uvicorn: stop the whole group
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
    print(f"{args.out}  <- {url}")
    for r in stages:
        print(f"  evaluate stage run {r.info.run_id} of pipeline run {r.data.tags.get('mlflow.parentRunId')}")


if __name__ == "__main__":
    main()
