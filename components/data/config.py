"""Config of the data component: the dataset source (synthetic world, MovieLens, a mapped
log) and the train/valid/test split. Lives next to the code that reads it."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from components.config_base import StrictModel


class SyntheticWorldConfig(StrictModel):
    """Size and shape of the synthetic professional world (see docs/synthetic-world.md)."""

    members: int = Field(1000, ge=1)
    companies: int = Field(200, ge=1)
    jobs: int = Field(2000, ge=1)
    posts: int = Field(3000, ge=1)
    courses: int = Field(500, ge=1)
    days: int = Field(180, ge=7, description="Length of the simulated period.")
    start_date: datetime = datetime(2026, 1, 1)
    members_per_file: int = Field(
        50_000, ge=1, description="Members per output chunk; bounds memory at any scale."
    )
    seed: int = 0


class MovieLensConfig(StrictModel):
    """MovieLens-100K in its original files (u.data, u.user, u.item, u.genre, u.occupation)."""

    path: Path = Path("../shared/data/ml-100k")


class MappingSourceConfig(StrictModel):
    """Onboard any CSV/Parquet/JSON-lines logs with a column-mapping YAML (no code)."""

    spec: Path


class DataConfig(StrictModel):
    """Which dataset feeds the pipeline and which actions are legal in it."""

    source: Literal["synthetic", "movielens", "mapping"] = "synthetic"
    synthetic: SyntheticWorldConfig = SyntheticWorldConfig()
    movielens: MovieLensConfig = MovieLensConfig()
    mapping: MappingSourceConfig | None = None
    actions: list[str] | None = Field(
        None,
        description="Legal action values; rows with any other action are quarantined. "
        "Default: the source's own action vocabulary.",
    )

    @model_validator(mode="after")
    def _mapping_needs_spec(self) -> DataConfig:
        if self.source == "mapping" and self.mapping is None:
            raise ValueError("data.source is 'mapping' but data.mapping.spec is not set: "
                             "add `mapping: {spec: path/to/mapping.yaml}` under `data`")
        return self


class SplitConfig(StrictModel):
    """Temporal train/validation/test split.

    ``method: fraction`` puts the cutoffs at quantiles of event time (the last
    ``test_fraction`` of events is test); ``method: date`` uses explicit dates.
    Members and items first seen at or after the validation cutoff are *cold*.
    """

    method: Literal["fraction", "date"] = "fraction"
    valid_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    valid_start: datetime | None = None
    test_start: datetime | None = None

    @model_validator(mode="after")
    def _consistent(self) -> SplitConfig:
        if self.method == "fraction" and self.valid_fraction + self.test_fraction >= 1.0:
            raise ValueError("split.valid_fraction + split.test_fraction must be < 1 "
                             "(something must be left for training)")
        if self.method == "date":
            if self.valid_start is None or self.test_start is None:
                raise ValueError("split.method is 'date': set both split.valid_start and split.test_start")
            if self.valid_start > self.test_start:
                raise ValueError("split.valid_start must not be after split.test_start")
        return self
