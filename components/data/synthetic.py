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
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from components.config import SyntheticWorldConfig
from components.data.tables import TABLE_NAMES, write_table

# ============================================================================ vocabulary

SENIORITIES: tuple[str, ...] = (
    "intern",
    "entry",
    "associate",
    "mid-senior",
    "director",
    "executive",
)
#: Years of experience (inclusive range) per seniority: years are consistent with titles.
YEARS_RANGE: tuple[tuple[int, int], ...] = ((0, 1), (0, 2), (2, 5), (5, 15), (10, 25), (15, 35))
MEMBER_SENIORITY_P = (0.05, 0.17, 0.22, 0.36, 0.12, 0.08)
JOB_SENIORITY_P = (0.06, 0.22, 0.25, 0.33, 0.10, 0.04)
#: Years a job description asks for, per seniority.
JOB_YEARS = (0, 0, 2, 5, 8, 12)

LEVELS: tuple[str, ...] = ("Beginner", "Intermediate", "Advanced")
#: The seniority (index into SENIORITIES, fractional) a course level suits best.
LEVEL_TARGET = (0.5, 2.5, 4.0)
WORKPLACES: tuple[str, ...] = ("On-site", "Hybrid", "Remote")
WORKPLACE_P = (0.50, 0.32, 0.18)

CITIES: tuple[str, ...] = (
    "San Francisco", "New York", "Seattle", "Austin", "Boston", "Chicago", "Los Angeles",
    "Denver", "Atlanta", "Toronto", "Vancouver", "London", "Dublin", "Berlin", "Amsterdam",
    "Paris", "Madrid", "Stockholm", "Zurich", "Bangalore", "Singapore", "Sydney", "Tokyo",
    "Dubai", "Sao Paulo",
)  # fmt: skip
#: Zipf-like city sizes: a few big hubs, a long tail.
CITY_P = tuple(1.0 / (r + 2) ** 0.7 for r in range(len(CITIES)))


@dataclass(frozen=True)
class Industry:
    """One industry: its own titles, skill pool, topics, company names and hub cities."""

    name: str
    function: str  # the department in "Director of <function>"
    roles: tuple[str, ...]  # ROLES_PER_INDUSTRY role names
    skills: tuple[str, ...]  # SKILLS_PER_INDUSTRY skills (may overlap other industries)
    topics: tuple[str, str]  # post / course topics
    suffixes: tuple[str, str, str]  # company name suffixes
    hubs: tuple[str, ...]  # cities where its companies cluster
    weight: float  # share of members and companies


INDUSTRIES: tuple[Industry, ...] = (
    Industry(
        "Software & Internet", "Engineering",
        ("Software Engineer", "Backend Engineer", "Frontend Engineer", "DevOps Engineer",
         "Mobile Developer", "Site Reliability Engineer"),
        ("Python", "Java", "JavaScript", "TypeScript", "Go", "SQL", "Kubernetes", "Docker",
         "AWS", "React", "Node.js", "Kafka", "PostgreSQL", "Git", "CI/CD", "Microservices",
         "System Design", "Linux", "Terraform", "GraphQL"),
        ("Cloud & DevOps", "Web Development"), ("Systems", "Labs", "Technologies"),
        ("San Francisco", "Seattle", "Austin", "Bangalore"), 0.14,
    ),
    Industry(
        "Data & AI", "Data Science",
        ("Data Scientist", "Machine Learning Engineer", "Data Analyst", "Data Engineer",
         "Research Scientist", "Analytics Engineer"),
        ("Python", "SQL", "Machine Learning", "Deep Learning", "PyTorch", "TensorFlow",
         "Statistics", "Pandas", "Spark", "Tableau", "Power BI", "NLP", "Computer Vision",
         "A/B Testing", "R", "dbt", "Airflow", "LLMs", "Data Visualization", "Feature Engineering"),
        ("Generative AI", "Analytics"), ("Analytics", "AI", "Data"),
        ("San Francisco", "New York", "London", "Toronto"), 0.08,
    ),
    Industry(
        "Finance & Banking", "Finance",
        ("Financial Analyst", "Investment Banker", "Accountant", "Risk Analyst", "Auditor",
         "Portfolio Manager"),
        ("Financial Modeling", "Excel", "Valuation", "Accounting", "IFRS", "GAAP",
         "Risk Management", "Corporate Finance", "Bloomberg", "Budgeting", "Forecasting",
         "Auditing", "Tax", "Due Diligence", "M&A", "Credit Analysis", "Portfolio Management",
         "Compliance", "SQL", "VBA"),
        ("Markets & Investing", "Fintech"), ("Capital", "Bank", "Financial"),
        ("New York", "London", "Zurich", "Singapore"), 0.10,
    ),
    Industry(
        "Healthcare", "Clinical Operations",
        ("Registered Nurse", "Physician", "Pharmacist", "Clinical Research Coordinator",
         "Healthcare Administrator", "Physical Therapist"),
        ("Patient Care", "Clinical Research", "EHR", "Epic Systems", "HIPAA", "Medical Coding",
         "Pharmacology", "Nursing", "Triage", "Telemedicine", "Healthcare Management",
         "Clinical Trials", "GCP", "Biostatistics", "Public Health", "CPR", "Phlebotomy",
         "Care Coordination", "Medical Devices", "Quality Improvement"),
        ("Digital Health", "Patient Care Innovation"), ("Health", "Medical", "Clinics"),
        ("Boston", "Chicago", "Atlanta", "Dublin"), 0.12,
    ),
    Industry(
        "Marketing & Advertising", "Marketing",
        ("Marketing Manager", "Content Strategist", "SEO Specialist", "Brand Manager",
         "Growth Marketer", "Social Media Manager"),
        ("SEO", "SEM", "Content Marketing", "Google Analytics", "Social Media", "Copywriting",
         "Brand Strategy", "Email Marketing", "Marketing Automation", "HubSpot",
         "Market Research", "A/B Testing", "Public Relations", "Campaign Management",
         "Adobe Creative Suite", "Growth Hacking", "CRM", "Influencer Marketing",
         "Product Marketing", "Storytelling"),
        ("Brand & Content", "Growth Marketing"), ("Media", "Creative", "Marketing"),
        ("New York", "Los Angeles", "London", "Paris"), 0.08,
    ),
    Industry(
        "Sales", "Sales",
        ("Account Executive", "Sales Development Representative", "Account Manager",
         "Sales Engineer", "Customer Success Manager", "Business Development Manager"),
        ("Salesforce", "Negotiation", "Lead Generation", "Cold Calling", "B2B Sales",
         "Account Management", "CRM", "Pipeline Management", "Customer Success",
         "Solution Selling", "Forecasting", "Presentation Skills", "Prospecting",
         "Contract Negotiation", "SaaS", "Relationship Building", "Upselling",
         "Territory Management", "Sales Navigator", "Closing"),
        ("Sales Leadership", "Customer Success Stories"), ("Solutions", "Partners", "Commerce"),
        ("Chicago", "Austin", "Dublin", "Dubai"), 0.10,
    ),
    Industry(
        "Manufacturing", "Operations",
        ("Mechanical Engineer", "Manufacturing Engineer", "Quality Engineer",
         "Production Manager", "Process Engineer", "Automation Engineer"),
        ("CAD", "SolidWorks", "Lean Manufacturing", "Six Sigma", "AutoCAD", "Quality Control",
         "Root Cause Analysis", "PLC", "Process Improvement", "ISO 9001", "FMEA", "Kaizen",
         "CNC", "Automation", "Robotics", "GD&T", "Production Planning", "Maintenance",
         "Safety Management", "MATLAB"),
        ("Industry 4.0", "Lean & Quality"), ("Manufacturing", "Industries", "Robotics"),
        ("Chicago", "Berlin", "Stockholm", "Tokyo"), 0.08,
    ),
    Industry(
        "Education", "Academics",
        ("Teacher", "Instructional Designer", "Professor", "Curriculum Developer",
         "Academic Advisor", "Education Consultant"),
        ("Curriculum Design", "Instructional Design", "Classroom Management", "E-Learning",
         "LMS", "Lesson Planning", "Assessment", "Educational Technology", "Tutoring",
         "Special Education", "Public Speaking", "Mentoring", "Research", "Grant Writing",
         "Moodle", "Articulate Storyline", "Student Engagement", "Differentiated Instruction",
         "Academic Writing", "Coaching"),
        ("EdTech", "Teaching & Learning"), ("Academy", "Learning", "Institute"),
        ("Boston", "Toronto", "Madrid", "Sydney"), 0.07,
    ),
    Industry(
        "Retail & E-commerce", "Merchandising",
        ("Store Manager", "Merchandiser", "E-commerce Manager", "Buyer", "Category Manager",
         "Retail Operations Analyst"),
        ("Merchandising", "Inventory Management", "Retail Operations", "E-commerce", "Shopify",
         "Visual Merchandising", "Pricing", "Customer Service", "Category Management",
         "Demand Planning", "Vendor Management", "Point of Sale", "Loss Prevention",
         "Omnichannel", "Excel", "Google Analytics", "Product Sourcing", "Sales Forecasting",
         "Team Leadership", "Marketplace Management"),
        ("E-commerce Growth", "Retail Trends"), ("Retail", "Stores", "Market"),
        ("Los Angeles", "Seattle", "Amsterdam", "Sao Paulo"), 0.07,
    ),
    Industry(
        "Logistics & Supply Chain", "Supply Chain",
        ("Supply Chain Analyst", "Logistics Coordinator", "Procurement Specialist",
         "Warehouse Manager", "Operations Manager", "Demand Planner"),
        ("Supply Chain Management", "Logistics", "Procurement", "SAP", "ERP",
         "Warehouse Management", "Inventory Control", "Demand Forecasting",
         "Transportation Management", "Vendor Management", "Lean", "Six Sigma", "Excel",
         "Import/Export", "Sourcing", "Fleet Management", "S&OP", "Contract Management",
         "Operations Management", "Data Analysis"),
        ("Supply Chain Resilience", "Logistics Tech"), ("Logistics", "Freight", "Supply"),
        ("Atlanta", "Amsterdam", "Singapore", "Dubai"), 0.06,
    ),
    Industry(
        "Design & Media", "Design",
        ("UX Designer", "Product Designer", "Graphic Designer", "UX Researcher", "Art Director",
         "Video Producer"),
        ("Figma", "Sketch", "User Research", "Prototyping", "Wireframing", "UI Design",
         "Adobe Photoshop", "Adobe Illustrator", "Design Systems", "Usability Testing",
         "Interaction Design", "Typography", "Motion Graphics", "After Effects", "Video Editing",
         "Branding", "Accessibility", "Information Architecture", "Storyboarding",
         "Journey Mapping"),
        ("UX & Product Design", "Creative Industry"), ("Design", "Studio", "Pictures"),
        ("Los Angeles", "Berlin", "Stockholm", "Paris"), 0.05,
    ),
    Industry(
        "Human Resources", "People",
        ("HR Business Partner", "Recruiter", "Talent Acquisition Specialist", "HR Generalist",
         "Compensation Analyst", "People Operations Manager"),
        ("Recruiting", "Talent Acquisition", "Employee Relations", "HRIS", "Workday",
         "Onboarding", "Compensation & Benefits", "Performance Management", "Labor Law",
         "Diversity & Inclusion", "Interviewing", "Succession Planning", "Payroll",
         "Employer Branding", "Organizational Development", "Change Management", "Coaching",
         "HR Analytics", "Sourcing", "Conflict Resolution"),
        ("Future of Work", "Talent & Culture"), ("Talent", "Staffing", "People"),
        ("London", "Toronto", "Sydney", "Denver"), 0.05,
    ),
)  # fmt: skip

ROLES_PER_INDUSTRY = 6
SKILLS_PER_INDUSTRY = 20
#: Role r of an industry has the pool skills (3r + j) % 20, j < CORE_SKILLS, as its core:
#: titles and skills are correlated, as on real profiles.
CORE_SKILLS = 7

INDUSTRY_NAMES: tuple[str, ...] = tuple(i.name for i in INDUSTRIES)
INDUSTRY_P = tuple(i.weight for i in INDUSTRIES)
TOPICS: tuple[str, ...] = tuple(t for i in INDUSTRIES for t in i.topics)
TOPIC_INDUSTRY = np.repeat(np.arange(len(INDUSTRIES)), 2)
SKILLS: tuple[str, ...] = tuple(dict.fromkeys(s for i in INDUSTRIES for s in i.skills))
SKILL_WORDS = 4  # uint64 words per skill bitmask: up to 256 distinct skills

INDUSTRY_INDEX = {n: k for k, n in enumerate(INDUSTRY_NAMES)}
CITY_INDEX = {n: k for k, n in enumerate(CITIES)}
SENIORITY_INDEX = {n: k for k, n in enumerate(SENIORITIES)}
TOPIC_INDEX = {n: k for k, n in enumerate(TOPICS)}
SKILL_INDEX = {n: k for k, n in enumerate(SKILLS)}
LEVEL_INDEX = {n: k for k, n in enumerate(LEVELS)}

#: (industry, pool position) -> global skill id.
_POOL = np.array([[SKILL_INDEX[s] for s in i.skills] for i in INDUSTRIES], dtype=np.int64)
#: (role, pool position) -> is a core skill of that role.
_CORE = np.zeros((ROLES_PER_INDUSTRY, SKILLS_PER_INDUSTRY), dtype=bool)
for _r in range(ROLES_PER_INDUSTRY):
    _CORE[_r, [(3 * _r + _j) % SKILLS_PER_INDUSTRY for _j in range(CORE_SKILLS)]] = True


def _title(industry: Industry, role: int, seniority: int) -> str:
    """A job title from role and seniority: what members and job posts both show."""
    r = industry.roles[role]
    return (
        f"{r} Intern",
        f"Junior {r}",
        r,
        f"Senior {r}",
        f"Director of {industry.function}",
        f"VP of {industry.function}",
    )[seniority]


#: (industry * ROLES + role) * SENIORITIES + seniority -> title.
TITLES: tuple[str, ...] = tuple(
    _title(ind, r, s)
    for ind in INDUSTRIES
    for r in range(ROLES_PER_INDUSTRY)
    for s in range(len(SENIORITIES))
)

COMPANY_PREFIXES = (
    "Acme", "Apex", "Blue River", "Brightpath", "Cedar", "Crescent", "Evergreen", "Falcon",
    "Granite", "Harbor", "Horizon", "Ironwood", "Juniper", "Keystone", "Lumen", "Maple",
    "Meridian", "Northwind", "Nova", "Oakridge", "Orbit", "Pinnacle", "Quantum", "Redwood",
    "Sapphire", "Silverline", "Summit", "Sterling", "Trident", "Unity", "Vantage", "Vertex",
    "Willow", "Zenith", "Atlas", "Beacon", "Cobalt", "Delta", "Ember", "Fjord",
)  # fmt: skip

# ============================================================================ surfaces, actions

ITEM_TYPES: tuple[str, ...] = ("job", "post", "course")
ITEM_TYPE_INDEX = {t: k for k, t in enumerate(ITEM_TYPES)}
ID_PREFIX = {"job": "j", "post": "p", "course": "c"}
_PREFIX_TYPE = {v: k for k, v in ID_PREFIX.items()}

#: item_type -> surfaces where it is shown.
SURFACES: dict[str, tuple[str, ...]] = {
    "job": ("jobs-home", "job-search", "notifications"),
    "post": ("feed", "notifications"),
    "course": ("learning", "feed"),
}
SURFACE_NAMES: tuple[str, ...] = ("jobs-home", "job-search", "feed", "notifications", "learning")
#: surface -> (item_type, probability) of what an impression there shows.
SURFACE_ITEM_MIX: dict[str, tuple[tuple[str, float], ...]] = {
    "jobs-home": (("job", 1.0),),
    "job-search": (("job", 1.0),),
    "feed": (("post", 0.9), ("course", 0.1)),
    "notifications": (("job", 0.4), ("post", 0.6)),
    "learning": (("course", 1.0),),
}
#: Dirichlet prior of a member's surface mix; open-to-work members multiply the job
#: surfaces by OPEN_TO_WORK_JOB_BOOST.
SURFACE_ALPHA = (1.0, 0.5, 2.5, 0.8, 0.5)
OPEN_TO_WORK_JOB_BOOST = 4.0

#: item_type -> legal actions, strongest first; "impression" = shown, not engaged.
ACTIONS: dict[str, tuple[str, ...]] = {
    "job": ("apply", "save", "view", "impression", "dismiss"),
    "post": ("share", "comment", "like", "view", "impression", "hide"),
    "course": ("enroll", "view", "impression", "dismiss"),
}
ALL_ACTIONS: tuple[str, ...] = tuple(dict.fromkeys(a for acts in ACTIONS.values() for a in acts))
IMPRESSION = "impression"
#: Strong engagement: the positives of ranking tasks.
POSITIVE_ACTIONS: dict[str, tuple[str, ...]] = {
    "job": ("apply", "save"),
    "post": ("share", "comment", "like"),
    "course": ("enroll",),
}
#: A click without a strong action.
WEAK_POSITIVE_ACTIONS: dict[str, tuple[str, ...]] = {t: ("view",) for t in ITEM_TYPES}
#: Explicit negative feedback (besides the implicit "impression").
NEGATIVE_ACTIONS: dict[str, tuple[str, ...]] = {
    "job": ("dismiss",),
    "post": ("hide",),
    "course": ("dismiss",),
}
_ACTION_CODE = {a: k for k, a in enumerate(ALL_ACTIONS)}

# ============================================================================ the hidden model

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
#: Freshness decay (days) of exposure: feeds show new posts, job boards new jobs.
EXPOSURE_TAU_DAYS = {"job": 20.0, "post": 4.0, "course": math.inf}
#: Exposure weight = exp(POPULARITY_EXPOSURE * popularity z-score).
POPULARITY_EXPOSURE = 0.8
#: Weight of the second interest industry in ``taste`` (the first weighs 1).
SECOND_INTEREST = 0.6
#: ``location`` of a remote job for a member in another city.
REMOTE_LOCATION = 0.5

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

DAY_US = 86_400_000_000
_SALT_TASTE, _SALT_POP, _SALT_DRIFT, _SALT_CATALOG, _SALT_CHUNK = 101, 202, 303, 404, 505

# ============================================================================ helpers


def _seed_key(seed: int) -> int:
    """Any integer seed (negative too) as the non-negative entropy numpy accepts."""
    return seed % 2**64


def _mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finalizer on a uint64 array (wraps on overflow, as intended)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _hash_uniform(seed: int, salt: int, index: np.ndarray) -> np.ndarray:
    """Counter-based uniforms in [0, 1): hidden latents re-derivable from (seed, index)
    alone, without regenerating the chunk they were drawn in."""
    base = _mix64(np.array([(seed * 1_000_003 + salt) & (2**64 - 1)], dtype=np.uint64))
    with np.errstate(over="ignore"):
        h = _mix64(np.asarray(index).astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + base)
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / 2**53)


def member_interests(seed: int, member_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The hidden interest industries (first, second) of members by 0-based index."""
    n = len(INDUSTRIES)
    u1 = _hash_uniform(seed, _SALT_TASTE, member_index)
    u2 = _hash_uniform(seed, _SALT_TASTE + 1, member_index)
    return (u1 * n).astype(np.int16), (u2 * n).astype(np.int16)


def item_popularity(seed: int, item_type: np.ndarray, item_index: np.ndarray) -> np.ndarray:
    """Hidden log-popularity z-score (standard normal) of items by type code and index."""
    key = np.asarray(item_index, dtype=np.int64) * 8 + np.asarray(item_type, dtype=np.int64)
    u1 = 1.0 - _hash_uniform(seed, _SALT_POP, key)  # (0, 1]
    u2 = _hash_uniform(seed, _SALT_POP + 1, key)
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)


@dataclass(frozen=True)
class Clock:
    """The simulated period in UTC microseconds."""

    start_us: int
    days: int

    @classmethod
    def from_config(cls, cfg: SyntheticWorldConfig) -> Clock:
        start = cfg.start_date
        start = start.replace(tzinfo=UTC) if start.tzinfo is None else start.astimezone(UTC)
        return cls(int(start.timestamp()) * 1_000_000 + start.microsecond, cfg.days)

    @property
    def end_us(self) -> int:
        return self.start_us + self.days * DAY_US

    @property
    def period_us(self) -> int:
        return self.days * DAY_US


def _drift_params(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(slope, phase) per industry and per topic: which ones rise or fade over the period."""
    rng = np.random.default_rng([_seed_key(seed), _SALT_DRIFT])
    ind = rng.uniform([-1.0, 0.0], [1.0, 1.0], size=(len(INDUSTRIES), 2))
    top = rng.uniform([-1.0, 0.0], [1.0, 1.0], size=(len(TOPICS), 2))
    return ind, top


def _drift(params: np.ndarray, which: np.ndarray, frac: np.ndarray) -> np.ndarray:
    """Trend in [-1, 1]: 0.7 * linear slope + 0.3 * one seasonal cycle."""
    slope, phase = params[which, 0], params[which, 1]
    return 0.7 * slope * (2.0 * frac - 1.0) + 0.3 * np.sin(2.0 * np.pi * (frac + phase))


def _gumbel_topk(rng: np.random.Generator, logw: np.ndarray, kmax: int) -> np.ndarray:
    """Column indices of a weighted sample without replacement (Gumbel top-k), best first."""
    g = logw - np.log(-np.log(rng.random(logw.shape)))
    return np.argsort(-g, axis=1, kind="stable")[:, :kmax]


def _skill_mask(rows: np.ndarray, skill_ids: np.ndarray, n: int) -> np.ndarray:
    """(n, SKILL_WORDS) uint64 bitmasks from (row, skill id) pairs."""
    mask = np.zeros((n, SKILL_WORDS), dtype=np.uint64)
    bits = np.left_shift(np.uint64(1), (skill_ids % 64).astype(np.uint64))
    np.bitwise_or.at(mask, (rows, skill_ids // 64), bits)
    return mask


def _list_column(values: pa.Array, offsets: np.ndarray) -> pl.Series:
    """A list<string> column from flat values and int32 offsets."""
    arr = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), values)
    return pl.from_arrow(arr)  # type: ignore[return-value]


def _timestamps(us: np.ndarray) -> pl.Series:
    return (
        pl.Series(np.asarray(us, dtype=np.int64))
        .cast(pl.Datetime("us"))
        .dt.replace_time_zone("UTC")
    )


def _id_width(n: int, minimum: int) -> int:
    return max(minimum, len(str(n)))


# ============================================================================ encoded entities


@dataclass
class MemberArrays:
    """Members as arrays: what the utility reads (from the text columns + hidden taste)."""

    index: np.ndarray  # 0-based global index (member_id "m0000001" -> 0)
    industry: np.ndarray  # int16, -1 unknown
    city: np.ndarray  # int16, -1 unknown
    seniority: np.ndarray  # float64, nan unknown
    skills: np.ndarray  # (n, SKILL_WORDS) uint64
    open_to_work: np.ndarray  # bool
    interest1: np.ndarray  # int16 hidden
    interest2: np.ndarray  # int16 hidden


@dataclass
class ItemArrays:
    """Items of all types as arrays, in the order of the items table."""

    type: np.ndarray  # int8 into ITEM_TYPES
    index: np.ndarray  # 0-based index within the type ("j000001" -> 0)
    industry: np.ndarray  # int16
    topic: np.ndarray  # int16, -1 none (jobs)
    city: np.ndarray  # int16, -1 none (courses)
    remote: np.ndarray  # bool
    target_seniority: np.ndarray  # float64, nan when not applicable (posts)
    skills: np.ndarray  # (n, SKILL_WORDS) uint64
    n_skills: np.ndarray  # int64
    popularity: np.ndarray  # float64 z-score, hidden
    created_us: np.ndarray  # int64
    expires_us: np.ndarray  # int64 (max int64 when the item does not expire)


def _index_from_ids(ids: pl.Series, prefix_ok: Iterable[str], what: str) -> np.ndarray:
    """0-based indices from ids like "m0000042"; an error names the id format."""
    try:
        num = ids.str.slice(1).cast(pl.Int64, strict=True).to_numpy()
    except Exception as exc:
        raise ValueError(
            f"{what}: ids must look like {'/'.join(prefix_ok)}0000001 (a type letter and a "
            f"number) to re-derive the hidden latents; got e.g. {ids.head(3).to_list()}. "
            f"Fix: pass rows of a world written by components.data.synthetic"
        ) from exc
    return num - 1


def _lookup(s: pl.Series, mapping: Mapping[str, int]) -> np.ndarray:
    return s.cast(pl.Utf8).replace_strict(mapping, default=-1, return_dtype=pl.Int16).to_numpy()


def _encode_skills(df: pl.DataFrame) -> np.ndarray:
    flat = (
        df.select(pl.int_range(pl.len(), dtype=pl.Int64).alias("row"), pl.col("skills"))
        .explode("skills")
        .drop_nulls("skills")
        .with_columns(
            pl.col("skills").replace_strict(SKILL_INDEX, default=-1, return_dtype=pl.Int64)
        )
        .filter(pl.col("skills") >= 0)
        .unique()
    )
    return _skill_mask(flat["row"].to_numpy(), flat["skills"].to_numpy(), df.height)


def encode_members(members: pl.DataFrame, seed: int) -> MemberArrays:
    """Members table rows -> :class:`MemberArrays` (missing columns read as unknown)."""
    n = members.height
    need = {"member_id", "industry", "location", "seniority", "skills"}
    missing = need - set(members.columns)
    if missing:
        raise ValueError(
            f"members: columns {sorted(missing)} are missing; the utility reads "
            f"{sorted(need)} (plus optional open_to_work). Fix: pass the synthetic members table"
        )
    index = _index_from_ids(members["member_id"], ["m"], "members.member_id")
    sen = _lookup(members["seniority"], SENIORITY_INDEX).astype(np.float64)
    sen[sen < 0] = np.nan
    i1, i2 = member_interests(seed, index)
    otw = (
        members["open_to_work"].fill_null(False).to_numpy().astype(bool)
        if "open_to_work" in members.columns
        else np.zeros(n, dtype=bool)
    )
    return MemberArrays(
        index=index,
        industry=_lookup(members["industry"], INDUSTRY_INDEX),
        city=_lookup(members["location"], CITY_INDEX),
        seniority=sen,
        skills=_encode_skills(members),
        open_to_work=otw,
        interest1=i1,
        interest2=i2,
    )


def encode_items(items: pl.DataFrame, seed: int) -> ItemArrays:
    """Items table rows -> :class:`ItemArrays` (popularity re-derived from the ids)."""
    n = items.height
    cols = set(items.columns)
    need = {"item_id", "item_type", "created_at", "industry", "skills"}
    if need - cols:
        raise ValueError(
            f"items: columns {sorted(need - cols)} are missing; the utility reads {sorted(need)} "
            f"(plus topic, location, workplace, seniority, level). Fix: pass the synthetic items table"
        )

    def col(name: str, dtype: pl.DataType = pl.Utf8) -> pl.Series:
        return items[name] if name in cols else pl.Series(name, [None] * n, dtype=dtype)

    types = _lookup(items["item_type"], ITEM_TYPE_INDEX).astype(np.int8)
    if (types < 0).any():
        bad = items.filter(pl.Series(types < 0))["item_type"].unique().head(5).to_list()
        raise ValueError(f"items.item_type: unknown types {bad}; expected one of {ITEM_TYPES}")
    index = _index_from_ids(items["item_id"], list(ID_PREFIX.values()), "items.item_id")
    target = np.full(n, np.nan)
    job_sen = _lookup(col("seniority"), SENIORITY_INDEX).astype(np.float64)
    lvl = _lookup(col("level"), LEVEL_INDEX)
    is_job, is_course = types == ITEM_TYPE_INDEX["job"], types == ITEM_TYPE_INDEX["course"]
    target[is_job & (job_sen >= 0)] = job_sen[is_job & (job_sen >= 0)]
    ok = is_course & (lvl >= 0)
    target[ok] = np.asarray(LEVEL_TARGET)[lvl[ok]]
    skills = _encode_skills(items)
    created = items["created_at"].cast(pl.Datetime("us", "UTC")).dt.epoch("us").to_numpy()
    expires = col("expires_at", pl.Datetime("us", "UTC"))
    exp_us = expires.cast(pl.Datetime("us", "UTC")).dt.epoch("us").fill_null(np.iinfo(np.int64).max)
    return ItemArrays(
        type=types,
        index=index,
        industry=_lookup(items["industry"], INDUSTRY_INDEX),
        topic=_lookup(col("topic"), TOPIC_INDEX),
        city=_lookup(col("location"), CITY_INDEX),
        remote=(col("workplace") == "Remote").fill_null(False).to_numpy().astype(bool),
        target_seniority=target,
        skills=skills,
        n_skills=np.bitwise_count(skills).sum(axis=1).astype(np.int64),
        popularity=item_popularity(seed, types, index),
        created_us=created.astype(np.int64),
        expires_us=exp_us.to_numpy().astype(np.int64),
    )


# ============================================================================ the utility


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


# ============================================================================ catalog


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


def _a(word: str) -> str:
    return "an" if word[:1] in "AEIOU" else "a"


def _and(words: list[str]) -> str:
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


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
    titles, texts = [], []
    for r in range(n):
        I_ = INDUSTRIES[ind[r]]
        title = TITLES[(ind[r] * ROLES_PER_INDUSTRY + role[r]) * len(SENIORITIES) + sen[r]]
        co, loc, wp, sk = (
            c_name[comp[r]],
            CITIES[city[r]],
            WORKPLACES[work[r]],
            ", ".join(skills[r]),
        )
        yrs = (
            "No prior experience required."
            if JOB_YEARS[sen[r]] == 0
            else (f"{JOB_YEARS[sen[r]]}+ years of experience in {I_.name.lower()} preferred.")
        )
        texts.append(
            (
                f"{co} is hiring {_a(title)} {title} in {loc} ({wp}). You will work with {sk}. {yrs}",
                f"Join {co} as {_a(title)} {title}. Must-have skills: {sk}. {wp} role based in {loc}. {yrs}",
                f"We are looking for {_a(title)} {title} to grow our {I_.function.lower()} team in {loc} "
                f"({wp}). Tools: {sk}. {yrs}",
            )[tmpl[r]]
        )
        titles.append(title)
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
    titles, texts, authors = [], [], []
    for r in range(n):
        I_ = INDUSTRIES[ind[r]]
        tp, sk, co = TOPICS[topic[r]], skills[r][0], c_name[comp[r]]
        rl = I_.roles[a_role[r]]
        author = TITLES[(ind[r] * ROLES_PER_INDUSTRY + a_role[r]) * len(SENIORITIES) + a_sen[r]]
        title = (
            f"{num[r]} lessons from a year of {sk}",
            f"Why {tp} will look different next year",
            f"How we scaled {sk} at {co}",
            f"Hiring: our {I_.function.lower()} team at {co} is growing",
            f"My take on {tp}: hype vs. reality",
            f"A practical guide to {sk} for {rl}s",
            f"What nobody tells you about {tp}",
            f"Celebrating {num[r]} years at {co}",
        )[tmpl[r]]
        body = (
            f"Sharing a few thoughts on {tp} from my work as {_a(author)} {author}.",
            f"We leaned on {_and(skills[r])} this quarter and learned a lot.",
            f"The {I_.name.lower()} world is moving fast; here is what I see in {tp}.",
            f"Curious how other {rl}s approach {sk}? Let's discuss in the comments.",
        )[tmpl2[r]]
        tags = " ".join("#" + "".join(ch for ch in s if ch.isalnum()) for s in skills[r])
        titles.append(title)
        texts.append(f"{title}. {body} {tags}")
        authors.append(author)
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
    titles, texts = [], []
    for r in range(n):
        sk, rl, lv = skills[r][0], INDUSTRIES[ind[r]].roles[role[r]], LEVELS[level[r]]
        title = (
            (f"{sk} Essentials", f"Intro to {sk}"),
            (f"{sk} in Practice", f"Applied {sk} for {rl}s"),
            (f"Advanced {sk}", f"Mastering {sk}"),
        )[level[r]][tmpl[r]]
        titles.append(title)
        texts.append(
            f"{_a(lv).title()} {lv.lower()} course on {TOPICS[topic[r]]}: learn {_and(skills[r])}. "
            f"{hours[r]} hours, for {rl}s and anyone moving into {INDUSTRIES[ind[r]].name.lower()}."
        )
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


# ============================================================================ members


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
    headline = pl.format("{} at {} | {}, {}, {}", "title", "company", "_s1", "_s2", "_s3")
    about = pl.concat_str(
        [
            pl.format(
                "{} with {} {} of experience in {}. Skilled in {}, {} and {}.",
                "title",
                "years_experience",
                pl.when(pl.col("years_experience") == 1)
                .then(pl.lit("year"))
                .otherwise(pl.lit("years")),
                pl.col("industry").str.to_lowercase(),
                "_s1",
                "_s2",
                "_s3",
            ),
            pl.when("_reveal")
            .then(pl.format(" Interested in {} and {}.", "_t1", "_t2"))
            .otherwise(pl.lit("")),
            pl.when("open_to_work")
            .then(pl.lit(" Open to new opportunities."))
            .otherwise(pl.lit("")),
        ]
    )
    df = df.with_columns(
        (pl.lit("m") + pl.col("member_id")).alias("member_id"),
        pl.when("open_to_work")
        .then(headline + pl.lit(" | #OpenToWork"))
        .otherwise(headline)
        .alias("headline"),
        about.alias("about"),
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


# ============================================================================ interactions


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


# ============================================================================ the world

ACTIVITY_BUCKETS = (("0-5", 0, 5), ("6-10", 6, 10), ("11-100", 11, 100), (">100", 101, None))


def _clear_parts(out_dir: Path) -> None:
    """Remove part files of an earlier run: a smaller world must not inherit its parts."""
    for t in TABLE_NAMES:
        for p in (out_dir / t).glob("part-*.parquet"):
            p.unlink()


def generate_world(
    cfg: SyntheticWorldConfig, out_dir: Path, progress: bool = False
) -> dict[str, Any]:
    """Write the world's canonical tables under ``out_dir`` and return a summary.

    ``out_dir/{members,items,interactions}/part-*.parquet``: one items file, and one
    members and one interactions file per chunk of ``cfg.members_per_file`` members.
    Earlier part files in those directories are removed. The summary has row counts
    (``rows``), members per activity bucket, action counts per item type and seconds.
    """
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    _clear_parts(out_dir)
    catalog = build_catalog(cfg)
    write_table(catalog.items, out_dir / "items", part=0)
    n_chunks = math.ceil(cfg.members / cfg.members_per_file)
    buckets = dict.fromkeys((b[0] for b in ACTIVITY_BUCKETS), 0)
    action_counts = np.zeros((len(ITEM_TYPES), len(ALL_ACTIONS)), dtype=np.int64)
    n_inter = 0

    bar = None
    if progress:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        bar = Progress(
            TextColumn("synthetic world"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("chunks, {task.fields[rows]:,} interactions"),
            TimeRemainingColumn(),
        )
        task = bar.add_task("chunks", total=n_chunks, rows=0)
        bar.start()
    try:
        for chunk in range(n_chunks):
            first = chunk * cfg.members_per_file
            n = min(cfg.members_per_file, cfg.members - first)
            rng = np.random.default_rng([_seed_key(cfg.seed), _SALT_CHUNK, chunk])
            members = generate_members(cfg, catalog, first, n, rng)
            inter, per_member, type_action = generate_interactions(cfg, catalog, members, rng)
            write_table(members, out_dir / "members", part=chunk)
            write_table(inter, out_dir / "interactions", part=chunk)
            n_inter += inter.height
            for name, lo, hi in ACTIVITY_BUCKETS:
                buckets[name] += int(
                    ((per_member >= lo) & (per_member <= (hi if hi is not None else np.inf))).sum()
                )
            np.add.at(action_counts, (type_action[:, 0], type_action[:, 1]), 1)
            del members, inter, per_member, type_action
            if bar is not None:
                bar.update(task, advance=1, rows=n_inter)
    finally:
        if bar is not None:
            bar.stop()

    actions = {
        t: {a: int(action_counts[k, _ACTION_CODE[a]]) for a in ACTIONS[t]}
        for k, t in enumerate(ITEM_TYPES)
    }
    return {
        "rows": {"members": cfg.members, "items": catalog.items.height, "interactions": n_inter},
        "items_by_type": {t: s.stop - s.start for t, s in catalog.type_slices.items()},
        "members_by_activity": buckets,
        "actions": actions,
        "positive_rate": {
            t: round(
                sum(actions[t][a] for a in POSITIVE_ACTIONS[t]) / max(sum(actions[t].values()), 1),
                4,
            )
            for t in ITEM_TYPES
        },
        "files": {"members": n_chunks, "items": 1, "interactions": n_chunks},
        "seconds": round(time.perf_counter() - t0, 2),
    }


# ============================================================================ CLI


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """``python -m components.data.synthetic --members 1000 --out DIR``."""
    d = SyntheticWorldConfig()
    ap = argparse.ArgumentParser(
        prog="python -m components.data.synthetic",
        description="Generate the synthetic professional world (members, items, interactions) "
        "as canonical Parquet tables. Same arguments, same files. See docs/synthetic-world.md.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ap.add_argument(
        "--out", type=Path, required=True, help="output directory (members/, items/, interactions/)"
    )
    ap.add_argument("--members", type=int, default=d.members, help="number of members")
    ap.add_argument("--seed", type=int, default=d.seed, help="random seed")
    ap.add_argument(
        "--members-per-file",
        type=int,
        default=d.members_per_file,
        help="members per chunk / part file (bounds memory)",
    )
    ap.add_argument("--companies", type=int, default=d.companies, help="number of companies")
    ap.add_argument("--jobs", type=int, default=d.jobs, help="number of job posts")
    ap.add_argument("--posts", type=int, default=d.posts, help="number of feed posts")
    ap.add_argument("--courses", type=int, default=d.courses, help="number of courses")
    ap.add_argument("--days", type=int, default=d.days, help="length of the simulated period")
    ap.add_argument(
        "--start-date",
        type=datetime.fromisoformat,
        default=d.start_date,
        help="first day of the period (ISO date, UTC)",
    )
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    try:
        cfg = SyntheticWorldConfig(
            members=args.members,
            companies=args.companies,
            jobs=args.jobs,
            posts=args.posts,
            courses=args.courses,
            days=args.days,
            start_date=args.start_date,
            members_per_file=args.members_per_file,
            seed=args.seed,
        )
    except Exception as exc:  # pydantic names the field and the bound
        ap.error(str(exc))
    summary = generate_world(cfg, args.out, progress=not args.quiet)
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
