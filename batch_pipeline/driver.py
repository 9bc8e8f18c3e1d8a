"""The session driver: one `tick` that moves the sessions a driver owns forward, and one loop around it.

A tick recovers calls lost by a dead process, advances every owned running session (apply finished
rounds, queue the next; standard/flex calls run now), holds their round deadlines (`deadlines.py`),
flushes the owned batch-tier queue (per BATCH_API_MODE and the flush thresholds), polls the owned
batches and sweeps for late duplicates, then
ingests what ended. `run` repeats it on the poll policy until a condition holds. The CLI, the HTTP
API's worker and `batch-pipeline demo` are thin calls of this; the Dagster runs call the same
primitives (`SessionService.advance`, `BatchLifecycle.submit_queued/refresh/ingest_ended`).

What is transient, and so waited out, is decided in one place: `errors.py`.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from batch_pipeline.batching.polling import PollPolicy
from batch_pipeline.deadlines import DeadlineAction, enforce_round_deadlines
from batch_pipeline.errors import is_auth_error, is_ledger_busy, is_transient
from batch_pipeline.runtime import Runtime
from batch_pipeline.sessions import FINISHED, SessionProgress
from batch_pipeline.vocabulary import Tier

log = logging.getLogger(__name__)

DriverName = Literal["cli", "api", "dagster", "core"]


def flush_is_due(
    *,
    mode: Literal["immediate", "deferred"],
    queued: int,
    oldest_queued_at: float | None,
    max_requests: int,
    max_age_s: float,
    now: float,
) -> str | None:
    """Why the batch-tier queue should be sent now, or None to let it accumulate.

    Immediate mode sends what is queued at once; deferred mode waits until the queue reaches
    `max_requests` or its oldest request `max_age_s`, so concurrent sessions share batches.
    """
    if not queued:
        return None
    if mode == "immediate":
        return f"{queued} queued (immediate mode)"
    if queued >= max_requests:
        return f"{queued} queued >= {max_requests}"
    if oldest_queued_at is not None and now - oldest_queued_at >= max_age_s:
        return f"oldest queued {now - oldest_queued_at:.0f} s ago >= {max_age_s:g} s"
    return None


@dataclass
class Tick:
    """What one tick did; `moved` says whether the next tick may find more to do at once."""

    progress: dict[str, SessionProgress] = field(default_factory=dict)
    recovered: int = 0
    planned: int = 0
    ingested: int = 0
    error: str | None = None
    deadline_actions: list[DeadlineAction] = field(default_factory=list)

    @property
    def moved(self) -> bool:
        return bool(self.recovered or self.ingested)


def _one_ledger_connection(tick: Callable[[Driver], Tick]) -> Callable[[Driver], Tick]:
    """A tick is one unit of work on the ledger (`Ledger.unit`): one connection for all of its reads and
    writes in this thread, and the file lock held only for as long as the tick takes. Two ticks of the same
    sessions take turns (`Ledger.turn`: on PostgreSQL, where several processes write at once)."""

    @functools.wraps(tick)
    def in_one_unit(self: Driver) -> Tick:
        with self.runtime.ledger.unit(), self.runtime.ledger.turn(self.turn_name()):
            return tick(self)

    return in_one_unit


class Driver:
    """Drives the sessions one owner is responsible for: a fixed list (the CLI's one session), or every
    session started with `driver=owner` (the API's worker). It flushes and ingests only their requests."""

    def __init__(
        self,
        runtime: Runtime,
        *,
        owner: DriverName,
        session_ids: Sequence[str] | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.runtime = runtime
        self.owner = owner
        self.session_ids = list(session_ids) if session_ids is not None else None
        self.clock = clock

    # -- scope -----------------------------------------------------------------------------------

    def turn_name(self) -> str:
        """What this driver's ticks take turns on: its owner, or the fixed sessions it drives (two CLIs of
        different sessions share no session, so need not wait for each other)."""
        fixed = ",".join(sorted(self.session_ids)) if self.session_ids is not None else "*"
        return f"tick:{self.owner}:{fixed}"

    def owned(self) -> list[str] | None:
        """Every session this driver is responsible for, running or not (an ended session's batches still
        need ingesting: their finished lines are billed); None for the `core` owner: the whole ledger."""
        if self.session_ids is not None:
            return self.session_ids
        if self.owner == "core":
            return None
        return [row.session_id for row in self.runtime.ledger.sessions() if row.config.get("driver") == self.owner]

    def running(self, owned: Sequence[str] | None) -> list[str]:
        rows = {row.session_id for row in self.runtime.ledger.sessions(status="running")}
        return [sid for sid in owned or () if sid in rows]

    # -- one tick --------------------------------------------------------------------------------

    @_one_ledger_connection
    def tick(self) -> Tick:
        """One pass over everything this driver owns. Raises only what `errors.is_transient` calls
        transient (the caller backs off) or a bug; an auth error ends the owned sessions `failed`."""
        rt, tick = self.runtime, Tick()
        owned = self.owned()
        if owned == []:
            return tick
        try:
            tick.recovered = len(rt.executor.sync.recover_lost(session_ids=owned))
            self._advance_all(self.running(owned), tick)
            tick.deadline_actions = enforce_round_deadlines(
                rt.ledger, rt.manager, rt.executor.policy, rt.catalog, session_ids=owned, now=self.clock
            )
            self._flush(owned, tick)
            rt.manager.refresh(session_ids=owned)
            tick.ingested = len(rt.manager.ingest_ended(session_ids=owned))
        except Exception as exc:
            if not is_auth_error(exc):
                raise
            reason = f"the API refused our credentials ({type(exc).__name__}: {_message(exc)})"
            log.error("%s; ending %d session(s) failed", reason, len(self.running(owned)))
            for session_id in self.running(owned):
                rt.sessions.fail(session_id, reason)
                tick.progress[session_id] = rt.sessions.advance(session_id)
            tick.error = reason
            if self.session_ids is not None:
                raise  # a driver of its own sessions (the CLI) tells its user at once; the sessions are ended
        if tick.ingested or tick.recovered:
            # A round's results are in: apply them now rather than after a sleep.
            self._advance_all(self.running(owned), tick)
        return tick

    def _advance_all(self, session_ids: list[str], tick: Tick) -> None:
        """Step these sessions: the common step of all of them at once (`SessionService.advance_many`), the
        rest one by one. A bug in the bulk step costs only its speed: every session is then stepped alone,
        so one broken session still fails alone."""
        if not session_ids:
            return
        try:
            done, rest = self.runtime.sessions.advance_many(session_ids)
        except Exception as exc:
            if is_transient(exc) or is_auth_error(exc) or self.session_ids is not None:
                raise
            log.exception("stepping %d sessions together failed; stepping them one by one", len(session_ids))
            done, rest = {}, session_ids
        tick.progress.update(done)
        for session_id in rest:
            tick.progress[session_id] = self._advance(session_id)

    def _advance(self, session_id: str) -> SessionProgress:
        if self.session_ids is not None:
            return self.runtime.sessions.advance(session_id)  # the CLI: a bug surfaces with its traceback
        try:
            return self.runtime.sessions.advance(session_id)
        except Exception as exc:
            if is_transient(exc) or is_auth_error(exc):
                raise
            # One broken session must not stop the others a long-running driver serves.
            log.exception("session %s failed in a step", session_id)
            self.runtime.sessions.fail(session_id, f"{type(exc).__name__}: {exc}")
            return self.runtime.sessions.advance(session_id)

    def _flush(self, owned: list[str] | None, tick: Tick) -> None:
        settings, ledger = self.runtime.settings, self.runtime.ledger
        queued, oldest = ledger.queue_summary(tier=Tier.BATCH, session_ids=owned)
        reason = flush_is_due(
            mode=settings.batch_api_mode,
            queued=queued,
            oldest_queued_at=oldest,
            max_requests=settings.batch_flush_max_requests,
            max_age_s=settings.batch_flush_max_age_seconds,
            now=self.clock(),
        )
        if reason is None:
            self.runtime.manager.resume(session_ids=owned)  # half-sent batches are finished in any mode
            return
        log.info("flushing the batch queue: %s", reason)
        tick.planned = len(self.runtime.manager.submit_queued(session_ids=owned))

    # -- the loop --------------------------------------------------------------------------------

    def run(
        self,
        until: Callable[[Tick], bool],
        *,
        timeout_s: float = 24 * 3600,
        poll_policy: PollPolicy | None = None,
        sleep: Callable[[float], object] = time.sleep,
        on_tick: Callable[[Tick], None] | None = None,
    ) -> Tick:
        """Tick until `until(tick)` holds or `timeout_s` passes, backing off between ticks on the poll
        policy. Transient errors (the API unreachable, the ledger held by another process) are logged and
        waited out with a growing delay; they never end the loop. Returns the last tick."""
        policy = poll_policy or self.runtime.manager.poll_policy
        deadline = self.clock() + timeout_s
        polls = errors = 0
        while True:
            try:
                tick = self.tick()
                if on_tick:
                    on_tick(tick)
                done = until(tick)
                errors = 0
            except Exception as exc:
                if not is_transient(exc):
                    raise
                errors += 1
                what = (
                    "the ledger is busy (another process holds it)"
                    if is_ledger_busy(exc)
                    else f"transient {type(exc).__name__}: {_message(exc)}"
                )
                log.warning("%s; retrying (%d in a row)", what, errors)
                tick, done = Tick(error=what), False
            if done or self.clock() >= deadline:
                return tick
            if tick.moved:
                polls = 0
                continue
            sleep(
                max(0.0, min(policy.delay(polls, key=self.owner, consecutive_errors=errors), deadline - self.clock()))
            )
            polls += 1

    def run_session(self, session_id: str, **kwargs: Any) -> SessionProgress:
        """Drive one owned session to its end (or the timeout) and return where it stands; `kwargs` go to `run`."""

        def ended(tick: Tick) -> bool:
            progress = tick.progress.get(session_id)
            if progress is None:  # not running (any more): ended before this tick, or a transient error
                row = self.runtime.ledger.session(session_id)
                return row is not None and row.status in FINISHED
            return progress.finished

        tick = self.run(ended, **kwargs)
        return tick.progress.get(session_id) or self.runtime.sessions.advance(session_id)


def _message(exc: BaseException) -> str:
    """An exception's message without the request body the SDK may append."""
    return str(getattr(exc, "message", None) or exc).splitlines()[0][:300]
