"""The synthetic professional world: members, companies, jobs / posts / courses, engagement.

Why a synthetic world: rankbrew needs data where we *know* what drives engagement, so
we can check that a language model reading profiles and histories as text learns it,
that ID-only baselines fall behind on new members and new items, and that an
instruction ("focus on skills and location") can be labelled by re-weighting the
same hidden model. See docs/synthetic-world.md for the full generative story.

The engagement of one impression comes from an explicit utility, a weighted sum of
named components (:data:`COMPONENTS`, weights in :data:`UTILITY_WEIGHTS`), most of
which are readable from the text of the member's profile and the item:

* ``skills``      share of the item's skills the member lists (bitmask popcount);
* ``location``    same city (remote jobs: 0.5 for everyone);
* ``seniority``   job seniority / course level vs the member's seniority;
* ``topic``       item industry == member industry;
* ``taste``       hidden per-member interest in two industries (re-derivable from the
                  seed and member index; half of the members mention them in ``about``,
                  all of them reveal them through their history);
* ``popularity``  hidden per-item log-popularity (re-derivable from seed and item index);
* ``recency``     freshness of the item at impression time;
* ``drift``       popularity of the item's industry (jobs) or topic (posts, courses)
                  changing over the simulated period;
* ``intent``      the member is open to work (jobs only; in the headline as #OpenToWork).

The outcome of an impression is an ordered logit on ``utility + Logistic noise``
(:data:`ACTION_THRESHOLDS`): each logged row is one impression's strongest outcome,
``impression`` meaning shown and ignored.

Generation is chunked by members (``cfg.members_per_file`` per chunk, one part file per
chunk per table) with a numpy Generator seeded from ``(cfg.seed, chunk)``: the same
config gives the same files, and memory does not grow with the number of members.

The package, one idea per module (imports run top to bottom, no circles):

* :mod:`.vocabulary`   industries, roles, skills, titles, cities; item types, surfaces, actions;
* :mod:`.clock`        the simulated period in UTC microseconds;
* :mod:`.latents`      hidden taste, popularity and drift, re-derivable from (seed, index);
* :mod:`.encoding`     members and items as the arrays the hidden model reads;
* :mod:`.preferences`  the hidden model: utility components, weights, the ordered logit;
* :mod:`.text`         what the rows say: job, post and course texts, headlines, ``about``;
* :mod:`.entities`     sampling companies, the items catalog and members;
* :mod:`.events`       simulating impressions and their outcomes, one members chunk at a time;
* :mod:`.writer`       :func:`generate_world`: the chunked Parquet writer and its summary;
* :mod:`.cli`          ``python -m components.data.synthetic``.

Every public name is re-exported here: ``from components.data.synthetic import X`` works
for all of them.
"""

from __future__ import annotations

from components.data.synthetic.cli import main
from components.data.synthetic.clock import DAY_US, Clock
from components.data.synthetic.encoding import (
    ItemArrays,
    MemberArrays,
    encode_items,
    encode_members,
)
from components.data.synthetic.entities import (
    EARLY_JOIN_DAYS,
    INTERESTS_REVEALED_SHARE,
    JOB_LIFETIME_DAYS,
    LATE_JOIN_SHARE,
    OPEN_TO_WORK_SHARE,
    PRE_EXISTING_SHARE,
    Catalog,
    build_catalog,
    generate_members,
)
from components.data.synthetic.events import (
    ACTIVITY_MEDIAN,
    ACTIVITY_SIGMA,
    EXPOSURE_TAU_DAYS,
    OPEN_TO_WORK_JOB_BOOST,
    POPULARITY_EXPOSURE,
    RETRIEVAL,
    SURFACE_ALPHA,
    generate_interactions,
)
from components.data.synthetic.latents import item_popularity, member_interests
from components.data.synthetic.preferences import (
    ACTION_THRESHOLDS,
    COMPONENTS,
    RECENCY_TAU_DAYS,
    REMOTE_LOCATION,
    SECOND_INTEREST,
    UTILITY_WEIGHTS,
    positive_probability,
    sample_actions,
    steering_weights,
    utility,
    utility_components,
)
from components.data.synthetic.vocabulary import (
    ACTIONS,
    ALL_ACTIONS,
    CITIES,
    CITY_INDEX,
    CITY_P,
    COMPANY_PREFIXES,
    CORE_SKILLS,
    ID_PREFIX,
    IMPRESSION,
    INDUSTRIES,
    INDUSTRY_INDEX,
    INDUSTRY_NAMES,
    INDUSTRY_P,
    ITEM_TYPE_INDEX,
    ITEM_TYPES,
    JOB_SENIORITY_P,
    JOB_YEARS,
    LEVEL_INDEX,
    LEVEL_TARGET,
    LEVELS,
    MEMBER_SENIORITY_P,
    NEGATIVE_ACTIONS,
    POSITIVE_ACTIONS,
    ROLES_PER_INDUSTRY,
    SENIORITIES,
    SENIORITY_INDEX,
    SKILL_INDEX,
    SKILL_WORDS,
    SKILLS,
    SKILLS_PER_INDUSTRY,
    SURFACE_ITEM_MIX,
    SURFACE_NAMES,
    SURFACES,
    TITLES,
    TOPIC_INDEX,
    TOPIC_INDUSTRY,
    TOPICS,
    WEAK_POSITIVE_ACTIONS,
    WORKPLACE_P,
    WORKPLACES,
    YEARS_RANGE,
    Industry,
)
from components.data.synthetic.writer import ACTIVITY_BUCKETS, generate_world

__all__ = [
    "SENIORITIES",
    "YEARS_RANGE",
    "MEMBER_SENIORITY_P",
    "JOB_SENIORITY_P",
    "JOB_YEARS",
    "LEVELS",
    "LEVEL_TARGET",
    "WORKPLACES",
    "WORKPLACE_P",
    "CITIES",
    "CITY_P",
    "Industry",
    "INDUSTRIES",
    "ROLES_PER_INDUSTRY",
    "SKILLS_PER_INDUSTRY",
    "CORE_SKILLS",
    "INDUSTRY_NAMES",
    "INDUSTRY_P",
    "TOPICS",
    "TOPIC_INDUSTRY",
    "SKILLS",
    "SKILL_WORDS",
    "INDUSTRY_INDEX",
    "CITY_INDEX",
    "SENIORITY_INDEX",
    "TOPIC_INDEX",
    "SKILL_INDEX",
    "LEVEL_INDEX",
    "TITLES",
    "COMPANY_PREFIXES",
    "ITEM_TYPES",
    "ITEM_TYPE_INDEX",
    "ID_PREFIX",
    "SURFACES",
    "SURFACE_NAMES",
    "SURFACE_ITEM_MIX",
    "SURFACE_ALPHA",
    "OPEN_TO_WORK_JOB_BOOST",
    "ACTIONS",
    "ALL_ACTIONS",
    "IMPRESSION",
    "POSITIVE_ACTIONS",
    "WEAK_POSITIVE_ACTIONS",
    "NEGATIVE_ACTIONS",
    "COMPONENTS",
    "UTILITY_WEIGHTS",
    "ACTION_THRESHOLDS",
    "RECENCY_TAU_DAYS",
    "EXPOSURE_TAU_DAYS",
    "POPULARITY_EXPOSURE",
    "SECOND_INTEREST",
    "REMOTE_LOCATION",
    "RETRIEVAL",
    "ACTIVITY_MEDIAN",
    "ACTIVITY_SIGMA",
    "LATE_JOIN_SHARE",
    "EARLY_JOIN_DAYS",
    "OPEN_TO_WORK_SHARE",
    "INTERESTS_REVEALED_SHARE",
    "PRE_EXISTING_SHARE",
    "JOB_LIFETIME_DAYS",
    "DAY_US",
    "member_interests",
    "item_popularity",
    "Clock",
    "MemberArrays",
    "ItemArrays",
    "encode_members",
    "encode_items",
    "utility_components",
    "utility",
    "steering_weights",
    "positive_probability",
    "sample_actions",
    "Catalog",
    "build_catalog",
    "generate_members",
    "generate_interactions",
    "ACTIVITY_BUCKETS",
    "generate_world",
    "main",
]
