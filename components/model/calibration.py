"""Platt recalibration of the teacher's P(yes): ``p = sigmoid(slope * margin + intercept)``.

Why: training prompts are built around positives (``promptify.negative_only_prompt_rate``),
so the teacher sees ~35% positives while the logs hold ~12%; its raw P(yes) is shifted
up (measured: mean P(yes) 0.33 against a 0.12 positive rate, ECE 0.21). Ranking does not
care (AUC is invariant to a monotone map) but serving thresholds and calibration claims
do. Two parameters fitted on held-aside validation candidates restore the base rate
without touching the model. Stored as ``calibration.json`` beside the weights, so every
loader of the model directory (the scoring engine, the MLflow pyfunc, Serve) applies it.

Per-task intercepts (``fit_platt(..., tasks=...)``): one slope, a global intercept and an
offset per trained task, fitted together (the offsets L2-shrunk towards 0, so a task with
few candidates stays near the global map). Why: one model answers tasks whose positive
rates differ several-fold, and a single intercept leaves each task's P(yes) off by its
own amount even when the pooled mean is right. A task without an offset (held out, or a
free instruction at serving time) gets the global map: a zero-shot task's labels never
shape a parameter.

Per-task slopes (``fit_platt(..., task_slopes=True)``): also a slope offset per task
(shrunk towards the global slope). Why: a distilled student's margins have a scale of
their own per task (on the 2026-12-05 seed-0 local run's validation sample,
``benchmarks.calibration_families``: the int8 student's out-of-fold ECE 0.0363 with offsets
only, 0.0236 with per-task slopes; the teacher's 0.0149 and 0.0231: the extra parameters
overfit it). So :func:`fit_calibration` fits both
families and keeps the one with the lower out-of-fold log loss. A task whose own slope
would flatten or reverse its ranking shares the global slope instead, and when the global
slope then fails its bounds the offsets-only fit is used: calibration never reverses a
task's ranking.

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
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
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
    task_offsets: dict[str, float] = field(default_factory=dict)
    #: per-task slope offsets: a task's slope is ``slope + task_slopes[task]``
    task_slopes: dict[str, float] = field(default_factory=dict)

    def slope_for(self, task: str | None = None) -> float:
        """The slope applied to ``task``'s margins (the global one without an offset)."""
        return self.slope + (self.task_slopes.get(task, 0.0) if task is not None else 0.0)

    def logits(self, margins: np.ndarray, task: str | None = None) -> np.ndarray:
        """Calibrated logits ``slope(task) * margin + intercept (+ the task's offset)``."""
        return (self.slope_for(task) * np.asarray(margins, dtype=np.float64) + self.intercept
                + (self.task_offsets.get(task, 0.0) if task is not None else 0.0))

    def logits_per_task(self, margins: np.ndarray, tasks: Sequence[str] | np.ndarray) -> np.ndarray:
        """:meth:`logits` with one task id per margin (vectorised over mixed tasks)."""
        names = [str(t) for t in np.asarray(tasks, dtype=object).ravel()]
        m = np.asarray(margins, dtype=np.float64)
        return (self.slope + np.array([self.task_slopes.get(t, 0.0) for t in names])) * m \
            + self.intercept + np.array([self.task_offsets.get(t, 0.0) for t in names])

    def apply(self, margins: np.ndarray, task: str | None = None) -> np.ndarray:
        """Calibrated P(yes), float32; ``task`` picks its offset (none: the global map)."""
        return (1.0 / (1.0 + np.exp(-self.logits(margins, task)))).astype(np.float32)

    def insanity(self) -> str | None:
        """Why these parameters are not a sane calibration, or ``None`` when they are."""
        if not (np.isfinite(self.slope) and np.isfinite(self.intercept)):
            return f"slope {self.slope} / intercept {self.intercept} are not finite"
        if abs(self.slope) > MAX_ABS_SLOPE or abs(self.intercept) > MAX_ABS_INTERCEPT:
            return (f"slope {self.slope:.4g} / intercept {self.intercept:.4g} outside "
                    f"|slope| <= {MAX_ABS_SLOPE:g}, |intercept| <= {MAX_ABS_INTERCEPT:g}")
        if self.slope <= MIN_SLOPE:
            return f"slope {self.slope:.4g} <= {MIN_SLOPE:g} would flatten or reverse the ranking"
        bad = {t: o for t, o in self.task_offsets.items() if not np.isfinite(o) or abs(o) > MAX_ABS_INTERCEPT}
        if bad:
            return f"task offsets {bad} are not finite or outside |offset| <= {MAX_ABS_INTERCEPT:g}"
        flat = {t: self.slope + o for t, o in self.task_slopes.items()
                if not np.isfinite(o) or not MIN_SLOPE < self.slope + o <= MAX_ABS_SLOPE}
        if flat:
            return (f"task slopes {flat} outside ({MIN_SLOPE:g}, {MAX_ABS_SLOPE:g}]: they would "
                    f"flatten or reverse those tasks' rankings, or diverge")
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
              c: float = 1.0, tasks: Sequence[str] | np.ndarray | None = None,
              task_slopes: bool = False) -> Calibration:
    """Platt calibration of ``labels`` on ``margins``: scikit-learn's ``LogisticRegression``
    (L2, strength ``1 / c``, lbfgs) on standardised margins, mapped back to margin units,
    so the regularisation does not depend on the margins' scale and separable inputs stay
    finite.

    Returns the identity (``status="identity"``, the ``reason``, a
    :class:`CalibrationWarning`) when there is nothing to fit (one class, constant
    margins) or the fit is refused: not finite, outside the sane bounds, a slope at or
    below :data:`MIN_SLOPE`, or a log loss on the fit data worse than the raw P(yes)'s.

    Raises ``ValueError`` for mismatched or empty inputs, labels other than 0/1, and
    non-finite margins.

    ``tasks`` (one id per margin): also an offset per task, fitted in the same regression
    as one-hot columns (shrunk by the same L2), so the global intercept is the map for a
    task it has not seen. A task whose candidates are all one class gets no offset.
    ``task_slopes`` (with ``tasks``): also a slope offset per such task (the standardised
    margin times the task's one-hot column, shrunk the same way); a task whose slope would
    come out at or below :data:`MIN_SLOPE` (its validation ranking inverted) is refitted
    without one, on the global slope, rather than refusing the whole fit; when the global
    slope itself then fails the bounds, the offsets-only fit is returned."""
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
    x = ((m - mu) / sd)[:, None]
    names: list[str] = []
    onehot = None
    if tasks is not None:
        t = np.asarray(tasks, dtype=object).ravel()
        if t.shape != m.shape:
            raise ValueError(f"fit_platt: {t.size} task ids for {m.size} margins: need one per margin")
        # a one-class task would push its offset to the penalty's edge: it gets none
        names = sorted(str(k) for k in set(t.tolist()) if 0 < y[t == k].mean() < 1)
        onehot = np.stack([(t == k).astype(np.float64) for k in names], axis=1) if names else None
    k = len(names)

    def solve(sloped: list[str]) -> Calibration | str:
        """The fit with a slope offset for the tasks in ``sloped``, or why lbfgs failed."""
        cols = [x] + ([onehot] if onehot is not None else [])
        idx = [names.index(n) for n in sloped]
        if idx:
            assert onehot is not None
            cols.append(onehot[:, idx] * x[:, :1])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            model = LogisticRegression(C=c, solver="lbfgs", max_iter=1000)
            model.fit(np.concatenate(cols, axis=1), y.astype(np.int64))
        if any(issubclass(w.category, ConvergenceWarning) for w in caught):
            return "lbfgs did not converge"
        w, b = float(model.coef_[0, 0]), float(model.intercept_[0])
        dw = dict(zip(sloped, model.coef_[0, 1 + k:], strict=True))
        # back to margin units: dw_t * (m - mu) / sd = (dw_t / sd) * m - dw_t * mu / sd, the
        # task's shift joining its offset
        offsets = {n: float(o - dw.get(n, 0.0) * mu / sd) for n, o in zip(names, model.coef_[0, 1:1 + k], strict=True)}
        return replace(base, slope=w / sd, intercept=b - w * mu / sd, task_offsets=offsets,
                       task_slopes={n: float(v / sd) for n, v in dw.items()})

    sloped = list(names) if task_slopes else []
    while True:
        fit = solve(sloped)
        if isinstance(fit, str):
            return identity(fit)
        # a task whose own slope would flatten or reverse its ranking shares the global one
        flat = [n for n, v in fit.task_slopes.items() if fit.slope + v <= MIN_SLOPE]
        if not flat:
            break
        sloped = [n for n in sloped if n not in flat]
    if task_slopes and fit.insanity():  # e.g. the global slope pulled below 0: offsets only
        return fit_platt(m, y, fitted_on, c, tasks, task_slopes=False)
    problem = fit.insanity()
    if problem:
        return identity(f"refused fit: {problem}")
    z = fit.logits(m) if tasks is None else fit.logits_per_task(m, tasks)
    calibrated, raw = log_loss_of_logits(z, y), log_loss_of_logits(m, y)
    if calibrated > raw:
        return identity(f"refused fit: log loss {calibrated:.4g} on its own data is worse than "
                        f"uncalibrated {raw:.4g}")
    return fit


def out_of_fold_probabilities(margins: np.ndarray, labels: np.ndarray, groups: Sequence[str] | np.ndarray,
                              tasks: Sequence[str] | np.ndarray | None = None, folds: int = 2,
                              seed: int = 0, task_slopes: bool = False) -> np.ndarray:
    """Calibrated P(yes) of each margin from a :func:`fit_platt` that did not see its group.

    Groups (members) are dealt into ``folds`` folds at random (``seed``); each fold is
    scored by the fit on the others. Why: an ECE measured on the data its calibration was
    fitted on is optimistic, the more so the more parameters (an offset per task); a gate
    on calibration reads this one. A fold whose fit is refused is scored by the identity,
    as a served model would be."""
    m = np.asarray(margins, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=np.float64).ravel()
    g = np.asarray(groups, dtype=object).ravel()
    t = None if tasks is None else np.asarray(tasks, dtype=object).ravel()
    if not (m.shape == y.shape == g.shape) or (t is not None and t.shape != m.shape):
        raise ValueError(f"out_of_fold_probabilities: {m.size} margins, {y.size} labels, {g.size} "
                         f"groups{'' if t is None else f', {t.size} tasks'}: need one of each per margin")
    names = np.array(sorted(set(g.tolist()), key=str), dtype=object)
    fold_of = dict(zip(names.tolist(), np.random.default_rng(seed).permutation(names.size) % folds, strict=True))
    fold = np.array([fold_of[x] for x in g.tolist()], dtype=np.int64)
    out = np.empty(m.size, dtype=np.float64)
    for k in range(folds):
        test, train = fold == k, fold != k
        if not test.any():
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CalibrationWarning)
            cal = (fit_platt(m[train], y[train], f"fold {k}", tasks=None if t is None else t[train],
                             task_slopes=task_slopes)
                   if train.any() else Calibration(status="identity"))
        z = cal.logits(m[test]) if t is None else cal.logits_per_task(m[test], t[test])
        out[test] = 1.0 / (1.0 + np.exp(-z))
    return out


@dataclass(frozen=True)
class CalibrationChoice:
    """What :func:`fit_calibration` fitted and why: the saved map, its out-of-fold P(yes)
    (the numbers a gate may read), and each family's out-of-fold P(yes) and log loss."""

    calibration: Calibration
    out_of_fold: np.ndarray
    family: str
    oof_log_loss: dict[str, float]
    oof_by_family: dict[str, np.ndarray] = field(default_factory=dict)


def fit_calibration(margins: np.ndarray, labels: np.ndarray, groups: Sequence[str] | np.ndarray,
                    tasks: Sequence[str] | np.ndarray, fitted_on: str = "") -> CalibrationChoice:
    """Fit both families (``"task_offsets"``: one slope, an intercept per task;
    ``"task_slopes"``: a slope per task too), score each out of fold by member, and keep the
    one with the lower out-of-fold log loss (a proper score, so not chosen for its ECE),
    refitted on all the data. Ties keep the simpler family."""
    y = np.asarray(labels, dtype=np.float64).ravel()
    oof = {fam: out_of_fold_probabilities(margins, y, groups, tasks, task_slopes=fam == "task_slopes")
           for fam in ("task_offsets", "task_slopes")}
    loss = {fam: log_loss_of_logits(np.log(np.clip(p, 1e-12, 1)) - np.log(np.clip(1 - p, 1e-12, 1)), y)
            for fam, p in oof.items()}
    family = "task_slopes" if loss["task_slopes"] < loss["task_offsets"] else "task_offsets"
    cal = fit_platt(margins, y, fitted_on=fitted_on, tasks=tasks, task_slopes=family == "task_slopes")
    if family == "task_slopes" and cal.status != "fitted":  # refused on all data: the simpler one
        family = "task_offsets"
        cal = fit_platt(margins, y, fitted_on=fitted_on, tasks=tasks)
    return CalibrationChoice(cal, oof[family], family, loss, oof)
