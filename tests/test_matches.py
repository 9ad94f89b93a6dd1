"""Match hints (components/promptify/matches.py): what a candidate shares with the member."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

from components.promptify.matches import MatchHints, shared_fields

T0 = datetime(2026, 1, 1, tzinfo=UTC)
US = 1_000_000


def _us(t: datetime) -> int:
    return int(t.timestamp() * US)


@pytest.fixture
def world():
    members = pl.DataFrame({
        "member_id": ["a", "b"],
        "headline": ["Nurse", "Coder"],
        "industry": ["Healthcare", "Software"],
        "location": ["Berlin", "Paris"],
        "skills": [["Triage", "care", "sql"], ["python"]],
    })
    items = pl.DataFrame({
        "item_id": ["j1", "j2", "j3"],
        "item_type": ["job"] * 3,
        "title": ["Nurse", "Dev", "Admin"],
        "industry": ["healthcare", "Software", None],
        "location": ["Berlin", "Berlin", "Paris"],
        "skills": [["care", "triage", "rust", "go"], ["python"], []],
        "company": ["Acme", "Acme", "Bolt"],
        "created_at": [T0] * 3,
    })
    history = pl.DataFrame({
        "member_id": ["a", "a", "a", "b"],
        "item_id": ["j1", "j2", "j3", "j2"],
        "timestamp": [T0 + timedelta(days=d) for d in (1, 2, 3, 1)],
    })
    return members, items, history


def test_default_fields_are_the_shared_non_id_non_text_columns(world):
    members, items, _ = world
    assert shared_fields(members, items) == {"industry": "industry", "location": "location", "skills": "skills"}


def test_profile_matches_compare_case_insensitively_and_share_list_elements(world):
    members, items, history = world
    h = MatchHints.build(members, items, history)
    assert h.profile_matches("a", "j1") == [("industry", True), ("location", True),
                                            ("skills", (["care", "triage"], 4))]
    assert h.profile_matches("a", "j3") == []  # null industry, other city, no skills
    assert h.profile_matches("b", "j2") == [("industry", True), ("skills", (["python"], 1))]


def test_history_counts_only_events_strictly_before_the_cutoff(world):
    members, items, history = world
    h = MatchHints.build(members, items, history)
    # member a saw j1 (day 1, Acme, healthcare) and j2 (day 2, Acme, software), j3 on day 3
    assert h.history_counts("a", "j2", _us(T0 + timedelta(days=1))) == []
    assert h.history_counts("a", "j2", _us(T0 + timedelta(days=2))) == [("company", 1)]
    assert h.history_counts("a", "j2", _us(T0 + timedelta(days=2, seconds=1))) == [("company", 2), ("industry", 1)]
    assert h.history_counts("nobody", "j2", _us(T0 + timedelta(days=9))) == []


def test_render_every_style_says_none_when_nothing_matches(world):
    members, items, history = world
    h = MatchHints.build(members, items, history)
    cut = _us(T0 + timedelta(days=5))
    md = h.render("a", "j1", cut, "markdown")
    assert md == "\n- Matches your profile: industry, location, skills 2/4\n- In your history: company 2, industry 1"
    assert h.render("a", "j3", _us(T0), "compact") == "; matches=none; history=none"
    nar = h.render("a", "j1", cut, "narrative")
    assert nar.startswith("; matches your industry, location and 2 of 4 skills;")
    assert "2 with this company" in nar
    with pytest.raises(ValueError, match="unknown style"):
        h.render("a", "j1", cut, "yaml")


def test_match_fields_name_the_missing_column_and_history_can_be_off(world):
    members, items, history = world
    with pytest.raises(ValueError, match="member column 'city'"):
        MatchHints.build(members, items, history, fields={"city": "location"})
    with pytest.raises(ValueError, match="item column 'town'"):
        MatchHints.build(members, items, history, fields={"location": "town"})
    h = MatchHints.build(members, items, history, fields={"location": "location"}, history_fields=[])
    assert h.render("a", "j2", _us(T0 + timedelta(days=9)), "compact") == "; matches=location"
