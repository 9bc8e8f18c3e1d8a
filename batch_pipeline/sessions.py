"""Beam-search sessions over the ledger: start (or resume) one, advance it as far as results allow, cancel it.

`advance` is the resumable step every driver uses: it loads the persisted state, submits the next
round (idempotently), and applies rounds whose results are all in. `driver.py` loops over it for the
CLI, the HTTP API and tests; the Dagster runs call it too. Nothing here imports Dagster.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Annotated, Literal

import orjson
from pydantic import AfterValidator, BaseModel, Field

from batch_pipeline.batching.lifecycle import BatchLifecycle
from batch_pipeline.batching.pricing import format_usd
from batch_pipeline.deadlines import round_deadline
from batch_pipeline.errors import BatchPipelineError
from batch_pipeline.estimates import estimate_session, iso_utc, rounds_left, session_completion
from batch_pipeline.failpoints import failpoint
from batch_pipeline.ledger import Ledger
from batch_pipeline.ledger.session_rows import CandidateRow, RoundRow, SessionRow, SessionSave
from batch_pipeline.ledger.states import TERMINAL_REQUEST_STATES
from batch_pipeline.providers.executor import RoundExecutor, refused_for_content
from batch_pipeline.providers.tier_policy import TierMode
from batch_pipeline.records import QueuedRequest
from batch_pipeline.search import SearchFailed, SearchParams, SearchState, apply_round, plan_round, start_search
from batch_pipeline.search.schemas import not_blank
from batch_pipeline.vocabulary import ENDED_STATUSES, RoundId, Tier

log = logging.getLogger(__name__)


# `stopped`: ended by a limit the user set (the budget), with the best candidate it had; `error` says which.
FINISHED = ("completed", "failed", "cancelled", "stopped")


# The short prompt a user starts a session with, as every entry point takes it.
UserPrompt = Annotated[
    str, Field(min_length=1, max_length=2000, description="the short user prompt to improve"), AfterValidator(not_blank)
]


class SessionConfig(BaseModel):
    """What a user chooses when starting a session (the Dagster launchpad and the CLI take this)."""

    prompt: UserPrompt
    params: SearchParams
    tier: TierMode = Field("batch", description="standard | flex | batch | hybrid (hybrid picks per round)")
    deadline_hours: float | None = Field(
        None, gt=0, le=24, description="the session must finish within this many hours (default: BATCH_MAX_WAIT_HOURS)"
    )
    budget_usd: Decimal | None = Field(
        None,
        ge=0,
        description="spend limit: a round that would take the session over it is not sent; the session "
        "ends `stopped` (budget) with the best candidate so far",
    )
    session_id: str | None = Field(None, description="default: a new random id")
    driver: Literal["dagster", "api", "cli"] = Field(
        "dagster", description="who advances it: Dagster's sensors, the HTTP API's worker, or the CLI process"
    )


class SessionProgress(BaseModel):
    session_id: str
    status: Literal["running", "waiting", "completed", "failed", "cancelled", "stopped"]
    iteration: int
    next_round: str | None
    pending_requests: int = 0
    winner_id: str | None = None
    error: str | None = None

    @property
    def finished(self) -> bool:
        return self.status in FINISHED


class SessionConflict(BatchPipelineError, ValueError):
    """A session id that exists already with other settings: starting it again would not be idempotent."""


def config_fingerprint(config: SessionConfig) -> str:
    """What makes two launches "the same command": everything the user chose but the session id."""
    chosen = config.model_dump(mode="json", exclude={"session_id"})
    return hashlib.sha256(orjson.dumps(chosen, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


class SessionService:
    """Start, advance and cancel sessions over the ledger; the drivers (`driver.py`, Dagster) call these."""

    def __init__(
        self,
        ledger: Ledger,
        executor: RoundExecutor,
        manager: BatchLifecycle,
        *,
        batch_mode: Literal["immediate", "deferred"] = "immediate",
        clock: Callable[[], float] = time.time,
        default_deadline_hours: float = 24.0,
    ):
        self.ledger = ledger
        self.executor = executor
        self.manager = manager
        self.batch_mode = batch_mode
        self.clock = clock
        self.default_deadline_hours = default_deadline_hours

    def resolve(self, config: SessionConfig) -> SessionConfig:
        """The config as it will run: the deadline defaulted (BATCH_MAX_WAIT_HOURS), and its models checked
        against the price catalog (`UnpricedModelError` naming the field: nothing is costed at $0)."""
        if config.deadline_hours is None:
            config = config.model_copy(update={"deadline_hours": self.deadline_hours(config)})
        p = config.params
        self.executor.catalog.check_search_models(
            text_model=p.text_model,
            vision_model=p.vision_model,
            image_model=p.image_model,
            image_size=p.image_size,
            image_quality=p.image_quality,
        )
        return config

    def deadline_hours(self, config: SessionConfig) -> float:
        """The config's deadline, or the default (BATCH_MAX_WAIT_HOURS) when it names none."""
        return self.default_deadline_hours if config.deadline_hours is None else config.deadline_hours

    def start(self, config: SessionConfig) -> str:
        """Record a new session. Idempotent for an explicit `session_id`: the same launch again returns the
        same session (never a second one); the same id with other settings is a `SessionConflict`.
        A model the price catalog cannot cost is refused here (`UnpricedModelError`)."""
        config = self.resolve(config)
        session_id = config.session_id or secrets.token_hex(4)
        fingerprint = config_fingerprint(config)
        state = start_search(config.prompt, config.params, session_id)
        created = self.ledger.create_session(
            session_id,
            config.prompt,
            config.model_dump(mode="json") | {"fingerprint": fingerprint},
            state.model_dump_json(),
            deadline_at=self.clock() + self.deadline_hours(config) * 3600,
            next_round=state.next_round,
        )
        if not created:
            existing = self.ledger.session(session_id)
            if existing is not None and existing.config.get("fingerprint") != fingerprint:
                raise SessionConflict(f"session {session_id!r} exists with other settings")
        return session_id

    def resume_or_start(self, config: SessionConfig, *, new: bool = False) -> tuple[str, bool]:
        """The session to drive for this launch, and whether it is resumed: a named session (config.session_id),
        else the unfinished session launched with the same settings by the same driver, else a new one."""
        config = self.resolve(config)
        if config.session_id is not None:
            existing = self.ledger.session(config.session_id)
            return self.start(config), existing is not None
        if not new:
            fingerprint = config_fingerprint(config)
            for row in reversed(self.ledger.sessions(status="running")):
                if row.config.get("fingerprint") == fingerprint and row.config.get("driver") == config.driver:
                    return row.session_id, True
        return self.start(config), False

    def state(self, session_id: str) -> SearchState:
        return SearchState.model_validate_json(self.ledger.session_state_json(session_id))

    def row(self, session_id: str) -> SessionRow:
        """The session's ledger row; KeyError for an unknown session."""
        row = self.ledger.session(session_id)
        if row is None:
            raise KeyError(f"unknown session {session_id!r}")
        return row

    def advance(self, session_id: str) -> SessionProgress:
        """Apply every round whose results are in; stop at the first that waits for a batch.

        Every write is conditional on the session still running: a cancel that lands meanwhile wins.
        """
        row = self.row(session_id)
        state = self.state(session_id)
        if row.status in FINISHED:
            return self._progress(state, row.status, error=row.error)
        mode: TierMode = row.config.get("tier", "batch")
        budget = row.config.get("budget_usd")
        while not state.done:
            calls = plan_round(state)
            results = {}
            if calls:
                round_id = state.round_id
                requests = None
                if self.ledger.round_started_at(session_id, round_id) is None:  # not sent yet: plan, then price
                    round_due = round_deadline(
                        round_started_at=self.clock(),
                        session_deadline_at=row.deadline_at,
                        rounds_left=len(rounds_left(state)),
                    )
                    requests = self.executor.plan(
                        session_id, calls, mode=mode, deadline_at=round_due, round_id=round_id
                    )
                    if budget is not None and (
                        stop := self._over_budget(session_id, round_id, requests, Decimal(budget))
                    ):
                        return self._stop(state, stop)
                self.executor.submit(
                    session_id, calls, mode=mode, deadline_at=row.deadline_at, round_id=round_id, requests=requests
                )
                failpoint("round-queued")
                self.executor.apply_fallback(session_id, deadline_at=row.deadline_at)
                if self.batch_mode == "immediate":
                    self.manager.submit_queued(session_id=session_id)
                pending = self.executor.pending(calls)
                if pending:
                    return self._progress(state, "waiting", pending=pending)
                results = self.executor.collect(calls)
                if state.next_round == "image":
                    results = self.executor.retry_refused_images(session_id, calls, results)
            try:
                state = apply_round(state, results)
            except SearchFailed as exc:
                if not self._save(exc.state, "failed", error=str(exc)):
                    return self._ended(session_id)
                return self._progress(exc.state, "failed", error=str(exc))
            if not self._save(state, "completed" if state.done else "running"):
                return self._ended(session_id)
        return self._progress(state, "completed")

    def advance_many(self, session_ids: Sequence[str]) -> tuple[dict[str, SessionProgress], list[str]]:
        """`advance` for many sessions at once, in a fixed number of ledger statements however many there are:
        one read of their rows and states, one of their current rounds' request states, one of the finished
        rounds' results, one save of every applied round, one enqueue of every next round and one cache
        lookup (a tick over a thousand sessions made ~20 queries per session, each scanning tables that
        grow with the sessions).

        Only the common step is taken here: a batch-tier round that has all its answers is applied and the
        next round queued on the batch tier, or a round not queued yet is queued. A session with anything
        else to do (a budget, a round half-answered or back from a failed batch, standard or flex requests,
        an image refused for its content, a round the cache answers, a failed search) is returned in the
        second list, untouched by this call or left where a crash would leave it, for `advance` one by one:
        every step is resumable, so `advance` finishes what this began. Returns (progress of the sessions
        stepped here, the sessions for `advance`).
        """
        loaded = self.ledger.sessions_with_state(session_ids)
        rest = [sid for sid in session_ids if sid not in loaded]
        busy = self.ledger.sessions_with_queued_work(loaded)
        now = self.clock()
        # The current round of each candidate session: (row, state, calls).
        current: dict[str, tuple[SessionRow, SearchState, list]] = {}
        for sid, (row, state_json) in loaded.items():
            state = SearchState.model_validate_json(state_json)
            calls = plan_round(state) if row.status == "running" and not state.done else []
            if not calls or sid in busy or row.config.get("budget_usd") is not None:
                rest.append(sid)
                continue
            current[sid] = (row, state, calls)
        ids = [self.executor.request_id(c) for _row, _state, calls in current.values() for c in calls]
        states = self.ledger.request_states(ids)
        answered = [
            sid
            for sid, (_row, _state, calls) in current.items()
            if all(states.get(self.executor.request_id(c)) in TERMINAL_REQUEST_STATES for c in calls)
        ]
        unqueued = [
            sid
            for sid, (_row, _state, calls) in current.items()
            if not any(self.executor.request_id(c) in states for c in calls)
        ]
        rest += [sid for sid in current if sid not in answered and sid not in unqueued]
        # Apply the answered rounds.
        answered_ids = [self.executor.request_id(c) for sid in answered for c in current[sid][2]]
        finals = self.ledger.final_results(answered_ids)
        tiers = {rid: row.tier for rid, row in self.ledger.request_rows(list(finals)).items()}
        saves: dict[str, tuple[SearchState, str]] = {}
        to_queue = {sid: current[sid][1] for sid in unqueued}
        for sid in answered:
            row, state, calls = current[sid]
            results = self.executor.collect(calls, finals=finals, tiers=tiers)
            if any(refused_for_content(c, results[c.key]) for c in calls):
                rest.append(sid)
                continue
            try:
                state = apply_round(state, results)
            except SearchFailed:
                rest.append(sid)  # `advance` applies it again and saves the session failed, with the reason
                continue
            saves[sid] = (state, "completed" if state.done else "running")
            if not state.done:
                to_queue[sid] = state
        saved = self.ledger.save_sessions([self._session_save(state, status) for state, status in saves.values()])
        progress = {
            sid: self._progress(state, status)
            for sid, (state, status) in saves.items()
            if sid in saved and status == "completed"
        }
        rest += [sid for sid in saves if sid not in saved]  # ended meanwhile (cancelled): `advance` says how
        # Queue the next rounds, all on the batch tier or not here.
        turnaround = self.ledger.observed_turnaround()
        planned: dict[str, tuple[SearchState, list, list[QueuedRequest]]] = {}
        for sid, state in to_queue.items():
            if sid in saves and sid not in saved:
                continue
            row = current[sid][0]
            calls = plan_round(state)
            requests = self.executor.plan(
                sid,
                calls,
                mode=row.config.get("tier", "batch"),
                round_id=state.round_id,
                turnaround=turnaround,
                deadline_at=round_deadline(
                    round_started_at=now, session_deadline_at=row.deadline_at, rounds_left=len(rounds_left(state))
                ),
            )
            if not calls or any(r.tier != Tier.BATCH for r in requests):
                rest.append(sid)
                continue
            planned[sid] = (state, calls, requests)
        new_ids = set(self.ledger.enqueue([r for _state, _calls, requests in planned.values() for r in requests]))
        failpoint("round-queued")
        cached = self.executor.answer_from_cache(
            [r for _state, _calls, requests in planned.values() for r in requests if r.request_id in new_ids]
        )
        if self.batch_mode == "immediate" and planned:
            self.manager.submit_queued(session_ids=list(planned))
        for sid, (state, calls, requests) in planned.items():
            if any(r.request_id in cached for r in requests) or not any(r.request_id in new_ids for r in requests):
                rest.append(sid)  # answered (in part) by the cache, or ended meanwhile: `advance` looks again
            else:
                progress[sid] = self._progress(state, "waiting", pending=len(calls))
        return progress, list(dict.fromkeys(sid for sid in rest if sid not in progress))

    def _over_budget(
        self, session_id: str, round_id: RoundId, requests: Sequence[QueuedRequest], budget: Decimal
    ) -> str | None:
        """Why this round must not be sent (it would take the session over its budget), or None."""
        spent = self.ledger.cost_figures(session_id=session_id).paid
        estimate = self.executor.estimate_cost(requests)
        if spent + estimate <= budget:
            return None
        return (
            f"budget: round {round_id} ({len(requests)} calls) would cost about {format_usd(estimate)}; "
            f"{format_usd(spent)} of the {format_usd(budget)} budget is spent, so it was not sent"
        )

    def _stop(self, state: SearchState, reason: str) -> SessionProgress:
        """End a session `stopped` with the best candidate of its last ranking as its winner."""
        best = None
        if state.iterations:
            ranks = state.iterations[-1].ranks
            best = min(ranks, key=ranks.__getitem__) if ranks else None
        log.warning("session %s stopped: %s", state.session_id, reason)
        self.ledger.end_session(state.session_id, "stopped", reason, winner_id=best)
        return self._ended(state.session_id)

    def money_and_time(
        self,
        session_id: str,
        *,
        estimate: bool = False,
        row: SessionRow | None = None,
        state: SearchState | None = None,
        turnaround: dict[tuple[str, str], tuple[float, int]] | None = None,
    ) -> dict[str, str]:
        """The session's deadline, completion estimate (with its basis) and three cost figures, as text for
        metadata (launch run, session assets); `estimate` adds the whole session priced on every tier. A
        caller rendering many sessions passes their `row`, `state` and the `turnaround`, read once."""
        row = row or self.row(session_id)
        state = state or self.state(session_id)
        figures = self.ledger.cost_figures(session_id=session_id)
        out = {
            "deadline": iso_utc(row.deadline_at),
            "budget": format_usd(Decimal(row.config["budget_usd"]))
            if row.config.get("budget_usd") is not None
            else "none",
            "cost_paid": format_usd(figures.paid),
            "cost_standard_for_calls": format_usd(figures.standard_for_calls),
            "cost_batch_flex_saved": format_usd(figures.tier_saved),
            "cost_cache_avoided": format_usd(figures.cache_avoided),
        }
        if row.status == "running":
            done = session_completion(
                now=self.clock(),
                deadline_at=row.deadline_at,
                state=state,
                mode=row.config.get("tier", "batch"),
                turnaround=self.ledger.observed_turnaround() if turnaround is None else turnaround,
            )
            out |= {"estimated_completion": iso_utc(done.at), "estimate_basis": done.basis}
        if estimate:
            priced = estimate_session(
                row.user_prompt, state.params, self.executor.catalog, history=self.ledger.observed_output_tokens()
            )
            out |= {f"estimate_{tier}": format_usd(cost) for tier, cost in priced.per_tier.items()}
            out["estimate_basis_cost"] = "; ".join(priced.basis)
        return out

    def cancel(self, session_id: str, reason: str = "cancelled by the user") -> SessionProgress:
        """Stop a session: one ledger transaction marks it cancelled and ends its queued requests; batches
        only it uses are then cancelled remotely (their finished lines are still ingested and billed, the
        rest end cancelled, never re-queued; shared batches run on for the others). Idempotent: cancelling
        an ended session changes nothing and answers its state."""
        if self.ledger.session(session_id) is None:
            raise KeyError(f"unknown session {session_id!r}")
        _cancelled, batches = self.ledger.cancel_session(session_id, reason)
        for batch in batches:
            if batch.openai_batch_id is not None:
                self.manager.cancel(batch.batch_key)
        return self._ended(session_id)

    def fail(self, session_id: str, error: str) -> None:
        """End a running session `failed` with the reason (e.g. the API refused our key)."""
        if self.ledger.end_session(session_id, "failed", error):
            for batch, exclusive in self.ledger.batches_of_session(session_id, in_flight=True):
                if exclusive and batch.openai_batch_id is not None and batch.status not in ENDED_STATUSES:
                    self.manager.cancel(batch.batch_key)

    # -- persistence --------------------------------------------------------------------------

    def _save(self, state: SearchState, status: str, error: str | None = None) -> bool:
        return bool(self.ledger.save_sessions([self._session_save(state, status, error)]))

    @staticmethod
    def _session_save(state: SearchState, status: str, error: str | None = None) -> SessionSave:
        return SessionSave(
            session_id=state.session_id,
            state_json=state.model_dump_json(),
            status=status,
            iteration=state.iteration,
            next_round=None if state.done else state.next_round,
            winner_id=state.winner_id,
            candidates=candidate_rows(state),
            error=error,
            rounds=[
                RoundRow(
                    session_id=state.session_id,
                    iteration=r.iteration,
                    round=r.round,
                    calls=r.calls,
                    succeeded=r.succeeded,
                    failed=r.failed,
                    input_tokens=r.input_tokens,
                    output_tokens=r.output_tokens,
                )
                for r in state.rounds
            ],
        )

    def _ended(self, session_id: str) -> SessionProgress:
        row = self.row(session_id)
        progress = self._progress(self.state(session_id), row.status, error=row.error)
        return progress.model_copy(update={"winner_id": progress.winner_id or row.winner_id})

    @staticmethod
    def _progress(state: SearchState, status: str, *, pending: int = 0, error: str | None = None) -> SessionProgress:
        return SessionProgress(
            session_id=state.session_id,
            status=status,
            iteration=state.iteration,
            next_round=None if state.done else state.next_round,
            pending_requests=pending,
            winner_id=state.winner_id,
            error=error,
        )


def candidate_rows(state: SearchState) -> list[CandidateRow]:
    """Flat candidate records: each with its score and rank from the last iteration that ranked it."""
    ranked: dict[str, tuple[float, int, bool]] = {}
    for record in state.iterations:
        for cid in record.pool:
            ranked[cid] = (record.scores[cid].combined, record.ranks[cid], cid in record.survivors)
    won = {c.id: 0 for c in state.candidates}
    lost = dict(won)
    for vote in state.votes:
        loser = vote.b if vote.winner == vote.a else vote.a
        won[vote.winner] = won.get(vote.winner, 0) + 1
        lost[loser] = lost.get(loser, 0) + 1
    rows = []
    for c in state.candidates:
        score, rank, survived = ranked.get(c.id, (None, None, None))
        rows.append(
            CandidateRow(
                session_id=state.session_id,
                candidate_id=c.id,
                iteration=c.iteration,
                parent_id=c.parent_id,
                what=c.what,
                how=c.how,
                combined=c.combined,
                critique=c.critique,
                image_path=c.image_path,
                failed=c.failed,
                score=score,
                rank=rank,
                survived=survived,
                votes_won=won[c.id],
                votes_lost=lost[c.id],
            )
        )
    return rows
