"""Shared fixtures: a real local Ray (started once per session), real MLflow stores."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def movielens_location() -> Path:
    """Where MovieLens-100K should be: $RANKBREW_ML100K or ../shared/data/ml-100k."""
    env = os.environ.get("RANKBREW_ML100K")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data" / "ml-100k"


def movielens_dir() -> Path | None:
    """The MovieLens-100K directory, or None when it is absent."""
    p = movielens_location()
    return p if (p / "u.data").exists() else None


@pytest.fixture(scope="session")
def ml100k_dir() -> Path:
    """The unzipped ml-100k directory, or a skip that says how to get it."""
    path = movielens_dir()
    if path is None:
        pytest.skip(
            f"MovieLens-100K not found at {movielens_location()}: download it from "
            "https://grouplens.org/datasets/movielens/100k/, unzip it there or set "
            "RANKBREW_ML100K (never commit it: research-use licence)"
        )
    return path


@pytest.fixture(scope="session")
def ray_local():
    """One real local Ray for the whole session (starting one costs ~10 s on 2 cores)."""
    import logging

    import ray

    if not ray.is_initialized():
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            logging_level=logging.WARNING,
            runtime_env={"env_vars": {"MLFLOW_DISABLE_TELEMETRY": "true"}},
        )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_run(ray_local, tmp_path_factory):
    """(config, PipelineRun) of the tiny synthetic pipeline (tests/tiny_run.py), run once:
    the end-to-end test checks it, the serving tests serve its models."""
    from tests.tiny_run import run, tiny_config

    cfg = tiny_config(tmp_path_factory.mktemp("tiny") / "work")
    return cfg, run(cfg)
