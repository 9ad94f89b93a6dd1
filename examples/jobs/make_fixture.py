"""Write a small, seeded, synthetic job-board log of the public dataset's shape.

Only job views are logged (``views.csv``: applicant, job, a ``... UTC`` time, and the job's
title, company, industry, city and state repeated on every view row); applicant profiles
are spread over one row per past position (``positions.csv``); missing cells read ``NA``.
Views lean towards jobs of the applicant's own line of work and city, so a ranker has
something to learn. Nothing here is real data.

    python -m examples.jobs.make_fixture OUT     # from the repository root
    python examples/jobs/make_fixture.py OUT     # or by path

writes ``OUT/data/views.csv``, ``OUT/data/positions.csv`` and ``OUT/jobs.yaml`` (a copy of
the mapping spec beside it, whose paths are relative to itself). Without ``OUT`` it writes
into ``examples/jobs/`` itself (``data/`` there is git-ignored).
"""

from __future__ import annotations

import csv
import random
import shutil
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent
SPEC = HERE / "jobs.yaml"

START = datetime(2014, 12, 1, tzinfo=UTC)
DAYS = 60
NA = "NA"

#: (city, state name, state code)
PLACES = [
    ("Austin", "Texas", "TX"), ("Houston", "Texas", "TX"), ("Boston", "Massachusetts", "MA"),
    ("Chicago", "Illinois", "IL"), ("Denver", "Colorado", "CO"), ("Seattle", "Washington", "WA"),
    ("Miami", "Florida", "FL"), ("Atlanta", "Georgia", "GA"),
]
#: line of work -> (industry, job titles)
FIELDS = {
    "nursing": ("Healthcare", ["Registered Nurse", "Nurse Practitioner", "Nursing Assistant"]),
    "software": ("Technology", ["Software Engineer", "Web Developer", "Data Analyst"]),
    "kitchen": ("Hospitality", ["Line Cook", "Sous Chef", "Kitchen Manager"]),
    "driving": ("Logistics", ["Truck Driver", "Delivery Driver", "Dispatcher"]),
    "finance": ("Finance", ["Accountant", "Bookkeeper", "Financial Analyst"]),
    "retail": ("Retail", ["Sales Associate", "Store Manager", "Cashier"]),
}
COMPANIES = {
    "Healthcare": ["Mercy Health", "CarePoint Clinics", "St. Vincent Hospital"],
    "Technology": ["Bitforge", "Cloudline Systems", "Nimbus Data"],
    "Hospitality": ["Harbor Grill", "Blue Plate Group", "Sage Bistro"],
    "Logistics": ["RoadRunner Freight", "Swift Parcel", "Metro Movers"],
    "Finance": ["Ledger & Co", "Summit Bank", "Clearwater Tax"],
    "Retail": ["ShopWell", "Urban Outfit", "Corner Mart"],
}

VIEW_COLUMNS = ["Applicant.ID", "Job.ID", "View.Start", "Position", "Company", "Industry",
                "City", "State.Name", "State.Code", "Created.At"]
POSITION_COLUMNS = ["Applicant.ID", "Position.Name", "City", "State.Name", "State.Code",
                    "Start.Date", "End.Date"]


def _utc_text(t: datetime) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%S UTC")


def _na(rng: random.Random, value: str, share: float) -> str:
    return NA if rng.random() < share else value


def make_jobs(rng: random.Random, n_jobs: int) -> list[dict]:
    jobs = []
    for j in range(n_jobs):
        field = rng.choice(list(FIELDS))
        industry, titles = FIELDS[field]
        city, state, code = rng.choice(PLACES)
        created = START + timedelta(days=rng.uniform(-30, DAYS - 10), seconds=rng.randrange(86400))
        jobs.append({
            "Job.ID": str(100001 + j), "field": field, "Position": rng.choice(titles),
            # a few jobs were exported without a company or a state: NA on every view row
            "Company": _na(rng, rng.choice(COMPANIES[industry]), 0.03), "Industry": industry,
            "City": city, "State.Name": state, "State.Code": _na(rng, code, 0.03),
            "created": created, "appeal": rng.lognormvariate(0.0, 0.6),
        })
    return jobs


def make_applicants(rng: random.Random, n_applicants: int) -> tuple[list[dict], list[dict]]:
    """Applicants (their line of work and city) and their position rows, 1-4 each."""
    applicants, rows = [], []
    for a in range(n_applicants):
        aid = str(5001 + a)
        field = rng.choice(list(FIELDS))
        home = rng.choice(PLACES)
        n_pos = rng.randint(1, 4)
        first = datetime(2014, 11, 1) - timedelta(days=rng.randint(400, 3000))
        span = (datetime(2014, 11, 1) - first).days
        starts = sorted(first + timedelta(days=rng.randint(0, span)) for _ in range(n_pos))
        for k, s in enumerate(starts):
            last = k == n_pos - 1
            # earlier jobs may be in another line of work or city; the latest is the applicant's
            f = field if last or rng.random() < 0.7 else rng.choice(list(FIELDS))
            city, state, code = home if last or rng.random() < 0.6 else rng.choice(PLACES)
            end = NA if last else starts[k + 1].strftime("%Y-%m-%d")
            rows.append({
                "Applicant.ID": aid, "Position.Name": _na(rng, rng.choice(FIELDS[f][1]), 0.04),
                "City": _na(rng, city, 0.03), "State.Name": state, "State.Code": code,
                "Start.Date": _na(rng, s.strftime("%Y-%m-%d"), 0.05), "End.Date": end,
            })
        applicants.append({"id": aid, "field": field, "city": home[0],
                           "activity": rng.lognormvariate(0.0, 0.5)})
    rng.shuffle(rows)  # exports are not sorted by applicant: aggregate must not assume it
    return applicants, rows


def make_views(rng: random.Random, applicants: list[dict], jobs: list[dict],
               n_views: int) -> list[dict]:
    """Views over DAYS days: a job of the applicant's line of work is 4x, one in their
    city 3x as likely to be viewed; each job also has its own appeal (popularity)."""
    total = sum(a["activity"] for a in applicants)
    views = []
    for a in applicants:
        n = max(3, round(n_views * a["activity"] / total))
        weights = [j["appeal"] * (1 + 3 * (j["field"] == a["field"])) * (1 + 2 * (j["City"] == a["city"]))
                   for j in jobs]
        for _ in range(n):
            t = START + timedelta(seconds=rng.randrange(DAYS * 86400))
            live = [w if j["created"] <= t else 0.0 for j, w in zip(jobs, weights, strict=True)]
            job = rng.choices(jobs, weights=live)[0]
            views.append({"Applicant.ID": a["id"], "Job.ID": job["Job.ID"], "t": t,
                          **{c: job[c] for c in ("Position", "Company", "Industry", "City",
                                                 "State.Name", "State.Code")},
                          "Created.At": _utc_text(job["created"])})
    views.sort(key=lambda v: v["t"])
    for v in views:
        v["View.Start"] = _utc_text(v.pop("t"))
    # one view the export lost the applicant of: validation quarantines it, with a reason
    views[len(views) // 2]["Applicant.ID"] = NA
    return views


def _write(path: Path, rows: list[dict], columns: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def main(out_dir: str | Path = HERE, *, applicants: int = 150, jobs: int = 200,
         views: int = 3000, seed: int = 0) -> dict[str, int]:
    """Write the log under ``out_dir`` (``data/*.csv`` and ``jobs.yaml``); returns the
    row counts written."""
    out = Path(out_dir)
    rng = random.Random(seed)
    job_rows = make_jobs(rng, jobs)
    people, position_rows = make_applicants(rng, applicants)
    view_rows = make_views(rng, people, job_rows, views)
    _write(out / "data" / "views.csv", view_rows, VIEW_COLUMNS)
    _write(out / "data" / "positions.csv", position_rows, POSITION_COLUMNS)
    if (out / "jobs.yaml").resolve() != SPEC:
        shutil.copyfile(SPEC, out / "jobs.yaml")
    viewed = {v["Job.ID"] for v in view_rows}
    return {"views": len(view_rows), "positions": len(position_rows), "applicants": len(people),
            "jobs_viewed": len(viewed)}


if __name__ == "__main__":
    target = sys.argv[1] if len(sys.argv) > 1 else HERE
    counts = main(target)
    print(f"wrote {counts} to {Path(target) / 'data'}; spec: {Path(target) / 'jobs.yaml'}")
