"""The world's vocabularies: the words profiles and items are made of.

Seniorities, course levels, workplaces, cities, the industries (each with its roles, skill
pool, topics, company-name suffixes and hub cities), the job titles derived from them,
company-name prefixes, and the item types, surfaces and actions of the logged events.
Plain data (and the distributions tied to it): no randomness is drawn here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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
