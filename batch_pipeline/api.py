"""The seed's HTTP API: start a beam-search session, read job, batch and result status.

A thin Starlette app over `SessionService`; one background worker thread drives the sessions
started here (one driver, so no two threads ever submit the same planned batch). Bound to
127.0.0.1 by default: `batch-pipeline api --port 8700`.
"""
from __future__ import annotations

import logging
import threading
import time
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse
from starlette.routing import Route

from batch_pipeline.batching.polling import PollPolicy
from batch_pipeline.driver import Driver, Tick
from batch_pipeline.batching.polling import progress as batch_progress
from batch_pipeline.runtime import Runtime
from batch_pipeline.search import SearchParams
from batch_pipeline.sessions import FINISHED, SessionConfig

log = logging.getLogger(__name__)


class BeamSearchRequest(BaseModel):
    """POST /api/beam-search, in the seed's field names."""

    prompt: str
    n: int = Field(9, description="beam width N")
    m: int = Field(3, description="survivors M")
    iterations: int = Field(3, description="K, counting iteration 0")
    ensembleSize: int = Field(3, description="E votes per comparison")
    alpha: float = 0.7
    seed: int = 0
    useBatch: bool = True
    batchWaitMode: Literal["deferred", "poll"] = "deferred"
    tier: Literal["standard", "flex", "batch", "hybrid"] | None = Field(None, description="overrides useBatch")
    deadlineHours: float = 24.0


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


def create_app(runtime: Runtime, *, run_worker: bool = True, worker_interval_s: float = 1.0) -> Starlette:
    worker = SessionWorker(runtime, worker_interval_s)

    @asynccontextmanager
    async def lifespan(app: Starlette):
        if run_worker:
            worker.start()
        try:
            yield
        finally:
            if run_worker:
                worker.stop()

    async def start_session(request: Request) -> JSONResponse:
        try:
            body = BeamSearchRequest.model_validate(await request.json())
            tier = body.tier or ("batch" if body.useBatch else "standard")
            config = SessionConfig(
                prompt=body.prompt, tier=tier, deadline_hours=body.deadlineHours, driver="api",
                params=SearchParams(N=body.n, M=body.m, K=body.iterations, E=body.ensembleSize, alpha=body.alpha,
                                    seed=body.seed))
        except ValidationError as exc:
            return _error(400, "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg'].removeprefix('Value error, ')}"
                                         for e in exc.errors()))
        except ValueError:
            return _error(400, "body must be JSON")
        session_id = runtime.sessions.start(config)
        return JSONResponse(status_code=202, content={
            "jobId": session_id, "status": "running", "params": config.params.model_dump(mode="json"),
            "tier": tier, "batchId": None,
            "estimatedWaitHours": body.deadlineHours if tier in ("batch", "hybrid") else 0})

    async def job_status(request: Request) -> JSONResponse:
        session_id = request.path_params["job_id"]
        row = runtime.ledger.session(session_id)
        if row is None:
            return _error(404, f"no job {session_id!r}")
        return JSONResponse(_job(runtime, row))

    async def list_jobs(request: Request) -> JSONResponse:
        return JSONResponse({"jobs": [_job(runtime, row, brief=True) for row in runtime.ledger.sessions()]})

    async def cancel_job(request: Request) -> JSONResponse:
        session_id = request.path_params["job_id"]
        try:
            runtime.sessions.cancel(session_id)
        except KeyError:
            return _error(404, f"no job {session_id!r}")
        return JSONResponse(_job(runtime, runtime.ledger.session(session_id)))

    async def batch_results(request: Request) -> JSONResponse:
        batch_id = request.path_params["batch_id"]
        record = next((b for b in runtime.ledger.batches() if batch_id in (b.batch_key, b.openai_batch_id)), None)
        if record is None:
            return _error(404, f"no batch {batch_id!r}")
        members = runtime.ledger.batch_members(record.batch_key)
        finals = runtime.ledger.final_results(list(members.values())) if record.phase == "ingested" else {}
        results = [{"customId": rid, "outcome": str(o.outcome), "statusCode": o.status_code, "error": o.error_message,
                    "costUsd": str(o.cost_usd), "standardCostUsd": str(o.standard_cost_usd)}
                   for rid, o in sorted(finals.items())]
        return JSONResponse({"batchId": record.openai_batch_id, "batchKey": record.batch_key, "status": record.status,
                             "phase": str(record.phase), "requestCount": record.request_count,
                             "progress": batch_progress(record.status or "validating", record.completed_count,
                                                        record.failed_count, record.request_count),
                             "results": results})

    async def candidate_image(request: Request) -> JSONResponse | FileResponse:
        session_id, candidate_id = request.path_params["job_id"], request.path_params["candidate_id"]
        for c in runtime.ledger.session_candidates(session_id):
            if c.candidate_id == candidate_id and c.image_path:
                return FileResponse(c.image_path, media_type="image/png")
        return _error(404, f"no image for {candidate_id!r} in job {session_id!r}")

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "worker": worker._thread.is_alive()})

    routes = [
        Route("/api/beam-search", start_session, methods=["POST"]),
        Route("/api/jobs", list_jobs),
        Route("/api/job/{job_id}", job_status),
        Route("/api/job/{job_id}/cancel", cancel_job, methods=["POST"]),
        Route("/api/job/{job_id}/images/{candidate_id}", candidate_image),
        Route("/api/batch/{batch_id}/results", batch_results),
        Route("/api/health", health),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.worker = worker
    return app


def _job(runtime: Runtime, row, brief: bool = False) -> dict[str, Any]:
    """The seed's job view: status, progress, batches in flight and the winner once done."""
    state = runtime.sessions.state(row.session_id)
    total_rounds = 3 * state.params.K
    done = row.status in FINISHED
    job: dict[str, Any] = {
        "jobId": row.session_id, "prompt": row.user_prompt,
        "status": "running" if not done else row.status,
        "iteration": state.iteration, "round": None if state.done else state.next_round,
        # Never 100% before the session has really finished (a round can sit in `finalizing`).
        "progress": 1.0 if done else round(min(len(state.rounds) / total_rounds, 0.99), 3),
    }
    if brief:
        return job
    batches = runtime.ledger.batches_of_session(row.session_id)
    inflight = [b for b, _ in batches if b.status not in ("completed", "failed", "expired", "cancelled")]
    job["batchId"] = inflight[0].openai_batch_id if inflight else None
    job["batchIds"] = [b.openai_batch_id for b, _ in batches]
    job["estimatedCompletionTime"] = None if done else _iso(row.deadline_at)
    job["error"] = row.error
    costs = runtime.ledger.session_costs(row.session_id)
    actual = sum((c["cost_usd"] for c in costs.values()), Decimal(0))
    standard = sum((c["standard_cost_usd"] for c in costs.values()), Decimal(0))
    job["cost"] = {"actualUsd": str(actual), "standardUsd": str(standard), "savedUsd": str(standard - actual)}
    if state.winner_id:
        winner = state.candidate(state.winner_id)
        job["winner"] = {"candidateId": winner.id, "prompt": winner.combined, "what": winner.what, "how": winner.how,
                         "imageUrl": f"/api/job/{row.session_id}/images/{winner.id}", "lineage": state.lineage}
    return job


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": message})


def serve(runtime: Runtime, host: str = "127.0.0.1", port: int = 8700) -> None:
    import uvicorn

    uvicorn.run(create_app(runtime), host=host, port=port, log_level="warning")


__all__ = ["create_app", "serve", "SessionWorker", "BeamSearchRequest"]
