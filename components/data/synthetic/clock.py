"""The simulated period, in UTC microseconds (what every timestamp column holds)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC

import numpy as np
import polars as pl

from components.config import SyntheticWorldConfig

DAY_US = 86_400_000_000


@dataclass(frozen=True)
class Clock:
    """The simulated period in UTC microseconds."""

    start_us: int
    days: int

    @classmethod
    def from_config(cls, cfg: SyntheticWorldConfig) -> Clock:
        start = cfg.start_date
        start = start.replace(tzinfo=UTC) if start.tzinfo is None else start.astimezone(UTC)
        return cls(int(start.timestamp()) * 1_000_000 + start.microsecond, cfg.days)

    @property
    def end_us(self) -> int:
        return self.start_us + self.days * DAY_US

    @property
    def period_us(self) -> int:
        return self.days * DAY_US


def _timestamps(us: np.ndarray) -> pl.Series:
    return (
        pl.Series(np.asarray(us, dtype=np.int64))
        .cast(pl.Datetime("us"))
        .dt.replace_time_zone("UTC")
    )
