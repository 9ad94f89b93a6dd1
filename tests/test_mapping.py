"""Column-mapping adapter: CSV / JSON-lines / Parquet sources -> canonical tables via YAML.

Every source file is written by the test under tmp_path, so these run anywhere.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml

from components.config import ConfigError
from components.data.mapping import (
    MappingError,
    legal_actions,
    load_mapping_spec,
    parse_time,
    read_mapped,
    source_files,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
PL_TIMESTAMP = pl.Datetime("us", "UTC")


def _spec(tmp_path: Path, spec: dict[str, Any], name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


CSV_EVENTS = """\
uid,product,kind,when,price,channel
007,10,click,2024-05-01 10:00:00,,email
007,11,buy,2024-05-01 10:05:00,9.5,email
042,10,click,01/05/2024 11:00,,web
042,12,zoom,2024-05-02 08:30:00,,web
"""


def _csv_spec(tmp_path: Path, **extra: Any) -> Path:
    (tmp_path / "logs").mkdir(exist_ok=True)
    (tmp_path / "logs" / "events.csv").write_text(CSV_EVENTS)
    spec = {
        "default_item_type": "product",
        "interactions": {
            "path": "logs/events.csv",
            "columns": {"member_id": "uid", "item_id": "product", "action": "kind",
                        "timestamp": "when", "value": "price", "campaign": "channel"},
            "constants": {"surface": "shop_web"},
            "timestamp": {"format": "%Y-%m-%d %H:%M:%S"},
            "actions": {"click": "view", "buy": "purchase"},
            "actions_legal": ["view", "purchase"],
            **extra,
        },
    }
    return _spec(tmp_path, spec)


# --------------------------------------------------------------------------- CSV


def test_csv_renames_constants_actions_and_derived_tables(tmp_path: Path) -> None:
    spec_path = _csv_spec(tmp_path)
    t = read_mapped(spec_path)
    df = t.interactions
    assert df.height == 4  # nothing dropped
    assert df.columns[:6] == ["member_id", "item_id", "surface", "action", "timestamp", "value"]
    assert df.schema["member_id"] == pl.Utf8 and df.schema["item_id"] == pl.Utf8
    assert df.schema["timestamp"] == PL_TIMESTAMP and df.schema["value"] == pl.Float64
    assert df.get_column("member_id").to_list() == ["007", "007", "042", "042"]  # zeros kept
    assert df.get_column("item_id").to_list() == ["10", "11", "10", "12"]
    assert set(df.get_column("surface")) == {"shop_web"}
    # Mapped values become canonical; an unmapped one passes through for validation.
    assert df.get_column("action").to_list() == ["view", "purchase", "view", "zoom"]
    assert df.get_column("campaign").to_list() == ["email", "email", "web", "web"]
    assert df.get_column("value").to_list() == [None, 9.5, None, None]
    assert df.get_column("timestamp")[1] == datetime(2024, 5, 1, 10, 5, tzinfo=UTC)
    assert legal_actions(load_mapping_spec(spec_path)) == ("view", "purchase")

    assert t.members.columns == ["member_id"]
    assert t.members.get_column("member_id").to_list() == ["007", "042"]
    assert t.items.columns == ["item_id", "item_type", "title"]
    assert t.items.get_column("item_id").to_list() == ["10", "11", "12"]
    assert set(t.items.get_column("item_type")) == {"product"}


def test_unparsable_timestamp_keeps_null_and_raw_text(tmp_path: Path) -> None:
    df = read_mapped(_csv_spec(tmp_path)).interactions
    assert df.get_column("timestamp").null_count() == 1
    bad = df.filter(pl.col("timestamp").is_null()).row(0, named=True)
    assert bad["_raw_timestamp"] == "01/05/2024 11:00"
    assert bad["member_id"] == "042" and bad["action"] == "view"
    # Rows that parsed carry no raw text.
    assert df.filter(pl.col("timestamp").is_not_null()).get_column("_raw_timestamp").null_count() == 3


def test_timezone_of_naive_strftime_values(tmp_path: Path) -> None:
    spec_path = _csv_spec(tmp_path, timestamp={"format": "%Y-%m-%d %H:%M:%S",
                                               "timezone": "Europe/Paris"})
    ts = read_mapped(spec_path).interactions.get_column("timestamp")
    assert ts[0] == datetime(2024, 5, 1, 8, 0, tzinfo=UTC)  # CEST = UTC+2


def test_glob_reads_every_matching_file(tmp_path: Path) -> None:
    spec_path = _csv_spec(tmp_path, path="logs/events-*.csv")
    (tmp_path / "logs" / "events.csv").rename(tmp_path / "logs" / "events-1.csv")
    (tmp_path / "logs" / "events-2.csv").write_text(
        "uid,product,kind,when,price,channel\n099,13,click,2024-06-01 00:00:00,,web\n"
    )
    spec = load_mapping_spec(spec_path)
    assert [p.name for p in source_files(spec, spec_path)] == ["events-1.csv", "events-2.csv"]
    df = read_mapped(spec_path).interactions
    assert df.height == 5
    assert df.get_column("member_id").to_list()[-1] == "099"


# --------------------------------------------------------------------------- JSON lines + Parquet


def test_jsonl_epoch_ms_and_parquet_members_items(tmp_path: Path) -> None:
    _jsonl(tmp_path / "events.jsonl", [
        {"user": 1, "item": 100, "type": "like", "ts_ms": 1_700_000_000_123},
        {"user": 2, "item": 101, "type": "like", "ts_ms": 1_700_000_100_000},
        {"user": 2, "item": 100, "type": "share", "ts_ms": None},
    ])
    pl.DataFrame({
        "id": [1, 2], "city": ["Oslo", "Lima"], "skills": [["sql"], ["go", "rust"]],
        "internal": [True, False],
    }).write_parquet(tmp_path / "people.parquet")
    pl.DataFrame({
        "pid": [100, 101], "headline": ["A post", "Another post"], "kind": ["post", None],
        "published": [datetime(2023, 1, 1, 12), datetime(2023, 2, 1, 12)],
    }).write_parquet(tmp_path / "posts.parquet")
    spec_path = _spec(tmp_path, {
        "default_item_type": "post",
        "interactions": {
            "path": "events.jsonl",
            "columns": {"member_id": "user", "item_id": "item", "action": "type",
                        "timestamp": "ts_ms"},
            "constants": {"surface": "feed"},
            "timestamp": {"format": "epoch_ms"},
            "actions_legal": ["like", "share"],
        },
        "members": {"path": "people.parquet", "columns": {"member_id": "id", "town": "city"},
                    "keep": ["skills"]},
        "items": {"path": "posts.parquet", "format": "parquet",
                  "columns": {"item_id": "pid", "title": "headline", "item_type": "kind",
                              "created_at": "published"}},
    })
    t = read_mapped(spec_path)
    df = t.interactions
    assert df.get_column("member_id").to_list() == ["1", "2", "2"]
    assert df.get_column("item_id").to_list() == ["100", "101", "100"]
    assert df.get_column("timestamp")[0] == datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=UTC)
    assert df.get_column("timestamp")[2] is None
    assert "_raw_timestamp" not in df.columns  # numbers, not text: nothing to keep
    assert t.members.columns == ["member_id", "town", "skills"]  # 'internal' not kept
    assert t.members.row(1) == ("2", "Lima", ["go", "rust"])
    assert t.items.get_column("item_type").to_list() == ["post", "post"]  # null -> default
    assert t.items.schema["created_at"] == PL_TIMESTAMP
    assert t.items.get_column("created_at")[0] == datetime(2023, 1, 1, 12, tzinfo=UTC)
    assert legal_actions(load_mapping_spec(spec_path)) == ("like", "share")


def test_parquet_epoch_seconds_auto(tmp_path: Path) -> None:
    pl.DataFrame({
        "m": ["a", "b"], "i": ["x", "y"], "t": [1_600_000_000, 1_600_000_060],
    }).write_parquet(tmp_path / "ev.parquet")
    spec_path = _spec(tmp_path, {
        "default_item_type": "video",
        "interactions": {
            "path": "*.parquet",
            "columns": {"member_id": "m", "item_id": "i", "timestamp": "t"},
            "constants": {"surface": "tv", "action": "watch"},
        },
    })
    t = read_mapped(spec_path)
    assert t.interactions.get_column("timestamp").to_list() == [
        datetime(2020, 9, 13, 12, 26, 40, tzinfo=UTC), datetime(2020, 9, 13, 12, 27, 40, tzinfo=UTC)
    ]
    assert set(t.interactions.get_column("action")) == {"watch"}
    assert legal_actions(load_mapping_spec(spec_path)) == ("watch",)


def test_parse_time_auto_text_mixes_iso_variants_and_epoch() -> None:
    s = pl.Series("timestamp", ["2024-01-02T03:04:05Z", "2024-01-02 03:04:05+01:00",
                                "2024-01-02", "1704164645", "soon", None])
    parsed, raw = parse_time(s, "auto")
    assert parsed.to_list() == [
        datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
        datetime(2024, 1, 2, 2, 4, 5, tzinfo=UTC),
        datetime(2024, 1, 2, tzinfo=UTC),
        datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
        None,
        None,
    ]
    assert raw is not None and raw.name == "_raw_timestamp"
    assert raw.to_list() == [None, None, None, None, "soon", None]


# --------------------------------------------------------------------------- errors


def test_unknown_key_is_named(tmp_path: Path) -> None:
    spec_path = _spec(tmp_path, {
        "default_item_type": "product",
        "interactions": {"path": "x.csv", "colums": {"member_id": "u"}},
    })
    with pytest.raises(MappingError) as err:
        load_mapping_spec(spec_path)
    msg = str(err.value)
    assert "unknown key 'interactions.colums'" in msg
    assert "columns" in msg  # the allowed keys are listed
    assert str(spec_path) in msg
    assert isinstance(err.value, ConfigError)


def test_unknown_top_level_key_is_named(tmp_path: Path) -> None:
    spec_path = _csv_spec(tmp_path)
    raw = yaml.safe_load(spec_path.read_text())
    raw["intercations"] = {}
    spec_path.write_text(yaml.safe_dump(raw))
    with pytest.raises(MappingError, match="unknown key 'intercations'"):
        read_mapped(spec_path)


def test_missing_source_column_names_file_column_and_key(tmp_path: Path) -> None:
    spec_path = _csv_spec(tmp_path)
    raw = yaml.safe_load(spec_path.read_text())
    raw["interactions"]["columns"]["item_id"] = "sku"
    spec_path.write_text(yaml.safe_dump(raw))
    with pytest.raises(MappingError) as err:
        read_mapped(spec_path)
    msg = str(err.value)
    assert str(tmp_path / "logs" / "events.csv") in msg
    assert "'sku'" in msg
    assert "interactions.columns.item_id" in msg


def test_missing_kept_column_in_jsonl_is_named(tmp_path: Path) -> None:
    _jsonl(tmp_path / "ev.jsonl", [{"u": 1, "i": 2, "a": "x", "t": 0}])
    spec_path = _spec(tmp_path, {
        "default_item_type": "thing",
        "interactions": {"path": "ev.jsonl", "keep": ["device"],
                         "columns": {"member_id": "u", "item_id": "i", "action": "a",
                                     "timestamp": "t"},
                         "constants": {"surface": "app"}, "actions_legal": ["x"]},
    })
    with pytest.raises(MappingError, match=r"ev\.jsonl: source column 'device'.*interactions\.keep"):
        read_mapped(spec_path)


def test_unmapped_canonical_column_names_the_fix(tmp_path: Path) -> None:
    spec_path = _spec(tmp_path, {
        "default_item_type": "product",
        "interactions": {"path": "x.csv",
                         "columns": {"member_id": "u", "item_id": "i", "action": "a",
                                     "timestamp": "t"}},
    })
    with pytest.raises(MappingError, match=r"'surface' is not mapped.*interactions\.constants"):
        load_mapping_spec(spec_path)


def test_derived_items_need_a_type(tmp_path: Path) -> None:
    spec_path = _csv_spec(tmp_path)
    raw = yaml.safe_load(spec_path.read_text())
    del raw["default_item_type"]
    spec_path.write_text(yaml.safe_dump(raw))
    with pytest.raises(MappingError, match="default_item_type"):
        load_mapping_spec(spec_path)


def test_action_outside_legal_vocabulary_is_a_spec_error(tmp_path: Path) -> None:
    spec_path = _csv_spec(tmp_path, actions={"click": "veiw"})
    with pytest.raises(MappingError, match=r"'veiw'.*actions_legal"):
        load_mapping_spec(spec_path)


def test_bad_timestamp_format_and_zone(tmp_path: Path) -> None:
    spec_path = _csv_spec(tmp_path, timestamp={"format": "epoch_seconds", "timezone": "Mars/Base"})
    with pytest.raises(MappingError) as err:
        load_mapping_spec(spec_path)
    assert "interactions.timestamp.format" in str(err.value)
    assert "interactions.timestamp.timezone" in str(err.value)


def test_no_matching_file_names_the_path_key(tmp_path: Path) -> None:
    spec_path = _csv_spec(tmp_path, path="logs/missing-*.csv")
    with pytest.raises(MappingError, match=r"interactions\.path 'logs/missing-\*\.csv' matches no"):
        read_mapped(spec_path)


def test_no_action_vocabulary(tmp_path: Path) -> None:
    spec_path = _csv_spec(tmp_path)
    raw = yaml.safe_load(spec_path.read_text())
    del raw["interactions"]["actions"], raw["interactions"]["actions_legal"]
    spec_path.write_text(yaml.safe_dump(raw))
    with pytest.raises(MappingError, match="actions_legal"):
        legal_actions(load_mapping_spec(spec_path))


def test_missing_spec_file(tmp_path: Path) -> None:
    with pytest.raises(MappingError, match="not found"):
        load_mapping_spec(tmp_path / "nope.yaml")


# --------------------------------------------------------------------------- the shipped example


def test_example_spec_ingests_and_validates(tmp_path: Path) -> None:
    """examples/mapping/shop.yaml end to end: two rows are quarantined on purpose, each
    under the 5% limit, so validation warns instead of failing."""
    from components.data.tables import write_tables
    from components.data.validate import validate_dataset

    spec_path = REPO_ROOT / "examples" / "mapping" / "shop.yaml"
    t = read_mapped(spec_path)
    assert (t.members.height, t.items.height, t.interactions.height) == (4, 5, 55)
    lantern, keyboard = t.items.row(3, named=True), t.items.row(4, named=True)
    assert lantern["description"] is None  # 'NA' under null_values
    assert keyboard["description"] == "Hot-swap switches USB-C"  # text.strip_html
    assert keyboard["summary"] == "Mechanical keyboard (electronics)"  # derive
    write_tables(t, tmp_path / "in")
    report = validate_dataset(tmp_path / "in", tmp_path / "out",
                              legal_actions(load_mapping_spec(spec_path)))
    assert report.balanced
    assert report.tables["interactions"].quarantined == {
        "unparsable_timestamp": 1, "unknown_action": 1
    }
    assert report.tables["interactions"].rows_kept == 53
    assert sorted(w.split(" quarantined as ")[1].split(" ")[0] for w in report.warnings) == [
        "unknown_action", "unparsable_timestamp"]


def test_a_column_can_fall_back_through_source_columns(tmp_path: Path) -> None:
    _jsonl(tmp_path / "events.jsonl", [
        {"user": 1, "item": 100, "type": "like", "ts": "2024-01-01 10:00:00 UTC"},
        {"user": 1, "item": 101, "type": "like", "ts": "2024-01-02 10:00:00 UTC"},
        {"user": 1, "item": 102, "type": "like", "ts": "2024-01-03 10:00:00 UTC"},
    ])
    _jsonl(tmp_path / "products.jsonl", [
        {"asin": 100, "title": "Kettle", "brand": "Acme"},
        {"asin": 101, "title": "  ", "brand": "Bolt"},      # blank title: the brand stands in
        {"asin": 102, "title": None, "brand": None},         # nothing: stays missing
    ])
    spec_path = _spec(tmp_path, {
        "default_item_type": "product",
        "interactions": {"path": "events.jsonl", "columns": {"member_id": "user", "item_id": "item",
                                                             "action": "type", "timestamp": "ts"},
                         "constants": {"surface": "web"}, "actions_legal": ["like"]},
        "items": {"path": "products.jsonl", "columns": {"item_id": "asin", "title": ["title", "brand"]}},
    })
    t = read_mapped(spec_path)
    assert t.items.sort("item_id").get_column("title").to_list() == ["Kettle", "Bolt", None]
    bad = _spec(tmp_path, {
        "default_item_type": "product",
        "interactions": {"path": "events.jsonl", "columns": {"member_id": "user", "item_id": "item",
                                                             "action": "type", "timestamp": "ts"},
                         "constants": {"surface": "web"}, "actions_legal": ["like"]},
        "items": {"path": "products.jsonl", "columns": {"item_id": "asin", "title": ["title", "name"]}},
    }, name="bad.yaml")
    with pytest.raises(MappingError, match="'name'.*columns.title"):
        read_mapped(bad)
