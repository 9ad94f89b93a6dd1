"""Shared fixtures: a real local Ray (started once per session), real MLflow stores."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def movielens_dir() -> Path | None:
    """MovieLens-100K: $RANKBREW_ML100K or ../shared/data/ml-100k beside the repo."""
    env = os.environ.get("RANKBREW_ML100K")
    p = Path(env) if env else REPO_ROOT.parent / "shared" / "data" / "ml-100k"
    return p if (p / "u.data").exists() else None


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
