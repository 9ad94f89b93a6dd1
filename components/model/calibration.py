"""Platt recalibration of the teacher's P(yes): ``p = sigmoid(slope * margin + intercept)``.

Why: training prompts are built around positives (``promptify.negative_only_prompt_rate``),
so the teacher sees ~35% positives while the logs hold ~12%; its raw P(yes) is shifted
up (measured: mean P(yes) 0.33 against a 0.12 positive rate, ECE 0.21). Ranking does not
care (AUC is invariant to a monotone map) but serving thresholds and calibration claims
do. Two parameters fitted on held-aside validation candidates restore the base rate
without touching the model. Stored as ``calibration.json`` beside the weights, so every
loader of the model directory (the scoring engine, the MLflow pyfunc, Serve) applies it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

CALIBRATION_FILE = "calibration.json"


@dataclass(frozen=True)
class Calibration:
    """``p = sigmoid(slope * margin + intercept)``, ``margin = logit_yes - logit_no``."""

    slope: float = 1.0
    intercept: float = 0.0
    n: int = 0
    positive_rate: float = float("nan")
    fitted_on: str = ""

    def apply(self, margins: np.ndarray) -> np.ndarray:
        z = self.slope * np.asarray(margins, dtype=np.float64) + self.intercept
        return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)

    def save(self, model_dir: Path) -> Path:
        path = Path(model_dir) / CALIBRATION_FILE
        path.write_text(json.dumps(asdict(self), indent=1))
        return path

    @classmethod
    def load(cls, model_dir: Path) -> Calibration | None:
        """The calibration saved in ``model_dir``, or ``None`` (raw P(yes))."""
        path = Path(model_dir) / CALIBRATION_FILE
        if not path.exists():
            return None
        raw = json.loads(path.read_text())
        try:
            cal = cls(**raw)
        except TypeError as err:
            raise ValueError(f"{path}: {err}; expected keys {list(asdict(cls()))}") from None
        if not (np.isfinite(cal.slope) and np.isfinite(cal.intercept)):
            raise ValueError(f"{path}: slope and intercept must be finite numbers, got "
                             f"{cal.slope}, {cal.intercept}: delete the file to score uncalibrated")
        return cal


def fit_platt(margins: np.ndarray, labels: np.ndarray, fitted_on: str = "",
              l2: float = 1e-3, iters: int = 50) -> Calibration:
    """Logistic regression of ``labels`` on ``margins`` (Newton's method, a tiny L2 on
    the slope so that separable or constant inputs stay finite)."""
    m = np.asarray(margins, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=np.float64).ravel()
    if m.shape != y.shape or m.size == 0:
        raise ValueError(f"fit_platt: {m.size} margins and {y.size} labels: need the same, > 0")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("fit_platt: labels must be 0/1")
    x = np.stack([m, np.ones_like(m)], axis=1)
    w = np.array([1.0, 0.0])
    reg = np.diag([l2 * m.size, 1e-9 * m.size])
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-(x @ w)))
        grad = x.T @ (p - y) + reg @ w
        hess = x.T @ (x * (p * (1 - p))[:, None]) + reg
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    return Calibration(float(w[0]), float(w[1]), int(m.size), float(y.mean()), fitted_on)
