"""The ranker on Ray Serve: a FastAPI ingress and a batching scorer deployment.

``Ingress`` (``components.serve.api``: validation, limits, auth, metrics) calls
``Scorer`` through its deployment handle. ``Scorer`` replicas hold the model and the run's
prompter (``components.serve.service``) and pack concurrent requests into one engine
call with ``@serve.batch``. What is served lives in the scorer's ``user_config`` (the
pinned registry version, the alias it was deployed under, the profile whose run tables
answer ``member_id`` requests), so a redeploy or a rollback is a config-only update:
Serve calls ``reconfigure`` on the live replicas, which load the new version in a thread
and swap it in while the old one keeps answering (zero failed requests; tested).

Backpressure: the scorer's ``max_queued_requests`` turns overload into
``BackPressureError`` at the ingress, answered 503 with ``Retry-After``; the ingress's own
queue limit makes the proxy answer the same (``BackpressureConfig``).

``build_app(args)`` is the import path of the Serve config files in ``infra/serve/``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve.config import BackpressureConfig

from components.serve.api import ApiSettings, Overloaded, create_app
from components.serve.prompts import RequestError
from components.serve.registry import DEFAULT_MODELS
from components.serve.schemas import ScoreRequest

APP_NAME = "rankbrew"
#: Environment variable holding the bearer token (auth is off when it is unset).
TOKEN_ENV = "RANKBREW_SERVE_TOKEN"


class ScorerConfig(BaseModel):
    """The scorer's ``user_config``: everything that decides what is served."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(DEFAULT_MODELS[0], description="models:/<name>/<version> (pinned by `rankbrew serve`) "
                       "or models:/<name>@<alias>")
    alias: str | None = Field(None, description="The alias the version was deployed under (reported).")
    fallbacks: list[str] = Field(default_factory=lambda: list(DEFAULT_MODELS[1:]))
    profile: str = "local"
    overrides: dict[str, Any] = Field(default_factory=dict)
    tracking_uri: str | None = None
    work_dir: str | None = Field(None, description="Absolute <run.work_dir>: run tables and the model cache.")
    torch_threads: int = 1
    backend: Literal["torch", "vllm"] = Field("torch", description="The scorer: rankbrew's multi-item "
                         "engine, or vLLM with prefix caching (optional extra: make setup-vllm).")
    history_token_budget: int | None = Field(None, description="Serve longer (or shorter) histories than "
                                             "the run's prompts had (None: the run's budget).")


def load_service(conf: ScorerConfig):
    """Resolve, download and load the configured model and its run's prompter (blocking)."""
    import torch

    from components.config import PromptifyConfig, load_config, with_absolute_paths
    from components.model.engine import ScoringEngine
    from components.serve.prompts import RequestPrompter
    from components.serve.registry import resolve_served, run_inputs, stage_config
    from components.serve.service import ScoringService
    from components.tracking import default_tracking_uri
    from pipelines.dag import MANIFEST
    from pipelines.tasks import load_pipeline_tasks

    torch.set_num_threads(conf.torch_threads)
    cfg = load_config(conf.profile, conf.overrides)
    if conf.work_dir:
        cfg = cfg.model_copy(update={"run": cfg.run.model_copy(update={"work_dir": Path(conf.work_dir)})})
    cfg = with_absolute_paths(cfg)
    work = Path(cfg.run.work_dir)
    uri = conf.tracking_uri or cfg.run.mlflow_tracking_uri or default_tracking_uri(work)
    served = resolve_served([conf.model, *conf.fallbacks], uri, work / "serve" / "models", work / "artifacts")
    if conf.alias and served.alias is None:
        served = dataclasses.replace(served, alias=conf.alias)
    if conf.backend == "vllm":
        from components.serve.vllm_engine import VllmEngine, vllm_available

        reason = vllm_available()
        if reason is not None:
            raise RuntimeError(f"scorer.backend is 'vllm' but {reason}")
        engine = VllmEngine(served.model_dir)
    else:
        engine = ScoringEngine.from_pretrained(served.model_dir)
    tasks = load_pipeline_tasks(cfg)
    inputs = run_inputs(served.stage_dir, MANIFEST) if served.stage_dir is not None else {}
    pcfg = cfg.promptify
    if "promptify" in inputs:  # the settings the run's prompts were built with
        pcfg = PromptifyConfig.model_validate(stage_config(inputs["promptify"], MANIFEST)["promptify"])
    if conf.history_token_budget is not None:
        pcfg = pcfg.model_copy(update={"history_token_budget": conf.history_token_budget})
    if "tokenizer" in inputs:
        prompter = RequestPrompter.from_run(inputs["tokenizer"] / "tokenizer", inputs.get("prepare"), tasks, pcfg)
    else:
        prompter = RequestPrompter(engine.tokenizer, tasks, pcfg)
    service = ScoringService(served, engine, prompter, backend=conf.backend)
    service.warm()
    return service


@serve.deployment(num_replicas=2, max_ongoing_requests=16, max_queued_requests=64,
                  ray_actor_options={"num_cpus": 0}, health_check_period_s=5,
                  graceful_shutdown_timeout_s=30, user_config=ScorerConfig().model_dump())
class Scorer:
    """Holds one :class:`ScoringService`; ``reconfigure`` swaps it for a new version."""

    def __init__(self) -> None:
        self.service = None
        self.config: dict | None = None
        self.error: str | None = None

    async def reconfigure(self, user_config: dict) -> None:
        conf = ScorerConfig.model_validate(user_config)
        if self.service is not None and conf.model_dump() == self.config:
            return
        try:  # load beside the live model; requests keep going to it until the swap
            service = await asyncio.to_thread(load_service, conf)
        except Exception as e:
            self.error = f"{type(e).__name__}: {e}"
            if self.service is None:
                raise  # a replica without any model must not count as healthy
            return  # keep serving the old version; /v1/models reports the failed load
        self.service, self.config, self.error = service, conf.model_dump(), None

    async def score(self, request: ScoreRequest) -> dict[str, Any]:
        service = self.service  # one version for the whole request, even across a swap
        t0 = time.perf_counter()
        try:
            prompt = service.prompt(request)
        except RequestError as e:  # answered as data: exception types do not cross handles intact
            return {"error": {"field": e.field, "message": e.message, "status": e.status}}
        t1 = time.perf_counter()
        probs = await self._batched(service, prompt)
        t2 = time.perf_counter()
        return service.answer(prompt, probs, (t1 - t0) * 1e3, (t2 - t1) * 1e3)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.002)
    async def _batched(self, services: list, prompts: list) -> list:
        """Concurrent requests of this replica in one engine call (per model version)."""
        out: list = [None] * len(prompts)
        for svc in {id(s): s for s in services}.values():
            idx = [i for i, s in enumerate(services) if s is svc]
            probs = await asyncio.to_thread(svc.score_prompts, [prompts[i] for i in idx])
            for i, p in zip(idx, probs, strict=True):
                out[i] = p
        return out

    async def info(self) -> dict[str, Any]:
        if self.service is None:
            return {"ready": False, "reason": self.error or "loading"}
        info = self.service.info()
        if self.error:
            info["last_reload_error"] = self.error
        return info

    def check_health(self) -> None:
        if self.service is None:
            raise RuntimeError(f"no model loaded: {self.error or 'loading'}")


class HandleBackend:
    """The API's backend over the scorer deployment's handle."""

    def __init__(self, handle):
        self.handle = handle

    async def score(self, request: ScoreRequest) -> dict[str, Any]:
        from ray.serve.exceptions import BackPressureError

        try:
            out = await self.handle.score.remote(request)
        except BackPressureError as e:
            raise Overloaded(str(e)) from e
        if "error" in out:
            raise RequestError(**out["error"])
        return out

    async def info(self) -> dict[str, Any]:
        return await self.handle.info.remote()


_REPLICA: dict[str, Any] = {}  # this ingress replica's backend and settings (set in __init__)


def current_backend() -> HandleBackend | None:
    """Module-level (not a lambda): the pickled app Serve ships calls it by reference, so
    it reads this module's ``_REPLICA``."""
    return _REPLICA.get("backend")


def current_settings() -> ApiSettings:
    return _REPLICA.get("settings") or ApiSettings()


fastapi_app = create_app(current_backend, current_settings)


@serve.deployment(num_replicas=1, max_ongoing_requests=64, max_queued_requests=256,
                  ray_actor_options={"num_cpus": 0},
                  backpressure_config=BackpressureConfig(status_code=503, retry_after_s=1))
@serve.ingress(fastapi_app)
class Ingress:
    """HTTP in front of the scorer (``components.serve.api``)."""

    def __init__(self, scorer, api: dict | None = None):
        settings = ApiSettings(**(api or {}))
        settings.auth_token = os.environ.get(TOKEN_ENV) or settings.auth_token
        # through sys.modules: Serve pickles this class by value, so its own globals are a
        # copy; the app's routes read the imported module's (current_backend)
        import sys

        state = sys.modules[__name__]._REPLICA
        state["settings"], state["backend"] = settings, HandleBackend(scorer)


class AppArgs(BaseModel):
    """Arguments of :func:`build_app` (the ``args`` of a Serve config file)."""

    model_config = ConfigDict(extra="forbid")

    scorer: ScorerConfig = Field(default_factory=ScorerConfig)
    api: dict[str, Any] = Field(default_factory=dict)
    scorer_replicas: int = 2
    #: Serve ``autoscaling_config`` of the scorer (then ``scorer_replicas`` is ignored)
    scorer_autoscaling: dict[str, Any] | None = None
    ingress_replicas: int = 1
    max_surge_percent: int = 0
    #: per scorer replica: requests in flight (what ``@serve.batch`` can pack) and queued
    #: behind them; past both the ingress answers 503 + Retry-After
    scorer_max_ongoing: int = 16
    scorer_max_queued: int = 64
    ingress_max_ongoing: int = 64
    ingress_max_queued: int = 256


def build_app(args: dict[str, Any] | None = None) -> serve.Application:
    """The application: ``Ingress(Scorer)`` with the scorer's ``user_config`` from ``args``."""
    a = AppArgs.model_validate(args or {})
    ApiSettings(**a.api)  # fail at deploy time, not in a replica
    scale = ({"autoscaling_config": a.scorer_autoscaling, "num_replicas": "auto"} if a.scorer_autoscaling
             else {"num_replicas": a.scorer_replicas})
    scorer = Scorer.options(**scale, user_config=a.scorer.model_dump(),
                            max_surge_percent=a.max_surge_percent, max_ongoing_requests=a.scorer_max_ongoing,
                            max_queued_requests=a.scorer_max_queued).bind()
    return Ingress.options(num_replicas=a.ingress_replicas, max_ongoing_requests=a.ingress_max_ongoing,
                           max_queued_requests=a.ingress_max_queued).bind(scorer, a.api)
