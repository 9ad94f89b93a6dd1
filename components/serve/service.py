"""One replica's scorer: the served model's engine and the run's prompter, swapped as one.

:class:`ScoringService` turns requests into prompts and prompts into calibrated P(yes) with
the multi-item :class:`~components.model.engine.ScoringEngine` (several requests packed
into shared forward passes under the engine's token budget). The Ray Serve scorer
deployment holds one and batches requests into :meth:`score_prompts` with
``@serve.batch``; :class:`LocalBackend` serves it in-process (no Ray).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from components.serve.prompts import Prompt, RequestPrompter
from components.serve.registry import Served
from components.serve.schemas import Item, ScoreRequest


class ScoringService:
    """The engine and the prompter of one served model version."""

    def __init__(self, served: Served, engine, prompter: RequestPrompter, backend: str = "torch"):
        self.served, self.engine, self.prompter, self.backend = served, engine, prompter, backend
        self.model_info = {**served.info(), "backend": backend}  # once: info() reads the recipe file
        self.ready = False

    def prompt(self, req: ScoreRequest) -> Prompt:
        return self.prompter.prompt(req)

    def score_prompts(self, prompts: Sequence[Prompt]) -> list[np.ndarray]:
        """Calibrated P(yes) per candidate of each prompt (one engine call for all)."""
        return self.engine.score_batch([(p.prefix, p.candidates) for p in prompts],
                                       tasks=[p.task for p in prompts])

    def warm(self) -> None:
        """One inline request through the whole path (first-call allocations, kernels)."""
        task = next(iter(self.prompter.tasks.values()), None)
        req = ScoreRequest(profile={"headline": "warm-up"}, candidates=[Item(item_id="warm", title="warm-up")],
                           **({"task": task.id} if task is not None else
                              {"instruction": "Rank these items for the member.", "question": "Relevant?"}))
        self.score_prompts([self.prompt(req)])
        self.ready = True

    def info(self) -> dict[str, Any]:
        return {"ready": self.ready, "model": self.model_info,
                "tasks": self.prompter.task_ids(), "member_lookup": self.prompter.has_tables}

    def answer(self, prompt: Prompt, probs: np.ndarray, prompt_ms: float, score_ms: float) -> dict[str, Any]:
        return {"item_ids": prompt.item_ids, "scores": [float(x) for x in probs],
                "model": self.model_info,
                "n_history_events": prompt.n_history_events,
                "timings_ms": {"prompt": prompt_ms, "score": score_ms}}


class LocalBackend:
    """In-process backend of the API (no Ray): one request per engine call, in a thread."""

    def __init__(self, service: ScoringService):
        self.service = service
        self._lock = asyncio.Lock()

    async def score(self, request: ScoreRequest) -> dict[str, Any]:
        t0 = time.perf_counter()
        prompt = self.service.prompt(request)
        t1 = time.perf_counter()
        async with self._lock:  # one forward at a time: torch uses every core already
            probs = (await asyncio.to_thread(self.service.score_prompts, [prompt]))[0]
        t2 = time.perf_counter()
        return self.service.answer(prompt, probs, (t1 - t0) * 1e3, (t2 - t1) * 1e3)

    async def info(self) -> dict[str, Any]:
        return self.service.info()
