"""The command line: ``python -m components.data.synthetic --members 1000 --out DIR``."""

from __future__ import annotations

import argparse
import json
from datetime import datetime
from pathlib import Path
from typing import Any

from components.config import SyntheticWorldConfig
from components.data.synthetic.writer import generate_world


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
