"""MovieLens-100K adapter: the original files -> canonical tables, nothing dropped.

Needs the dataset (research-use licence, never committed): $RANKBREW_ML100K or
``../shared/data/ml-100k`` beside the repo. Tests that need it skip without it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from components.data.movielens import (
    MOVIELENS_ACTIONS,
    MOVIELENS_URL,
    MovieLensNotFoundError,
    read_movielens,
)
from components.data.tables import CanonicalTables, write_tables

PL_TIMESTAMP = pl.Datetime("us", "UTC")


@pytest.fixture(scope="module")
def ml(ml100k_dir: Path) -> CanonicalTables:
    return read_movielens(ml100k_dir)


@pytest.mark.movielens
def test_counts(ml: CanonicalTables) -> None:
    assert ml.interactions.height == 100_000
    assert ml.members.height == 943
    assert ml.items.height == 1_682
    assert ml.members.get_column("member_id").n_unique() == 943
    assert ml.items.get_column("item_id").n_unique() == 1_682


@pytest.mark.movielens
def test_interactions_types_and_values(ml: CanonicalTables) -> None:
    df = ml.interactions
    assert df.schema["member_id"] == pl.Utf8
    assert df.schema["item_id"] == pl.Utf8
    assert df.schema["timestamp"] == PL_TIMESTAMP
    assert df.schema["value"] == pl.Float64
    assert df.null_count().row(0) == (0,) * df.width
    assert df.get_column("value").min() == 1.0
    assert df.get_column("value").max() == 5.0
    assert set(df.get_column("value").unique().to_list()) == {1.0, 2.0, 3.0, 4.0, 5.0}
    assert set(df.get_column("action").unique()) == set(MOVIELENS_ACTIONS)
    assert set(df.get_column("surface").unique()) == {"movielens"}
    ts = df.get_column("timestamp")
    assert ts.min() >= datetime(1997, 1, 1, tzinfo=UTC)
    assert ts.max() < datetime(1999, 1, 1, tzinfo=UTC)
    # First line of u.data: 196 242 3 881250949.
    first = df.row(0, named=True)
    assert (first["member_id"], first["item_id"], first["value"]) == ("196", "242", 3.0)
    assert first["timestamp"] == datetime.fromtimestamp(881250949, tz=UTC)
    # Every rating points at a known member and item.
    assert df.join(ml.members, on="member_id", how="anti").height == 0
    assert df.join(ml.items, on="item_id", how="anti").height == 0


@pytest.mark.movielens
def test_members_profile(ml: CanonicalTables) -> None:
    m = ml.members
    assert m.columns == ["member_id", "age", "gender", "occupation", "zip_code"]
    assert m.schema["age"] == pl.Int64
    assert m.null_count().row(0) == (0,) * m.width
    assert set(m.get_column("gender").unique()) == {"M", "F"}
    first = m.row(0, named=True)
    assert first == {"member_id": "1", "age": 24, "gender": "M", "occupation": "technician",
                     "zip_code": "85711"}
    # zip codes stay text (some are Canadian postcodes).
    assert m.schema["zip_code"] == pl.Utf8


@pytest.mark.movielens
def test_items_genres_and_dates(ml: CanonicalTables) -> None:
    it = ml.items
    assert set(it.get_column("item_type").unique()) == {"movie"}
    assert it.schema["genres"] == pl.List(pl.Utf8)
    assert it.schema["created_at"] == PL_TIMESTAMP
    assert it.get_column("genres").list.len().min() >= 1
    toy = it.filter(pl.col("item_id") == "1").row(0, named=True)
    assert toy["title"] == "Toy Story (1995)"
    assert toy["genres"] == ["Animation", "Children's", "Comedy"]
    assert toy["created_at"] == datetime(1995, 1, 1, tzinfo=UTC)
    all_genres = set(it.get_column("genres").explode().unique())
    assert {"Action", "Drama", "Film-Noir", "Sci-Fi", "Western"} <= all_genres
    # Exactly one movie has no release date; it is kept with a null.
    assert it.get_column("created_at").null_count() == 1
    assert it.get_column("release_date").null_count() == 1
    # latin-1 titles decode correctly.
    assert it.get_column("title").str.contains("Misérables").any()


@pytest.mark.movielens
def test_validates_without_quarantine(ml: CanonicalTables, tmp_path: Path) -> None:
    from components.data.validate import validate_dataset

    write_tables(ml, tmp_path / "in")
    report = validate_dataset(tmp_path / "in", tmp_path / "out", MOVIELENS_ACTIONS)
    assert report.balanced
    assert report.tables["interactions"].rows_kept == 100_000
    assert report.tables["members"].rows_kept == 943
    assert report.tables["items"].rows_kept == 1_682


def test_missing_directory_names_path_and_download(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(MovieLensNotFoundError) as err:
        read_movielens(missing)
    msg = str(err.value)
    assert str(missing) in msg
    assert MOVIELENS_URL in msg
    assert "never commit" in msg


def test_missing_file_is_named(tmp_path: Path) -> None:
    for name in ("u.data", "u.user", "u.genre", "u.occupation"):
        (tmp_path / name).write_text("")
    with pytest.raises(FileNotFoundError, match=r"u\.item") as err:
        read_movielens(tmp_path)
    assert str(tmp_path) in str(err.value)
    assert MOVIELENS_URL in str(err.value)
