"""MovieLens-100K, read from its original files, as canonical tables.

Why the original files and not a re-packaged copy: they are what people download from
GroupLens, so anyone can reproduce a run by pointing ``data.movielens.path`` at the
unzipped ``ml-100k`` directory. The data is licensed for research use only and must
never be committed or copied into this repository: the adapter only reads it.

Files used (all ``|``-separated except ``u.data``):

* ``u.data``: ``user_id<TAB>item_id<TAB>rating<TAB>unix_seconds`` (100,000 ratings);
* ``u.user``: ``user_id|age|gender|occupation|zip_code`` (943 users);
* ``u.item``: ``item_id|title|release date|video release date|IMDb URL|19 genre flags``
  in latin-1 (1,682 movies; one has no release date);
* ``u.genre``: ``name|index``, the names of the 19 genre flags;
* ``u.occupation``: the occupation vocabulary, one per line.

Like every adapter, this one converts names and types and drops no row: a value that
cannot be converted stays null so that validation quarantines the row with a reason.
"""

from __future__ import annotations

import io
from pathlib import Path

import polars as pl

from components.data.tables import CanonicalTables

#: The action vocabulary of MovieLens: every interaction is an explicit rating.
MOVIELENS_ACTIONS = ("rate",)
MOVIELENS_SURFACE = "movielens"
MOVIELENS_URL = "https://grouplens.org/datasets/movielens/100k/"
REQUIRED_FILES = ("u.data", "u.user", "u.item", "u.genre", "u.occupation")

_PL_TIMESTAMP = pl.Datetime("us", "UTC")
_ITEM_FIXED = ("item_id", "title", "release_date", "video_release_date", "imdb_url")


class MovieLensNotFoundError(FileNotFoundError):
    """The dataset directory or one of its files is missing; the message says where to get it."""


def _missing(path: Path, what: str) -> MovieLensNotFoundError:
    return MovieLensNotFoundError(
        f"MovieLens-100K not found: {what} (looked in {path}). Download ml-100k.zip from "
        f"{MOVIELENS_URL}, unzip it (e.g. to ../shared/data/ml-100k beside this checkout) and "
        f"point data.movielens.path (or $RANKBREW_ML100K for the tests) at the directory that "
        f"holds {', '.join(REQUIRED_FILES)}. Its licence allows research use only: never commit "
        f"it to this repository."
    )


def check_movielens_dir(path: Path) -> Path:
    """Fail early, before any parsing, with one message listing every missing file."""
    path = Path(path)
    if not path.is_dir():
        raise _missing(path, f"directory {path} does not exist")
    absent = [f for f in REQUIRED_FILES if not (path / f).is_file()]
    if absent:
        raise _missing(path, f"missing file(s) {', '.join(absent)} in {path}")
    return path


def _read_pipe(path: Path, names: list[str], encoding: str = "utf-8") -> pl.DataFrame:
    """``|``-separated, no header, no quoting (titles contain quotes), all text.

    Everything is read as text and cast afterwards with ``strict=False`` so that a
    malformed value becomes a null (quarantined by validation) instead of an exception.
    latin-1 is decoded here because polars' CSV reader only speaks UTF-8.
    """
    text = path.read_bytes().decode(encoding)
    return pl.read_csv(
        io.StringIO(text),
        separator="|",
        has_header=False,
        new_columns=names,
        schema_overrides={n: pl.Utf8 for n in names},
        quote_char=None,
        truncate_ragged_lines=True,
    )


def read_genres(path: Path) -> list[str]:
    """Genre names ordered by flag index (``u.genre`` is ``name|index``)."""
    df = _read_pipe(path / "u.genre", ["name", "index"])
    df = df.filter(pl.col("name").is_not_null() & (pl.col("name").str.strip_chars() != ""))
    df = df.with_columns(pl.col("index").cast(pl.Int64)).sort("index")
    return df.get_column("name").to_list()


def read_occupations(path: Path) -> list[str]:
    """The occupation vocabulary (``u.occupation``), for documentation and prompts."""
    lines = (path / "u.occupation").read_text(encoding="latin-1").splitlines()
    return [line.strip() for line in lines if line.strip()]


def read_members(path: Path) -> pl.DataFrame:
    """``u.user`` -> members: member_id, age (int), gender, occupation, zip_code (text).

    zip_code stays text: some are Canadian postcodes and leading zeros matter.
    """
    df = _read_pipe(path / "u.user", ["member_id", "age", "gender", "occupation", "zip_code"])
    return df.select(
        pl.col("member_id").str.strip_chars(),
        pl.col("age").str.strip_chars().cast(pl.Int64, strict=False),
        pl.col("gender").str.strip_chars(),
        pl.col("occupation").str.strip_chars(),
        pl.col("zip_code").str.strip_chars(),
    )


def read_items(path: Path) -> pl.DataFrame:
    """``u.item`` -> items: item_id, item_type="movie", title, genres, release_date, created_at.

    ``created_at`` is the release date at midnight UTC (null for the one undated movie):
    it is what a cold-start slice needs. The IMDb URLs and the (empty) video release
    dates are left out: they carry nothing a prompt can use.
    """
    genres = read_genres(path)
    flags = [f"__g{i}" for i in range(len(genres))]
    df = _read_pipe(path / "u.item", [*_ITEM_FIXED, *flags], encoding="latin-1")
    genre_list = pl.concat_list(
        [
            pl.when(pl.col(f).str.strip_chars() == "1")
            .then(pl.lit(name))
            .otherwise(pl.lit(None, dtype=pl.Utf8))
            for f, name in zip(flags, genres, strict=True)
        ]
    ).list.drop_nulls()
    release = pl.col("release_date").str.strip_chars().str.to_date("%d-%b-%Y", strict=False)
    return df.select(
        pl.col("item_id").str.strip_chars(),
        pl.lit("movie").alias("item_type"),
        pl.col("title"),
        genre_list.alias("genres"),
        release.alias("release_date"),
        release.cast(pl.Datetime("us")).dt.replace_time_zone("UTC").alias("created_at"),
    )


def read_interactions(path: Path) -> pl.DataFrame:
    """``u.data`` -> interactions: one ``rate`` on surface ``movielens`` per rating."""
    df = pl.read_csv(
        path / "u.data",
        separator="\t",
        has_header=False,
        new_columns=["member_id", "item_id", "rating", "unix_ts"],
        schema_overrides={c: pl.Utf8 for c in ("member_id", "item_id", "rating", "unix_ts")},
        quote_char=None,
    )
    seconds = pl.col("unix_ts").str.strip_chars().cast(pl.Int64, strict=False)
    return df.select(
        pl.col("member_id").str.strip_chars(),
        pl.col("item_id").str.strip_chars(),
        pl.lit(MOVIELENS_SURFACE).alias("surface"),
        pl.lit(MOVIELENS_ACTIONS[0]).alias("action"),
        pl.from_epoch(seconds, time_unit="s").dt.replace_time_zone("UTC").cast(_PL_TIMESTAMP)
        .alias("timestamp"),
        pl.col("rating").str.strip_chars().cast(pl.Float64, strict=False).alias("value"),
    )


def read_movielens(path: Path) -> CanonicalTables:
    """Read an unzipped ``ml-100k`` directory into the three canonical tables.

    Raises :class:`MovieLensNotFoundError` (a ``FileNotFoundError``) naming the path,
    the missing file(s) and where to download the dataset.
    """
    path = check_movielens_dir(Path(path))
    return CanonicalTables(
        members=read_members(path),
        items=read_items(path),
        interactions=read_interactions(path),
    )


__all__ = [
    "MOVIELENS_ACTIONS",
    "MOVIELENS_SURFACE",
    "MOVIELENS_URL",
    "MovieLensNotFoundError",
    "check_movielens_dir",
    "read_movielens",
]
