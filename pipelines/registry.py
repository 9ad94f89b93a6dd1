"""MLflow model-registry adapter: the teacher (and later the served student) as a pyfunc.

A registered ``rankbrew-teacher`` version loads with ``mlflow.pyfunc.load_model(
"models:/rankbrew-teacher/1")`` and scores a DataFrame with ``prefix`` and ``candidates``
(a list of candidate texts per row), returning P(yes) per candidate: the same
multi-item scoring engine the evaluation stage and the server use.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

import mlflow.pyfunc
import pandas as pd


def pip_requirements() -> list[str]:
    """Pinned requirements of the scorer (given explicitly: MLflow's inference imports and
    probes the environment, slow and noisy for a model that needs only these)."""
    out = []
    for dist in ("torch", "transformers", "tokenizers", "numpy", "pandas"):
        try:
            out.append(f"{dist}=={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            out.append(dist)
    return out


class TeacherScorer(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper of :class:`components.model.engine.ScoringEngine`."""

    def load_context(self, context: Any) -> None:
        from components.model.engine import ScoringEngine

        self.engine = ScoringEngine.from_pretrained(context.artifacts["model"])

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
                ) -> list[list[float]]:
        for col in ("prefix", "candidates"):
            if col not in model_input.columns:
                raise ValueError(f"input lacks column {col!r} (has {list(model_input.columns)}): "
                                 f"pass a DataFrame with 'prefix' (text) and 'candidates' (list "
                                 f"of texts) per row")
        requests = [(p, list(c)) for p, c in zip(model_input["prefix"], model_input["candidates"],
                                                  strict=True)]
        # an optional task_id column picks each row's calibration offset
        tasks = ([None if pd.isna(t) else str(t) for t in model_input["task_id"]]
                 if "task_id" in model_input.columns else None)
        return [[float(x) for x in probs] for probs in self.engine.score_batch(requests, tasks=tasks)]
