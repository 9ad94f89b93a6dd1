"""Load test of the ranker's Serve app on localhost: p50/p95/p99 and items/s (issue 18).

Starts the app in this process (a local Ray, Serve on 127.0.0.1) on the profile's
registered model (the ranker, else the teacher; ``make run`` first), then for each
(concurrency, candidates) pair runs closed-loop clients for ``--seconds``: each client
sends a ``member_id`` request of the run's test members with N catalogue items and waits
for the answer. Served with ``--history-tokens`` (default 1,024) of history per prompt.
Prints a markdown table (docs/benchmarks.md) and the status counts (0 errors expected).

    python -m benchmarks.bench_serve --profile local --concurrency 1 4 16 --candidates 100 500

Bounded: localhost only, a fixed duration per cell.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time


def _percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def run_cell(url: str, requests_: list[dict], concurrency: int, seconds: float) -> dict:
    import requests

    lat: list[float] = []
    statuses: dict[int, int] = {}
    items = [0]
    lock, stop = threading.Lock(), threading.Event()

    def client(k: int) -> None:
        s = requests.Session()
        i = k
        while not stop.is_set():
            body = requests_[i % len(requests_)]
            i += concurrency
            t0 = time.perf_counter()
            try:
                r = s.post(url, json=body, timeout=120)
                code = r.status_code
            except requests.RequestException:
                code = -1
            dt = time.perf_counter() - t0
            with lock:
                statuses[code] = statuses.get(code, 0) + 1
                if code == 200:
                    lat.append(dt)
                    items[0] += len(body["candidates"])

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"requests": sum(statuses.values()), "statuses": statuses, "p50_ms": _percentile(lat, 50) * 1e3,
            "p95_ms": _percentile(lat, 95) * 1e3, "p99_ms": _percentile(lat, 99) * 1e3,
            "mean_ms": statistics.fmean(lat) * 1e3, "items_per_s": items[0] / wall}


def main(argv: list[str] | None = None) -> None:
    import logging

    import polars as pl
    import ray
    from ray import serve

    from benchmarks.bench_scoring import machine
    from components.serve.registry import resolve_served, run_inputs
    from pipelines import serve_ctl
    from pipelines.dag import MANIFEST

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="local")
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    help="a profile override, e.g. --set run.work_dir=/path/to/runs/local")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--candidates", type=int, nargs="+", default=[100, 500])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--history-tokens", type=int, default=1024)
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--port", type=int, default=8123)
    a = ap.parse_args(argv)

    import yaml

    overrides = {k: yaml.safe_load(v) for k, v in (x.split("=", 1) for x in a.overrides)}
    target = serve_ctl.target_from_profile(a.profile, overrides, port=a.port, scorer_replicas=a.replicas)
    target.api = {"max_candidates": max(a.candidates)}
    target.options = {"scorer_max_queued": 256}
    uri, version, alias = serve_ctl.pinned(target)
    served = resolve_served(uri, target.tracking_uri, target.work_dir / "serve" / "models",
                            target.work_dir / "artifacts")
    inputs = run_inputs(served.stage_dir, MANIFEST)
    ex = pl.read_parquet(inputs["promptify"] / "examples").filter(pl.col("split") == "test")
    catalogue = pl.read_parquet(inputs["prepare"] / "items_text.parquet")
    members = ex.sort("n_prior_events", descending=True).unique("member_id", keep="first", maintain_order=True)
    print(f"# {machine()}; model {uri} (alias {alias}); {a.replicas} scorer replicas; "
          f"history budget {a.history_tokens} tokens")

    ray.init(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": a.port})
        args = serve_ctl.app_args(target, uri, alias)
        args["scorer"]["history_token_budget"] = a.history_tokens
        from pipelines.serve_app import APP_NAME, build_app

        serve.run(build_app(args), name=APP_NAME, route_prefix="/", blocking=False)
        serve_ctl._wait_version(target, version, 600)
        url = f"{target.url}/v1/score"
        print("| concurrency | candidates | requests | p50 ms | p95 ms | p99 ms | items/s | non-200 |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|")
        for n in a.candidates:
            reqs = []
            for k, row in enumerate(members.head(64).iter_rows(named=True)):
                items = catalogue.filter(pl.col("item_type") == catalogue["item_type"][k % catalogue.height])
                ids = items.sample(min(n, items.height), seed=k)["item_id"].to_list()
                ids = (ids * (n // max(1, len(ids)) + 1))[:n] if len(ids) < n else ids
                reqs.append({"task": row["task_id"], "member_id": row["member_id"],
                             "candidates": list(dict.fromkeys(ids)), "now": row["cutoff"].isoformat()})
            run_cell(url, reqs[:2], 1, 3.0)  # warm-up
            for c in a.concurrency:
                r = run_cell(url, reqs, c, a.seconds)
                bad = {k: v for k, v in r["statuses"].items() if k != 200}
                print(f"| {c} | {n} | {r['requests']} | {r['p50_ms']:.0f} | {r['p95_ms']:.0f} | "
                      f"{r['p99_ms']:.0f} | {r['items_per_s']:.0f} | {bad or 0} |", flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
