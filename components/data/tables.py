"""Reading and writing the canonical tables as Parquet directories.

A dataset on disk is a directory with one sub-directory per table
(``members/``, ``items/``, ``interactions/``), each holding any number of
``part-*.parquet`` files. Many files, not one, so that writers can stream chunk by
chunk at any scale and readers (polars, Ray Data) can parallelize.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl

TABLE_NAMES = ("members", "items", "interactions")


@dataclass
class CanonicalTables:
    """The three canonical tables in memory (small and medium datasets)."""

    members: pl.DataFrame
    items: pl.DataFrame
    interactions: pl.DataFrame

    def as_dict(self) -> dict[str, pl.DataFrame]:
        return {"members": self.members, "items": self.items, "interactions": self.interactions}


def write_table(df: pl.DataFrame, table_dir: Path, part: int = 0) -> Path:
    """Write one part file of a table directory; returns the file path."""
    table_dir.mkdir(parents=True, exist_ok=True)
    path = table_dir / f"part-{part:05d}.parquet"
    df.write_parquet(path, compression="zstd", statistics=True)
    return path


def write_tables(tables: CanonicalTables, out_dir: Path) -> None:
    """Write all three tables under ``out_dir`` (one part file each)."""
    for name, df in tables.as_dict().items():
        write_table(df, out_dir / name)


def table_files(dataset_dir: Path, table: str) -> list[Path]:
    """The part files of one table, sorted; a clear error if the table is missing."""
    d = Path(dataset_dir) / table
    files = sorted(d.glob("*.parquet")) if d.is_dir() else []
    if not files:
        raise FileNotFoundError(
            f"no Parquet files for table '{table}' under {d}: expected {d}/part-*.parquet "
            f"(write the dataset with components.data.tables.write_tables)"
        )
    return files


def read_table(dataset_dir: Path, table: str) -> pl.DataFrame:
    """Read a whole table (all part files) into memory."""
    return pl.read_parquet(table_files(dataset_dir, table))


def read_tables(dataset_dir: Path) -> CanonicalTables:
    return CanonicalTables(*(read_table(dataset_dir, t) for t in TABLE_NAMES))
