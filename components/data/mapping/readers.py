"""Reading source files: which files a table names, their format (gzip told by its
first bytes), CSV / JSON / JSON-lines / Parquet reading, null markers and the check
that every mapped source column is there."""

from __future__ import annotations

import glob
import gzip
import io
from pathlib import Path

import polars as pl

from components.data.mapping.spec import (
    ID_COLUMNS,
    TIME_COLUMNS,
    MappingError,
    MappingSpec,
    TableSource,
    _template_fields,
)

FORMAT_BY_SUFFIX = {
    ".csv": "csv",
    ".tsv": "csv",
    ".txt": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
}
COMPRESSED_SUFFIXES = (".gz", ".gzip")
GZIP_MAGIC = b"\x1f\x8b"


def _table_files(src: TableSource, table: str, spec_path: Path) -> list[Path]:
    pattern = str(Path(spec_path).parent / src.path)
    files = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
    if not files:
        raise MappingError(
            f"{spec_path}: {table}.path '{src.path}' matches no file ({pattern}). Fix "
            f"{table}.path: it is a file or glob relative to the spec file's directory"
        )
    return files


def source_files(spec: MappingSpec, spec_path: Path) -> list[Path]:
    """Every source file the spec reads (for caching: a changed file re-runs ingest)."""
    return [f for table, src in spec.tables().items() for f in _table_files(src, table, spec_path)]


def _plain_suffix(path: Path) -> str:
    """The suffix that names the format: ``events.csv.gz`` -> ``.csv``."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSED_SUFFIXES:
        suffixes.pop()
    return suffixes[-1] if suffixes else ""


def _file_format(path: Path, src: TableSource, table: str) -> str:
    if src.format:
        return src.format
    fmt = FORMAT_BY_SUFFIX.get(_plain_suffix(path))
    if fmt is None:
        raise MappingError(
            f"{path}: cannot tell the format from the suffix '{''.join(path.suffixes)}': set "
            f"{table}.format to csv, parquet, jsonl or json"
        )
    return fmt


def _file_bytes(path: Path) -> Path | io.BytesIO:
    """The file itself, or its decompressed bytes when it is gzip (told by its first
    bytes, not its name, so a ``.gz`` suffix that lies cannot break the read)."""
    with path.open("rb") as fh:
        magic = fh.read(2)
    if magic == GZIP_MAGIC:
        with gzip.open(path, "rb") as fh:
            return io.BytesIO(fh.read())
    return path


def _sources(value: str | list[str]) -> list[str]:
    """The source columns a ``columns`` entry names (one, or a fallback list)."""
    return [value] if isinstance(value, str) else list(value)


def _column_expr(dst: str, value: str | list[str]) -> pl.Expr:
    """One output column from its source(s): a fallback list takes, per row, the first
    source whose value is not null and not blank (as text when the sources differ)."""
    names = _sources(value)
    if len(names) == 1:
        return pl.col(names[0]).alias(dst)
    tries = [pl.when(pl.col(n).cast(pl.Utf8).str.strip_chars() != "").then(pl.col(n).cast(pl.Utf8))
             for n in names]
    return pl.coalesce(tries).alias(dst)


def _source_columns(src: TableSource) -> list[tuple[str, str]]:
    """(source column, spec key that names it), in spec order."""
    out = [(s, f"columns.{dst}") for dst, v in src.columns.items() for s in _sources(v)]
    out += [(k, "keep") for k in src.keep]
    return out + [(f, f"derive.{dst}") for dst, t in src.derive.items()
                  for f in dict.fromkeys(_template_fields(t))]


def _read_json(data: Path | io.BytesIO) -> pl.DataFrame:
    """A ``.json`` file: an array of records, or (as many exports are) JSON lines."""
    if isinstance(data, io.BytesIO):
        head = data.getvalue()[:4096]
    else:
        with data.open("rb") as fh:
            head = fh.read(4096)
    if head.lstrip()[:1] == b"[":
        if isinstance(data, io.BytesIO):
            data.seek(0)
        return pl.read_json(data, infer_schema_length=None)
    return pl.read_ndjson(data, infer_schema_length=None)


def _read_source(path: Path, src: TableSource, table: str, nulls: list[str]) -> pl.DataFrame:
    """Read one file. CSV ids (and strftime/ISO time columns) are read as text so that
    leading zeros survive; types are inferred over the whole file so a late odd value
    turns the column to text instead of failing the read; ``nulls`` become null before
    inference, so a numeric column with ``NA`` stays numeric."""
    fmt = _file_format(path, src, table)
    try:
        data = _file_bytes(path)
        if fmt == "csv":
            sep = src.separator or ("\t" if _plain_suffix(path) == ".tsv" else ",")
            header = pl.read_csv(data, separator=sep, n_rows=0).columns
            if isinstance(data, io.BytesIO):
                data.seek(0)
            text_cols = [n for c in ID_COLUMNS[table] if c in src.columns for n in _sources(src.columns[c])]
            if src.timestamp.format not in ("auto", "epoch_s", "epoch_ms"):
                text_cols += [n for c in _time_columns(src, table) if c in src.columns
                              for n in _sources(src.columns[c])]
            _check_columns(path, header, src, table)
            df = pl.read_csv(
                data,
                separator=sep,
                infer_schema_length=None,
                null_values=nulls or None,
                schema_overrides={c: pl.Utf8 for c in text_cols if c in header},
            )
        elif fmt == "parquet":
            df = pl.read_parquet(data)
        elif fmt == "json":
            df = _read_json(data)
        else:
            df = pl.read_ndjson(data, infer_schema_length=None)
    except MappingError:
        raise
    except Exception as exc:  # polars raises several error types for unreadable files
        raise MappingError(
            f"{path}: cannot read it as {fmt} ({type(exc).__name__}: {exc}). Fix the file, or "
            f"set {table}.format if the suffix is misleading"
        ) from exc
    _check_columns(path, df.columns, src, table)
    return _apply_null_values(df, nulls)


def _apply_null_values(df: pl.DataFrame, nulls: list[str]) -> pl.DataFrame:
    """Text equal to a null marker (surrounding blanks ignored) becomes null, in text
    columns and inside lists of text (JSON and Parquet sources; CSV did it on read)."""
    if not nulls:
        return df
    marks = pl.Series(nulls, dtype=pl.Utf8).str.strip_chars().implode()
    exprs = []
    for name, dtype in df.schema.items():
        col = pl.col(name)
        if dtype == pl.Utf8:
            exprs.append(pl.when(col.str.strip_chars().is_in(marks)).then(None)
                         .otherwise(col).alias(name))
        elif dtype == pl.List(pl.Utf8):
            exprs.append(col.list.eval(pl.element().filter(
                ~pl.element().str.strip_chars().is_in(marks) | pl.element().is_null())).alias(name))
    return df.with_columns(exprs) if exprs else df


def _check_columns(path: Path, present: list[str], src: TableSource, table: str) -> None:
    for col, key in _source_columns(src):
        if col not in present:
            raise MappingError(
                f"{path}: source column '{col}' (named by {table}.{key} in the mapping spec) "
                f"is not in the file; its columns are {present}. Fix {table}.{key} or the file"
            )


def _time_columns(src: TableSource, table: str) -> tuple[str, ...]:
    return tuple(src.timestamp.columns) if src.timestamp.columns is not None else TIME_COLUMNS[table]
