"""The mapping spec grown for real logs (issue 15): null markers, several rows per id,
items cut from event columns, derived columns, HTML in text, gzip files, timestamps as
loggers write them. Every source file is written by the test under tmp_path."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml

from components.data.mapping import (
    SOURCE_ROWS,
    MappingError,
    legal_actions,
    load_mapping_spec,
    parse_time,
    read_mapped,
    strip_html,
)
from components.data.tables import write_tables
from components.data.validate import validate_dataset


def _spec(tmp_path: Path, spec: dict[str, Any]) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


# --------------------------------------------------------------------------- timestamps


@pytest.mark.parametrize(("text", "expected"), [
    ("2014-12-12 20:12:35 UTC", _utc(2014, 12, 12, 20, 12, 35)),   # the log
    ("2014-12-12 20:12:35UTC", _utc(2014, 12, 12, 20, 12, 35)),
    ("2014-12-12T20:12:35Z", _utc(2014, 12, 12, 20, 12, 35)),
    ("2014-12-12t20:12:35z", _utc(2014, 12, 12, 20, 12, 35)),
    ("2014-12-12 20:12:35 GMT", _utc(2014, 12, 12, 20, 12, 35)),
    ("2014-12-12 20:12:35.123 UTC", _utc(2014, 12, 12, 20, 12, 35, 123000)),
    ("2014-12-12T20:12:35.123456789Z", _utc(2014, 12, 12, 20, 12, 35, 123456)),
    ("2014-12-12 20:12:35,5", _utc(2014, 12, 12, 20, 12, 35, 500000)),
    ("2014-12-12T20:12:35+01:00", _utc(2014, 12, 12, 19, 12, 35)),
    ("2014-12-12 20:12:35 -0500", _utc(2014, 12, 13, 1, 12, 35)),
    ("2014-12-12 20:12:35 UTC+1", _utc(2014, 12, 12, 19, 12, 35)),
    ("2014-12-12 20:12:35 EST", _utc(2014, 12, 13, 1, 12, 35)),
    ("2014-07-12 20:12:35 CEST", _utc(2014, 7, 12, 18, 12, 35)),
    ("2014-07-12 20:12:35 Europe/Paris", _utc(2014, 7, 12, 18, 12, 35)),
    ("2014-12-12 20:12 America/New_York", _utc(2014, 12, 13, 1, 12)),
    ("2014-12-12 20:12", _utc(2014, 12, 12, 20, 12)),
    ("2014/12/12 20:12:35", _utc(2014, 12, 12, 20, 12, 35)),
    ("2014-1-5 7:05:00", _utc(2014, 1, 5, 7, 5)),
    ("2014-12-12", _utc(2014, 12, 12)),
    ("2014-12-12 UTC", _utc(2014, 12, 12)),
    ("Fri, 12 Dec 2014 20:12:35 GMT", _utc(2014, 12, 12, 20, 12, 35)),
    ("  2014-12-12 20:12:35  ", _utc(2014, 12, 12, 20, 12, 35)),
    ("1418415155", _utc(2014, 12, 12, 20, 12, 35)),                 # epoch seconds
    ("1418415155123", _utc(2014, 12, 12, 20, 12, 35, 123000)),      # epoch milliseconds
    ("12/12/2014 20:12:35", None),   # day or month first? needs a strftime pattern
    ("2014-12-12 20:12:35 XYZ", None),  # an unknown zone is not guessed as UTC
    ("2014-12-12 8:12 PM", None),
    ("NA", None),
])
def test_auto_reads_real_world_timestamps(text: str, expected: datetime | None) -> None:
    parsed, raw = parse_time(pl.Series("timestamp", [text]), "auto")
    assert parsed.to_list() == [expected]
    assert raw is not None and raw.to_list() == [None if expected else text]


def test_naive_text_uses_the_timezone_and_numbers_their_size() -> None:
    parsed, _ = parse_time(pl.Series("t", ["2014-07-12 20:00:00", "2014-07-12 20:00:00 UTC"]),
                           "auto", "Europe/Berlin")
    assert parsed.to_list() == [_utc(2014, 7, 12, 18), _utc(2014, 7, 12, 20)]
    ints, _ = parse_time(pl.Series("t", [1_418_415_155, 1_418_415_155_123]), "auto")
    assert ints.to_list() == [_utc(2014, 12, 12, 20, 12, 35), _utc(2014, 12, 12, 20, 12, 35, 123000)]


# --------------------------------------------------------------------------- the job-board log


VIEWS = """\
UserID,JobID,ViewedAt,JobTitle,City,State,Description
u1,j1,2014-12-12 20:12:35 UTC,Cook,Austin,TX,<p>Fry <b>things</b> &amp; more</p>
u1,j2,2014-12-13 08:00:00 UTC,Nurse,NA,NA,NA
u2,j1,2014-12-14 09:30:00 UTC,Head cook,Austin,TX,<p>Now &lt;b&gt;head&lt;/b&gt; cook</p>
u3,j3,2014-12-14 10:00:00 UTC,NA,Boston,MA,
NA,j3,2014-12-15 10:00:00 UTC,Pilot,Boston,MA,Fly
"""
APPLICANTS = """\
UserID,Degree,Major,GraduationDate,State
u1,Bachelor's,Cooking,2010-06-01,TX
u1,Master's,Cooking,2012-06-01,NA
u2,NA,Nursing,NA,MA
u2,Bachelor's,Biology,2008-05-01,MA
u3,High School,NA,2005-06-01,CA
NA,Bachelor's,Art,2001-01-01,NY
"""


def _job_board(tmp_path: Path, compress: bool = False) -> Path:
    """Only job views logged; applicant profiles over several rows; 'NA' for missing."""
    data = tmp_path / "logs"
    data.mkdir()
    for name, text in (("views.csv", VIEWS), ("applicants.csv", APPLICANTS)):
        if compress:
            (data / f"{name}.gz").write_bytes(gzip.compress(text.encode()))
        else:
            (data / name).write_text(text)
    gz = ".gz" if compress else ""
    return _spec(tmp_path, {
        "name": "job-board",
        "null_values": ["NA", ""],
        "interactions": {
            "path": f"logs/views.csv{gz}",
            "columns": {"member_id": "UserID", "item_id": "JobID", "timestamp": "ViewedAt"},
            "constants": {"surface": "job_search", "action": "view"},
        },
        "members": {
            "path": f"logs/applicants.csv{gz}",
            "columns": {"member_id": "UserID", "degrees": "Degree", "majors": "Major",
                        "graduated": "GraduationDate", "state": "State"},
            "timestamp": {"columns": ["graduated"]},
            "aggregate": {"sort": "graduated", "default": "last",
                          "columns": {"degrees": {"how": "join", "separator": "; "},
                                      "majors": "list", "state": "first"}},
        },
        "items": {
            "path": f"logs/views.csv{gz}",
            "columns": {"item_id": "JobID", "title": "JobTitle", "seen": "ViewedAt",
                        "description": "Description"},
            "derive": {"location": "{City}, {State}"},
            "constants": {"item_type": "job"},
            "timestamp": {"columns": ["seen"]},
            "text": {"strip_html": ["description"]},
            "distinct": {"latest_by": "seen"},
        },
    })


def test_job_board_log_reads_and_validates(tmp_path: Path) -> None:
    spec_path = _job_board(tmp_path)
    t = read_mapped(spec_path)
    # interactions: 5 rows in, 5 out; the 'NA' member id is a missing id, not a member "NA"
    x = t.interactions
    assert x.height == 5
    assert x.get_column("member_id").to_list() == ["u1", "u1", "u2", "u3", None]
    assert x.get_column("timestamp")[0] == _utc(2014, 12, 12, 20, 12, 35)

    # members: 6 rows -> one per applicant, plus the keyless row left for validation
    m = t.members
    assert m.get_column("member_id").to_list() == ["u1", "u2", "u3", None]
    assert m.get_column(SOURCE_ROWS).to_list() == [2, 2, 1, 1]
    assert m.get_column(SOURCE_ROWS).sum() == APPLICANTS.count("\n") - 1  # rows in = rows out
    u1, u2 = m.row(0, named=True), m.row(1, named=True)
    assert u1["degrees"] == "Bachelor's; Master's" and u1["majors"] == ["Cooking"]
    assert u1["state"] == "TX"                                     # first non-null
    assert u1["graduated"] == _utc(2012, 6, 1)                     # last by graduation
    # a row without a graduation date sorts as the oldest: Nursing comes first
    assert u2["degrees"] == "Bachelor's" and u2["majors"] == ["Nursing", "Biology"]
    assert m.row(2, named=True)["majors"] == []

    # items cut from the view log: one per job, the latest view's row wins
    i = t.items.drop(SOURCE_ROWS)
    assert i.get_column("item_id").to_list() == ["j1", "j2", "j3"]
    j1, j2, j3 = (i.row(k, named=True) for k in range(3))
    assert j1["title"] == "Head cook" and j1["description"] == "Now head cook"  # double-escaped
    assert j1["location"] == "Austin, TX" and j2["location"] is None
    assert j3["title"] == "Pilot" and j3["description"] == "Fly"   # the latest row, whole
    assert t.items.get_column(SOURCE_ROWS).to_list() == [2, 1, 2]

    write_tables(t, tmp_path / "in")
    report = validate_dataset(tmp_path / "in", tmp_path / "out",
                              legal_actions(load_mapping_spec(spec_path)),
                              {"members": 0.3, "interactions": 0.3})
    assert report.balanced
    assert report.tables["members"].quarantined == {"missing_member_id": 1}
    assert report.tables["items"].quarantined == {}
    assert report.tables["interactions"].quarantined == {"missing_member_id": 1}
    assert report.tables["interactions"].unknown_refs == {"unknown_member": 0, "unknown_item": 0}
    assert not any("HTML" in w for w in report.warnings)  # stripped, so no markup warning


def test_gzip_files_are_read_by_suffix_and_content(tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    (tmp_path / "packed").mkdir()
    plain = read_mapped(_job_board(tmp_path / "plain"))
    packed = read_mapped(_job_board(tmp_path / "packed", compress=True))  # views.csv.gz, ...
    assert packed.interactions.equals(plain.interactions)
    assert packed.members.equals(plain.members) and packed.items.equals(plain.items)


@pytest.mark.parametrize("name", ["ev.json", "ev.json.gz", "ev.jsonl.gz", "lines.json"])
def test_json_and_json_lines_with_or_without_gzip(tmp_path: Path, name: str) -> None:
    rows = [{"u": "a", "i": 1, "t": "2014-12-12 20:12:35 UTC"}, {"u": "NA", "i": 2, "t": None}]
    if name == "lines.json" or ".jsonl" in name:  # a '.json' that is really JSON lines
        text = "".join(json.dumps(r) + "\n" for r in rows)
    else:
        text = json.dumps(rows)
    path = tmp_path / name
    path.write_bytes(gzip.compress(text.encode()) if name.endswith(".gz") else text.encode())
    t = read_mapped(_spec(tmp_path, {
        "default_item_type": "job", "null_values": ["NA"],
        "interactions": {"path": name, "columns": {"member_id": "u", "item_id": "i",
                                                   "timestamp": "t"},
                         "constants": {"surface": "web", "action": "view"}},
    }))
    assert t.interactions.get_column("member_id").to_list() == ["a", None]
    assert t.interactions.get_column("timestamp").to_list() == [_utc(2014, 12, 12, 20, 12, 35), None]


def test_null_values_per_table_replace_the_default(tmp_path: Path) -> None:
    (tmp_path / "ev.csv").write_text("u,i,t,score\nx,1,1418415155,NA\n-,2,1418415156,3\n")
    spec = {"default_item_type": "job", "null_values": ["NA"],
            "interactions": {"path": "ev.csv", "columns": {"member_id": "u", "item_id": "i",
                                                          "timestamp": "t", "value": "score"},
                             "constants": {"surface": "web", "action": "view"}}}
    x = read_mapped(_spec(tmp_path, spec)).interactions
    assert x.get_column("value").to_list() == [None, 3.0]  # numeric despite the 'NA'
    assert x.get_column("member_id").to_list() == ["x", "-"]
    spec["interactions"]["null_values"] = ["-"]  # the table's own list wins
    x = read_mapped(_spec(tmp_path, spec)).interactions
    assert x.get_column("member_id").to_list() == ["x", None]
    assert x.get_column("value").to_list() == [None, 3.0]  # 'NA' is not a number either way


def test_strip_html_cases() -> None:
    s = pl.Series("d", ["<p>Senior <b>cook</b></p><p>Austin&nbsp;TX</p>",
                        "<script>alert(1)</script>Tom &amp; Jerry<br/>Inc.",
                        "a < b and c > d", "&lt;li&gt;escaped&lt;/li&gt;", None])
    assert strip_html(s).to_list() == ["Senior cook Austin TX", "Tom & Jerry Inc.",
                                       "a < b and c > d", "escaped", None]


# --------------------------------------------------------------------------- spec errors


def _base(**tables: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "default_item_type": "job",
        "interactions": {"path": "ev.csv", "columns": {"member_id": "u", "item_id": "i",
                                                      "timestamp": "t"},
                         "constants": {"surface": "web", "action": "view"}},
    }
    for name, extra in tables.items():
        base = {"path": "ev.csv", "columns": ({"member_id": "u"} if name == "members" else
                                              {"item_id": "i", "title": "t"})}
        spec[name] = {**base, **extra} if name != "interactions" else {**spec[name], **extra}
    return spec


@pytest.mark.parametrize(("tables", "fragment"), [
    ({"interactions": {"aggregate": {"default": "last"}}},
     "interactions.aggregate: only members and items merge"),
    ({"members": {"aggregate": {"columns": {"skill": "list"}}}},
     "members.aggregate.columns: ['skill'] are not output columns"),
    ({"members": {"aggregate": {"sort": "when"}}}, "members.aggregate.sort: 'when'"),
    ({"members": {"aggregate": {"columns": {"member_id": "list"}}}},
     "members.aggregate.columns.member_id: the id is what rows are grouped by"),
    ({"members": {"aggregate": {}, "distinct": True}}, "members: set either `aggregate`"),
    ({"items": {"distinct": {"latest_by": "seen"}}}, "items.distinct.latest_by: 'seen'"),
    ({"items": {"distinct": {"latest": "t"}}}, "unknown key 'items.distinct.latest'"),
    ({"members": {"aggregate": {"columns": {"x": "sum"}}, "keep": ["x"]}},
     "members.aggregate.columns.x"),
    ({"members": {"aggregate": {"columns": {"x": {"how": "list", "separator": ";"}}},
                  "keep": ["x"]}}, "separator is only used by `how: join`"),
    ({"items": {"derive": {"where": "{City, {State}"}}}, "items.derive"),
    ({"items": {"derive": {"where": "{0} in {}"}}}, "derive.where"),
    ({"items": {"derive": {"where": "nowhere"}}}, "derive.where: template 'nowhere' names no"),
    ({"items": {"derive": {"title": "{t}"}}}, "['title'] set both under `columns` and `derive`"),
    ({"items": {"text": {"strip_html": ["body"]}}}, "items.text.strip_html: ['body']"),
])
def test_spec_errors_name_the_key(tmp_path: Path, tables: dict[str, Any], fragment: str) -> None:
    with pytest.raises(MappingError) as err:
        load_mapping_spec(_spec(tmp_path, _base(**tables)))
    assert fragment in str(err.value)


def test_derive_names_a_missing_source_column_and_its_key(tmp_path: Path) -> None:
    (tmp_path / "ev.csv").write_text("u,i,t,City\na,1,1418415155,Austin\n")
    spec = _base(items={"derive": {"location": "{City}, {State}"}})
    with pytest.raises(MappingError, match=r"source column 'State' \(named by "
                                           r"items\.derive\.location"):
        read_mapped(_spec(tmp_path, spec))


def test_derived_title_satisfies_the_required_column(tmp_path: Path) -> None:
    (tmp_path / "ev.csv").write_text("u,i,t,name,cat\na,1,1418415155,Cook,food\n"
                                     "a,2,1418415156,Clerk,\n")
    spec = _base(items={"columns": {"item_id": "i"}, "derive": {"title": "{name} ({cat})"}})
    items = read_mapped(_spec(tmp_path, spec)).items
    assert items.get_column("title").to_list() == ["Cook (food)", "Clerk"]  # no empty '()'
