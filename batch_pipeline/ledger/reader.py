"""Read-only queries over the ledger: the cost report, the sensors' view of work to do, asset checks.

Sensors, checks and reports read here; `Ledger` writes. Every connection is opened read-only, kept
for one method and closed in `finally`; opening gives up after `lock_timeout_s` (DuckDB lets no other
process open the file, even read-only, while one writes) so a sensor tick stays short.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

from tenacity import retry, retry_if_exception, stop_after_delay, wait_random_exponential

from batch_pipeline.errors import LedgerBusy, is_lock_error
from batch_pipeline.ledger.db import Connection, one_row, open_store
from batch_pipeline.ledger.spending import cost_figures_on
from batch_pipeline.ledger.states import TERMINAL_REQUEST_STATES
from batch_pipeline.records import CostFigures
from batch_pipeline.vocabulary import ENDED_STATUSES, RoundId

_TERMINAL = tuple(str(s) for s in TERMINAL_REQUEST_STATES)


@dataclass(frozen=True)
class SessionRound:
    """A running session and the requests of the round it waits for (its next, unapplied round)."""

    session_id: str
    iteration: int
    next_round: str | None
    requests: int  # requests of this round in the ledger (0: not queued yet)
    pending: int  # of them, not in a terminal state
    requeued_attempts: int  # highest attempt count among requests back in the queue after a failed try
    round_due_at: float | None = None  # when this round is due (deadlines.py), once it is queued


@dataclass(frozen=True)
class WatchedBatch:
    """A batch created remotely and not ingested yet: in flight, or ended and waiting for ingestion."""

    batch_key: str
    openai_batch_id: str
    created_at: float
    status: str | None  # as last recorded by an ingestion run; sensors learn newer ones from the API

    @property
    def ended(self) -> bool:
        return self.status in ENDED_STATUSES


@dataclass(frozen=True)
class QueueState:
    """What the flush decision needs: the batch-tier queue and batches left half-sent by a crash."""

    queued: int
    oldest_queued_at: float | None
    half_sent: tuple[str, ...]  # batch keys in phase intent or uploaded, ready to be resumed
    settling: int = 0  # half-sent batches whose last create may still land: not resumed yet


@dataclass(frozen=True)
class CostRow:
    """Spend of one (day, model, tier, operation): what was paid and the standard price of the same usage."""

    day: date
    model: str
    tier: str
    operation: str
    calls: int
    input_tokens: int
    output_tokens: int
    images: int
    cost_usd: Decimal
    standard_cost_usd: Decimal


@dataclass(frozen=True)
class BatchOverview:
    batch_key: str
    openai_batch_id: str | None
    model: str
    endpoint: str
    phase: str
    status: str | None
    request_count: int
    completed_count: int | None
    failed_count: int | None
    sessions: tuple[str, ...]
    created_at: float


class LedgerReader:
    def __init__(
        self,
        location: Path | str,
        *,
        lock_timeout_s: float = 2.0,
        connection: Callable[[], AbstractContextManager[Connection]] | None = None,
    ):
        """`location`: a DuckDB file path, or a `postgresql://` URL (`db.open_store`)."""
        self.store = open_store(location)
        self.lock_timeout_s = lock_timeout_s
        self._connection = connection

    @classmethod
    def within(cls, ledger: Any) -> LedgerReader:
        """The same queries on a writer's connection (`Ledger.connect`, pinned inside `Ledger.unit`): a run
        that writes reads its views there, since DuckDB refuses a read-only connection beside a writing one
        in the same process."""
        return cls(ledger.store.location, lock_timeout_s=ledger.lock_timeout_s, connection=ledger.connect)

    def exists(self) -> bool:
        return self.store.exists()

    @contextmanager
    def connect(self) -> Iterator[Connection]:
        if self._connection is not None:
            with self._connection() as con:
                yield con
            return

        @retry(
            retry=retry_if_exception(is_lock_error),
            stop=stop_after_delay(self.lock_timeout_s),
            wait=wait_random_exponential(multiplier=0.02, max=0.25),
            reraise=True,
        )
        def open_() -> Connection:
            return self.store.open(read_only=True)

        try:
            con = open_()
        except Exception as exc:
            if is_lock_error(exc):
                raise LedgerBusy(
                    f"ledger {self.store} stayed locked by a writer for {self.lock_timeout_s:g} s"
                ) from exc
            raise
        try:
            yield con
        finally:
            con.close()

    # -- what the sensors read -----------------------------------------------------------------

    def running_session_rounds(self) -> list[SessionRound]:
        """Every running session Dagster drives, with the state of its current round's requests (one query).

        Sessions started by the CLI or the HTTP API (`config.driver`) are advanced by those processes."""
        with self.connect() as con:
            rows = con.execute(
                "SELECT s.session_id, s.iteration, s.next_round, count(q.request_id),"
                " count(q.request_id) FILTER (WHERE q.state NOT IN (SELECT unnest(?::VARCHAR[]))),"
                " coalesce(max(q.attempts) FILTER (WHERE q.state = 'queued' AND q.attempts > 0), 0), s.round_due_at"
                " FROM sessions s LEFT JOIN requests q ON q.session_id = s.session_id"
                "  AND q.iteration = s.iteration AND q.round = s.next_round"
                " WHERE s.status = 'running' AND coalesce(s.config->>'driver', 'dagster') = 'dagster'"
                " GROUP BY s.session_id, s.iteration, s.next_round, s.round_due_at"
                " ORDER BY min(s.created_at), s.session_id",
                [list(_TERMINAL)],
            ).fetchall()
        return [SessionRound(*row) for row in rows]

    def tick_snapshot(
        self, *, settled_before: float = float("inf")
    ) -> tuple[list[SessionRound], QueueState, list[WatchedBatch]]:
        """What the pipeline sensor reads, on one connection: running sessions' rounds, the queue, watched batches."""
        with self.connect() as con:
            one = LedgerReader(self.store.location, connection=lambda: nullcontext(con))
            return one.running_session_rounds(), one.queue_state(settled_before=settled_before), one.watched_batches()

    def watched_batches(self) -> list[WatchedBatch]:
        with self.connect() as con:
            rows = con.execute(
                "SELECT batch_key, openai_batch_id, created_at, status FROM batches"
                " WHERE phase = 'created' ORDER BY created_at, batch_key"
            ).fetchall()
        return [WatchedBatch(*row) for row in rows]

    def queue_state(self, *, settled_before: float = float("inf")) -> QueueState:
        """The batch-tier queue, and the half-sent batches; those whose create went out at or after
        `settled_before` are only counted, as resuming them could not create them yet."""
        with self.connect() as con:
            queued, oldest = one_row(
                con.execute("SELECT count(*), min(created_at) FROM requests WHERE state = 'queued' AND tier = 'batch'")
            )
            half_sent = con.execute(
                "SELECT batch_key, coalesce(create_sent_at < ?, true) FROM batches"
                " WHERE phase IN ('intent', 'uploaded') ORDER BY batch_key",
                [settled_before],
            ).fetchall()
        return QueueState(
            queued=queued,
            oldest_queued_at=oldest,
            half_sent=tuple(key for key, settled in half_sent if settled),
            settling=sum(1 for _key, settled in half_sent if not settled),
        )

    def session_status(self, session_id: str) -> tuple[str, int, str | None, str | None] | None:
        """(status, iteration, next round, winner id) of one session, or None if unknown."""
        with self.connect() as con:
            row = con.execute(
                "SELECT status, iteration, next_round, winner_id FROM sessions WHERE session_id = ?", [session_id]
            ).fetchone()
        return tuple(row) if row else None

    def candidate_prompt(self, session_id: str, candidate_id: str) -> str | None:
        """The combined image prompt of one candidate (e.g. a session's winner)."""
        with self.connect() as con:
            row = con.execute(
                "SELECT combined FROM candidates WHERE session_id = ? AND candidate_id = ?", [session_id, candidate_id]
            ).fetchone()
        return row[0] if row else None

    # -- what the asset checks and asset metadata read ------------------------------------------

    def open_applied_rounds(self, session_id: str) -> dict[RoundId, dict[str, int]]:
        """Rounds the session has applied whose requests are not all terminal (state -> count): a corrupt step,
        since a round is applied only once all its answers are in."""
        return self.open_applied_rounds_of([session_id]).get(session_id, {})

    def open_applied_rounds_of(self, session_ids: Sequence[str]) -> dict[str, dict[RoundId, dict[str, int]]]:
        """`open_applied_rounds` of several sessions in one query (only sessions that have any)."""
        with self.connect() as con:
            rows = con.execute(
                "SELECT q.session_id, q.iteration, q.round, q.state, count(*) FROM requests q"
                " JOIN rounds r USING (session_id, iteration, round)"
                " WHERE q.session_id IN (SELECT unnest(?::VARCHAR[])) AND q.state NOT IN (SELECT unnest(?::VARCHAR[]))"
                " GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4",
                [list(session_ids), list(_TERMINAL)],
            ).fetchall()
        out: dict[str, dict[RoundId, dict[str, int]]] = {}
        for session_id, iteration, round_name, state, n in rows:
            out.setdefault(session_id, {}).setdefault(RoundId(iteration, round_name), {})[state] = n
        return out

    def round_tiers(self, session_id: str, round_id: RoundId) -> list[tuple[str, str | None, str, int]]:
        """(tier, tier reason, state, count) of one round's requests: why each ran where it ran."""
        return self.rounds_tiers({session_id: round_id}).get(session_id, [])

    def rounds_tiers(self, rounds: dict[str, RoundId]) -> dict[str, list[tuple[str, str | None, str, int]]]:
        """`round_tiers` of one round of each of several sessions (session id -> round), in one query."""
        if not rounds:
            return {}
        with self.connect() as con:
            rows = con.execute(
                "SELECT q.session_id, tier, tier_reason, state, count(*) FROM requests q"
                " JOIN (SELECT unnest(?::VARCHAR[]) AS session_id, unnest(?::INTEGER[]) AS iteration,"
                "  unnest(?::VARCHAR[]) AS round) w"
                "  ON q.session_id = w.session_id AND q.iteration = w.iteration AND q.round = w.round"
                " GROUP BY 1, 2, 3, 4 ORDER BY 1, 5 DESC, 2, 4",
                [list(rounds), [r.iteration for r in rounds.values()], [r.round for r in rounds.values()]],
            ).fetchall()
        found: dict[str, list[tuple[str, str | None, str, int]]] = {}
        for session_id, *tiers in rows:
            found.setdefault(session_id, []).append(tuple(tiers))
        return found

    def live_duplicate_members(self) -> list[tuple[str, int]]:
        """Custom ids that are members of more than one live batch: they would be paid for twice."""
        with self.connect() as con:
            return con.execute(
                "SELECT m.request_id, count(*) FROM batch_members m JOIN batches b USING (batch_key)"
                " WHERE b.phase IN ('intent', 'uploaded', 'created') GROUP BY 1 HAVING count(*) > 1"
                " ORDER BY 1"
            ).fetchall()

    def cost_figures(self, *, session_id: str | None = None) -> CostFigures:
        """The three cost figures (`spending.cost_figures_on`), read without the writer's lock."""
        with self.connect() as con:
            return cost_figures_on(con, session_id)

    def session_budget(self, session_id: str) -> Decimal | None:
        return self.session_budgets([session_id]).get(session_id)

    def session_budgets(self, session_ids: Sequence[str]) -> dict[str, Decimal]:
        """The budget of each of these sessions that has one, in one query."""
        with self.connect() as con:
            rows = con.execute(
                "SELECT session_id, config->>'budget_usd' FROM sessions"
                " WHERE session_id IN (SELECT unnest(?::VARCHAR[])) AND config->>'budget_usd' IS NOT NULL",
                [list(session_ids)],
            ).fetchall()
        return {session_id: Decimal(budget) for session_id, budget in rows}

    def batch_overview(self, *, limit: int = 50) -> list[BatchOverview]:
        """The newest batches with the sessions whose requests they carry (for asset metadata)."""
        with self.connect() as con:
            rows = con.execute(
                "SELECT b.batch_key, b.openai_batch_id, b.model, b.endpoint, b.phase, b.status, b.request_count,"
                " b.completed_count, b.failed_count, array_agg(DISTINCT q.session_id ORDER BY q.session_id)"
                "  FILTER (WHERE q.session_id IS NOT NULL), b.created_at"
                " FROM batches b LEFT JOIN batch_members m USING (batch_key) LEFT JOIN requests q USING (request_id)"
                " GROUP BY b.batch_key, b.openai_batch_id, b.model, b.endpoint, b.phase, b.status, b.request_count,"
                "  b.completed_count, b.failed_count, b.created_at"
                " ORDER BY b.created_at DESC, b.batch_key LIMIT ?",
                [limit],
            ).fetchall()
        return [BatchOverview(*(*row[:9], tuple(row[9] or ()), row[10])) for row in rows]

    # -- the cost report ------------------------------------------------------------------------

    def cost_rows(self) -> list[CostRow]:
        """Spend by UTC day, model, tier and operation over every paid line (every attempt, duplicate lines too)."""
        with self.connect() as con:
            rows = con.execute(
                "SELECT CAST(to_timestamp(recorded_at) AT TIME ZONE 'UTC' AS DATE) AS day, model, tier,"
                " operation, count(*), sum(input_tokens), sum(output_tokens), sum(images),"
                " sum(cost_usd), sum(standard_cost_usd) FROM spend GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4"
            ).fetchall()
        return [
            CostRow(day, model, tier, op, n, int(i), int(o), int(im), Decimal(c), Decimal(s))
            for day, model, tier, op, n, i, o, im, c, s in rows
        ]
