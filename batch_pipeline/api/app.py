"""The seed's HTTP API: start a beam-search session, follow it live, read job, batch and result status.

A Starlette app over `SessionService`; one background worker thread drives the sessions started
here (one driver, so no two threads ever submit the same planned batch). Safe for a browser by
default: JSON-only writes, a Host allow-list, a body limit, CORS closed, and a bearer token
(`BATCH_API_TOKEN`) that `serve` requires whenever it binds to anything but loopback. Ledger work
runs in a thread pool, off the event loop; a ledger held by another process answers 503.
`batch-pipeline api --port 8700`; the web page is at `/`, the OpenAPI document at `/api/openapi.json`.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from decimal import Decimal
from importlib import resources
from typing import Any, Literal

import duckdb
import psycopg
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from batch_pipeline.batching.image_store import REF_PREFIX
from batch_pipeline.batching.polling import PollPolicy
from batch_pipeline.batching.polling import progress as batch_progress
from batch_pipeline.batching.pricing import UnpricedModelError, cost_json
from batch_pipeline.driver import Driver, Tick
from batch_pipeline.errors import BatchPipelineError, LedgerBusy, is_ledger_busy, is_lock_error
from batch_pipeline.estimates import estimate_session, session_completion
from batch_pipeline.estimates import iso_utc as _iso
from batch_pipeline.ledger.session_rows import CandidateRow, SessionRow
from batch_pipeline.runtime import Runtime
from batch_pipeline.search import SearchParams, dependent_rounds
from batch_pipeline.sessions import FINISHED, SessionConfig, SessionConflict, UserPrompt
from batch_pipeline.settings import is_loopback_host
from batch_pipeline.vocabulary import ENDED_STATUSES

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 5  # what a 503 (ledger held by another process) asks the client to wait
MAX_SEED = 2**53 - 1  # the largest integer a browser's JSON numbers carry exactly


class ApiConfigError(BatchPipelineError, ValueError):
    """The API cannot start safely with this configuration (e.g. a public bind without a token)."""


class BeamSearchRequest(BaseModel):
    """POST /api/beam-search, in the seed's field names. Unknown fields and loose types are refused."""

    model_config = ConfigDict(extra="forbid", strict=True)

    prompt: UserPrompt
    n: int = Field(9, ge=2, le=16, description="beam width N: new candidates per iteration")
    m: int = Field(3, ge=1, le=8, description="survivors M per iteration: at most n/2 and a divisor of n")
    iterations: int = Field(3, ge=1, le=10, description="iterations K, counting iteration 0")
    ensembleSize: int = Field(3, ge=1, le=5, description="votes E per pairwise comparison")
    alpha: float = Field(0.7, ge=0, le=1, allow_inf_nan=False, description="weight of alignment against aesthetics")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="the only source of randomness")
    useBatch: bool = Field(True, description="batch tier (half price, up to deadlineHours) or standard")
    batchWaitMode: Literal["deferred", "poll"] = Field(
        "deferred",
        description="deferred: answer at once and let the job run, follow it on eventsUrl; "
        "poll: answer at once, poll statusUrl every pollIntervalSeconds",
    )
    tier: Literal["standard", "flex", "batch", "hybrid"] | None = Field(None, description="overrides useBatch")
    deadlineHours: float | None = Field(
        None,
        gt=0,
        le=24,
        allow_inf_nan=False,
        description="finish within this many hours (default BATCH_MAX_WAIT_HOURS)",
    )
    budgetUsd: float | None = Field(
        None,
        ge=0,
        allow_inf_nan=False,
        description="spend limit: a round that would go over it is not sent; the job ends stopped",
    )
    textModel: str | None = Field(None, min_length=1, max_length=100, description="text model (default: current)")
    visionModel: str | None = Field(None, min_length=1, max_length=100, description="vision (judge) model")
    imageModel: str | None = Field(None, min_length=1, max_length=100, description="image model")
    imageSize: Literal["1024x1024", "1024x1536", "1536x1024"] | None = Field(None, description="image size")
    imageQuality: Literal["low", "medium", "high"] | None = Field(None, description="image quality")
    roundsPerIteration: Literal[2, 3] | None = Field(
        None,
        description="2 (default): the vision round also writes the next candidates; 3: a text round each iteration",
    )
    sessionId: str | None = Field(
        None,
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9_-]+$",
        description="idempotency: the same id again answers the same job, never a second one",
    )

    @field_validator("m")
    @classmethod
    def _m_fits_n(cls, m: int, info: ValidationInfo) -> int:
        n = info.data.get("n")
        if n is not None and m > n // 2:
            raise ValueError(f"must be at most n/2 (n={n}, m={m})")
        if n is not None and n % m:
            raise ValueError(f"must divide n (n={n}, m={m})")
        return m


# The core's names for the request's fields (errors from the core are reported under the request's).
_REQUEST_FIELD = {
    "N": "n",
    "M": "m",
    "K": "iterations",
    "E": "ensembleSize",
    "deadline_hours": "deadlineHours",
    "budget_usd": "budgetUsd",
    "text_model": "textModel",
    "vision_model": "visionModel",
    "image_model": "imageModel",
    "image_size": "imageSize",
    "image_quality": "imageQuality",
    "rounds_per_iteration": "roundsPerIteration",
    "prompt": "prompt",
    "alpha": "alpha",
    "seed": "seed",
    "tier": "tier",
    "session_id": "sessionId",
}
POLL_INTERVAL_SECONDS = 5


class SessionWorker:
    """Drives the sessions started here (`driver="api"`) with the one session driver, until stopped."""

    def __init__(self, runtime: Runtime, interval_s: float = 1.0):
        self.runtime = runtime
        self.interval_s = interval_s
        self.driver = Driver(runtime, owner="api")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="session-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def tick(self) -> Tick:
        return self.driver.tick()

    def _loop(self) -> None:
        # The driver's loop, with this worker's interval as the poll delay and its stop event as the sleep.
        policy = PollPolicy(initial_s=self.interval_s, multiplier=1.0, max_s=max(self.interval_s, 30.0), jitter=0.0)
        while not self._stop.is_set():
            try:
                self.driver.run(lambda _tick: self._stop.is_set(), poll_policy=policy, sleep=self._stop.wait)
            except Exception:  # keep serving: a bug in one tick must not stop the worker for good
                log.exception("session worker tick failed")
                self._stop.wait(self.interval_s)


def create_app(
    runtime: Runtime,
    *,
    run_worker: bool = True,
    worker_interval_s: float = 1.0,
    token: str | None = None,
    allowed_hosts: tuple[str, ...] | None = None,
    cors_origins: tuple[str, ...] | None = None,
    max_body_bytes: int | None = None,
    events_interval_s: float = 0.5,
) -> Starlette:
    """The app; the security knobs default to `runtime.settings` (BATCH_API_TOKEN, BATCH_API_ALLOWED_HOSTS,
    BATCH_API_CORS_ORIGINS, BATCH_API_MAX_BODY_BYTES)."""
    settings = runtime.settings
    if token is None and settings.batch_api_token is not None:
        token = settings.batch_api_token.get_secret_value()
    allowed_hosts = settings.api_allowed_hosts if allowed_hosts is None else allowed_hosts
    cors_origins = settings.api_cors_origins if cors_origins is None else cors_origins
    max_body_bytes = settings.batch_api_max_body_bytes if max_body_bytes is None else max_body_bytes
    worker = SessionWorker(runtime, worker_interval_s)
    ledger = runtime.ledger

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if run_worker:
            worker.start()
        try:
            yield
        finally:
            if run_worker:
                worker.stop()

    async def start_session(request: Request) -> JSONResponse:
        try:
            body = BeamSearchRequest.model_validate_json(await request.body())
        except ValidationError as exc:
            return _validation_error(exc)
        tier = body.tier or ("batch" if body.useBatch else "standard")
        models = {
            name: value
            for name, value in (
                ("text_model", body.textModel),
                ("vision_model", body.visionModel),
                ("image_model", body.imageModel),
                ("image_size", body.imageSize),
                ("image_quality", body.imageQuality),
                ("rounds_per_iteration", body.roundsPerIteration),
            )
            if value is not None
        }
        try:
            config = SessionConfig(
                prompt=body.prompt,
                tier=tier,
                deadline_hours=body.deadlineHours,
                driver="api",
                session_id=body.sessionId,
                budget_usd=None if body.budgetUsd is None else Decimal(str(body.budgetUsd)),
                params=SearchParams(
                    N=body.n,
                    M=body.m,
                    K=body.iterations,
                    E=body.ensembleSize,
                    alpha=body.alpha,
                    seed=body.seed,
                    **models,
                ),
            )
        except ValidationError as exc:  # the core's rules, reported under the request's field names
            return _validation_error(exc, rename=_REQUEST_FIELD)
        try:
            session_id = await run_in_threadpool(runtime.sessions.start, config)
        except SessionConflict as exc:
            return _error(409, f"sessionId: {exc}")
        except UnpricedModelError as exc:
            return _error(400, f"{_REQUEST_FIELD[exc.field]}: {exc}", field=_REQUEST_FIELD[exc.field])
        answer = {
            "jobId": session_id,
            "status": "running",
            "params": config.params.model_dump(mode="json"),
            "tier": tier,
            "batchWaitMode": body.batchWaitMode,
            "statusUrl": f"/api/job/{session_id}",
            "eventsUrl": f"/api/job/{session_id}/events",
            **await run_in_threadpool(_estimates, runtime, session_id),
        }
        if body.batchWaitMode == "poll":
            answer["pollIntervalSeconds"] = POLL_INTERVAL_SECONDS
        return JSONResponse(status_code=202, content=answer, headers={"Location": answer["statusUrl"]})

    async def job_status(request: Request) -> JSONResponse:
        session_id = request.path_params["job_id"]
        job = await run_in_threadpool(_job_or_none, runtime, session_id)
        if job is None:
            return _error(404, f"no job {session_id!r}")
        return JSONResponse(job)

    async def list_jobs(request: Request) -> JSONResponse:
        def jobs() -> list[dict[str, Any]]:
            return [_job(runtime, row, brief=True) for row in reversed(ledger.sessions())]

        return JSONResponse({"jobs": await run_in_threadpool(jobs)})

    async def cancel_job(request: Request) -> JSONResponse:
        session_id = request.path_params["job_id"]

        def cancel() -> dict[str, Any] | None:
            try:
                runtime.sessions.cancel(session_id)
            except KeyError:
                return None
            return _job_or_none(runtime, session_id)

        job = await run_in_threadpool(cancel)
        return _error(404, f"no job {session_id!r}") if job is None else JSONResponse(job)

    async def candidates(request: Request) -> JSONResponse:
        session_id = request.path_params["job_id"]

        def ranked() -> list[dict[str, Any]] | None:
            if ledger.session(session_id) is None:
                return None
            state = runtime.sessions.state(session_id)
            final = set(state.iterations[-1].pool) if state.iterations else set()
            rows = ledger.session_candidates(session_id)
            # The last ranking's pool first (its new candidates and the survivors it re-ranked), by rank.
            return [
                _candidate(session_id, c) | {"inLastRanking": c.candidate_id in final}
                for c in sorted(
                    rows,
                    key=lambda c: (
                        c.candidate_id not in final,
                        c.rank is None,
                        c.rank or 0,
                        -c.iteration,
                        c.candidate_id,
                    ),
                )
            ]

        found = await run_in_threadpool(ranked)
        if found is None:
            return _error(404, f"no job {session_id!r}")
        return JSONResponse({"jobId": session_id, "candidates": found})

    async def batch_results(request: Request) -> JSONResponse:
        batch_id = request.path_params["batch_id"]
        answers = request.query_params.get("answers", "false").lower()
        if answers not in ("true", "false", "1", "0"):
            return _error(400, "answers: must be true or false", field="answers")
        found = await run_in_threadpool(_batch_results, runtime, batch_id, answers in ("true", "1"))
        return _error(404, f"no batch {batch_id!r}") if found is None else JSONResponse(found)

    async def candidate_image(request: Request) -> Response:
        session_id, candidate_id = request.path_params["job_id"], request.path_params["candidate_id"]
        rows = await run_in_threadpool(ledger.session_candidates, session_id)
        for c in rows:
            if c.candidate_id == candidate_id and c.image_path:
                return FileResponse(c.image_path, media_type="image/png")
        return _error(404, f"no image for {candidate_id!r} in job {session_id!r}")

    async def stored_image(request: Request) -> Response:
        name = request.path_params["name"]
        try:
            path = runtime.image_store.path(REF_PREFIX + name)
        except ValueError:
            return _error(404, f"no image {name!r}")
        if not path.is_file():
            return _error(404, f"no image {name!r}")
        return FileResponse(path, media_type="image/png" if name.endswith(".png") else "application/octet-stream")

    async def job_events(request: Request) -> Response:
        session_id = request.path_params["job_id"]
        first = await run_in_threadpool(_progress_snapshot, runtime, session_id)
        if first is None:
            return _error(404, f"no job {session_id!r}")

        async def stream():
            seen: dict[str, Any] = {}
            snapshot, number, last_sent = first, 0, time.monotonic()
            job = await run_in_threadpool(_job_or_none, runtime, session_id)
            number += 1
            yield _sse("snapshot", job, number)
            while True:
                for name, data in _progress_events(seen, snapshot):
                    number += 1
                    last_sent = time.monotonic()
                    yield _sse(name, data, number)
                if snapshot["status"] in FINISHED:
                    number += 1
                    yield _sse("end", {"status": snapshot["status"], "error": snapshot["error"]}, number)
                    return
                await asyncio.sleep(events_interval_s)
                if await request.is_disconnected():
                    return
                if time.monotonic() - last_sent > 15:
                    last_sent = time.monotonic()
                    yield ": keep-alive\n\n"
                try:
                    latest = await run_in_threadpool(_progress_snapshot, runtime, session_id)
                    snapshot = latest or snapshot
                except (LedgerBusy, duckdb.IOException, psycopg.OperationalError) as exc:  # busy: try again next time
                    if not is_ledger_busy(exc):
                        raise

        return StreamingResponse(
            stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        )

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "worker": worker._thread.is_alive()})

    async def openapi(request: Request) -> JSONResponse:
        return JSONResponse(openapi_document())

    async def page(request: Request) -> Response:
        name = request.url.path.lstrip("/") or "index.html"
        media = {
            "index.html": "text/html; charset=utf-8",
            "app.js": "text/javascript; charset=utf-8",
            "app.css": "text/css; charset=utf-8",
        }[name]
        return Response(resources.files("batch_pipeline.api.web").joinpath(name).read_bytes(), media_type=media)

    routes = [
        Route("/", page, methods=["GET"]),
        Route("/app.js", page, methods=["GET"]),
        Route("/app.css", page, methods=["GET"]),
        Route("/api/openapi.json", openapi, methods=["GET"]),
        Route("/api/beam-search", start_session, methods=["POST"]),
        Route("/api/jobs", list_jobs, methods=["GET"]),
        Route("/api/job/{job_id}", job_status, methods=["GET"]),
        Route("/api/job/{job_id}/events", job_events, methods=["GET"]),
        Route("/api/job/{job_id}/candidates", candidates, methods=["GET"]),
        Route("/api/job/{job_id}/cancel", cancel_job, methods=["POST"]),
        Route("/api/job/{job_id}/images/{candidate_id}", candidate_image, methods=["GET"]),
        Route("/api/images/{name}", stored_image, methods=["GET"]),
        Route("/api/batch/{batch_id}/results", batch_results, methods=["GET"]),
        Route("/api/health", health, methods=["GET"]),
    ]
    middleware = [Middleware(HostGuard, allowed_hosts=allowed_hosts)]
    if cors_origins:  # closed unless configured: no CORS headers at all, so browsers keep other sites out
        middleware.append(
            Middleware(
                JsonCORSMiddleware,
                allow_origins=list(cors_origins),
                allow_methods=["GET", "POST"],
                allow_headers=["Authorization", "Content-Type"],
                max_age=600,
            )
        )
    middleware.append(Middleware(RequestGuard, token=token, max_body_bytes=max_body_bytes))
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=middleware,
        exception_handlers={
            HTTPException: _http_error,
            LedgerBusy: _ledger_busy,
            duckdb.IOException: _ledger_io_error,
            psycopg.OperationalError: _ledger_io_error,
            ValidationError: _internal_error,
            Exception: _internal_error,
        },
    )
    app.state.worker = worker
    return app


# -- guards -------------------------------------------------------------------------------------

# Reachable without the token: the page itself (it asks for the token), the API description, health.
PUBLIC_PATHS = frozenset({"/", "/app.js", "/app.css", "/api/openapi.json", "/api/health"})
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class HostGuard:
    """Answers only for allowed Host names (DNS rebinding: a hostile name resolving to 127.0.0.1)."""

    def __init__(self, app: ASGIApp, allowed_hosts: tuple[str, ...]):
        self.app = app
        self.any_host = "*" in allowed_hosts
        self.allowed = frozenset(h.lower() for h in allowed_hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not self.any_host:
            host = _header(scope, b"host")
            if _host_name(host) not in self.allowed:
                return await _send_error(send, 400, f"host {host!r} is not allowed (BATCH_API_ALLOWED_HOSTS)")
        await self.app(scope, receive, send)


class JsonCORSMiddleware(CORSMiddleware):
    """Starlette's CORS middleware, refusing a preflight in JSON like every other answer."""

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code < 400:
            return response
        headers = {k: v for k, v in response.headers.items() if k not in ("content-type", "content-length")}
        return JSONResponse(
            status_code=response.status_code, content={"error": bytes(response.body).decode()}, headers=headers
        )


class _BodyTooLarge(Exception):
    pass


class RequestGuard:
    """Bearer token, JSON-only writes (no CORS "simple request" can start a paid job), a body limit,
    and headers that keep the answers out of other sites' frames and sniffers."""

    def __init__(self, app: ASGIApp, token: str | None, max_body_bytes: int):
        self.app = app
        self.token = token.encode() if token else None
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        method, path = scope["method"], scope["path"]
        if self.token is not None and method != "OPTIONS" and path not in PUBLIC_PATHS:
            offered = _header(scope, b"authorization")
            scheme, _, value = offered.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), self.token):
                return await _send_error(
                    send,
                    401,
                    "missing or wrong bearer token (Authorization: Bearer ...)",
                    headers=[(b"www-authenticate", b"Bearer")],
                )
        if method in _BODY_METHODS:
            media_type = _header(scope, b"content-type").split(";")[0].strip().lower()
            if media_type != "application/json":
                return await _send_error(send, 415, "Content-Type must be application/json")
            length = _header(scope, b"content-length")
            if length.isdigit() and int(length) > self.max_body_bytes:
                return await _send_error(send, 413, f"body larger than {self.max_body_bytes} bytes")

        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise _BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = list(message.get("headers", []))
                headers += [
                    (b"x-content-type-options", b"nosniff"),
                    (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"no-referrer"),
                ]
                if path == "/":
                    headers.append(
                        (
                            b"content-security-policy",
                            b"default-src 'self'; img-src 'self' blob: data:; "
                            b"frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
                        )
                    )
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except _BodyTooLarge:
            if not started:
                await _send_error(send, 413, f"body larger than {self.max_body_bytes} bytes")


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return ""


def _host_name(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):  # [::1]:8700
        return host[: host.find("]") + 1]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


async def _send_error(send: Send, status: int, message: str, headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps({"error": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"x-content-type-options", b"nosniff"),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


# -- errors: every answer is JSON ------------------------------------------------------------------


def _error(
    status: int, message: str, *, field: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    content: dict[str, Any] = {"error": message}
    if field is not None:
        content["errors"] = [{"field": field, "message": message.partition(": ")[2] or message}]
    return JSONResponse(status_code=status, content=content, headers=headers)


def _validation_error(exc: ValidationError, rename: dict[str, str] | None = None) -> JSONResponse:
    errors = []
    for e in exc.errors(include_url=False):
        loc = [p for p in e["loc"] if p != "params"]
        field = ".".join(str((rename or {}).get(str(p), p)) for p in loc) or "body"
        if e["type"] == "extra_forbidden":
            message = f"unknown field (accepted: {', '.join(BeamSearchRequest.model_fields)})"
        elif e["type"] == "json_invalid":
            message = "not valid JSON"
        elif e["type"] == "model_type" or (e["type"] == "model_attributes_type"):
            message = "must be a JSON object"
        else:
            message = e["msg"].removeprefix("Value error, ")
        errors.append({"field": field, "message": message})
    return JSONResponse(
        status_code=400, content={"error": "; ".join(f"{e['field']}: {e['message']}" for e in errors), "errors": errors}
    )


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException), "registered for HTTPException (Starlette's handler type takes any)"
    return JSONResponse(status_code=exc.status_code, content={"error": exc.detail}, headers=exc.headers)


async def _ledger_busy(request: Request, exc: Exception) -> JSONResponse:
    return _error(
        503,
        "the ledger is busy (another process holds it); retry shortly",
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


async def _ledger_io_error(request: Request, exc: Exception) -> JSONResponse:
    if is_lock_error(exc):
        return await _ledger_busy(request, exc)
    return await _internal_error(request, exc)


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return _error(500, f"internal error ({type(exc).__name__}); see the server log")


# -- views --------------------------------------------------------------------------------------


def _job_or_none(runtime: Runtime, session_id: str) -> dict[str, Any] | None:
    row = runtime.ledger.session(session_id)
    return None if row is None else _job(runtime, row)


def _job(runtime: Runtime, row: SessionRow, brief: bool = False) -> dict[str, Any]:
    """The seed's job view: status, progress, batches in flight and the winner once done."""
    state = runtime.sessions.state(row.session_id)
    total_rounds = dependent_rounds(state.params)
    done = row.status in FINISHED
    job: dict[str, Any] = {
        "jobId": row.session_id,
        "prompt": row.user_prompt,
        "status": "running" if not done else row.status,
        "iteration": state.iteration,
        "round": None if state.done else state.next_round,
        # Never 100% before the session has really finished (a round can sit in `finalizing`).
        "progress": 1.0 if done else round(min(len(state.rounds) / total_rounds, 0.99), 3),
        "tier": row.config.get("tier"),
        "createdAt": _iso(row.created_at),
    }
    if brief:
        return job
    job |= _batch_ids(runtime, row.session_id)
    if done:
        job |= {"estimatedCompletionTime": None, "estimatedWaitHours": 0, "estimateBasis": "finished"}
    else:
        job |= _completion(runtime, row)
    job["deadline"] = _iso(row.deadline_at)
    job["error"] = row.error
    job["cost"] = _cost(runtime, row.session_id)
    winner_id = state.winner_id or row.winner_id  # a stopped session names its best candidate so far
    if winner_id:
        winner = state.candidate(winner_id)
        job["winner"] = {
            "candidateId": winner.id,
            "prompt": winner.combined,
            "what": winner.what,
            "how": winner.how,
            "imageUrl": f"/api/job/{row.session_id}/images/{winner.id}",
            "lineage": state.lineage,
        }
    return job


def _cost(runtime: Runtime, session_id: str) -> dict[str, Any]:
    """The three figures: paid, the standard tier for the same calls, what the cache avoided."""
    return cost_json(runtime.ledger.cost_figures(session_id=session_id))


def _batch_ids(runtime: Runtime, session_id: str) -> dict[str, Any]:
    """Every remote batch of the job as soon as it exists; `batchId`: the one in flight, else the latest."""
    created = [b for b, _ in runtime.ledger.batches_of_session(session_id) if b.openai_batch_id is not None]
    inflight = [b for b in created if b.status not in ENDED_STATUSES]
    latest = inflight[0] if inflight else (created[-1] if created else None)
    return {"batchId": latest.openai_batch_id if latest else None, "batchIds": [b.openai_batch_id for b in created]}


def _completion(runtime: Runtime, row: SessionRow) -> dict[str, Any]:
    return session_completion(
        now=time.time(),
        deadline_at=row.deadline_at,
        state=runtime.sessions.state(row.session_id),
        mode=row.config.get("tier", "batch"),
        turnaround=runtime.ledger.observed_turnaround(),
    ).to_json()


def _estimates(runtime: Runtime, session_id: str) -> dict[str, Any]:
    """The POST answer's estimates: cost on every tier (catalog and call counts) and completion (history)."""
    row = runtime.sessions.row(session_id)
    config = SessionConfig.model_validate({k: v for k, v in row.config.items() if k != "fingerprint"})
    cost = estimate_session(
        config.prompt, config.params, runtime.catalog, history=runtime.ledger.observed_output_tokens()
    )
    return {
        **_batch_ids(runtime, session_id),
        **_completion(runtime, row),
        "deadline": _iso(row.deadline_at),
        "estimate": cost.to_json(),
    }


def _candidate(session_id: str, c: CandidateRow) -> dict[str, Any]:
    return {
        "candidateId": c.candidate_id,
        "iteration": c.iteration,
        "rank": c.rank,
        "score": c.score,
        "survived": c.survived,
        "failed": c.failed,
        "prompt": c.combined,
        "parentId": c.parent_id,
        "votesWon": c.votes_won,
        "votesLost": c.votes_lost,
        "imageUrl": f"/api/job/{session_id}/images/{c.candidate_id}" if c.image_path else None,
    }


def _batch_results(runtime: Runtime, batch_id: str, with_answers: bool) -> dict[str, Any] | None:
    ledger = runtime.ledger
    record = next((b for b in ledger.batches() if batch_id in (b.batch_key, b.openai_batch_id)), None)
    if record is None:
        return None
    members = ledger.batch_members(record.batch_key)
    finals = ledger.final_results(list(members.values())) if record.phase == "ingested" else {}
    results = []
    for rid, o in sorted(finals.items()):
        item: dict[str, Any] = {
            "customId": rid,
            "outcome": str(o.outcome),
            "statusCode": o.status_code,
            "error": o.error_message,
            "costUsd": str(o.cost_usd),
            "standardCostUsd": str(o.standard_cost_usd),
        }
        if with_answers:
            item["answer"] = _answer(o.response)
        results.append(item)
    return {
        "batchId": record.openai_batch_id,
        "batchKey": record.batch_key,
        "status": record.status,
        "phase": str(record.phase),
        "requestCount": record.request_count,
        "progress": batch_progress(
            record.status or "validating", record.completed_count, record.failed_count, record.request_count
        ),
        "results": results,
    }


def _answer(response: dict[str, Any] | None) -> dict[str, Any] | None:
    """A request's answer: the text of a chat completion, or the URL of a generated image."""
    if not response:
        return None
    if response.get("choices"):
        message = response["choices"][0].get("message") or {}
        return {"type": "text", "text": message.get("content") or message.get("refusal")}
    data = response.get("data") or []
    if data and isinstance(data[0], dict) and str(data[0].get("image_ref", "")).startswith(REF_PREFIX):
        return {"type": "image", "imageUrl": "/api/images/" + data[0]["image_ref"][len(REF_PREFIX) :]}
    return None


# -- live progress ----------------------------------------------------------------------------------


def _progress_snapshot(runtime: Runtime, session_id: str) -> dict[str, Any] | None:
    """What the event stream compares between polls: reads only."""
    ledger = runtime.ledger
    row = ledger.session(session_id)
    if row is None:
        return None
    batches = [
        {
            "batchId": b.openai_batch_id,
            "batchKey": b.batch_key,
            "model": b.model,
            "status": b.status,
            "phase": str(b.phase),
            "requestCount": b.request_count,
            "completed": b.completed_count,
            "failed": b.failed_count,
            "progress": batch_progress(b.status or "validating", b.completed_count, b.failed_count, b.request_count),
        }
        for b, _ in ledger.batches_of_session(session_id)
    ]
    counts = ledger.state_counts(session_id=session_id)
    winner = None
    if row.winner_id:
        winner = {
            "candidateId": row.winner_id,
            "imageUrl": f"/api/job/{session_id}/images/{row.winner_id}",
            "prompt": next(
                (c.combined for c in ledger.session_candidates(session_id) if c.candidate_id == row.winner_id), None
            ),
        }
    return {
        "status": row.status,
        "error": row.error,
        "iteration": row.iteration,
        "round": row.next_round,
        "pending": sum(n for s, n in counts.items() if s in ("queued", "submitted", "running")),
        "rounds": [
            {
                "iteration": r["iteration"],
                "round": r["round"],
                "calls": r["calls"],
                "succeeded": r["succeeded"],
                "failed": r["failed"],
            }
            for r in ledger.session_rounds(session_id)
        ],
        "batches": batches,
        "cost": _cost(runtime, session_id),
        "winner": winner,
    }


def _progress_events(seen: dict[str, Any], snap: dict[str, Any]) -> list[tuple[str, Any]]:
    """The steps between the last snapshot and this one; `seen` remembers what was already sent."""
    events: list[tuple[str, Any]] = []
    queued: set = seen.setdefault("queued", set())
    applied: set = seen.setdefault("applied", set())
    batches: dict = seen.setdefault("batches", {})

    def round_queued(iteration: int, name: str, pending: int | None) -> None:
        if (iteration, name) not in queued:
            queued.add((iteration, name))
            events.append(("round_queued", {"iteration": iteration, "round": name, "pendingRequests": pending}))

    for r in snap["rounds"]:  # rounds applied since: each was queued first
        key = (r["iteration"], r["round"])
        if key not in applied:
            round_queued(*key, None)
    if snap["status"] == "running" and snap["round"]:
        round_queued(snap["iteration"], snap["round"], snap["pending"])
    for b in snap["batches"]:
        if b["batchId"] is None:
            continue
        before = batches.get(b["batchKey"])
        if before is None:
            events.append(
                ("batch_created", {k: b[k] for k in ("batchId", "batchKey", "model", "requestCount", "status")})
            )
        if before is None or any(before[k] != b[k] for k in ("status", "completed", "failed", "phase")):
            events.append(
                (
                    "batch_progress",
                    {
                        k: b[k]
                        for k in ("batchId", "status", "phase", "completed", "failed", "requestCount", "progress")
                    },
                )
            )
        batches[b["batchKey"]] = b
    for r in snap["rounds"]:
        key = (r["iteration"], r["round"])
        if key not in applied:
            applied.add(key)
            events.append(("round_applied", r))
    if snap["cost"] != seen.get("cost"):
        seen["cost"] = snap["cost"]
        events.append(("cost", snap["cost"]))
    if snap["winner"] and not seen.get("winner"):
        seen["winner"] = True
        events.append(("winner", snap["winner"]))
    if snap["status"] != seen.get("status"):
        seen["status"] = snap["status"]
        events.append(("status", {"status": snap["status"], "error": snap["error"]}))
    return events


def _sse(event: str, data: Any, number: int) -> str:
    return f"id: {number}\nevent: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


# -- OpenAPI -----------------------------------------------------------------------------------------


def openapi_document() -> dict[str, Any]:
    """The API's description (OpenAPI 3.1); tests keep its paths equal to the app's routes."""
    error = {
        "description": "error",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    job_id = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}
    common = {
        "400": error,
        "401": error,
        "404": error,
        "500": error,
        "503": {**error, "description": "the ledger is busy; retry after the Retry-After header's seconds"},
    }

    def op(
        summary: str,
        ok: dict[str, Any],
        *,
        params: list | None = None,
        body: bool = False,
        ok_status: str = "200",
        public: bool = False,
    ) -> dict[str, Any]:
        operation: dict[str, Any] = {"summary": summary, "responses": {ok_status: ok, **common}}
        if params:
            operation["parameters"] = params
        if body:
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/BeamSearchRequest"}}},
            }
            operation["responses"] |= {"413": error, "415": error}
        if public:
            operation["security"] = []
        return operation

    def json_ok(description: str) -> dict[str, Any]:
        return {"description": description, "content": {"application/json": {"schema": {"type": "object"}}}}

    request_schema = BeamSearchRequest.model_json_schema()
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "batch_pipeline API",
            "version": "1",
            "description": "The seed's beam-search endpoints. Writes take application/json only. With "
            "BATCH_API_TOKEN set, every path except /, /api/health and /api/openapi.json "
            "needs `Authorization: Bearer <token>`.",
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "BeamSearchRequest": request_schema,
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {"type": "string"},
                        "errors": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "field": {"type": "string", "description": "the request's own field name"},
                                    "message": {"type": "string"},
                                },
                            },
                        },
                    },
                },
            },
        },
        "security": [{"bearer": []}],
        "paths": {
            "/": {
                "get": op(
                    "the web page: jobs, start one, live progress, ranked images",
                    {"description": "HTML", "content": {"text/html": {}}},
                    public=True,
                )
            },
            "/app.js": {"get": op("the web page's script", {"description": "JavaScript"}, public=True)},
            "/app.css": {"get": op("the web page's style sheet", {"description": "CSS"}, public=True)},
            "/api/openapi.json": {"get": op("this document", json_ok("OpenAPI 3.1"), public=True)},
            "/api/health": {"get": op("liveness and the worker thread", json_ok("{status, worker}"), public=True)},
            "/api/beam-search": {
                "post": op(
                    "start a beam-search session (answers at once; batchWaitMode says how to follow it)",
                    json_ok(
                        "{jobId, status, params, tier, batchId, batchIds, batchWaitMode, estimatedWaitHours, "
                        "estimatedCompletionTime, estimateBasis, deadline, estimate: {calls, costUsd, cost, basis}, "
                        "statusUrl, eventsUrl, pollIntervalSeconds (poll mode)}"
                    ),
                    body=True,
                    ok_status="202",
                )
            },
            "/api/jobs": {"get": op("every job, newest first, briefly", json_ok("{jobs: [...]}"))},
            "/api/job/{job_id}": {
                "get": op(
                    "a job's status, progress, batches, cost and winner",
                    json_ok(
                        "{jobId, status, iteration, round, progress, batchId, batchIds, estimatedCompletionTime, "
                        "estimatedWaitHours, estimateBasis, deadline, error, cost: {paid, standard, tierSaved, "
                        "cacheAvoided (+Usd exact)}, winner}"
                    ),
                    params=[job_id],
                )
            },
            "/api/job/{job_id}/events": {
                "get": op(
                    "server-sent events: snapshot, round_queued, batch_created, batch_progress, round_applied, cost, "
                    "winner, status, end",
                    {"description": "text/event-stream", "content": {"text/event-stream": {}}},
                    params=[job_id],
                )
            },
            "/api/job/{job_id}/candidates": {
                "get": op(
                    "the candidates, last iteration first, by rank",
                    json_ok("{jobId, candidates: [...]}"),
                    params=[job_id],
                )
            },
            "/api/job/{job_id}/cancel": {
                "post": op(
                    "cancel a job: queued requests end cancelled, batches only it uses are cancelled",
                    json_ok("the job view"),
                    params=[job_id],
                )
            },
            "/api/job/{job_id}/images/{candidate_id}": {
                "get": op(
                    "a candidate's PNG",
                    {"description": "PNG", "content": {"image/png": {}}},
                    params=[
                        job_id,
                        {"name": "candidate_id", "in": "path", "required": True, "schema": {"type": "string"}},
                    ],
                )
            },
            "/api/images/{name}": {
                "get": op(
                    "a stored image by content address (answers' imageUrl)",
                    {"description": "PNG", "content": {"image/png": {}}},
                    params=[{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
                )
            },
            "/api/batch/{batch_id}/results": {
                "get": op(
                    "a batch's status and per-request outcomes (our batch key or OpenAI's id)",
                    json_ok(
                        "{batchId, batchKey, status, phase, requestCount, progress, results: [{customId, outcome, "
                        "statusCode, error, costUsd, standardCostUsd, answer?}]}"
                    ),
                    params=[
                        {"name": "batch_id", "in": "path", "required": True, "schema": {"type": "string"}},
                        {
                            "name": "answers",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "boolean", "default": False},
                            "description": "include each request's answer: "
                            "{type: text, text} or {type: image, imageUrl}",
                        },
                    ],
                )
            },
        },
    }


# -- serving -------------------------------------------------------------------------------------


def check_bind(host: str, token_set: bool) -> None:
    """Refuse a bind that would expose the API without a token."""
    if not is_loopback_host(host) and not token_set:
        raise ApiConfigError(
            f"refusing to serve on {host}: set BATCH_API_TOKEN (16+ characters) to bind to "
            "anything but loopback, and add the public name to BATCH_API_ALLOWED_HOSTS"
        )


def serve(runtime: Runtime, host: str = "127.0.0.1", port: int = 8700) -> None:
    import uvicorn

    check_bind(host, runtime.settings.batch_api_token is not None)
    uvicorn.run(create_app(runtime), host=host, port=port, log_level="warning")


__all__ = [
    "ApiConfigError",
    "BeamSearchRequest",
    "SessionWorker",
    "check_bind",
    "create_app",
    "openapi_document",
    "serve",
]
