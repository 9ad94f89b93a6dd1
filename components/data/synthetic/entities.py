"""The world's entities: companies, the items catalog (jobs, posts, courses) and members.

Each is sampled from the vocabularies with a numpy Generator (the catalog's own, seeded
by ``cfg.seed``; a members chunk's, seeded by ``(cfg.seed, chunk)``); what the rows say
in words comes from :mod:`.text`. The order of random draws here fixes the generated
world: reordering them changes every file for every seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa

from components.config import SyntheticWorldConfig
from components.data.synthetic.clock import DAY_US, Clock, _timestamps
from components.data.synthetic.encoding import ItemArrays, encode_items
from components.data.synthetic.latents import _SALT_CATALOG, _seed_key, member_interests
from components.data.synthetic.text import (
    course_texts,
    job_texts,
    member_about,
    member_headline,
    post_texts,
)
from components.data.synthetic.vocabulary import (
    _CORE,
    _POOL,
    CITIES,
    CITY_INDEX,
    CITY_P,
    COMPANY_PREFIXES,
    ID_PREFIX,
    INDUSTRIES,
    INDUSTRY_NAMES,
    INDUSTRY_P,
    ITEM_TYPES,
    JOB_SENIORITY_P,
    LEVELS,
    MEMBER_SENIORITY_P,
    ROLES_PER_INDUSTRY,
    SENIORITIES,
    SKILLS,
    SKILLS_PER_INDUSTRY,
    TITLES,
    TOPICS,
    WORKPLACE_P,
    WORKPLACES,
    YEARS_RANGE,
)

#: Members joining during the period (they are cold in the later window).
LATE_JOIN_SHARE = 0.3
#: Members who joined before the period did so up to this many days before it.
EARLY_JOIN_DAYS = 5 * 365
OPEN_TO_WORK_SHARE = 0.2
#: Share of members whose ``about`` text names their hidden interests.
INTERESTS_REVEALED_SHARE = 0.5
#: Share of each item type created before the period (the catalog at day 0).
PRE_EXISTING_SHARE = {"job": 0.15, "post": 0.05, "course": 0.5}
JOB_LIFETIME_DAYS = (21, 60)


def _gumbel_topk(rng: np.random.Generator, logw: np.ndarray, kmax: int) -> np.ndarray:
    """Column indices of a weighted sample without replacement (Gumbel top-k), best first."""
    g = logw - np.log(-np.log(rng.random(logw.shape)))
    return np.argsort(-g, axis=1, kind="stable")[:, :kmax]


def _list_column(values: pa.Array, offsets: np.ndarray) -> pl.Series:
    """A list<string> column from flat values and int32 offsets."""
    arr = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), values)
    return pl.from_arrow(arr)  # type: ignore[return-value]


def _id_width(n: int, minimum: int) -> int:
    return max(minimum, len(str(n)))


@dataclass
class Catalog:
    """Companies and the items table (fixed size, generated once per world)."""

    company_name: np.ndarray  # object array of str
    company_industry: np.ndarray
    company_city: np.ndarray
    company_weight: np.ndarray
    items: pl.DataFrame
    arrays: ItemArrays
    type_slices: dict[str, slice]  # rows of each type in ``items``


def _companies(cfg: SyntheticWorldConfig, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    n = cfg.companies
    ind = rng.choice(len(INDUSTRIES), size=n, p=np.asarray(INDUSTRY_P) / sum(INDUSTRY_P))
    city_p = np.asarray(CITY_P) / sum(CITY_P)
    city = rng.choice(len(CITIES), size=n, p=city_p)
    hub = rng.random(n) < 0.6
    hubs = [np.array([CITY_INDEX[c] for c in INDUSTRIES[k].hubs]) for k in ind]
    city = np.where(hub, [h[rng.integers(len(h))] for h in hubs], city)
    names = np.empty(n, dtype=object)
    for k, industry in enumerate(INDUSTRIES):
        rows = np.nonzero(ind == k)[0]
        combos = [f"{p} {s}" for p in COMPANY_PREFIXES for s in industry.suffixes]
        order = rng.permutation(len(combos))
        for j, r in enumerate(rows):
            base = combos[order[j % len(combos)]]
            names[r] = base if j < len(combos) else f"{base} {j // len(combos) + 1}"
    weight = 1.0 / (rng.permutation(n) + 1.0) ** 0.9  # Zipf sizes
    return names, ind.astype(np.int16), city.astype(np.int16), weight


def _pick_companies(
    rng: np.random.Generator,
    industry: np.ndarray,
    comp_ind: np.ndarray,
    weight: np.ndarray,
    same_p: float,
) -> np.ndarray:
    """A company per row: of the row's industry with probability same_p, size-weighted."""
    n = len(industry)
    cum_all = np.cumsum(weight)
    out = np.searchsorted(cum_all, rng.random(n) * cum_all[-1], side="right")
    same = rng.random(n) < same_p
    for k in range(len(INDUSTRIES)):
        rows = np.nonzero(same & (industry == k))[0]
        comps = np.nonzero(comp_ind == k)[0]
        if len(rows) == 0 or len(comps) == 0:
            continue
        cum = np.cumsum(weight[comps])
        out[rows] = comps[np.searchsorted(cum, rng.random(len(rows)) * cum[-1], side="right")]
    return np.minimum(out, len(weight) - 1)


def _created_times(
    rng: np.random.Generator, n: int, pre_share: float, clock: Clock, pre_days: int
) -> np.ndarray:
    """Creation times: a share before the period (at least one item), the rest spread over it."""
    pre = rng.random(n) < pre_share
    pre[0] = True  # every surface has something to show on day 0
    t = np.where(
        pre,
        clock.start_us - (rng.random(n) * pre_days * DAY_US).astype(np.int64) - 1,
        clock.start_us + (rng.random(n) * clock.period_us).astype(np.int64),
    )
    return np.sort(t)  # item ids in creation order, as a real catalog


def build_catalog(cfg: SyntheticWorldConfig) -> Catalog:
    """Companies and all items (jobs, posts, courses) of the world: seeded by cfg.seed."""
    rng = np.random.default_rng([_seed_key(cfg.seed), _SALT_CATALOG])
    clock = Clock.from_config(cfg)
    c_name, c_ind, c_city, c_w = _companies(cfg, rng)
    ind_p = np.asarray(INDUSTRY_P) / sum(INDUSTRY_P)
    city_p = np.asarray(CITY_P) / sum(CITY_P)
    frames: list[pl.DataFrame] = []

    def ids(t: str, n: int) -> list[str]:
        w = _id_width(n, 6)
        return [f"{ID_PREFIX[t]}{k + 1:0{w}d}" for k in range(n)]

    def skill_lists(
        ind: np.ndarray, role: np.ndarray, core_w: float, kmin: int, kmax: int
    ) -> list[list[str]]:
        logw = np.where(_CORE[role], math.log(core_w), 0.0)
        top = _gumbel_topk(rng, logw, kmax)
        k = rng.integers(kmin, kmax + 1, size=len(ind))
        return [[SKILLS[_POOL[ind[r], top[r, j]]] for j in range(k[r])] for r in range(len(ind))]

    # ---- jobs
    n = cfg.jobs
    ind = rng.choice(len(INDUSTRIES), size=n, p=ind_p)
    role = rng.integers(ROLES_PER_INDUSTRY, size=n)
    sen = rng.choice(len(SENIORITIES), size=n, p=JOB_SENIORITY_P)
    comp = _pick_companies(rng, ind, c_ind, c_w, 0.95)
    city = np.where(rng.random(n) < 0.85, c_city[comp], rng.choice(len(CITIES), size=n, p=city_p))
    work = rng.choice(len(WORKPLACES), size=n, p=WORKPLACE_P)
    created = _created_times(rng, n, PRE_EXISTING_SHARE["job"], clock, 30)
    life = rng.integers(JOB_LIFETIME_DAYS[0], JOB_LIFETIME_DAYS[1] + 1, size=n) * DAY_US
    skills = skill_lists(ind, role, 6.0, 3, 6)
    tmpl = rng.integers(3, size=n)
    titles, texts = job_texts(ind, role, sen, comp, city, work, skills, tmpl, c_name)
    frames.append(
        pl.DataFrame(
            {
                "item_id": ids("job", n),
                "item_type": ["job"] * n,
                "title": titles,
                "created_at": _timestamps(created),
                "text": texts,
                "company": c_name[comp].tolist(),
                "industry": [INDUSTRY_NAMES[k] for k in ind],
                "location": [CITIES[k] for k in city],
                "workplace": [WORKPLACES[k] for k in work],
                "seniority": [SENIORITIES[k] for k in sen],
                "skills": skills,
                "expires_at": _timestamps(created + life),
            }
        )
    )

    # ---- posts
    n = cfg.posts
    ind = rng.choice(len(INDUSTRIES), size=n, p=ind_p)
    topic = ind * 2 + rng.integers(2, size=n)
    comp = _pick_companies(rng, ind, c_ind, c_w, 0.8)
    a_role = rng.integers(ROLES_PER_INDUSTRY, size=n)
    a_sen = rng.choice(len(SENIORITIES), size=n, p=MEMBER_SENIORITY_P)
    created = _created_times(rng, n, PRE_EXISTING_SHARE["post"], clock, 7)
    skills = skill_lists(ind, a_role, 3.0, 1, 3)
    tmpl, tmpl2, num = rng.integers(8, size=n), rng.integers(4, size=n), rng.integers(3, 8, size=n)
    titles, texts, authors = post_texts(
        ind, topic, comp, a_role, a_sen, skills, tmpl, tmpl2, num, c_name
    )
    frames.append(
        pl.DataFrame(
            {
                "item_id": ids("post", n),
                "item_type": ["post"] * n,
                "title": titles,
                "created_at": _timestamps(created),
                "text": texts,
                "company": c_name[comp].tolist(),
                "industry": [INDUSTRY_NAMES[k] for k in ind],
                "location": [CITIES[k] for k in c_city[comp]],
                "skills": skills,
                "topic": [TOPICS[k] for k in topic],
                "author_title": authors,
            }
        )
    )

    # ---- courses
    n = cfg.courses
    ind = rng.choice(len(INDUSTRIES), size=n, p=ind_p)
    topic = ind * 2 + rng.integers(2, size=n)
    role = rng.integers(ROLES_PER_INDUSTRY, size=n)
    level = rng.choice(len(LEVELS), size=n, p=(0.45, 0.35, 0.2))
    created = _created_times(rng, n, PRE_EXISTING_SHARE["course"], clock, 365)
    skills = skill_lists(ind, role, 4.0, 2, 4)
    tmpl, hours = rng.integers(2, size=n), rng.integers(1, 13, size=n)
    titles, texts = course_texts(ind, topic, role, level, skills, tmpl, hours)
    frames.append(
        pl.DataFrame(
            {
                "item_id": ids("course", n),
                "item_type": ["course"] * n,
                "title": titles,
                "created_at": _timestamps(created),
                "text": texts,
                "industry": [INDUSTRY_NAMES[k] for k in ind],
                "skills": skills,
                "topic": [TOPICS[k] for k in topic],
                "level": [LEVELS[k] for k in level],
            }
        )
    )

    items = pl.concat(frames, how="diagonal")
    items = items.with_columns(pl.col("skills").cast(pl.List(pl.Utf8)))
    slices, start = {}, 0
    for t, f in zip(ITEM_TYPES, frames, strict=True):
        slices[t] = slice(start, start + f.height)
        start += f.height
    return Catalog(c_name, c_ind, c_city, c_w, items, encode_items(items, cfg.seed), slices)


def generate_members(
    cfg: SyntheticWorldConfig, catalog: Catalog, first: int, n: int, rng: np.random.Generator
) -> pl.DataFrame:
    """Members ``first .. first+n-1`` (0-based global index) as a members-table frame."""
    clock = Clock.from_config(cfg)
    ind = rng.choice(len(INDUSTRIES), size=n, p=np.asarray(INDUSTRY_P) / sum(INDUSTRY_P))
    role = rng.integers(ROLES_PER_INDUSTRY, size=n)
    sen = rng.choice(len(SENIORITIES), size=n, p=MEMBER_SENIORITY_P)
    lo, hi = np.asarray(YEARS_RANGE).T
    years = rng.integers(lo[sen], hi[sen] + 1)
    comp = _pick_companies(rng, ind, catalog.company_industry, catalog.company_weight, 0.85)
    city_p = np.asarray(CITY_P) / sum(CITY_P)
    city = np.where(
        rng.random(n) < 0.7, catalog.company_city[comp], rng.choice(len(CITIES), size=n, p=city_p)
    )
    otw = rng.random(n) < OPEN_TO_WORK_SHARE
    late = rng.random(n) < LATE_JOIN_SHARE
    joined = np.where(
        late,
        clock.start_us + (rng.random(n) * clock.period_us).astype(np.int64),
        clock.start_us - (rng.random(n) * EARLY_JOIN_DAYS * DAY_US).astype(np.int64) - 1,
    )
    reveal = rng.random(n) < INTERESTS_REVEALED_SHARE

    # skills: 4-12, Gumbel top-k over the industry pool (role core x5) + 4 random extras
    extra = rng.integers(len(SKILLS), size=(n, 4))
    cand = np.concatenate([_POOL[ind], extra], axis=1)
    logw = np.concatenate(
        [np.where(_CORE[role], math.log(5.0), 0.0), np.full((n, 4), math.log(0.35))], axis=1
    )
    for j in range(4):  # extras already in the pool or repeated: never chosen
        dup = (cand[:, : SKILLS_PER_INDUSTRY + j] == extra[:, j : j + 1]).any(axis=1)
        logw[dup, SKILLS_PER_INDUSTRY + j] = -np.inf
    top = _gumbel_topk(rng, logw, 12)
    k = np.clip(np.rint(rng.normal(7.5, 2.0, size=n)), 4, 12).astype(np.int64)
    chosen = np.take_along_axis(cand, top, axis=1)
    keep = np.arange(12)[None, :] < k[:, None]
    flat = chosen[keep]
    offsets = np.concatenate([[0], np.cumsum(k)])
    skill_vocab = pa.array(SKILLS)
    skills = _list_column(skill_vocab.take(pa.array(flat)), offsets)
    s3 = [pl.Series(skill_vocab.take(pa.array(chosen[:, j])).to_pylist()) for j in range(3)]

    width = _id_width(cfg.members, 7)
    idx = np.arange(first, first + n)
    i1, i2 = member_interests(cfg.seed, idx)
    title = pl.Series(TITLES).gather((ind * ROLES_PER_INDUSTRY + role) * len(SENIORITIES) + sen)
    company = pl.Series(catalog.company_name.tolist()).gather(comp)
    first_topic = pl.Series([i.topics[0] for i in INDUSTRIES])
    df = pl.DataFrame(
        {
            "member_id": pl.Series(idx + 1).cast(pl.Utf8).str.zfill(width),
            "title": title,
            "company": company,
            "industry": pl.Series(INDUSTRY_NAMES).gather(ind),
            "seniority": pl.Series(SENIORITIES).gather(sen),
            "location": pl.Series(CITIES).gather(city),
            "skills": skills,
            "years_experience": pl.Series(years, dtype=pl.Int32),
            "open_to_work": otw,
            "joined_at": _timestamps(joined),
            "_s1": s3[0],
            "_s2": s3[1],
            "_s3": s3[2],
            "_reveal": reveal,
            "_t1": first_topic.gather(i1),
            "_t2": first_topic.gather(i2),
        }
    )
    df = df.with_columns(
        (pl.lit("m") + pl.col("member_id")).alias("member_id"),
        member_headline().alias("headline"),
        member_about().alias("about"),
    )
    return df.select(
        "member_id",
        "headline",
        "title",
        "company",
        "industry",
        "seniority",
        "location",
        "skills",
        "years_experience",
        "open_to_work",
        "about",
        "joined_at",
    )
