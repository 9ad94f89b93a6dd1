"""Event simulation: which items a member is shown, where and when, and what they do.

One members chunk at a time: a heavy-tailed number of events per member over their
active window, a per-member surface mix, popularity- and freshness-weighted candidates
alive that day, the surface's retrieval picking one, and the outcome drawn from the
hidden model (:mod:`.preferences`).
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl

from components.config import SyntheticWorldConfig
from components.data.synthetic.clock import DAY_US, Clock, _timestamps
from components.data.synthetic.encoding import ItemArrays, encode_members
from components.data.synthetic.entities import Catalog
from components.data.synthetic.latents import _drift_params
from components.data.synthetic.preferences import (
    UTILITY_WEIGHTS,
    _components,
    _utility_from,
    sample_actions,
)
from components.data.synthetic.vocabulary import (
    ALL_ACTIONS,
    ITEM_TYPE_INDEX,
    ITEM_TYPES,
    SURFACE_ITEM_MIX,
    SURFACE_NAMES,
    SURFACES,
)

#: Dirichlet prior of a member's surface mix; open-to-work members multiply the job
#: surfaces by OPEN_TO_WORK_JOB_BOOST.
SURFACE_ALPHA = (1.0, 0.5, 2.5, 0.8, 0.5)
OPEN_TO_WORK_JOB_BOOST = 4.0

#: Freshness decay (days) of exposure: feeds show new posts, job boards new jobs.
EXPOSURE_TAU_DAYS = {"job": 20.0, "post": 4.0, "course": math.inf}
#: Exposure weight = exp(POPULARITY_EXPOSURE * popularity z-score).
POPULARITY_EXPOSURE = 0.8

#: Candidate retrieval of each surface: (candidates drawn by popularity, component weights
#: of the retrieval score, Gumbel noise scale). The shown item is the best-scoring
#: candidate, so job-search shows matching jobs and the feed shows the member's industry.
RETRIEVAL: dict[str, tuple[int, dict[str, float], float]] = {
    "jobs-home": (12, {"skills": 2.0, "topic": 1.0, "location": 1.0}, 1.0),
    "job-search": (16, {"skills": 4.0, "topic": 1.5, "location": 1.0, "seniority": 0.5}, 0.5),
    "feed": (6, {"topic": 1.0, "skills": 0.5}, 1.0),
    "notifications": (4, {"topic": 1.0, "skills": 1.0}, 1.0),
    "learning": (6, {"topic": 1.0, "skills": 1.0}, 1.0),
}

#: Events per member: Poisson(LogNormal(log median, sigma) * active share of the period).
ACTIVITY_MEDIAN = 20.0
ACTIVITY_SIGMA = 1.15


def _exposure_weights(I: ItemArrays, sl: slice, t: str, clock: Clock, day: int) -> np.ndarray:  # noqa: E741
    """Exposure weights on a day: alive items only (created before the day began, not
    expiring before it ends), popularity- and freshness-weighted."""
    day_start = clock.start_us + day * DAY_US
    created, expires = I.created_us[sl], I.expires_us[sl]
    alive = (created < day_start) & (expires >= day_start + DAY_US)
    w = np.exp(POPULARITY_EXPOSURE * I.popularity[sl]) * alive
    tau = EXPOSURE_TAU_DAYS[t]
    if math.isfinite(tau):
        w = w * np.exp(-np.maximum(day_start - created, 0) / DAY_US / tau)
    return w


def _sample_candidates(
    rng: np.random.Generator,
    day: np.ndarray,
    k: int,
    I: ItemArrays,  # noqa: E741
    sl: slice,
    t: str,
    clock: Clock,
) -> np.ndarray:
    """(n, k) candidate rows into the items table (-1 when nothing is alive that day)."""
    n = len(day)
    out = np.full((n, k), -1, dtype=np.int64)
    order = np.argsort(day, kind="stable")
    bounds = np.searchsorted(day[order], np.arange(clock.days + 1))
    for d in range(clock.days):
        lo, hi = bounds[d], bounds[d + 1]
        if lo == hi:
            continue
        w = _exposure_weights(I, sl, t, clock, d)
        cum = np.cumsum(w)
        if cum[-1] <= 0:
            continue
        last = int(np.flatnonzero(w)[-1])
        j = np.searchsorted(cum, rng.random((hi - lo, k)) * cum[-1], side="right")
        out[order[lo:hi]] = sl.start + np.minimum(j, last)
    return out


def generate_interactions(
    cfg: SyntheticWorldConfig,
    catalog: Catalog,
    members: pl.DataFrame,
    rng: np.random.Generator,
) -> tuple[pl.DataFrame, np.ndarray, np.ndarray]:
    """Impressions of one members chunk and their outcomes.

    Returns (interactions frame, events per member, (item type code, action code) per row).
    """
    clock = Clock.from_config(cfg)
    drift = _drift_params(cfg.seed)
    M = encode_members(members, cfg.seed)
    I = catalog.arrays  # noqa: E741
    n = members.height
    joined = members["joined_at"].dt.epoch("us").to_numpy().astype(np.int64)

    # how many events: heavy-tailed, scaled by the share of the period the member exists
    lo = np.maximum(joined + 1, clock.start_us)
    hi = clock.end_us - 1_000_000
    active = np.clip((hi - lo) / clock.period_us, 0.0, 1.0)
    rate = np.exp(rng.normal(math.log(ACTIVITY_MEDIAN), ACTIVITY_SIGMA, size=n)) * active
    counts = rng.poisson(rate)
    counts[lo >= hi] = 0
    ev_m = np.repeat(np.arange(n), counts)
    e = len(ev_m)

    # when: uniform over the member's active window; strictly increasing per member so
    # that no two rows share the interaction key
    ts = lo[ev_m] + (rng.random(e) * (hi - lo[ev_m])).astype(np.int64)
    order = np.lexsort((ts, ev_m))
    ts = ts[order]
    while True:
        bad = np.flatnonzero((ev_m[1:] == ev_m[:-1]) & (ts[1:] <= ts[:-1])) + 1
        if len(bad) == 0:
            break
        ts[bad] = ts[bad - 1] + 1
    day = np.clip((ts - clock.start_us) // DAY_US, 0, clock.days - 1)

    # where: a per-member surface mix; what: the surface's item type mix
    alpha = np.tile(np.asarray(SURFACE_ALPHA), (n, 1))
    alpha[:, :2] *= np.where(M.open_to_work, OPEN_TO_WORK_JOB_BOOST, 1.0)[:, None]
    g = rng.gamma(alpha)
    cum = np.cumsum(g / g.sum(axis=1, keepdims=True), axis=1).astype(np.float32)
    u = rng.random(e).astype(np.float32)
    surface = np.zeros(e, dtype=np.int8)
    for s in range(len(SURFACE_NAMES) - 1):
        surface += u > cum[ev_m, s]
    itype = np.zeros(e, dtype=np.int8)
    u2 = rng.random(e)
    for s, name in enumerate(SURFACE_NAMES):
        sel = surface == s
        acc = 0.0
        for t, p in SURFACE_ITEM_MIX[name]:
            itype[sel & (u2 >= acc)] = ITEM_TYPE_INDEX[t]
            acc += p

    # which item: popularity-biased alive candidates, the surface's retrieval picks one
    item = np.full(e, -1, dtype=np.int64)
    for t, tname in enumerate(ITEM_TYPES):
        ev_t = np.flatnonzero(itype == t)
        if len(ev_t) == 0:
            continue
        kmax = max(RETRIEVAL[s][0] for s in SURFACES[tname])
        cand = _sample_candidates(rng, day[ev_t], kmax, I, catalog.type_slices[tname], tname, clock)
        for s in SURFACES[tname]:
            sel = surface[ev_t] == SURFACE_NAMES.index(s)
            if not sel.any():
                continue
            k, sw, noise = RETRIEVAL[s]
            c = cand[sel, :k]
            ev = ev_t[sel]
            ok = c >= 0
            cc = np.where(ok, c, 0)
            comps = _components(M, I, ev_m[ev][:, None], cc, ts[ev][:, None], clock, drift, sw)
            score = sum(wt * comps[name] for name, wt in sw.items())
            score = score - noise * np.log(-np.log(rng.random(c.shape)))
            score = np.where(ok, score, -np.inf)
            best = np.argmax(score, axis=1)
            item[ev] = np.where(ok.any(axis=1), c[np.arange(len(c)), best], -1)

    keep = item >= 0
    ev_m, ts, surface, item = ev_m[keep], ts[keep], surface[keep], item[keep]
    itype = I.type[item]
    comps = _components(M, I, ev_m, item, ts, clock, drift)
    action = sample_actions(rng, _utility_from(comps, itype, UTILITY_WEIGHTS), itype)
    frame = pl.DataFrame(
        {
            "member_id": members["member_id"].gather(ev_m),
            "item_id": catalog.items["item_id"].gather(item),
            "surface": pl.Series(SURFACE_NAMES).gather(surface),
            "action": pl.Series(ALL_ACTIONS).gather(action),
            "timestamp": _timestamps(ts),
            "value": pl.Series([None], dtype=pl.Float64).gather(np.zeros(len(ts), dtype=np.int64)),
        }
    )
    return frame, np.bincount(ev_m, minlength=n), np.stack([itype, action], axis=1)
