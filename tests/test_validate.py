"""Schema validation and quarantine accounting on real Parquet files."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import polars as pl
import pytest

from components.data.tables import read_table, write_table
from components.data.validate import SchemaError, validate_dataset

ACTIONS = ["apply", "view", "dismiss"]
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _members() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "member_id": ["m1", "m2", "m3", None, "m2"],
            "headline": ["Data Engineer", "Nurse", "Chef", "ghost", "Nurse again"],
            "skills": [["python"], ["care"], ["cooking"], [], ["care"]],
        }
    )


def _items() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "item_id": ["j1", "j2", "j3", "j3"],
            "item_type": ["job", "job", "job", "job"],
            "title": ["Engineer", "Nurse", None, "Cook"],
            "created_at": [T0, T0, T0, T0],
        }
    )


def _interactions() -> pl.DataFrame:
    rows = [
        ("m1", "j1", "jobs-home", "apply", "2026-01-02T10:00:00Z"),   # ok
        ("m1", "j1", "jobs-home", "apply", "2026-01-02T10:00:00Z"),   # duplicate
        ("m2", "j2", "jobs-home", "view", "2026-01-03T10:00:00"),     # ok (naive -> UTC)
        ("m2", "j2", "jobs-home", "teleport", "2026-01-03T11:00:00Z"),  # unknown action
        ("m3", "j2", "jobs-home", "view", "not a time"),              # unparsable
        ("m3", "j2", "jobs-home", "view", None),                      # missing timestamp
        (None, "j2", "jobs-home", "view", "2026-01-04T10:00:00Z"),    # missing member id
        ("m9", "j2", "jobs-home", "view", "2026-01-04T10:00:00Z"),    # unknown member
        ("m3", "j3", "jobs-home", "view", "2026-01-04T10:00:00Z"),    # ok: j3's 2nd copy kept
        ("m3", "j7", "jobs-home", "view", "2026-01-04T10:00:00Z"),    # unknown item
    ]
    return pl.DataFrame(
        rows, schema=["member_id", "item_id", "surface", "action", "timestamp"], orient="row"
    )


def _dataset(tmp_path, interactions=None):
    src = tmp_path / "src"
    write_table(_members(), src / "members")
    write_table(_items(), src / "items")
    write_table(interactions if interactions is not None else _interactions(), src / "interactions")
    return src


def test_quarantine_accounts_for_every_row(tmp_path):
    src = _dataset(tmp_path)
    # a second part file with epoch-second timestamps (another surface: not duplicates)
    epoch = int(datetime(2026, 1, 2, 10, tzinfo=UTC).timestamp())
    write_table(
        pl.DataFrame({"member_id": ["m1", "m2"], "item_id": ["j1", "j1"], "surface": ["feed"] * 2,
                      "action": ["apply", "dismiss"], "timestamp": [epoch, epoch]}),
        src / "interactions", part=1,
    )
    # a third file repeats a row of the second: duplicates are found across files
    write_table(
        pl.DataFrame({"member_id": ["m1"], "item_id": ["j1"], "surface": ["feed"],
                      "action": ["apply"], "timestamp": [epoch]}),
        src / "interactions", part=2,
    )
    out = tmp_path / "out"
    report = validate_dataset(src, out, ACTIONS)

    m, i, x = (report.tables[t] for t in ("members", "items", "interactions"))
    assert (m.rows_in, m.rows_kept, m.quarantined) == (
        5, 3, {"missing_member_id": 1, "duplicate_member_id": 1})
    assert (i.rows_in, i.rows_kept, i.quarantined) == (4, 3, {"missing_title": 1})  # j3: 1st copy bad, 2nd kept
    assert x.rows_in == 13
    assert x.quarantined == {
        "duplicate": 2, "unknown_action": 1, "unparsable_timestamp": 1, "missing_timestamp": 1,
        "missing_member_id": 1, "unknown_member": 1, "unknown_item": 1,
    }
    assert x.rows_kept == 5
    assert report.balanced

    # The files on disk agree with the report, and the quarantine keeps the original text.
    assert read_table(out, "interactions").height == x.rows_kept
    q = read_table(out / "quarantine", "interactions")
    assert q.height == x.rows_quarantined
    bad_ts = q.filter(pl.col("reason") == "unparsable_timestamp")
    assert bad_ts.get_column("timestamp").to_list() == ["not a time"]
    assert set(q.columns) >= {"reason", "source_file", "source_row"}
    assert read_table(out, "members").height == 3
    assert read_table(out, "items").filter(pl.col("item_id") == "j3")["title"].to_list() == ["Cook"]
    saved = json.loads((out / "report.json").read_text())
    assert saved["interactions"]["balanced"] is True
    assert saved["interactions"]["rows_in"] == 13


def test_clean_output_is_canonical(tmp_path):
    out = tmp_path / "out"
    validate_dataset(_dataset(tmp_path), out, ACTIONS)
    x = read_table(out, "interactions")
    assert x.schema["timestamp"] == pl.Datetime("us", "UTC")
    assert x.schema["member_id"] == pl.Utf8
    naive = x.filter(pl.col("member_id") == "m2")["timestamp"][0]
    assert naive == datetime(2026, 1, 3, 10, tzinfo=UTC)


def test_missing_column_names_file_column_and_type(tmp_path):
    src = _dataset(tmp_path, _interactions().drop("action"))
    with pytest.raises(SchemaError) as err:
        validate_dataset(src, tmp_path / "out", ACTIONS)
    msg = str(err.value)
    assert "part-00000.parquet" in msg and "'action'" in msg and "string" in msg


def test_wrong_type_names_file_column_and_type(tmp_path):
    bad = _interactions().with_columns(pl.lit(1.5).alias("surface"))
    src = _dataset(tmp_path, bad)
    with pytest.raises(SchemaError, match=r"column 'surface'.*expected string"):
        validate_dataset(src, tmp_path / "out", ACTIONS)


def test_corrupt_file_stops_with_its_name(tmp_path):
    src = _dataset(tmp_path)
    corrupt = src / "interactions" / "part-00001.parquet"
    corrupt.write_bytes(b"PAR1 this is not really parquet")
    with pytest.raises(SchemaError, match=r"part-00001\.parquet: not a readable Parquet file"):
        validate_dataset(src, tmp_path / "out", ACTIONS)


def test_adapter_provenance_marks_unparsable_created_at(tmp_path):
    src = _dataset(tmp_path)
    items = pl.DataFrame({
        "item_id": ["j1", "j2"], "item_type": ["job", "job"], "title": ["a", "b"],
        "created_at": [T0, None], "_raw_created_at": [None, "31/02/2026"],
    })
    write_table(items, src / "items")
    report = validate_dataset(src, tmp_path / "out", ACTIONS)
    assert report.tables["items"].quarantined == {"unparsable_created_at": 1}
    assert "_raw_created_at" not in read_table(tmp_path / "out", "items").columns
    q = read_table(tmp_path / "out" / "quarantine", "items")
    assert q["_raw_created_at"].to_list() == ["31/02/2026"]
