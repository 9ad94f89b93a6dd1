"""Time columns: epoch numbers, strftime patterns and the date-time text real logs
write (offsets, zone abbreviations, IANA names), all parsed to UTC."""

from __future__ import annotations

import re
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import polars as pl

PL_TIMESTAMP = pl.Datetime("us", "UTC")

_NUMBER = r"^[+-]?\d+(\.\d+)?$"

# Naive layouts `auto` / `iso` read once the text is normalized (date separators '-',
# one space before the time, '.' before fractions, the zone split off). `%.f` also
# matches no fraction at all.
_NAIVE_FORMATS = (
    "%Y-%m-%d %H:%M:%S%.f",
    "%Y-%m-%d %H:%M",
    "%a, %d %b %Y %H:%M:%S",   # RFC 2822 (HTTP, e-mail): "Fri, 12 Dec 2014 20:12:35 GMT"
    "%a, %d %b %Y %H:%M",
    "%d %b %Y %H:%M:%S",
    "%d %b %Y %H:%M",
)
_TIME_TAIL = r"\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?"
# "...20:12:35+01:00", "...20:12:35 -0500", "...20:12:35 UTC+1", "...20:12 GMT+05:30"
_OFFSET_RE = (r"^(?P<body>.*" + _TIME_TAIL + r")\s*(?:(?i:utc|gmt))?\s*"
              r"(?P<sign>[+-])(?P<hh>\d{1,2})(?::?(?P<mm>\d{2}))?$")
# "...20:12:35 UTC", "...20:12:35Z", "2014-12-12 EST", "...10:00 Europe/Paris"
_ZONE_RE = r"^(?P<body>.*\d)\s*(?P<zone>[A-Za-z][A-Za-z_]*(?:/[A-Za-z_+\-]+)*)$"

#: Zone abbreviations `auto` reads as fixed offsets (minutes east of UTC). Ambiguous
#: ones take their most common reading in logs (CST: US Central; IST: India); others
#: (e.g. "ADT") are unparsable: set a strftime pattern or `timezone` instead.
ZONE_ABBREVIATIONS: dict[str, int] = {
    "Z": 0, "UTC": 0, "GMT": 0, "UT": 0, "ZULU": 0, "WET": 0,
    "WEST": 60, "BST": 60, "CET": 60, "MET": 60, "CEST": 120, "MEST": 120,
    "EET": 120, "EEST": 180, "MSK": 180, "IST": 330, "SGT": 480, "HKT": 480,
    "JST": 540, "KST": 540, "AEST": 600, "AEDT": 660, "NZST": 720, "NZDT": 780,
    "EST": -300, "EDT": -240, "CST": -360, "CDT": -300, "MST": -420, "MDT": -360,
    "PST": -480, "PDT": -420, "AKST": -540, "AKDT": -480, "HST": -600,
}



def _epoch(values: pl.Series, unit: str) -> pl.Series:
    """Epoch numbers (ints, floats or numeric text) -> UTC; non-numbers -> null.

    ``unit`` "auto" reads each value by its size: a log from before the year 5138 written
    in seconds stays under 1e11, so larger values are milliseconds (then micro-, nano-):
    JavaScript and Java loggers write milliseconds.
    """
    if values.dtype == pl.Utf8:
        values = values.str.strip_chars().cast(pl.Float64, strict=False)
    x = values.cast(pl.Float64)
    if unit == "auto":
        size = x.abs()
        per = pl.select(
            pl.when(pl.lit(size) >= 1e17).then(pl.lit(1e-3))
            .when(pl.lit(size) >= 1e14).then(pl.lit(1.0))
            .when(pl.lit(size) >= 1e11).then(pl.lit(1e3))
            .otherwise(pl.lit(1e6))
        ).to_series()
        micros = (x * per).round().cast(pl.Int64, strict=False)
    elif values.dtype.is_integer():
        micros = values.cast(pl.Int64) * (1_000_000 if unit == "s" else 1_000)
    else:
        micros = (x * (1_000_000 if unit == "s" else 1_000)).round().cast(pl.Int64, strict=False)
    return pl.from_epoch(micros, time_unit="us").dt.replace_time_zone("UTC").cast(PL_TIMESTAMP)


def _localize(naive: pl.Expr, tz: str) -> pl.Expr:
    """Naive wall-clock times in ``tz`` -> UTC; a time that does not exist there is null."""
    return naive.dt.replace_time_zone(tz, ambiguous="earliest", non_existent="null") \
        .dt.convert_time_zone("UTC")


def _strptime(text: pl.Series, pattern: str, tz: str) -> pl.Series:
    col = pl.lit(text)
    if re.search(r"%[:#]?z", pattern):
        expr = col.str.to_datetime(pattern, strict=False, time_unit="us", time_zone="UTC")
    else:
        expr = _localize(col.str.to_datetime(pattern, strict=False, time_unit="us"), tz)
    return pl.select(expr.cast(PL_TIMESTAMP)).to_series()


def _iana_zone(name: str) -> bool:
    if "/" not in name:  # "EST" or "PM" would also be keys of the tz database or nothing
        return False
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def parse_datetime_text(text: pl.Series, tz: str = "UTC") -> pl.Series:
    """Date-time text as real logs write it -> UTC, row by row (rows may differ).

    Understood: ISO-8601 with ``T`` or a space (``2014-12-12T20:12:35``), ``/`` or ``.``
    date separators when the year comes first, fractional seconds (``.123`` or ``,123``),
    no seconds, date only; a trailing numeric offset (``+01:00``, ``-0500``, ``UTC+1``),
    ``Z`` / ``UTC`` / ``GMT``, a zone abbreviation of :data:`ZONE_ABBREVIATIONS` or an
    IANA name (``Europe/Paris``); RFC 2822 (``Fri, 12 Dec 2014 20:12:35 GMT``). Values
    without a zone are read in ``tz``. Anything else (``12/12/2014``: day or month
    first?) is null: such data needs a strftime pattern.
    """
    t = text.cast(pl.Utf8).str.strip_chars()
    t = (t.str.replace(r"^(\d{4})[/.-](\d{1,2})[/.-](\d{1,2})", "${1}-${2}-${3}")
         .str.replace(r"^(\d{4}-\d{1,2}-\d{1,2})(?:[Tt]\s*|\s+)(\d)", "${1} ${2}")
         .str.replace(r"(\d:\d{2}:\d{2}),(\d)", "${1}.${2}"))
    df = pl.DataFrame({"t": t})
    df = df.with_columns(pl.col("t").str.extract_groups(_OFFSET_RE).alias("o"))
    df = df.with_columns(
        pl.when(pl.col("o").struct.field("body").is_null())
        .then(pl.col("t").str.extract_groups(_ZONE_RE))
        .alias("z")
    )
    sign = pl.when(pl.col("o").struct.field("sign") == "-").then(-1).otherwise(1)
    numeric = sign * (pl.col("o").struct.field("hh").cast(pl.Int32) * 60
                      + pl.col("o").struct.field("mm").cast(pl.Int32).fill_null(0))
    zone = pl.col("z").struct.field("zone")
    abbr = zone.str.to_uppercase().replace_strict(ZONE_ABBREVIATIONS, default=None,
                                                   return_dtype=pl.Int32)
    df = df.select(
        pl.coalesce(pl.col("o").struct.field("body"), pl.col("z").struct.field("body"),
                    pl.col("t")).alias("body"),
        zone.alias("zone"),
        pl.coalesce(numeric, abbr).alias("offset"),
    )
    body = pl.col("body")
    naive = pl.coalesce(
        [body.str.to_datetime(f, strict=False, time_unit="us") for f in _NAIVE_FORMATS]
        + [body.str.to_date("%Y-%m-%d", strict=False).cast(pl.Datetime("us"))]
    )
    as_utc = (naive.dt.replace_time_zone("UTC") - pl.duration(minutes=pl.col("offset")))
    expr = pl.when(pl.col("offset").is_not_null()).then(as_utc.cast(PL_TIMESTAMP))
    zones = [z for z in df.get_column("zone").drop_nulls().unique().sort().to_list()
             if z.upper() not in ZONE_ABBREVIATIONS and _iana_zone(z)]
    for z in zones:
        expr = expr.when(pl.col("zone") == z).then(_localize(naive, z).cast(PL_TIMESTAMP))
    expr = expr.when(pl.col("zone").is_not_null()).then(pl.lit(None, dtype=PL_TIMESTAMP))
    expr = expr.otherwise(_localize(naive, tz).cast(PL_TIMESTAMP))
    return df.select(expr.alias(text.name)).to_series()


def parse_time(s: pl.Series, fmt: str = "auto", tz: str = "UTC") -> tuple[pl.Series, pl.Series | None]:
    """Parse one time column to UTC microseconds.

    Returns (parsed, raw): ``raw`` is only given when the values came as text and holds
    the original text of the rows that failed to parse (null elsewhere), so validation
    can quarantine them as unparsable rather than missing.
    """
    name = s.name
    if s.dtype == pl.Date:
        s = s.cast(pl.Datetime("us"))
    if isinstance(s.dtype, pl.Datetime):
        expr = pl.lit(s)
        expr = _localize(expr, tz) if s.dtype.time_zone is None else expr.dt.convert_time_zone("UTC")
        return pl.select(expr.cast(PL_TIMESTAMP)).to_series().alias(name), None
    if s.dtype == pl.Null:
        return pl.Series(name, [None] * len(s), dtype=PL_TIMESTAMP), None
    if s.dtype.is_numeric() and fmt in ("auto", "epoch_s", "epoch_ms"):
        unit = {"auto": "auto", "epoch_s": "s", "epoch_ms": "ms"}[fmt]
        return _epoch(s, unit).alias(name), None

    original = s if s.dtype == pl.Utf8 else s.cast(pl.Utf8)
    text = original.str.strip_chars()
    if fmt in ("epoch_s", "epoch_ms"):
        parsed = _epoch(text, "ms" if fmt == "epoch_ms" else "s")
    elif fmt == "iso":
        parsed = parse_datetime_text(text, tz)
    elif fmt == "auto":
        numeric = text.str.contains(_NUMBER)
        parsed = pl.select(
            pl.when(pl.lit(numeric)).then(pl.lit(_epoch(text, "auto")))
            .otherwise(pl.lit(parse_datetime_text(text, tz)))
        ).to_series()
    else:
        parsed = _strptime(text, fmt, tz)
    failed = parsed.is_null() & original.is_not_null()
    raw = pl.select(pl.when(pl.lit(failed)).then(pl.lit(original))).to_series()
    return parsed.alias(name), raw.cast(pl.Utf8).alias(f"_raw_{name}")
