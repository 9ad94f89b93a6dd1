"""The hidden preference model: named utility components, their weights, the ordered logit.

``utility = sum_c UTILITY_WEIGHTS[item_type][c] * component_c`` over :data:`COMPONENTS`;
an impression's outcome is the strongest action whose threshold ``utility + Logistic
noise`` reaches (:data:`ACTION_THRESHOLDS`). The same code labels the simulated events
and, through :func:`utility_components` / :func:`utility` / :func:`steering_weights`,
relabels any (member, item, time) pair of a generated world under other weights (the
instruction-steering tasks).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import polars as pl

from components.config import SyntheticWorldConfig
from components.data.synthetic.clock import DAY_US, Clock
from components.data.synthetic.encoding import (
    ItemArrays,
    MemberArrays,
    _lookup,
    encode_items,
    encode_members,
)
from components.data.synthetic.latents import _drift, _drift_params
from components.data.synthetic.vocabulary import (
    _ACTION_CODE,
    ACTIONS,
    IMPRESSION,
    ITEM_TYPE_INDEX,
    ITEM_TYPES,
    NEGATIVE_ACTIONS,
    POSITIVE_ACTIONS,
    SKILL_WORDS,
)

#: The named utility components, in a fixed order.
COMPONENTS: tuple[str, ...] = (
    "skills", "location", "seniority", "topic", "taste", "popularity", "recency", "drift",
    "intent",
)  # fmt: skip

#: utility = sum_c UTILITY_WEIGHTS[item_type][c] * component_c. Text-readable components
#: (skills, location, seniority, topic, intent) carry most of the weight; taste is read
#: from histories (and half of the ``about`` texts); popularity is what IDs learn best.
#: Do not mutate: pass ``weights=`` to :func:`utility` (see :func:`steering_weights`).
UTILITY_WEIGHTS: dict[str, dict[str, float]] = {
    "job": {"skills": 3.0, "location": 1.5, "seniority": 1.2, "topic": 0.8, "taste": 0.8,
            "popularity": 0.4, "recency": 0.6, "drift": 0.4, "intent": 1.0},
    "post": {"skills": 1.2, "location": 0.4, "seniority": 0.0, "topic": 1.5, "taste": 1.5,
             "popularity": 0.7, "recency": 1.0, "drift": 0.8, "intent": 0.0},
    "course": {"skills": 1.5, "location": 0.0, "seniority": 1.2, "topic": 1.2, "taste": 1.2,
               "popularity": 0.5, "recency": 0.3, "drift": 0.6, "intent": 0.0},
}  # fmt: skip

#: Ordered logit: with z = utility + Logistic(0, 1), the outcome is the strongest action
#: whose threshold z reaches; below the negative action's threshold it is that action
#: (dismiss / hide); otherwise "impression". Calibrated on the default world so that
#: roughly 7% of job impressions are apply/save (see docs/synthetic-world.md).
ACTION_THRESHOLDS: dict[str, dict[str, float]] = {
    "job": {"apply": 6.8, "save": 6.1, "view": 4.8, "dismiss": -1.3},
    "post": {"share": 7.0, "comment": 6.0, "like": 4.5, "view": 3.5, "hide": -2.5},
    "course": {"enroll": 4.6, "view": 3.2, "dismiss": -2.6},
}

#: Freshness decay (days) of the ``recency`` component, per item type.
RECENCY_TAU_DAYS = {"job": 14.0, "post": 3.0, "course": 90.0}
#: Weight of the second interest industry in ``taste`` (the first weighs 1).
SECOND_INTEREST = 0.6
#: ``location`` of a remote job for a member in another city.
REMOTE_LOCATION = 0.5


def _components(
    M: MemberArrays,
    I: ItemArrays,  # noqa: E741 - M and I read like the maths
    mi: np.ndarray,
    ii: np.ndarray,
    t_us: np.ndarray,
    clock: Clock,
    drift: tuple[np.ndarray, np.ndarray],
    names: Iterable[str] = COMPONENTS,
) -> dict[str, np.ndarray]:
    """Named components for (member mi, item ii, time t); index arrays broadcast together."""
    out: dict[str, np.ndarray] = {}
    names = tuple(names)
    itype = I.type[ii]
    if "skills" in names:
        inter = np.zeros(np.broadcast_shapes(np.shape(mi), np.shape(ii)), dtype=np.int64)
        for w in range(SKILL_WORDS):
            inter += np.bitwise_count(M.skills[mi, w] & I.skills[ii, w])
        out["skills"] = inter / np.maximum(I.n_skills[ii], 1)
    if "location" in names:
        same = (M.city[mi] == I.city[ii]) & (I.city[ii] >= 0)
        out["location"] = np.maximum(
            same.astype(np.float64), np.where(I.remote[ii], REMOTE_LOCATION, 0.0)
        )
    if "seniority" in names:
        diff = np.abs(I.target_seniority[ii] - M.seniority[mi])
        out["seniority"] = np.nan_to_num(1.0 - np.minimum(diff, 3.0) / 1.5, nan=0.0)
    if "topic" in names:
        out["topic"] = ((M.industry[mi] == I.industry[ii]) & (I.industry[ii] >= 0)).astype(
            np.float64
        )
    if "taste" in names:
        ind = I.industry[ii]
        out["taste"] = (ind == M.interest1[mi]) * 1.0 + (ind == M.interest2[mi]) * SECOND_INTEREST
    if "popularity" in names:
        out["popularity"] = np.broadcast_to(
            I.popularity[ii], np.broadcast_shapes(np.shape(mi), np.shape(ii))
        ).astype(np.float64)
    if "recency" in names:
        tau = np.array([RECENCY_TAU_DAYS[t] for t in ITEM_TYPES])[itype]
        age = np.maximum(t_us - I.created_us[ii], 0) / DAY_US
        out["recency"] = np.exp(-age / tau)
    if "drift" in names:
        frac = np.clip((t_us - clock.start_us) / clock.period_us, 0.0, 1.0)
        frac = np.broadcast_to(frac, np.shape(itype))
        ind_d = _drift(drift[0], np.maximum(I.industry[ii], 0), frac)
        top_d = _drift(drift[1], np.maximum(I.topic[ii], 0), frac)
        use_topic = I.topic[ii] >= 0
        out["drift"] = np.where(use_topic, top_d, np.where(I.industry[ii] >= 0, ind_d, 0.0))
    if "intent" in names:
        out["intent"] = (M.open_to_work[mi] & (itype == ITEM_TYPE_INDEX["job"])).astype(np.float64)
    return out


def _weight_matrix(weights: Mapping[str, Mapping[str, float]]) -> np.ndarray:
    """(item type, component) weights; an unknown name is an error naming the legal ones."""
    w = np.zeros((len(ITEM_TYPES), len(COMPONENTS)))
    for t, comps in weights.items():
        if t not in ITEM_TYPE_INDEX:
            raise ValueError(f"weights: unknown item type '{t}'; expected one of {ITEM_TYPES}")
        for c, v in comps.items():
            if c not in COMPONENTS:
                raise ValueError(
                    f"weights['{t}']: unknown component '{c}'; expected one of {COMPONENTS}"
                )
            w[ITEM_TYPE_INDEX[t], COMPONENTS.index(c)] = v
    return w


def _utility_from(
    comps: Mapping[str, np.ndarray], itype: np.ndarray, weights: Mapping[str, Mapping[str, float]]
) -> np.ndarray:
    w = _weight_matrix(weights)
    u = np.zeros(np.shape(itype))
    for k, c in enumerate(COMPONENTS):
        if c in comps:
            u += w[itype, k] * comps[c]
    return u


def utility_components(
    members: pl.DataFrame,
    items: pl.DataFrame,
    pairs: pl.DataFrame,
    cfg: SyntheticWorldConfig,
    weights: Mapping[str, Mapping[str, float]] | None = None,
) -> pl.DataFrame:
    """The hidden model's named components (and ``utility``) for (member, item, time) pairs.

    ``members`` and ``items`` are rows of the canonical tables of a world generated with
    ``cfg`` (the seed re-derives the hidden taste and popularity); ``pairs`` has
    ``member_id``, ``item_id`` and ``timestamp`` (UTC). Returns ``pairs`` plus
    ``item_type``, one Float64 column per name in :data:`COMPONENTS` and ``utility``
    (weighted by ``weights``, default :data:`UTILITY_WEIGHTS`). Relabelling an
    instruction variant is ``utility(out, steering_weights([...]))``.
    """
    for name in ("member_id", "item_id", "timestamp"):
        if name not in pairs.columns:
            raise ValueError(
                f"pairs: column '{name}' is missing; pairs need member_id, item_id, timestamp"
            )
    m_pos = pairs.select(pl.col("member_id").cast(pl.Utf8)).join(
        members.select(pl.col("member_id").cast(pl.Utf8)).with_row_index("__m"),
        on="member_id",
        how="left",
        maintain_order="left",
    )["__m"]
    i_pos = pairs.select(pl.col("item_id").cast(pl.Utf8)).join(
        items.select(pl.col("item_id").cast(pl.Utf8)).with_row_index("__i"),
        on="item_id",
        how="left",
        maintain_order="left",
    )["__i"]
    if m_pos.null_count() or i_pos.null_count():
        raise ValueError(
            f"pairs: {m_pos.null_count()} member_id(s) and {i_pos.null_count()} item_id(s) are not "
            f"in the given members/items tables. Fix: pass the tables the pairs come from"
        )
    M, I = encode_members(members, cfg.seed), encode_items(items, cfg.seed)  # noqa: E741
    mi, ii = m_pos.to_numpy().astype(np.int64), i_pos.to_numpy().astype(np.int64)
    t_us = (
        pairs["timestamp"].cast(pl.Datetime("us", "UTC")).dt.epoch("us").to_numpy().astype(np.int64)
    )
    comps = _components(M, I, mi, ii, t_us, Clock.from_config(cfg), _drift_params(cfg.seed))
    u = _utility_from(comps, I.type[ii], weights or UTILITY_WEIGHTS)
    return pairs.with_columns(
        pl.Series("item_type", np.asarray(ITEM_TYPES)[I.type[ii]]),
        *[pl.Series(c, comps[c], dtype=pl.Float64) for c in COMPONENTS],
        pl.Series("utility", u, dtype=pl.Float64),
    )


def utility(
    components: pl.DataFrame, weights: Mapping[str, Mapping[str, float]] | None = None
) -> pl.Series:
    """Weighted sum of the component columns (by ``item_type``) of :func:`utility_components`."""
    itype = _lookup(components["item_type"], ITEM_TYPE_INDEX)
    if (itype < 0).any():
        raise ValueError(
            f"components.item_type: values other than {ITEM_TYPES} found; pass the output of "
            f"utility_components"
        )
    comps = {c: components[c].to_numpy() for c in COMPONENTS if c in components.columns}
    return pl.Series("utility", _utility_from(comps, itype, weights or UTILITY_WEIGHTS))


def steering_weights(
    criteria: Iterable[str], base: Mapping[str, Mapping[str, float]] | None = None
) -> dict[str, dict[str, float]]:
    """Weights of an instruction that names ``criteria`` (e.g. ["skills", "location"]).

    The named components keep their base weight (1.0 where the base is 0, e.g.
    location for courses: the instruction asks for it); every other component is 0.
    So "focus on skills and location" labels items by those two alone.
    """
    crit = list(criteria)
    unknown = [c for c in crit if c not in COMPONENTS]
    if unknown:
        raise ValueError(
            f"steering criteria {unknown} are not components; expected a subset of {COMPONENTS}"
        )
    base = base or UTILITY_WEIGHTS
    return {
        t: {c: (base[t].get(c, 0.0) or 1.0) if c in crit else 0.0 for c in COMPONENTS}
        for t in ITEM_TYPES
    }


def positive_probability(utility_values: np.ndarray, item_type: str) -> np.ndarray:
    """P(strong positive | utility) under the ordered logit: sigmoid(u - weakest positive)."""
    theta = min(ACTION_THRESHOLDS[item_type][a] for a in POSITIVE_ACTIONS[item_type])
    return 1.0 / (1.0 + np.exp(-(np.asarray(utility_values) - theta)))


def sample_actions(rng: np.random.Generator, u: np.ndarray, itype: np.ndarray) -> np.ndarray:
    """Action codes (into ALL_ACTIONS) of impressions from utility via the ordered logit."""
    z = u + rng.logistic(size=u.shape)
    out = np.full(u.shape, _ACTION_CODE[IMPRESSION], dtype=np.int8)
    for t, name in enumerate(ITEM_TYPES):
        sel = itype == t
        th = ACTION_THRESHOLDS[name]
        for a in reversed(ACTIONS[name][: ACTIONS[name].index(IMPRESSION)]):  # weakest first
            out[sel & (z >= th[a])] = _ACTION_CODE[a]
        for a in NEGATIVE_ACTIONS[name]:
            out[sel & (z < th[a])] = _ACTION_CODE[a]
    return out
