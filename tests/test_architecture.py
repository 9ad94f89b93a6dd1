"""docs/architecture.md stays true: what it names exists, and every stage is on it."""

from __future__ import annotations

import re
from pathlib import Path

from components.config import load_config

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "architecture.md").read_text()


def test_every_path_named_exists():
    paths = set(re.findall(r"`((?:components|pipelines|examples|docs|tests)/[\w./-]*)`", DOC))
    assert len(paths) > 20
    missing = sorted(p for p in paths if not (ROOT / p.rstrip("/")).exists())
    assert not missing, f"docs/architecture.md names paths that do not exist: {missing}"


def test_every_stage_of_the_default_is_in_the_table():
    from pipelines.stages import build_pipeline

    table = set(re.findall(r"^\| `(\w+)` \|", DOC, flags=re.M))
    stages = set(build_pipeline(load_config("local")).order)
    assert stages == table, f"stages {sorted(stages - table)} missing, {sorted(table - stages)} unknown"
