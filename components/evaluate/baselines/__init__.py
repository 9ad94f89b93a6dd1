"""ID-based baselines: what the language model has to beat, task by task.

Four baselines, each fitted on the **train split only** and scoring the evaluation
candidate lists of the promptify stage (one score per entry of ``candidate_item_ids``):

* ``popularity``: per task, one point-in-time popularity count of the candidate item
  (that task's positives, all events, or engaged events; all time or the last 1 / 7
  days; or a smoothed positive rate), the variant chosen per task by its AUC on the
  training lists. No learned weights.
* ``lightgbm``: one gradient-boosted tree model per task (the analogue of a
  task-specific production ranker) on engineered features: point-in-time counts and
  rates (member and item enter through these target encodings, not as raw ids unless
  ``lgb_id_features``), recency, item age / expiry, attribute affinities and
  profile-item matches (skills, location, industry, seniority).
* ``lightgbm_ids``: the classic ID model: the same per-task LightGBM on member and item
  ids (categorical) plus the point-in-time count / rate features only
  (:data:`ID_COUNT_FEATURES`; no dates, ages, affinities or profile matches).
* ``sasrec``: a tiny causal transformer over the member's engaged item sequence
  (SASRec; item = id embedding + hashed attribute embeddings, plus the event's action),
  pretrained with next-item BCE, then fine-tuned per task: a learned task embedding
  scales and shifts the sequence representation (FiLM), trained with BCE on the
  training lists of every task, so dismiss / hide tasks get their own sign. An item
  unseen in training scores through its attributes (item type, company, topic, ...).

**Same information as the language model.** A question about (member, candidate) with
cutoff ``c`` sees every event strictly before ``c``, the member's and everybody's, and
nothing at or after it: every count is an as-of join with ``timestamp < c`` (tested:
features and scores do not change when events at or after the cutoff are added).
Training questions are built like the evaluation lists: the training period is cut
into windows as long as the validation window; per (member, task, window) the
candidates are the member's task events in it, the cutoff is the first of them, and
labels come from :func:`components.promptify.examples.label_events` (plus the same
optional ``relabel`` as the prepare stage, for instruction steering). Tasks that
sample negatives get popularity-weighted negatives among items alive at the cutoff,
as promptify samples them. Held-out tasks are trained too: for them the baselines are
the upper bar "trained on that task's data", not a zero-shot result.

Plain Python, Polars, LightGBM and PyTorch; no Ray, no MLflow. Deterministic for a
given ``BaselineConfig.seed``.
"""

from __future__ import annotations

from components.evaluate.baselines.data import (
    BASELINES,
    DAY_US,
    LIGHTGBM_BASELINES,
    SASREC_ATTRIBUTES,
    Baseline,
    BaselineConfig,
    BaselineData,
    training_lists,
)
from components.evaluate.baselines.data import _require as _require
from components.evaluate.baselines.data import _sample_negatives as _sample_negatives
from components.evaluate.baselines.features import (
    ID_COUNT_FEATURES,
    SENIORITY_RANK,
    feature_names,
    id_count_features,
    point_in_time_features,
)
from components.evaluate.baselines.features import _counts_before as _counts_before
from components.evaluate.baselines.features import _profile_matches as _profile_matches
from components.evaluate.baselines.fit import _cap_lists as _cap_lists
from components.evaluate.baselines.fit import (
    eval_candidates,
    fit_baselines,
    score_baselines,
    score_lists,
)
from components.evaluate.baselines.lightgbm import LightGBMBaseline, fit_lightgbm
from components.evaluate.baselines.popularity import (
    POPULARITY_VARIANTS,
    PopularityBaseline,
    fit_popularity,
)
from components.evaluate.baselines.sasrec import SASRecBaseline, fit_sasrec

__all__ = [
    "BASELINES", "DAY_US", "LIGHTGBM_BASELINES", "ID_COUNT_FEATURES", "POPULARITY_VARIANTS", "SASREC_ATTRIBUTES",
    "SENIORITY_RANK", "Baseline", "BaselineConfig", "BaselineData", "LightGBMBaseline",
    "PopularityBaseline", "SASRecBaseline", "eval_candidates", "feature_names", "fit_baselines",
    "fit_lightgbm", "fit_popularity", "fit_sasrec", "id_count_features", "point_in_time_features",
    "score_baselines", "score_lists", "training_lists",
]
