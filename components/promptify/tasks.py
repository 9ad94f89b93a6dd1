"""The task registry: every ranking question rankbrew answers, as data.

A task says which events are positive and which negative for one (surface, item type)
and how to ask the question. Adding a task is adding a YAML entry, not code: the
promptify stage, the baselines and the evaluation fan-out all read the registry.

``held_out: true`` tasks never contribute training examples: they measure zero-shot
answers to a new action, surface or item type.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from components.config import ConfigError, StrictModel

TASKS_DIR = Path(__file__).resolve().parent / "tasks"

Criterion = Literal["skills", "location", "seniority", "topic", "popularity", "recency"]


class ValueRule(StrictModel):
    """Label from an event's ``value`` (e.g. a rating) instead of its action."""

    at_least: float | None = None
    at_most: float | None = None

    @model_validator(mode="after")
    def _one_bound(self) -> ValueRule:
        if self.at_least is None and self.at_most is None:
            raise ValueError("label_value needs at_least or at_most")
        return self

    def is_positive(self, value: float) -> bool:
        if self.at_least is not None and value < self.at_least:
            return False
        return not (self.at_most is not None and value > self.at_most)


class TaskSpec(StrictModel):
    """One ranking task. ``surface: null`` means events on any surface count."""

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_\-.]*$")
    domain: str = Field(description="Dataset family: 'professional' (synthetic) or 'movielens'.")
    surface: str | None = None
    item_type: str
    positive_actions: list[str] = Field(min_length=1)
    negative_actions: list[str] = Field(default_factory=list)
    negatives: Literal["logged", "sampled", "logged+sampled"] = "logged"
    label_value: ValueRule | None = Field(
        None, description="Positive iff the event value passes the rule (ratings)."
    )
    instruction: str = Field(min_length=10)
    question: str = Field(min_length=5, description="Asked once per candidate item.")
    held_out: bool = False
    steering: list[Criterion] | None = Field(
        None,
        description="Criteria this instruction names; the synthetic world labels such "
        "variants by those criteria, so evaluation measures instruction following.",
    )

    @field_validator("negative_actions")
    @classmethod
    def _disjoint(cls, v: list[str], info) -> list[str]:
        pos = set(info.data.get("positive_actions") or [])
        both = pos.intersection(v)
        if both:
            raise ValueError(f"actions {sorted(both)} are both positive and negative")
        return v

    @model_validator(mode="after")
    def _negatives_available(self) -> TaskSpec:
        if self.negatives != "sampled" and not self.negative_actions and self.label_value is None:
            raise ValueError(
                "negatives is 'logged' but negative_actions is empty: list negative actions "
                "or set negatives: sampled"
            )
        return self


class TaskRegistry(StrictModel):
    tasks: list[TaskSpec]

    @model_validator(mode="after")
    def _unique_ids(self) -> TaskRegistry:
        seen: set[str] = set()
        for t in self.tasks:
            if t.id in seen:
                raise ValueError(f"task id '{t.id}' appears twice: task ids must be unique")
            seen.add(t.id)
        return self

    def by_id(self) -> dict[str, TaskSpec]:
        return {t.id: t for t in self.tasks}

    def for_domain(self, domain: str) -> list[TaskSpec]:
        return [t for t in self.tasks if t.domain == domain]


def _format(err: ValidationError, source: str, raw: dict) -> str:
    lines = [f"invalid task registry {source}:"]
    for e in err.errors():
        loc = list(e["loc"])
        where = ".".join(str(p) for p in loc)
        if len(loc) >= 2 and loc[0] == "tasks" and isinstance(loc[1], int):
            try:
                tid = raw["tasks"][loc[1]].get("id", "?")
            except (KeyError, IndexError, AttributeError):
                tid = "?"
            where = f"task '{tid}' (tasks[{loc[1]}]) field '{'.'.join(str(p) for p in loc[2:])}'"
        fix = "remove it or fix its spelling" if e["type"] == "extra_forbidden" else e["msg"]
        lines.append(f"  - {where}: {fix} (got {e.get('input')!r})")
    return "\n".join(lines)


def load_tasks(paths: list[Path] | Path | None = None) -> TaskRegistry:
    """Load and validate task YAML files (default: every file in the built-in registry)."""
    if paths is None:
        paths = sorted(TASKS_DIR.glob("*.yaml"))
    elif isinstance(paths, Path):
        paths = sorted(paths.glob("*.yaml")) if paths.is_dir() else [paths]
    tasks: list = []
    for p in paths:
        raw = yaml.safe_load(Path(p).read_text()) or {}
        if not isinstance(raw, dict) or "tasks" not in raw:
            raise ConfigError(f"{p}: expected a mapping with a 'tasks:' list")
        try:
            reg = TaskRegistry.model_validate(raw)
        except ValidationError as err:
            raise ConfigError(_format(err, str(p), raw)) from None
        tasks.extend(reg.tasks)
    try:
        return TaskRegistry(tasks=tasks)
    except ValidationError as err:
        raise ConfigError(_format(err, ", ".join(map(str, paths)), {"tasks": []})) from None
