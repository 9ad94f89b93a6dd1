"""Analyses of a finished pipeline run (issue 6 item 5), the compute behind ``rankbrew analyze``.

| analysis | module | question | cost |
|---|---|---|---|
| ``context_budget`` | ``history_budget`` | does the trained teacher rank better with more history? The evaluation prefixes are re-rendered by promptify's own code (``rendering``) with other history token budgets and scored | scoring only |
| ``data_amount`` | ``sweeps`` | AUC vs the share of the training prompts, at equal steps | one training per share |
| ``model_size`` | ``sweeps`` | AUC vs model width (parameters), at equal steps | one training per width |
| ``steering`` | ``instruction_steering`` | does the ranking move the way the instruction says? The steering tasks' lists scored under their own instruction and under their base task's | scoring only |

``runner.run_analyses`` runs them by name; ``context`` holds what each gets and returns,
``scoring`` the engine and per-task AUC they share.

The training sweeps run in this process (no Ray): ``components.train.train`` from a
random init, answer-token SFT with the profile's ``train.sft`` settings, then the
serving engine scores a fixed sample of validation prompts. Settings: the profile's
``analyses:`` section (``components.config.AnalysesConfig``).

Plain Python; no Ray, no MLflow. An analysis reads the run through
:class:`~components.analyses.context.AnalysedRun` (the stage directories, the teacher,
the evaluation prompts); finding a run in the MLflow store and logging each analysis as
an MLflow run is the wiring in ``pipelines/analyses.py``. Its own package, not part of
``components.evaluate``: the evaluate and align stages hash that package into their
cache keys, and an edit to an analysis must not rerun them. See docs/evaluation.md,
"Analyses (issue 6 item 5)".

Names are imported lazily (PEP 562), as in ``components.train``.
"""

from __future__ import annotations

from components.lazy import lazy_exports

_EXPORTS = {
    "context": ("AnalysedRun", "AnalysisContext", "AnalysisError", "AnalysisResult", "RunInputs",
                "eval_rows", "write_csv"),
    "history_budget": ("COLD_START_MAX_EVENTS", "context_budget"),
    "instruction_steering": ("criterion_utility", "shift_correlation", "shift_correlation_null",
                             "steering", "steering_base_task"),
    "rendering": ("PrefixRenderer",),
    "runner": ("RUNNERS", "analyses_to_run", "run_analyses"),
    "scoring": ("load_engine", "nanmean", "per_task_auc", "score_margins"),
    "sweeps": ("SweepData", "data_amount", "model_size", "sweep_train_config", "train_sweep_point",
               "width_model_config"),
}
__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
