"""Schema validation, quarantine accounting and quarantine limits on real Parquet files."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import polars as pl
import pytest

from components.data.tables import read_table, write_table
from components.data.validate import (
    QuarantineError,
    SchemaError,
    ValidationConfig,
    guess_time_formats,
    validate_dataset,
)

ACTIONS = ["apply", "view", "dismiss"]
T0 = datetime(2026, 1, 1, tzinfo=UTC)
# The small fixtures below break a large share of their rows on purpose.
ACCEPT_ALL = {"members": 1.0, "items": 1.0, "interactions": 1.0}


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
    report = validate_dataset(src, out, ACTIONS, ACCEPT_ALL)

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
    # Under the (raised) limits every reason is a warning with its count and share.
    assert len(report.warnings) == len(m.quarantined) + len(i.quarantined) + len(x.quarantined)
    assert any("1 of 13 rows (7.7%) quarantined as unknown_action" in w for w in report.warnings)
    assert saved["interactions"]["warnings"] and saved["interactions"]["examples"]["unknown_item"]
    metrics = report.metrics()
    assert metrics["interactions.q_share.duplicate"] == 2 / 13
    assert metrics["interactions.unknown_member"] == 1 and metrics["interactions.unknown_item"] == 1
    assert metrics["warnings"] == len(report.warnings)
    assert any(line.startswith("WARNING interactions:") for line in report.summary_lines())


def test_clean_output_is_canonical(tmp_path):
    out = tmp_path / "out"
    validate_dataset(_dataset(tmp_path), out, ACTIONS, ACCEPT_ALL)
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
    report = validate_dataset(src, tmp_path / "out", ACTIONS, ACCEPT_ALL)
    assert report.tables["items"].quarantined == {"unparsable_created_at": 1}
    assert "_raw_created_at" not in read_table(tmp_path / "out", "items").columns
    q = read_table(tmp_path / "out" / "quarantine", "items")
    assert q["_raw_created_at"].to_list() == ["31/02/2026"]


# --------------------------------------------------------------------------- speaking up


def _clean_world(tmp_path, n: int = 40, timestamps=None, member_ids=None, items=None):
    """n interactions of 4 members on 4 jobs; pass columns to break some of them."""
    src = tmp_path / "src"
    write_table(pl.DataFrame({"member_id": ["007", "008", "009", "010"],
                              "headline": ["a", "b", "c", "d"]}), src / "members")
    write_table(items if items is not None else pl.DataFrame(
        {"item_id": ["j1", "j2", "j3", "j4"], "item_type": ["job"] * 4,
         "title": ["Cook", "Nurse", "Pilot", "Clerk"]}), src / "items")
    base = datetime(2014, 12, 1, tzinfo=UTC)
    write_table(pl.DataFrame({
        "member_id": member_ids or [["007", "008", "009", "010"][k % 4] for k in range(n)],
        "item_id": [f"j{k % 4 + 1}" for k in range(n)],
        "surface": ["jobs"] * n,
        "action": ["view"] * n,
        "timestamp": timestamps or [(base.replace(hour=k % 24, minute=k // 24)).isoformat()
                                    for k in range(n)],
    }), src / "interactions")
    return src


def test_mass_unparsable_timestamps_fail_with_column_fix_and_examples(tmp_path):
    """The issue's first try: every timestamp unreadable, and validate said nothing."""
    stamps = [f"12/{13 + k % 15}/2014 20:{k:02d}:35" for k in range(40)]  # month first
    out = tmp_path / "out"
    with pytest.raises(QuarantineError) as err:
        validate_dataset(_clean_world(tmp_path, timestamps=stamps), out, ["view"])
    msg = str(err.value)
    assert "40 of 40 rows (100.0%) quarantined as unparsable_timestamp" in msg
    assert "column 'timestamp'" in msg and "`12/13/2014 20:00:35`" in msg
    assert 'set `interactions.timestamp.format: "%m/%d/%Y %H:%M:%S"`' in msg  # the guessed fix
    assert msg.count("e.g. part-00000.parquet row") == 3  # three example rows
    assert 'validation: {max_quarantine_share: {"interactions.unparsable_timestamp": 1.0}}' in msg
    # Everything was still written: the accounting adds up and names the reason.
    report = err.value.report
    assert report.balanced and report.tables["interactions"].rows_kept == 0
    saved = json.loads((out / "report.json").read_text())
    assert saved["interactions"]["quarantined"] == {"unparsable_timestamp": 40}
    assert len(saved["interactions"]["examples"]["unparsable_timestamp"]) == 3
    assert read_table(out / "quarantine", "interactions").height == 40


def test_limit_can_be_raised_per_reason(tmp_path):
    stamps = ["someday"] * 3 + [f"2014-12-0{1 + k % 9}T10:00:{k:02d}Z" for k in range(37)]
    src = _clean_world(tmp_path, timestamps=stamps)
    with pytest.raises(QuarantineError, match=r"3 of 40 rows \(7\.5%\)"):
        validate_dataset(src, tmp_path / "a", ["view"])
    report = validate_dataset(src, tmp_path / "b", ["view"],
                              ValidationConfig(max_quarantine_share={
                                  "interactions.unparsable_timestamp": 0.1}))
    assert report.tables["interactions"].quarantined == {"unparsable_timestamp": 3}
    assert report.warnings == [w for w in report.warnings if "unparsable_timestamp" in w]
    nested = ValidationConfig(max_quarantine_share={"interactions": {"unparsable_timestamp": 0.1}})
    assert nested.limit("interactions", "unparsable_timestamp") == 0.1
    assert nested.limit("interactions", "unknown_item") == 0.05
    with pytest.raises(ValueError, match=r"'interaction'.*table name"):
        ValidationConfig(max_quarantine_share={"interaction": 0.1})
    with pytest.raises(ValueError, match=r"'items'.*between 0 and 1"):
        ValidationConfig(max_quarantine_share={"items": 5})


def test_unknown_member_share_fails_and_spots_the_id_format(tmp_path):
    """The issue's second try: 73% unknown_member. Here the ids lost their leading zeros."""
    ids = ["7", "8", "9"] * 10 + ["010"] * 11  # 30 of 41 rows: 73%
    src = _clean_world(tmp_path, n=41, member_ids=ids)
    with pytest.raises(QuarantineError) as err:
        validate_dataset(src, tmp_path / "out", ["view"])
    msg = str(err.value)
    assert "30 of 41 rows (73.2%) quarantined as unknown_member" in msg
    assert "column 'member_id'" in msg
    assert "leading zeros" in msg and "interactions.columns.member_id" in msg


def test_small_shares_warn_and_unknown_refs_are_always_counted(tmp_path):
    ids = ["007"] * 39 + ["999"]  # 1 of 40 rows points at a member nobody knows: 2.5%
    report = validate_dataset(_clean_world(tmp_path, member_ids=ids), tmp_path / "out", ["view"])
    x = report.tables["interactions"]
    assert x.quarantined == {"unknown_member": 1} and x.rows_kept == 39
    assert len(report.warnings) == 1
    assert "1 of 40 rows (2.5%) quarantined as unknown_member (limit 5.0%" in report.warnings[0]
    assert report.metrics()["interactions.unknown_member"] == 1
    assert report.metrics()["interactions.unknown_item"] == 0  # reported even when zero
    assert "unknown_member=1 (2.5%), unknown_item=0 (0.0%)" in "\n".join(report.summary_lines())


def test_unknown_members_hidden_behind_another_reason_are_reported(tmp_path):
    ids = ["007"] * 10 + ["999"] * 30
    stamps = ["12/31/2014 10:00"] * 40
    with pytest.raises(QuarantineError) as err:
        validate_dataset(_clean_world(tmp_path, member_ids=ids, timestamps=stamps),
                         tmp_path / "out", ["view"])
    x = err.value.report.tables["interactions"]
    assert x.quarantined == {"unparsable_timestamp": 40}
    assert x.unknown_refs == {"unknown_member": 30, "unknown_item": 0}
    assert "30 rows (75.0%) point at ids missing from the members table" in str(err.value)


def test_unknown_items_traced_to_the_items_quarantine(tmp_path):
    items = pl.DataFrame({"item_id": ["j1", "j2", "j3", "j4"], "item_type": ["job"] * 4,
                          "title": ["Cook", None, None, "Clerk"]})
    src = _clean_world(tmp_path, items=items)
    with pytest.raises(QuarantineError) as err:
        validate_dataset(src, tmp_path / "out", ["view"], {"items": 1.0})
    msg = str(err.value)
    assert "quarantined as unknown_item" in msg
    assert "2 of the 2 sampled ids are in the items quarantine (missing_title)" in msg
    assert "items: 2 of 4 rows (50.0%) quarantined as missing_title" in msg  # the warning


def test_markup_in_text_columns_is_a_warning(tmp_path):
    items = pl.DataFrame({
        "item_id": ["j1", "j2", "j3", "j4"], "item_type": ["job"] * 4,
        "title": ["Cook", "Nurse", "Pilot", "Clerk"],
        "description": ["<p>Fry <b>things</b></p>", "Care &amp; cure", "Fly", None],
    })
    report = validate_dataset(_clean_world(tmp_path, items=items), tmp_path / "out", ["view"])
    (warning,) = report.warnings
    assert warning.startswith("items.description: 2 of 3 values (67%) look like HTML")
    assert "`items.text.strip_html: [description]`" in warning


def test_canonical_text_timestamps_with_zone_names(tmp_path):
    forms = ["2014-12-{d} 20:12:35 UTC", "2014-12-{d}T20:12:35.5Z", "2014-12-{d} 21:12:35 CET",
             "2014-12-{d}"]
    stamps = [f.format(d=10 + k) for k in range(10) for f in forms]
    out = tmp_path / "out"
    report = validate_dataset(_clean_world(tmp_path, timestamps=stamps), out, ["view"])
    assert report.tables["interactions"].rows_kept == 40
    got = read_table(out, "interactions").get_column("timestamp").to_list()[:4]
    assert got == [datetime(2014, 12, 10, 20, 12, 35, tzinfo=UTC),
                   datetime(2014, 12, 10, 20, 12, 35, 500000, tzinfo=UTC),
                   datetime(2014, 12, 10, 20, 12, 35, tzinfo=UTC),  # CET = UTC+1
                   datetime(2014, 12, 10, tzinfo=UTC)]


@pytest.mark.parametrize(("values", "first", "also"), [
    (["31/12/2014 20:12:35", "01/02/2015 08:00:00"], "%d/%m/%Y %H:%M:%S", None),
    (["12/31/2014 20:12", "02/01/2015 08:00"], "%m/%d/%Y %H:%M", None),
    (["03/04/2014"], "%d/%m/%Y", "%m/%d/%Y"),  # day or month first: both, said so
    (["12.12.2014"], "%d.%m.%Y", None),
    (["20141212201235"], "%Y%m%d%H%M%S", None),
    (["Dec 12, 2014"], "%b %d, %Y", None),
    (["yesterday evening"], None, None),
])
def test_guess_time_formats(values, first, also):
    got = guess_time_formats(values)
    assert (got[0] if got else None) == first
    if also:
        assert also in got


def test_mostly_empty_and_nearly_constant_text_columns_are_warnings(tmp_path):
    n = 30
    items = pl.DataFrame({
        "item_id": [f"j{k + 1}" for k in range(n)] + ["p1"], "item_type": ["job"] * n + ["post"],
        "title": [f"Job {k}" for k in range(n)] + ["A post"],
        "brand": ["Acme"] * (n - 1) + ["Bolt", None],           # 29 of 30 jobs say Acme
        "summary": [None] * (n - 2) + ["x", "y", None],          # 28 of 30 jobs empty
        "topic": [None] * n + ["news"],                          # a post-only field: fine
    })
    report = validate_dataset(_clean_world(tmp_path, items=items), tmp_path / "out", ["view"])
    text = "\n".join(report.warnings)
    assert "items.summary (job): 28 of 30 values (93%) are empty" in text
    assert "items.brand (job): 29 of 30 non-empty values (97%) are `Acme`" in text
    assert "topic" not in text and "title" not in text
