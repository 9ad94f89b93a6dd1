"""The HTTP API of the ranker: a FastAPI app over a scoring backend (no Ray here).

The same app runs as the Ray Serve ingress (``pipelines/serve_app.py``, backend: the scorer
deployment's handle) or in-process under uvicorn (backend: :class:`LocalBackend`, e.g. on a
GPU machine without Ray). Endpoints:

* ``POST /v1/score``: :class:`~components.serve.schemas.ScoreRequest` ->
  :class:`~components.serve.schemas.ScoreResponse`;
* ``GET /healthz`` (the process answers), ``GET /readyz`` (a model is loaded and warmed),
  ``GET /v1/models`` (live name, version, alias and the task ids), ``GET /metrics``
  (Prometheus), ``GET /docs`` (OpenAPI).

What a client can get wrong is answered 4xx and named, never 5xx: the body is read in
chunks and refused past ``max_body_bytes`` (413) before it is parsed; JSON is parsed here
(invalid UTF-8, NaN/Infinity and nesting past the parser's recursion limit are 400/422, not a
parser crash); the schema's errors list each field (422); an unknown task, member or item is
422/404 with the field. Overload is 503 with ``Retry-After``; a request past its deadline
is 504. An optional bearer token (``auth_token``) guards ``/v1/*``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import ValidationError

from components.serve.prompts import RequestError
from components.serve.schemas import ScoreRequest, ScoreResponse


class Overloaded(Exception):
    """The scorer's queue is full: answer 503 and ask the client to come back."""


@dataclass
class ApiSettings:
    """Limits and options of the HTTP layer (the Serve config's ``api`` section)."""

    max_candidates: int = 500
    max_body_bytes: int = 4 * 1024 * 1024
    deadline_s: float = 30.0
    retry_after_s: int = 1
    auth_token: str | None = None


class Backend(Protocol):
    """What the API needs from a scorer (an in-process engine or a Serve deployment)."""

    async def score(self, request: ScoreRequest) -> dict[str, Any]: ...
    async def info(self) -> dict[str, Any]: ...


@dataclass
class Metrics:
    """Prometheus metrics of one API process (own registry: several apps per process in tests)."""

    registry: Any = None
    requests: Any = None
    latency: Any = None
    items: Any = None
    errors: Any = None

    @classmethod
    def create(cls) -> Metrics:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        reg = CollectorRegistry()
        return cls(
            reg,
            Counter("rankbrew_requests_total", "Score requests by HTTP status", ["status"], registry=reg),
            Histogram("rankbrew_request_seconds", "Score request latency", registry=reg,
                      buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)),
            Counter("rankbrew_items_scored_total", "Candidates scored", registry=reg),
            Counter("rankbrew_errors_total", "Error answers by HTTP status", ["status"], registry=reg),
        )


def _error(status: int, message: str, field_name: str | None = None, headers: dict | None = None,
           details: list | None = None) -> JSONResponse:
    body: dict[str, Any] = {"error": message}
    if field_name is not None:
        body["field"] = field_name
    if details is not None:
        body["details"] = details
    return JSONResponse(body, status_code=status, headers=headers)


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number: send finite numbers only")


def _validation_details(err: ValidationError) -> list[dict[str, str]]:
    return [{"field": ".".join(str(p) for p in e["loc"]) or "body", "message": e["msg"]}
            for e in err.errors(include_url=False)][:50]


def create_app(get_backend: Callable[[], Backend | None],
               settings: ApiSettings | Callable[[], ApiSettings] | None = None,
               metrics: Metrics | None = None) -> FastAPI:
    """The FastAPI app; ``get_backend()`` returns the backend (None until one is attached).

    ``settings``: fixed, or a function returning them (Ray Serve ships a pickled copy of
    the app to each replica, so a replica's settings are reached through a module-level
    function, not by mutating the app object)."""
    fixed = settings if isinstance(settings, ApiSettings) else ApiSettings()
    current: Callable[[], ApiSettings] = settings if callable(settings) else (lambda: fixed)
    metrics = metrics or Metrics.create()
    app = FastAPI(title="rankbrew ranker", version="1",
                  description="P(yes) per candidate for a member and a question: 360Brew-style "
                              "multi-item scoring of a decoder LLM.")
    app.state.metrics = metrics

    def authorized(request: Request) -> bool:
        token = current().auth_token
        if not token:
            return True
        got = request.headers.get("authorization", "")
        return hmac.compare_digest(got.encode(), f"Bearer {token}".encode())

    async def read_body(request: Request) -> bytes | JSONResponse:
        limit = current().max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return _error(413, f"request body of {declared} bytes is over the limit of {limit} bytes")
        chunks, total = [], 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:
                return _error(413, f"request body is over the limit of {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    def parse(raw: bytes) -> ScoreRequest | JSONResponse:
        if not raw.strip():
            return _error(400, "empty body: send a JSON ScoreRequest (see /docs)", "body")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            return _error(400, f"body is not UTF-8 (byte {e.start}): send UTF-8 JSON", "body")
        try:
            obj = json.loads(text, parse_constant=_reject_constant)
        except RecursionError:  # the C parser stops cleanly past Python's recursion limit
            return _error(422, "JSON nested too deep: a ScoreRequest never needs that", "body")
        except ValueError as e:
            return _error(400, f"body is not valid JSON: {e}", "body")
        if not isinstance(obj, dict):
            return _error(422, f"body must be a JSON object (a ScoreRequest), not {type(obj).__name__}",
                          "body")
        try:
            req = ScoreRequest.model_validate(obj)
        except ValidationError as e:
            details = _validation_details(e)
            return _error(422, f"invalid request: {details[0]['field']}: {details[0]['message']}",
                          details[0]["field"], details=details)
        cap = current().max_candidates
        if len(req.candidates) > cap:
            return _error(422, f"{len(req.candidates)} candidates is over this deployment's limit of "
                          f"{cap}: split the request", "candidates")
        return req

    @app.middleware("http")
    async def count(request: Request, call_next: Callable[[Request], Awaitable[Any]]):
        t0 = time.perf_counter()
        response = await call_next(request)
        if request.url.path == "/v1/score":
            status = str(response.status_code)
            metrics.requests.labels(status).inc()
            metrics.latency.observe(time.perf_counter() - t0)
            if response.status_code >= 400:
                metrics.errors.labels(status).inc()
        return response

    @app.post("/v1/score", response_model=ScoreResponse, openapi_extra={"requestBody": {
        "required": True, "content": {"application/json": {"schema": ScoreRequest.model_json_schema()}}}})
    async def score(request: Request):
        """P(yes) per candidate, in request order (the request schema is ScoreRequest)."""
        t0 = time.perf_counter()
        if not authorized(request):
            return _error(401, "missing or wrong bearer token: send 'Authorization: Bearer <token>'",
                          headers={"WWW-Authenticate": "Bearer"})
        raw = await read_body(request)
        if isinstance(raw, JSONResponse):
            return raw
        req = parse(raw)
        if isinstance(req, JSONResponse):
            return req
        backend = get_backend()
        if backend is None:
            return _error(503, "no model loaded yet: retry shortly (GET /readyz)",
                          headers={"Retry-After": str(current().retry_after_s)})
        try:
            out = await asyncio.wait_for(backend.score(req), timeout=current().deadline_s)
        except RequestError as e:
            return _error(e.status, e.message, e.field)
        except Overloaded:
            return _error(503, "the scorer is at capacity: retry after the Retry-After seconds",
                          headers={"Retry-After": str(current().retry_after_s)})
        except TimeoutError:
            return _error(504, f"not scored within the deadline of {current().deadline_s} s: "
                          f"send fewer candidates or retry")
        scores = [float(x) for x in out["scores"]]
        if any(not math.isfinite(x) for x in scores):
            return _error(500, "the model returned a non-finite score")
        metrics.items.inc(len(scores))
        timings = {**out.get("timings_ms", {}), "total": (time.perf_counter() - t0) * 1e3}
        return ScoreResponse(item_ids=out["item_ids"], scores=scores, task=req.task, model=out["model"],
                             n_history_events=out["n_history_events"], timings_ms=timings)

    @app.get("/healthz")
    async def healthz():
        """The process answers (liveness)."""
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz():
        """A model is loaded and warmed (readiness): 503 until then."""
        backend = get_backend()
        if backend is None:
            return _error(503, "no backend attached yet")
        info = await backend.info()
        if not info.get("ready"):
            return _error(503, f"model not ready: {info.get('reason', 'loading')}")
        return {"status": "ready", "model": info["model"]}

    @app.get("/v1/models")
    async def models(request: Request):
        """The live model (name, version, alias, uri) and the task ids it answers."""
        if not authorized(request):
            return _error(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})
        backend = get_backend()
        if backend is None:
            return _error(503, "no backend attached yet")
        return await backend.info()

    @app.get("/metrics")
    async def prometheus():
        """Prometheus text format: requests by status, latency, items scored, errors."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return PlainTextResponse(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
