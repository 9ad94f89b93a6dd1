"""Platt recalibration of the teacher's P(yes): ``p = sigmoid(slope * margin + intercept)``.

Why: training prompts are built around positives (``promptify.negative_only_prompt_rate``),
so the teacher sees ~35% positives while the logs hold ~12%; its raw P(yes) is shifted
up (measured: mean P(yes) 0.33 against a 0.12 positive rate, ECE 0.21). Ranking does not
care (AUC is invariant to a monotone map) but serving thresholds and calibration claims
do. Two parameters fitted on held-aside validation candidates restore the base rate
without touching the model. Stored as ``calibration.json`` beside the weights, so every
loader of the model directory (the scoring engine, the MLflow pyfunc, Serve) applies it.

A calibration must never do harm: the fit is scikit-learn's L2-regularised logistic
regression (lbfgs) on standardised margins, and a fit that is not finite, not sane
(:data:`MAX_ABS_SLOPE`, :data:`MAX_ABS_INTERCEPT`, a slope below :data:`MIN_SLOPE`) or no
better than the raw P(yes) on its own data is refused: the identity is saved instead,
with ``status="identity"`` and the ``reason``, and a :class:`CalibrationWarning`. (A
hand-written Newton loop once diverged on a small real log: slope 1,937.7, intercept
456,521,739, every calibrated P(yes) 1.000.)
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np

CALIBRATION_FILE = "calibration.json"

#: Bounds of a sane Platt map on ``margin = logit_yes - logit_no``: a slope past 50 or an
#: intercept past 50 (in logits) is a divergence, not a calibration.
MAX_ABS_SLOPE = 50.0
MAX_ABS_INTERCEPT = 50.0
#: A slope at or below this flattens (or reverses) the ranking the model learned.
MIN_SLOPE = 1e-3


class CalibrationWarning(UserWarning):
    """A calibration fit or file was refused; scores are uncalibrated P(yes)."""


@dataclass(frozen=True)
class Calibration:
    """``p = sigmoid(slope * margin + intercept)``, ``margin = logit_yes - logit_no``.

    ``status``: ``"fitted"``, or ``"identity"`` when a fit was refused (``reason`` says
    why; slope 1, intercept 0: the raw P(yes)). Files written before ``status`` existed
    load as ``"fitted"``."""

    slope: float = 1.0
    intercept: float = 0.0
    n: int = 0
    positive_rate: float = float("nan")
    fitted_on: str = ""
    status: str = "fitted"
    reason: str = ""

    def apply(self, margins: np.ndarray) -> np.ndarray:
        z = self.slope * np.asarray(margins, dtype=np.float64) + self.intercept
        return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)

    def insanity(self) -> str | None:
        """Why these parameters are not a sane calibration, or ``None`` when they are."""
        if not (np.isfinite(self.slope) and np.isfinite(self.intercept)):
            return f"slope {self.slope} / intercept {self.intercept} are not finite"
        if abs(self.slope) > MAX_ABS_SLOPE or abs(self.intercept) > MAX_ABS_INTERCEPT:
            return (f"slope {self.slope:.4g} / intercept {self.intercept:.4g} outside "
                    f"|slope| <= {MAX_ABS_SLOPE:g}, |intercept| <= {MAX_ABS_INTERCEPT:g}")
        if self.slope <= MIN_SLOPE:
            return f"slope {self.slope:.4g} <= {MIN_SLOPE:g} would flatten or reverse the ranking"
        return None

    def save(self, model_dir: Path) -> Path:
        path = Path(model_dir) / CALIBRATION_FILE
        path.write_text(json.dumps(asdict(self), indent=1))
        return path

    @classmethod
    def load(cls, model_dir: Path) -> Calibration | None:
        """The calibration saved in ``model_dir``, or ``None`` (raw P(yes)): also, with a
        :class:`CalibrationWarning`, when the saved parameters are not sane (a file from
        before the guards)."""
        path = Path(model_dir) / CALIBRATION_FILE
        if not path.exists():
            return None
        raw = json.loads(path.read_text())
        try:
            cal = cls(**raw)
        except TypeError as err:
            raise ValueError(f"{path}: {err}; expected keys {[f.name for f in fields(cls)]}") from None
        if not (np.isfinite(cal.slope) and np.isfinite(cal.intercept)):
            raise ValueError(f"{path}: slope and intercept must be finite numbers, got "
                             f"{cal.slope}, {cal.intercept}: delete the file to score uncalibrated")
        problem = cal.insanity()
        if problem:
            warnings.warn(f"{path}: {problem}; scoring uncalibrated (refit, or delete the file)",
                          CalibrationWarning, stacklevel=2)
            return None
        return cal


def log_loss_of_logits(z: np.ndarray, y: np.ndarray) -> float:
    """Mean log loss of ``P(yes) = sigmoid(z)`` against 0/1 ``y``, exact for any ``z``."""
    return float(np.mean(np.where(y > 0.5, np.logaddexp(0.0, -z), np.logaddexp(0.0, z))))


def fit_platt(margins: np.ndarray, labels: np.ndarray, fitted_on: str = "",
              c: float = 1.0) -> Calibration:
    """Platt calibration of ``labels`` on ``margins``: scikit-learn's ``LogisticRegression``
    (L2, strength ``1 / c``, lbfgs) on standardised margins, mapped back to margin units,
    so the regularisation does not depend on the margins' scale and separable inputs stay
    finite.

    Returns the identity (``status="identity"``, the ``reason``, a
    :class:`CalibrationWarning`) when there is nothing to fit (one class, constant
    margins) or the fit is refused: not finite, outside the sane bounds, a slope at or
    below :data:`MIN_SLOPE`, or a log loss on the fit data worse than the raw P(yes)'s.

    Raises ``ValueError`` for mismatched or empty inputs, labels other than 0/1, and
    non-finite margins."""
    m = np.asarray(margins, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=np.float64).ravel()
    if m.shape != y.shape or m.size == 0:
        raise ValueError(f"fit_platt: {m.size} margins and {y.size} labels: need the same, > 0")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("fit_platt: labels must be 0/1")
    if not np.isfinite(m).all():
        raise ValueError(f"fit_platt: {int((~np.isfinite(m)).sum())} margins are not finite")
    base = Calibration(n=int(m.size), positive_rate=float(y.mean()), fitted_on=fitted_on)

    def identity(reason: str) -> Calibration:
        warnings.warn(f"fit_platt ({fitted_on or 'unnamed fit'}, n={m.size}): {reason}; "
                      "using the identity (uncalibrated P(yes))", CalibrationWarning, stacklevel=3)
        return replace(base, status="identity", reason=reason)

    if y.min() == y.max():
        return identity(f"every label is {int(y[0])}: one class, nothing to calibrate against")
    sd = float(m.std())
    if not sd > 1e-12 * max(1.0, float(np.abs(m).max())):
        return identity(f"every margin is {m[0]:.6g}: no spread to fit a slope on")

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    mu = float(m.mean())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        model = LogisticRegression(C=c, solver="lbfgs", max_iter=1000)
        model.fit(((m - mu) / sd)[:, None], y.astype(np.int64))
    if any(issubclass(w.category, ConvergenceWarning) for w in caught):
        return identity("lbfgs did not converge")
    w, b = float(model.coef_[0, 0]), float(model.intercept_[0])
    fit = replace(base, slope=w / sd, intercept=b - w * mu / sd)
    problem = fit.insanity()
    if problem:
        return identity(f"refused fit: {problem}")
    calibrated, raw = log_loss_of_logits(fit.slope * m + fit.intercept, y), log_loss_of_logits(m, y)
    if calibrated > raw:
        return identity(f"refused fit: log loss {calibrated:.4g} on its own data is worse than "
                        f"uncalibrated {raw:.4g}")
    return fit
