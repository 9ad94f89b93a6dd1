"""The base of every config model.

A module of its own, outside ``components.config``, because ``components.config``
assembles the profile from component configs (``ModelConfig``, ``TrainConfig``) that
need the base too: importing it from the package would be an import cycle.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ConfigError(ValueError):
    """A profile that cannot be used; the message names the key and the fix."""


class StrictModel(BaseModel):
    """Base for all configs: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)
