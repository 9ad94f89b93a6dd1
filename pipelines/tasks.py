"""Which tasks of the registry a profile runs: read by the prompt, teacher and evaluate
stages and by ``rankbrew analyze``. A module of its own so that no stage module imports
another one for it (``eval_stage`` importing ``stages``, which imports ``eval_stage`` to
build the graph, was an import circle)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from components.config import PipelineConfig


def task_domain(cfg: PipelineConfig) -> str:
    """Which tasks of the registry apply to this dataset."""
    if cfg.promptify.domain:
        return cfg.promptify.domain
    return {"synthetic": "professional", "movielens": "movielens"}.get(cfg.data.source, cfg.data.source)


def load_pipeline_tasks(cfg: PipelineConfig):
    """The tasks of the profile's domain; an error if there are none."""
    from components.promptify.tasks import load_tasks

    reg = load_tasks([Path(p) for p in cfg.promptify.tasks] if cfg.promptify.tasks else None)
    tasks = reg.for_domain(task_domain(cfg))
    if not tasks:
        raise ValueError(
            f"no task of domain '{task_domain(cfg)}' in the registry: add tasks with that domain "
            f"or set promptify.domain / promptify.tasks"
        )
    return tasks


def steering_relabel_hook(cfg: PipelineConfig, tasks) -> Callable | None:
    """The prepare stage's relabel hook (steering tasks of the synthetic world), or None."""
    if cfg.data.source != "synthetic" or not any(t.steering for t in tasks):
        return None
    from components.promptify.steering import steering_relabel

    world = cfg.data.synthetic

    def relabel(labeled, members, items):
        return steering_relabel(labeled, tasks, members, items, world)

    return relabel
