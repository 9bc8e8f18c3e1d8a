"""The DuckDB ledger: requests, batches, results and costs, with the state machines enforced.

Every state change goes through `_move_requests` / `_move_batch`, which check the tables in
`states.py`. Connections are short-lived and closed in `finally`; opening retries for a bounded
time while another process holds DuckDB's single-writer lock.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.compute as pc  # type: ignore[import-untyped]
from pydantic import BaseModel
from tenacity import retry, retry_if_exception, stop_after_delay, wait_random_exponential

from batch_pipeline.errors import LedgerError, StateTransitionError, is_lock_error
from batch_pipeline.ledger.db import (
    Connection,
    DuckDBStore,
    PostgresConnection,
    arrow_view,
    insert_columns,
    insert_rows,
    one_row,
    open_store,
    string_column,
)
from batch_pipeline.ledger.session_rows import SessionRecords
from batch_pipeline.ledger.spending import SpendingRecords
from batch_pipeline.ledger.states import (
    BATCH_TRANSITIONS,
    REQUEST_TRANSITIONS,
    BatchPhase,
    RequestState,
)
from batch_pipeline.records import QueuedRequest, RequestOutcome, ResultTable
from batch_pipeline.vocabulary import ENDED_STATUSES, Outcome, Tier

log = logging.getLogger(__name__)


class BatchRecord(BaseModel):
    batch_key: str
    endpoint: str
    model: str
    phase: BatchPhase
    status: str | None
    request_count: int
    input_bytes: int
    est_prompt_tokens: int
    input_file_id: str | None
    openai_batch_id: str | None
    create_sent_at: float | None
    output_file_id: str | None
    error_file_id: str | None
    completed_count: int | None
    failed_count: int | None
    errors: list[dict[str, Any]] | None
    polls: int
    created_at: float
    updated_at: float
    ended_at: float | None
    sweep_until: float | None = None
    ingest_errors: int | None = 0
    duplicate_of: str | None = None


class QueuedRow(BaseModel):
    """What the assembler needs of a queued request; the body stays in the ledger."""

    request_id: str
    endpoint: str
    model: str
    line_bytes: int
    est_prompt_tokens: int
    tier: str = Tier.BATCH
    attempts: int = 0


class RequestRow(BaseModel):
    request_id: str
    session_id: str | None
    operation: str
    endpoint: str
    model: str
    tier: str
    tier_reason: str | None
    body: dict[str, Any]
    body_hash: str
    state: RequestState
    attempts: int
    batch_key: str | None
    last_error: str | None


class RemoteStatus(BaseModel):
    """A batch's remote state as last seen, to be recorded."""

    batch_key: str
    status: str
    output_file_id: str | None = None
    error_file_id: str | None = None
    completed_count: int | None = None
    failed_count: int | None = None
    errors: list[dict[str, Any]] | None = None


_BATCH_COLUMNS = ", ".join(BatchRecord.model_fields)
# The results columns `_outcome_from_row` reads, in its order.
_OUTCOME_COLUMNS = (
    "r.request_id, r.outcome, r.status_code, r.response, r.error_code, r.error_message, r.input_tokens,"
    " r.cached_tokens, r.output_tokens, r.images, r.cost_usd, r.standard_cost_usd, r.price_version"
)


class Ledger(SessionRecords, SpendingRecords):
    def __init__(self, location: Path | str, *, clock: Callable[[], float] = time.time, lock_timeout_s: float = 10.0):
        """`location`: a DuckDB file path, or a `postgresql://` URL (`db.open_store`)."""
        self.store = open_store(location)
        self.clock = clock
        self.lock_timeout_s = lock_timeout_s
        self._local = threading.local()
        self._migrate()

    @property
    def path(self) -> Path:
        """The DuckDB file (the default store); a PostgreSQL ledger has none."""
        if not isinstance(self.store, DuckDBStore):
            raise LedgerError(f"the ledger at {self.store} is not a file")
        return self.store.path

    def _migrate(self) -> None:
        """Create or migrate the schema once per process and store, not once per `Ledger` (each migration
        opens a connection: ~30 ms when no other is open, the cost of a small step)."""
        with self.store.writer_lock():
            if self.store.identity() in _MIGRATED:  # (no I/O for PostgreSQL, one stat for DuckDB)
                return
            with self.transaction() as con:
                if self.store.dialect == "postgres":
                    # Two processes creating the same tables at once collide in PostgreSQL's catalog: take turns.
                    con.execute("SELECT pg_advisory_xact_lock(hashtext('batch_pipeline.ledger.schema'))")
                con.execute(resources.files("batch_pipeline.ledger").joinpath("schema.sql").read_text())
                _split_round_keys(con)
            if (identity := self.store.identity()) is not None:
                _MIGRATED.add(identity)

    # -- connections -------------------------------------------------------------------------

    def _open(self, read_only: bool) -> Connection:
        @retry(
            retry=retry_if_exception(is_lock_error),
            stop=stop_after_delay(self.lock_timeout_s),
            wait=wait_random_exponential(multiplier=0.05, max=1.0),
            reraise=True,
        )
        def open_() -> Connection:
            return self.store.open(read_only)

        return open_()

    @contextmanager
    def unit(self) -> Iterator[None]:
        """One connection for a unit of work (a tick's step, flush or ingestion) in this thread.

        Opening a DuckDB connection costs ~25 ms, a query on an open one well under 1 ms; inside a unit
        every ledger call of this thread reuses one connection, and the file lock is held only as long
        as the unit takes (other processes wait for it with their bounded retry).
        """
        if getattr(self._local, "con", None) is not None:
            yield
            return
        self._local.con = self._open(False)
        try:
            yield
        finally:
            con, self._local.con = self._local.con, None
            if con is not None:
                con.close()

    @contextmanager
    def released(self) -> Iterator[None]:
        """Let go of this thread's unit connection (and so the file) while waiting on the network.

        A tick holds the ledger for its whole unit; an upload, a batch create or a download may take
        seconds to minutes, and readers of other processes (the sensor, the API's GETs) would wait that
        long. Callers record the intent before the call and the outcome after it, each in its own
        transaction, so releasing in between gives up nothing a crash did not already expose. Inside a
        transaction, or outside a unit, nothing is released.
        """
        con = getattr(self._local, "con", None)
        if con is None or getattr(self._local, "in_transaction", False) or self.store.dialect == "postgres":
            yield  # (PostgreSQL locks rows, not the database: there is nothing to let go of)
            return
        self._local.con = None
        con.close()
        try:
            yield
        finally:
            self._local.con = self._open(False)

    @contextmanager
    def turn(self, name: str) -> Iterator[None]:
        """Wait for this process's turn at `name` (one driver's tick), across every process on the ledger.

        On DuckDB the file admits one writing process and Dagster's `ledger` pool one run: nothing to do. On
        PostgreSQL many run at once, and two ticks stepping the same sessions would compute the same step
        twice and could save a stale state over a newer one: they take turns on an advisory lock, held by
        the unit's connection (PostgreSQL frees it if the process dies). Needs `unit()`."""
        con = getattr(self._local, "con", None)
        if self.store.dialect != "postgres" or getattr(self._local, "turn", None) == name:
            yield
            return
        if con is None:
            raise LedgerError("Ledger.turn needs a unit of work (Ledger.unit)")
        con.execute("SELECT pg_advisory_lock(hashtext(?))", [name]).fetchall()
        self._local.turn = name
        try:
            yield
        finally:
            self._local.turn = None
            con.execute("SELECT pg_advisory_unlock(hashtext(?))", [name]).fetchall()

    @contextmanager
    def connect(self, *, read_only: bool = False) -> Iterator[Connection]:
        pinned = getattr(self._local, "con", None)
        if pinned is not None:
            yield pinned
            return
        con = self._open(read_only)
        try:
            yield con
        finally:
            con.close()

    @contextmanager
    def transaction(self, *, locks_its_rows: bool = False) -> Iterator[Connection]:
        """A write transaction. On DuckDB the writers of one process take turns (`Store.writer_lock`): two
        threads updating the same row at once would otherwise fail with "Conflict on update"; other
        processes are kept out by DuckDB's own file lock. On PostgreSQL it is SERIALIZABLE (`PostgresStore`),
        unless it `locks_its_rows`: it changes only rows it has locked first (`SELECT ... FOR UPDATE`) and rows
        it inserts, so READ COMMITTED keeps it correct and concurrent claims of other rows do not conflict."""
        with self.store.writer_lock(), self.unit(), self.connect() as con:
            if getattr(self._local, "in_transaction", False):
                yield con  # joins the caller's transaction: all of it commits or none
                return
            if isinstance(con, PostgresConnection):
                con.begin("READ COMMITTED" if locks_its_rows else "SERIALIZABLE")
            else:
                con.begin()
            self._local.in_transaction = True
            try:
                yield con
            except BaseException:
                con.rollback()
                raise
            finally:
                self._local.in_transaction = False
            con.commit()

    # -- requests ----------------------------------------------------------------------------

    def enqueue(self, requests: Sequence[QueuedRequest]) -> list[str]:
        """Queue requests; re-queueing an identical request is a no-op (idempotent re-runs).

        Returns the ids newly queued. A known id with a different body is an error: two
        different requests must never share a custom_id.
        """
        if not requests:
            return []
        ids = [r.request_id for r in requests]
        if len(set(ids)) != len(ids):
            dupes = sorted({i for i in ids if ids.count(i) > 1})
            raise LedgerError(f"duplicate request ids in one enqueue: {dupes[:5]}")
        now = self.clock()
        with self.transaction() as con:
            known = dict(
                con.execute(
                    "SELECT request_id, body_hash FROM requests WHERE request_id IN (SELECT unnest(?::VARCHAR[]))",
                    [ids],
                ).fetchall()
            )
            for r in requests:
                if r.request_id in known and known[r.request_id] != r.body_hash:
                    raise LedgerError(f"request {r.request_id!r} is already queued with a different body")
            ended = _ended_sessions(con, {r.session_id for r in requests if r.session_id})
            # A session cancelled (or ended) meanwhile asks for nothing more: its next round is never queued.
            new = [r for r in requests if r.request_id not in known and r.session_id not in ended]
            if new:
                insert_rows(
                    con,
                    "requests",
                    _REQUEST_INSERT_COLUMNS,
                    [
                        (
                            r.request_id,
                            r.session_id,
                            r.operation,
                            str(r.endpoint),
                            r.model,
                            str(r.tier),
                            r.tier_reason,
                            r.iteration,
                            r.round,
                            r.body_text(),
                            r.body_hash,
                            r.est_prompt_tokens,
                            r.line_bytes,
                            "queued",
                            0,
                            now,
                            now,
                        )
                        for r in new
                    ],
                )
                insert_rows(
                    con,
                    "request_events",
                    _EVENT_COLUMNS,
                    [(r.request_id, now, None, "queued", None, r.tier_reason or "enqueued") for r in new],
                )
        return [r.request_id for r in new]

    def queued_rows(
        self,
        *,
        tier: Tier | Sequence[Tier] = Tier.BATCH,
        session_id: str | None = None,
        session_ids: Iterable[str] | None = None,
        retried: bool = False,
    ) -> list[QueuedRow]:
        """Queued requests of a tier (or of any of several), oldest first (FIFO keeps waiting times fair).

        `session_ids` limits them to the sessions a driver owns; `retried` to those sent before (back from
        a failed or expired batch). Requests of a session that is no longer running are never returned:
        a cancelled session's queue is never sent.
        """
        tiers = [str(tier)] if isinstance(tier, str) else [str(t) for t in tier]
        sql = (
            "SELECT request_id, endpoint, model, line_bytes, est_prompt_tokens, tier, attempts FROM requests"
            " WHERE state = 'queued' AND tier IN (SELECT unnest(?::VARCHAR[]))"
            f" AND {_NOT_OF_AN_ENDED_SESSION}"
        )
        params: list[Any] = [tiers]
        if retried:
            sql += " AND attempts > 0"
        if session_id is not None:
            sql += " AND session_id = ?"
            params.append(session_id)
        if session_ids is not None:
            sql += " AND session_id IN (SELECT unnest(?::VARCHAR[]))"
            params.append(list(session_ids))
        with self.connect() as con:
            rows = con.execute(sql + " ORDER BY created_at, request_id", params).fetchall()
        return [
            QueuedRow(
                request_id=r[0],
                endpoint=r[1],
                model=r[2],
                line_bytes=r[3],
                est_prompt_tokens=r[4],
                tier=r[5],
                attempts=r[6],
            )
            for r in rows
        ]

    def sessions_with_queued_work(self, session_ids: Iterable[str]) -> set[str]:
        """Of these sessions, those with queued requests a step itself runs or moves: standard or flex ones
        (`RoundExecutor.run_sync`) and batch ones back from a failed try (`RoundExecutor.apply_fallback`)."""
        with self.connect() as con:
            rows = con.execute(
                "SELECT DISTINCT session_id FROM requests WHERE state = 'queued'"
                " AND session_id IN (SELECT unnest(?::VARCHAR[]))"
                " AND (tier IN ('standard', 'flex') OR (tier = 'batch' AND attempts > 0))",
                [list(session_ids)],
            ).fetchall()
        return {sid for (sid,) in rows}

    def queue_summary(
        self, *, tier: Tier = Tier.BATCH, session_ids: Iterable[str] | None = None
    ) -> tuple[int, float | None]:
        """How many requests of a tier wait in the queue (of these sessions), and since when the oldest."""
        sql = (
            "SELECT count(*), min(created_at) FROM requests WHERE state = 'queued' AND tier = ?"
            f" AND {_NOT_OF_AN_ENDED_SESSION}"
        )
        params: list[Any] = [str(tier)]
        if session_ids is not None:
            sql += " AND session_id IN (SELECT unnest(?::VARCHAR[]))"
            params.append(list(session_ids))
        with self.connect() as con:
            count, oldest = one_row(con.execute(sql, params))
        return int(count), oldest

    def request_states(
        self, request_ids: Sequence[str] | None = None, *, session_id: str | None = None
    ) -> dict[str, RequestState]:
        sql = "SELECT request_id, state FROM requests"
        params: list[Any] = []
        if request_ids is not None:
            sql += " WHERE request_id IN (SELECT unnest(?::VARCHAR[]))"
            params.append(list(request_ids))
        elif session_id is not None:
            sql += " WHERE session_id = ?"
            params.append(session_id)
        with self.connect() as con:
            return {rid: RequestState(state) for rid, state in con.execute(sql, params).fetchall()}

    def state_counts_of(self, session_ids: Sequence[str]) -> dict[str, dict[str, int]]:
        """`state_counts` of several sessions in one query."""
        with self.connect() as con:
            rows = con.execute(
                "SELECT session_id, state, count(*) FROM requests WHERE session_id IN (SELECT unnest(?::VARCHAR[]))"
                " GROUP BY 1, 2 ORDER BY 1, 2",
                [list(session_ids)],
            ).fetchall()
        found: dict[str, dict[str, int]] = {}
        for session_id, state, n in rows:
            found.setdefault(session_id, {})[state] = n
        return found

    def state_counts(self, *, session_id: str | None = None, tier: Tier | None = None) -> dict[str, int]:
        sql, params = "SELECT state, count(*) FROM requests WHERE true", []
        if session_id is not None:
            sql += " AND session_id = ?"
            params.append(session_id)
        if tier is not None:
            sql += " AND tier = ?"
            params.append(str(tier))
        with self.connect() as con:
            return dict(con.execute(sql + " GROUP BY state ORDER BY state", params).fetchall())

    def cancel_session(self, session_id: str, reason: str) -> tuple[bool, list[BatchRecord]]:
        """Cancel a running session in one transaction: its status, and its queued requests end cancelled.

        Returns whether this call cancelled it (False: it had already ended; nothing changed) and the
        batches still being sent or in flight that hold only its requests (to cancel remotely). Every later
        write of the session's state is conditional on `running`, so a step in progress cannot undo this.
        """
        with self.transaction() as con:
            changed = con.execute(
                "UPDATE sessions SET status = 'cancelled', error = ?, updated_at = ?"
                " WHERE session_id = ? AND status = 'running' RETURNING session_id",
                [reason, self.clock(), session_id],
            ).fetchall()
            if not changed:
                return False, []
            self._cancel_queued(con, session_id, reason)
        return True, [
            b
            for b, exclusive in self.batches_of_session(session_id, in_flight=True)
            if exclusive and b.status not in ENDED_STATUSES
        ]

    def _cancel_queued(self, con: Connection, session_id: str, reason: str) -> list[str]:
        """End a session's queued requests as cancelled (they were never sent, so nothing is billed)."""
        rows = con.execute(
            "SELECT request_id, attempts, tier FROM requests WHERE session_id = ? AND state = 'queued'", [session_id]
        ).fetchall()
        if not rows:
            return []
        ids = [rid for rid, _, _ in rows]
        self._move_requests(
            con,
            {RequestState.CANCELLED: ids},
            batch_key=None,
            reason=reason,
            expect_from={RequestState.QUEUED},
            errors={rid: reason for rid in ids},
            count_attempt=True,
        )
        self._insert_results(
            con,
            [
                (
                    RequestOutcome(request_id=rid, outcome=Outcome.CANCELLED, error_message=reason),
                    attempts + 1,
                    None,
                    tier,
                )
                for rid, attempts, tier in rows
            ],
            self.clock(),
        )
        return ids

    def batches_of_session(self, session_id: str, *, in_flight: bool = False) -> list[tuple[BatchRecord, bool]]:
        """Batches holding a session's requests (oldest first), and whether they hold only that session's."""
        only_in_flight = "WHERE b.phase IN ('intent', 'uploaded', 'created')" if in_flight else ""
        with self.connect() as con:
            rows = con.execute(
                f"SELECT {', '.join('b.' + c for c in BatchRecord.model_fields)}, x.exclusive FROM batches b JOIN ("
                "  SELECT m.batch_key, bool_and(q.session_id = ?) AS exclusive"
                "  FROM batch_members m JOIN requests q USING (request_id)"
                "  GROUP BY m.batch_key HAVING bool_or(q.session_id = ?)) x USING (batch_key)"
                f" {only_in_flight} ORDER BY b.created_at, b.batch_key",
                [session_id, session_id],
            ).fetchall()
        return [(_batch_from_row(row[:-1]), bool(row[-1])) for row in rows]

    def fail_queued(self, request_ids: Sequence[str], reason: str) -> None:
        """End queued requests that can never run (e.g. larger than any batch file allows)."""
        outcomes = [
            RequestOutcome(request_id=rid, outcome=Outcome.FAILED_PERMANENT, error_message=reason)
            for rid in request_ids
        ]
        with self.transaction() as con:
            tiers = dict(
                con.execute(
                    "SELECT request_id, tier FROM requests WHERE request_id IN (SELECT unnest(?::VARCHAR[]))",
                    [list(request_ids)],
                ).fetchall()
            )
            # Counted as an attempt, so its result row is the request's final one (attempt = attempts).
            self._move_requests(
                con,
                {RequestState.FAILED: list(request_ids)},
                batch_key=None,
                reason=reason,
                expect_from={RequestState.QUEUED},
                errors={rid: reason for rid in request_ids},
                count_attempt=True,
            )
            attempts = dict(
                con.execute(
                    "SELECT request_id, attempts FROM requests WHERE request_id IN (SELECT unnest(?::VARCHAR[]))",
                    [list(request_ids)],
                ).fetchall()
            )
            self._insert_results(
                con, [(o, attempts[o.request_id], None, Tier(tiers[o.request_id])) for o in outcomes], self.clock()
            )

    def request_body(self, request_id: str) -> dict[str, Any]:
        return self.request_row(request_id).body

    def request_row(self, request_id: str) -> RequestRow:
        rows = self.request_rows([request_id])
        if request_id not in rows:
            raise LedgerError(f"unknown request {request_id!r}")
        return rows[request_id]

    def request_rows(self, request_ids: Sequence[str]) -> dict[str, RequestRow]:
        """Several requests in one query (opening a connection costs ~10 ms: never one per request)."""
        with self.connect() as con:
            rows = con.execute(
                f"SELECT {', '.join(RequestRow.model_fields)} FROM requests"
                f" WHERE request_id IN (SELECT unnest(?::VARCHAR[]))",
                [list(request_ids)],
            ).fetchall()
        return {row[0]: _request_from_row(row) for row in rows}

    def final_results(self, request_ids: Sequence[str]) -> dict[str, RequestOutcome]:
        """The terminal result of each finished request (the last attempt's row)."""
        with self.connect() as con:
            rows = con.execute(
                f"SELECT {_OUTCOME_COLUMNS} FROM results r JOIN requests q USING (request_id)"
                " WHERE r.request_id IN (SELECT unnest(?::VARCHAR[])) AND r.attempt = q.attempts"
                " AND q.state IN ('succeeded', 'failed', 'expired', 'cancelled')",
                [list(request_ids)],
            ).fetchall()
        return {row[0]: _outcome_from_row(row) for row in rows}

    # -- batches -----------------------------------------------------------------------------

    def create_batch_intent(
        self, batch_key: str, endpoint: str, model: str, members: Sequence[QueuedRow]
    ) -> BatchRecord | None:
        """Persist a batch before anything is sent: its members move queued -> submitted.

        This is the first half of the two-phase submit; a crash after it is recovered by
        reconciling with the remote batch list (see `jobs.BatchLifecycle.resume`). The batch holds the
        members it can claim (`_claim_queued`); None if it can claim none.
        """
        if not members:
            raise LedgerError("a batch needs at least one request")
        now = self.clock()
        with self.transaction(locks_its_rows=True) as con:
            claimed = self._claim_queued(con, [m.request_id for m in members])
            if len(claimed) < len(members):
                log.info(
                    "batch %s: %d of %d planned requests were taken meanwhile",
                    batch_key,
                    len(members) - len(claimed),
                    len(members),
                )
            members = [m for m in members if m.request_id in claimed]
            if not members:
                return None
            ids = [m.request_id for m in members]
            con.execute(
                "INSERT INTO batches (batch_key, endpoint, model, phase, request_count, input_bytes, est_prompt_tokens,"
                " created_at, updated_at) VALUES (?, ?, ?, 'intent', ?, ?, ?, ?, ?)",
                [
                    batch_key,
                    endpoint,
                    model,
                    len(members),
                    sum(m.line_bytes + 1 for m in members),
                    sum(m.est_prompt_tokens for m in members),
                    now,
                    now,
                ],
            )
            insert_rows(
                con,
                "batch_members",
                ("batch_key", "request_id", "line_no"),
                [(batch_key, rid, i) for i, rid in enumerate(ids, 1)],
            )
            self._move_requests(
                con,
                {RequestState.SUBMITTED: ids},
                batch_key=batch_key,
                reason="batch intent",
                expect_from={RequestState.QUEUED},
                count_attempt=True,
            )
            return self.batch(batch_key)

    def _claim_queued(self, con: Connection, request_ids: Sequence[str]) -> set[str]:
        """Of these requests, those this transaction may send: still queued (a cancel, or another flush that
        committed first, took the others) and, on PostgreSQL, locked until it commits; rows a concurrent
        flush has locked are skipped. So two flushes never send one request."""
        lock = " FOR UPDATE SKIP LOCKED" if self.store.dialect == "postgres" else ""
        rows = con.execute(
            "SELECT request_id FROM requests WHERE request_id IN (SELECT unnest(?::VARCHAR[])) AND state = 'queued'"
            + lock,
            [list(request_ids)],
        ).fetchall()
        return {rid for (rid,) in rows}

    @staticmethod
    def request_states_in(con: Connection, request_ids: Sequence[str], state: RequestState) -> list[str]:
        return [
            rid
            for (rid,) in con.execute(
                "SELECT request_id FROM requests WHERE request_id IN (SELECT unnest(?::VARCHAR[])) AND state = ?",
                [list(request_ids), str(state)],
            ).fetchall()
        ]

    def iter_batch_bodies(self, batch_key: str, chunk: int = 2_000) -> Iterator[tuple[int, str, str, str]]:
        """(line_no, custom_id, endpoint, body JSON) of a batch in line order, fetched in chunks."""
        sql = (
            "SELECT m.line_no, r.request_id, r.endpoint, r.body FROM batch_members m"
            " JOIN requests r USING (request_id) WHERE m.batch_key = ? ORDER BY m.line_no"
        )
        with self.connect() as con:
            if isinstance(con, PostgresConnection):
                yield from con.stream(sql, [batch_key], chunk)  # psycopg would fetch every row at once
                return
            cursor = con.execute(sql, [batch_key])
            while rows := cursor.fetchmany(chunk):
                yield from rows

    def batch_members(self, batch_key: str) -> dict[int, str]:
        with self.connect() as con:
            return dict(
                con.execute("SELECT line_no, request_id FROM batch_members WHERE batch_key = ?", [batch_key]).fetchall()
            )

    def batch(self, batch_key: str) -> BatchRecord:
        with self.connect() as con:
            row = con.execute(f"SELECT {_BATCH_COLUMNS} FROM batches WHERE batch_key = ?", [batch_key]).fetchone()
        if row is None:
            raise LedgerError(f"unknown batch {batch_key!r}")
        return _batch_from_row(row)

    def batches(
        self, phases: Iterable[BatchPhase] | None = None, *, session_ids: Iterable[str] | None = None
    ) -> list[BatchRecord]:
        """Batches (in these phases), oldest first; with `session_ids`, those holding any of their requests."""
        sql, params = f"SELECT {_BATCH_COLUMNS} FROM batches WHERE true", []
        if phases is not None:
            sql += " AND phase IN (SELECT unnest(?::VARCHAR[]))"
            params.append([str(p) for p in phases])
        if session_ids is not None:
            sql += (
                " AND batch_key IN (SELECT m.batch_key FROM batch_members m JOIN requests q USING (request_id)"
                " WHERE q.session_id IN (SELECT unnest(?::VARCHAR[])))"
            )
            params.append(list(session_ids))
        with self.connect() as con:
            return [_batch_from_row(r) for r in con.execute(sql + " ORDER BY created_at, batch_key", params).fetchall()]

    def batch_serves_no_running_session(self, batch_key: str) -> bool:
        """Every request still submitted in this batch belongs to a session that has ended (cancelled)."""
        with self.connect() as con:
            row = one_row(
                con.execute(
                    "SELECT count(*), count(*) FILTER (WHERE s.status IS NOT NULL AND s.status != 'running')"
                    " FROM requests q LEFT JOIN sessions s USING (session_id)"
                    " WHERE q.batch_key = ? AND q.state = 'submitted'",
                    [batch_key],
                )
            )
        return row[0] > 0 and row[0] == row[1]

    def inflight_tokens_by_model(self) -> dict[str, int]:
        """Estimated prompt tokens each model has enqueued remotely (or about to be)."""
        with self.connect() as con:
            rows = con.execute(
                "SELECT model, sum(est_prompt_tokens) FROM batches WHERE phase IN ('intent', 'uploaded', 'created')"
                " AND (status IS NULL OR status IN ('validating', 'in_progress', 'finalizing', 'cancelling'))"
                " GROUP BY model"
            ).fetchall()
        return {model: int(tokens) for model, tokens in rows}

    def mark_uploaded(self, batch_key: str, input_file_id: str) -> None:
        with self.transaction() as con:
            self._move_batch(con, batch_key, BatchPhase.UPLOADED, input_file_id=input_file_id)

    def mark_create_sent(self, batch_key: str, *, answered: bool = False, sweep_window_s: float = 24 * 3600) -> None:
        """A create request for this uploaded batch is about to go out: it may land even if unanswered.

        `answered=True` clears the mark: the server answered that it created nothing, so nothing can land late.
        """
        now = self.clock()
        with self.transaction() as con:
            con.execute(
                "UPDATE batches SET create_sent_at = ?, updated_at = ? WHERE batch_key = ? AND phase = ?",
                [None if answered else now, now, batch_key, str(BatchPhase.UPLOADED)],
            )
            if not answered:
                # Until it is answered, this create may land at any time in the API's window: sweep for it.
                con.execute("UPDATE batches SET sweep_until = ? WHERE batch_key = ?", [now + sweep_window_s, batch_key])

    def create_answered(self, batch_key: str) -> None:
        """The only create sent for this batch got its answer: nothing can land late, no sweep is needed.

        Callers must not call it when an earlier create went unanswered: that one may still land.
        """
        with self.transaction() as con:
            con.execute("UPDATE batches SET sweep_until = NULL WHERE batch_key = ?", [batch_key])

    def mark_created(self, batch_key: str, openai_batch_id: str, input_file_id: str | None = None) -> None:
        """Second half of the two-phase submit; the remote status follows via `record_remote_status`."""
        with self.transaction() as con:
            fields: dict[str, Any] = {"openai_batch_id": openai_batch_id}
            if input_file_id:
                fields["input_file_id"] = input_file_id
            self._move_batch(con, batch_key, BatchPhase.CREATED, **fields)

    def abandon_batch(self, batch_key: str, reason: str, *, max_attempts: int) -> None:
        """A batch that was never created: its members go back to the queue (or fail, out of attempts)."""
        with self.transaction() as con:
            self._move_batch(con, batch_key, BatchPhase.ABANDONED, errors=orjson.dumps([{"message": reason}]).decode())
            self._fail_members(con, batch_key, reason, max_attempts)

    def _fail_members(self, con: Connection, batch_key: str, reason: str, max_attempts: int) -> None:
        """A batch ended without results for its members (never created, or its files unreadable): each
        member's attempt is recorded as failed and retryable, and it goes back to the queue or, out of
        attempts, ends failed."""
        attempts = dict(
            con.execute(
                "SELECT request_id, attempts FROM requests WHERE batch_key = ? AND state = 'submitted'", [batch_key]
            ).fetchall()
        )
        outcomes = [
            RequestOutcome(request_id=rid, outcome=Outcome.FAILED_RETRYABLE, error_message=reason) for rid in attempts
        ]
        self._insert_results(con, [(o, attempts[o.request_id], batch_key, Tier.BATCH) for o in outcomes], self.clock())
        self._requeue_or_end(
            con,
            list(attempts),
            RequestState.FAILED,
            batch_key,
            reason,
            max_attempts,
            {rid: reason for rid in attempts},
            attempts,
        )

    def record_remote_status(self, statuses: Sequence[RemoteStatus]) -> None:
        """Record what polling saw. Only created batches have a remote status to record."""
        if not statuses:
            return
        now = self.clock()
        with self.transaction() as con:
            for s in statuses:
                con.execute(
                    "UPDATE batches SET status = ?, output_file_id = ?, error_file_id = ?, completed_count = ?,"
                    " failed_count = ?, errors = ?, polls = polls + 1, updated_at = ?,"
                    " ended_at = CASE WHEN ? IN ('completed', 'failed', 'expired', 'cancelled')"
                    " THEN coalesce(ended_at, ?) END"
                    " WHERE batch_key = ? AND phase = 'created'",
                    [
                        s.status,
                        s.output_file_id,
                        s.error_file_id,
                        s.completed_count,
                        s.failed_count,
                        orjson.dumps(s.errors).decode() if s.errors else None,
                        now,
                        s.status,
                        now,
                        s.batch_key,
                    ],
                )

    def record_batch_outcome(
        self,
        batch_key: str,
        outcomes: Sequence[RequestOutcome],
        *,
        max_attempts: int,
        missing_reason: str = "no line in the output or error file",
    ) -> bool:
        """Ingest a finished batch in one transaction: results rows, request states, batch phase.

        Idempotent: a batch already ingested returns False and changes nothing, so a crash
        after the commit but before the caller noticed is harmless. Members without an outcome
        are treated as retryable: nothing is silently dropped.
        """
        return self.record_batch_results(
            batch_key, ResultTable.from_outcomes(outcomes), max_attempts=max_attempts, missing_reason=missing_reason
        )

    def record_batch_results(
        self,
        batch_key: str,
        table: ResultTable,
        *,
        max_attempts: int,
        missing_reason: str = "no line in the output or error file",
    ) -> bool:
        """`record_batch_outcome` for a `ResultTable` (the bulk path: rows go in through Arrow, in chunks).

        The same transaction and the same rules: idempotent, members without a row are retryable,
        every state change passes `_move_requests`. The table is consumed (its rows are dropped as they
        are inserted, so a batch's responses are not held twice).
        """
        now = self.clock()
        with self.transaction() as con:
            phase = con.execute("SELECT phase FROM batches WHERE batch_key = ?", [batch_key]).fetchone()
            if phase is None:
                raise LedgerError(f"unknown batch {batch_key!r}")
            if phase[0] == BatchPhase.INGESTED:
                return False
            members = dict(
                con.execute(
                    "SELECT r.request_id, r.attempts FROM batch_members m JOIN requests r USING (request_id)"
                    " WHERE m.batch_key = ? AND r.state = 'submitted' AND r.batch_key = ?",
                    [batch_key, batch_key],
                ).fetchall()
            )
            rows = [row for row in table.rows if row[0] in members]
            table.rows = []
            missing = members.keys() - {row[0] for row in rows}
            rows += [
                (rid, str(Outcome.FAILED_RETRYABLE), None, None, None, missing_reason, 0, 0, 0, 0, 0, 0, None)
                for rid in sorted(missing)
            ]  # nothing silently dropped
            # the state moves' columns (id, outcome, error text), as Arrow, from the insert that consumes the rows
            ids, kinds, messages = self._insert_result_rows(con, rows, members, batch_key, Tier.BATCH, now)
            deadline_tier, deadline_reason = one_row(
                con.execute("SELECT deadline_tier, deadline_reason FROM batches WHERE batch_key = ?", [batch_key])
            )
            unrun: list[str] = []  # what a batch we cancelled at its round's deadline never ran
            if deadline_tier:
                never_ran = pc.equal(kinds, str(Outcome.CANCELLED))
                unrun = ids.filter(never_ran).to_pylist()
            if unrun:
                ran = pc.invert(never_ran)
                ids, kinds, messages = (column.filter(ran) for column in (ids, kinds, messages))
            self._apply_outcome_rows(con, ids, kinds, messages, members, batch_key, max_attempts)
            if unrun:
                # We cancelled this batch at its round's deadline: what never ran is finished on another tier
                # (an attempt that was not the request's fault, so it does not count against max_attempts).
                self._requeue_or_end(
                    con,
                    unrun,
                    RequestState.CANCELLED,
                    batch_key,
                    deadline_reason,
                    max_attempts=2**31,
                    errors={rid: deadline_reason for rid in unrun},
                    attempts=members,
                )
                con.execute(
                    "UPDATE requests SET tier = ?, tier_reason = ? WHERE request_id IN (SELECT unnest(?::VARCHAR[]))"
                    " AND state = 'queued'",
                    [deadline_tier, deadline_reason, unrun],
                )
            self._move_batch(con, batch_key, BatchPhase.INGESTED)
        return True

    def fail_ingest(self, batch_key: str, reason: str, *, permanent: bool, max_errors: int, max_attempts: int) -> bool:
        """An ended batch whose results cannot be read. A permanent failure (its files are gone), or the
        `max_errors`-th failure in a row, ends it: recorded with the reason, its unanswered members re-queued
        (or failed when out of attempts), so one bad batch never blocks the others nor is retried forever.
        Returns True when the batch was ended."""
        with self.transaction() as con:
            row = con.execute(
                "UPDATE batches SET ingest_errors = coalesce(ingest_errors, 0) + 1, updated_at = ?"
                " WHERE batch_key = ? AND phase = 'created' RETURNING ingest_errors",
                [self.clock(), batch_key],
            ).fetchone()
            if row is None or (not permanent and row[0] < max_errors):
                return False
            message = f"results unreadable after {row[0]} attempt(s): {reason}"
            self._move_batch(con, batch_key, BatchPhase.INGESTED, errors=orjson.dumps([{"message": message}]).decode())
            self._fail_members(con, batch_key, message, max_attempts)
        return True

    def sweep_keys(self) -> dict[str, tuple[str | None, float]]:
        """Batches whose create may still land somewhere in the API's window: key -> (recorded id, sent at)."""
        with self.connect() as con:
            rows = con.execute(
                "SELECT batch_key, openai_batch_id, coalesce(create_sent_at, created_at) FROM batches"
                " WHERE sweep_until IS NOT NULL AND sweep_until > ? AND duplicate_of IS NULL",
                [self.clock()],
            ).fetchall()
        return {key: (bid, sent) for key, bid, sent in rows}

    def record_duplicate(self, original_key: str, openai_batch_id: str, status: str) -> BatchRecord | None:
        """A remote batch carrying `original_key` under another id (a create that landed late): record it as
        a duplicate batch with the same members, so it is polled, ingested and costed like any other.
        None if it is recorded already."""
        now = self.clock()
        key = f"{original_key}-dup-{openai_batch_id}"
        with self.transaction() as con:
            if con.execute("SELECT 1 FROM batches WHERE openai_batch_id = ?", [openai_batch_id]).fetchone():
                return None
            con.execute(
                "INSERT INTO batches (batch_key, endpoint, model, phase, status, request_count, input_bytes,"
                " est_prompt_tokens, input_file_id, openai_batch_id, created_at, updated_at, duplicate_of)"
                " SELECT CAST(? AS VARCHAR), endpoint, model, 'created', CAST(? AS VARCHAR), request_count"
                ", input_bytes, est_prompt_tokens,"
                " input_file_id, CAST(? AS VARCHAR), CAST(? AS DOUBLE PRECISION), CAST(? AS DOUBLE PRECISION)"
                ", batch_key"
                " FROM batches WHERE batch_key = ?",
                [key, status, openai_batch_id, now, now, original_key],
            )
            con.execute(
                "INSERT INTO batch_members SELECT CAST(? AS VARCHAR), request_id, line_no FROM batch_members"
                " WHERE batch_key = ?",
                [key, original_key],
            )
            return self.batch(key)

    def record_duplicate_outcome(
        self, batch_key: str, outcomes: Sequence[RequestOutcome], *, max_attempts: int
    ) -> bool:
        """Ingest a duplicate batch in one transaction. Its answers are paid for, so they are used: a member
        waiting in the queue for another attempt takes its succeeded answer as that attempt; the lines of
        members answered otherwise are recorded in `duplicate_results`, costed, for the cost report."""
        now = self.clock()
        with self.transaction() as con:
            row = con.execute(
                "SELECT phase FROM batches WHERE batch_key = ? AND duplicate_of IS NOT NULL", [batch_key]
            ).fetchone()
            if row is None:
                raise LedgerError(f"unknown duplicate batch {batch_key!r}")
            if row[0] == BatchPhase.INGESTED:
                return False
            members = {
                rid
                for (rid,) in con.execute(
                    "SELECT request_id FROM batch_members WHERE batch_key = ?", [batch_key]
                ).fetchall()
            }
            by_id = {o.request_id: o for o in outcomes if o.request_id in members}
            queued = set(
                self.request_states_in(
                    con, [rid for rid, o in by_id.items() if o.outcome == Outcome.SUCCEEDED], RequestState.QUEUED
                )
            )
            used = [by_id[rid] for rid in queued]
            if used:
                self._move_requests(
                    con,
                    {RequestState.SUBMITTED: sorted(queued)},
                    batch_key=batch_key,
                    reason="answered by a duplicate batch",
                    count_attempt=True,
                )
                attempts = dict(
                    con.execute(
                        "SELECT request_id, attempts FROM requests WHERE request_id IN (SELECT unnest(?::VARCHAR[]))",
                        [sorted(queued)],
                    ).fetchall()
                )
                self._insert_results(con, [(o, attempts[o.request_id], batch_key, Tier.BATCH) for o in used], now)
                self._apply_outcomes(con, used, attempts, batch_key, max_attempts)
            extra = [o for rid, o in by_id.items() if rid not in queued and o.outcome == Outcome.SUCCEEDED]
            insert_rows(
                con,
                "duplicate_results",
                (
                    "batch_key",
                    "request_id",
                    "outcome",
                    "input_tokens",
                    "output_tokens",
                    "images",
                    "cost_usd",
                    "standard_cost_usd",
                    "recorded_at",
                ),
                [
                    (
                        batch_key,
                        o.request_id,
                        str(o.outcome),
                        o.input_tokens,
                        o.output_tokens,
                        o.images,
                        o.cost_usd,
                        o.standard_cost_usd,
                        now,
                    )
                    for o in extra
                ],
            )
            self._move_batch(con, batch_key, BatchPhase.INGESTED)
        return True

    # -- synchronous tiers and the cache -----------------------------------------------------

    def start_sync(
        self,
        request_ids: Sequence[str],
        tier: Tier,
        reason: str | None = None,
        *,
        lease_owner: str | None = None,
        lease_s: float = 3600.0,
    ) -> list[str]:
        """queued -> running for a synchronous call; `reason` replaces the tier reason only if given.

        Only requests still queued (and of a running session) start; their ids are returned. Each carries
        a lease: `lease_owner` names the process calling, and a row still running after `lease_s` (or whose
        owner died) is lost and goes back to the queue (`recover_lost`).
        """
        with self.transaction() as con:
            # Requests a cancel took, or of a session that ended meanwhile, are not started.
            cancelled = set(self.request_states_in(con, request_ids, RequestState.CANCELLED))
            ended = _ended_sessions_of(con, request_ids)
            ids = [rid for rid in request_ids if rid not in cancelled and rid not in ended]
            if not ids:
                return []
            con.execute(
                "UPDATE requests SET tier = ?, tier_reason = coalesce(?, tier_reason), lease_owner = ?,"
                " lease_until = ? WHERE request_id IN (SELECT unnest(?::VARCHAR[]))",
                [str(tier), reason, lease_owner, self.clock() + lease_s, ids],
            )
            self._move_requests(
                con,
                {RequestState.RUNNING: ids},
                batch_key=None,
                reason=reason or f"{tier} call",
                expect_from={RequestState.QUEUED},
                count_attempt=True,
            )
        return ids

    def renew_leases(self, request_ids: Sequence[str], lease_s: float) -> None:
        """Still working on them: push the leases of these running requests forward."""
        with self.transaction() as con:
            con.execute(
                "UPDATE requests SET lease_until = ?"
                " WHERE request_id IN (SELECT unnest(?::VARCHAR[])) AND state = 'running'",
                [self.clock() + lease_s, list(request_ids)],
            )

    def running_leases(
        self, *, session_ids: Iterable[str] | None = None
    ) -> list[tuple[RequestRow, str | None, float | None, int]]:
        """Running (synchronous) requests with their lease owner, lease end and estimated prompt tokens."""
        sql = (
            f"SELECT {', '.join(RequestRow.model_fields)}, lease_owner, lease_until, est_prompt_tokens"
            " FROM requests WHERE state = 'running'"
        )
        params: list[Any] = []
        if session_ids is not None:
            sql += " AND session_id IN (SELECT unnest(?::VARCHAR[]))"
            params.append(list(session_ids))
        with self.connect() as con:
            rows = con.execute(sql, params).fetchall()
        n = len(RequestRow.model_fields)
        return [(_request_from_row(row[:n]), row[n], row[n + 1], row[n + 2]) for row in rows]

    def record_lost(self, outcomes: Sequence[RequestOutcome], *, max_attempts: int) -> list[str]:
        """Running requests whose process is gone: each attempt gets a result row (its answer was lost, its
        cost estimated from the request, so the spend is not hidden) and goes back to the queue, or ends
        failed when out of attempts. Rows no longer running are left alone. Returns the ids recovered."""
        with self.transaction() as con:
            running = dict(
                con.execute(
                    "SELECT request_id, attempts FROM requests"
                    " WHERE request_id IN (SELECT unnest(?::VARCHAR[])) AND state = 'running'",
                    [[o.request_id for o in outcomes]],
                ).fetchall()
            )
            lost = [o for o in outcomes if o.request_id in running]
            tiers = dict(
                con.execute(
                    "SELECT request_id, tier FROM requests WHERE request_id IN (SELECT unnest(?::VARCHAR[]))",
                    [list(running)],
                ).fetchall()
            )
            self._insert_results(
                con, [(o, running[o.request_id], None, tiers[o.request_id]) for o in lost], self.clock()
            )
            self._requeue_or_end(
                con,
                [o.request_id for o in lost],
                RequestState.FAILED,
                None,
                "lost in flight",
                max_attempts,
                {o.request_id: o.error_message or "lost in flight" for o in lost},
                running,
            )
            con.execute(
                "UPDATE requests SET lease_owner = NULL, lease_until = NULL"
                " WHERE request_id IN (SELECT unnest(?::VARCHAR[]))",
                [[o.request_id for o in lost]],
            )
        return [o.request_id for o in lost]

    def record_sync_outcomes(
        self, outcomes: Sequence[RequestOutcome], tier: Tier, *, max_attempts: int, reason: str | None = None
    ) -> None:
        """Results of synchronous calls (or cache hits); `tier` is the tier that actually ran them."""
        now = self.clock()
        with self.transaction() as con:
            con.execute(
                "UPDATE requests SET tier = ?, tier_reason = coalesce(?, tier_reason) WHERE request_id IN"
                " (SELECT unnest(?::VARCHAR[]))",
                [str(tier), reason, [o.request_id for o in outcomes]],
            )
            attempts = dict(
                con.execute(
                    "SELECT request_id, attempts FROM requests"
                    " WHERE request_id IN (SELECT unnest(?::VARCHAR[])) AND state = 'running'",
                    [[o.request_id for o in outcomes]],
                ).fetchall()
            )
            missing = [o.request_id for o in outcomes if o.request_id not in attempts]
            lost = (
                {
                    rid
                    for (rid,) in con.execute(
                        "SELECT r.request_id FROM results r"
                        " WHERE r.request_id IN (SELECT unnest(?::VARCHAR[])) AND r.error_code = 'lost_in_flight'",
                        [missing],
                    ).fetchall()
                }
                if missing
                else set()
            )
            if set(missing) - lost:
                raise StateTransitionError(f"requests not running: {sorted(set(missing) - lost)[:5]}")
            if missing:
                # Taken back as lost by another process while this one still waited for the answer.
                log.warning(
                    "answers for %d request(s) taken back as lost were not recorded: %s", len(missing), missing[:5]
                )
            outcomes = [o for o in outcomes if o.request_id in attempts]
            self._insert_results(con, [(o, attempts[o.request_id], None, tier) for o in outcomes], now)
            self._apply_outcomes(con, list(outcomes), attempts, None, max_attempts)
            con.execute(
                "UPDATE requests SET lease_owner = NULL, lease_until = NULL"
                " WHERE request_id IN (SELECT unnest(?::VARCHAR[]))",
                [[o.request_id for o in outcomes]],
            )

    def requeue(self, request_ids: Sequence[str], *, tier: Tier, reason: str) -> None:
        """Send queued requests to another tier (fallback, hybrid choice), recording why."""
        with self.transaction() as con:
            states = dict(
                con.execute(
                    "SELECT request_id, state FROM requests WHERE request_id IN (SELECT unnest(?::VARCHAR[]))",
                    [list(request_ids)],
                ).fetchall()
            )
            bad = [rid for rid in request_ids if states.get(rid) != RequestState.QUEUED]
            if bad:
                raise StateTransitionError(f"only queued requests can change tier: {bad[:5]}")
            con.execute(
                "UPDATE requests SET tier = ?, tier_reason = ?, updated_at = ?"
                " WHERE request_id IN (SELECT unnest(?::VARCHAR[]))",
                [str(tier), reason, self.clock(), list(request_ids)],
            )

    def find_cached_results(self, body_hashes: Sequence[str]) -> dict[str, RequestOutcome]:
        """For each body hash, the first succeeded, paid-for answer to an identical body, if any."""
        with self.connect() as con:
            rows = con.execute(
                f"SELECT * FROM (SELECT q.body_hash, {_OUTCOME_COLUMNS},"
                "  row_number() OVER (PARTITION BY q.body_hash ORDER BY r.recorded_at, r.request_id) AS nth"
                "  FROM requests q JOIN results r ON r.request_id = q.request_id AND r.attempt = q.attempts"
                "  WHERE q.body_hash IN (SELECT unnest(?::VARCHAR[])) AND q.state = 'succeeded' AND r.tier != ?) f"
                " WHERE nth = 1",
                [list(body_hashes), str(Tier.CACHE)],
            ).fetchall()
        return {row[0]: _outcome_from_row(row[1:-1]) for row in rows}

    # -- reporting ---------------------------------------------------------------------------

    def check_invariants(self) -> list[str]:
        """Violations of the ledger's invariants (empty when all hold). Used by tests and asset checks."""
        problems = []
        with self.connect() as con:
            for rid, n in con.execute(
                "SELECT request_id, count(*) FROM request_events"
                " WHERE to_state IN ('succeeded','failed','expired','cancelled')"
                " GROUP BY request_id HAVING count(*) > 1"
            ).fetchall():
                problems.append(f"request {rid} reached a terminal state {n} times")
            for rid, state in con.execute(
                "SELECT request_id, state FROM requests WHERE state = 'submitted' AND batch_key IN"
                " (SELECT batch_key FROM batches WHERE phase IN ('ingested', 'abandoned'))"
            ).fetchall():
                problems.append(f"request {rid} is {state} in a finished batch")
            for bid, n in con.execute(
                "SELECT openai_batch_id, count(*) FROM batches WHERE openai_batch_id IS NOT NULL"
                " GROUP BY 1 HAVING count(*) > 1"
            ).fetchall():
                problems.append(f"remote batch {bid} recorded {n} times")
        return problems

    # -- the one place states change ---------------------------------------------------------

    def _move_requests(
        self,
        con: Connection,
        moves: dict[RequestState, Any],  # a list of ids, or an Arrow column of them
        *,
        batch_key: str | None,
        reason: str,
        expect_from: set[RequestState] | None = None,
        count_attempt: bool = False,
        errors: dict[str, str] | None = None,
    ) -> None:
        if not any(len(ids) for ids in moves.values()):
            return
        now = self.clock()
        # Set-based, in SQL over an Arrow view of each move's ids and reasons: one check, the events (read from
        # the states before the update), one update. No row per request comes back into Python.
        for to_state, ids in moves.items():
            if not len(ids):
                continue
            if errors and not isinstance(ids, list):
                ids = ids.to_pylist()  # (reasons are looked up by id)
            # the states this move may leave from
            allowed = sorted(
                str(state)
                for state, targets in REQUEST_TRANSITIONS.items()
                if to_state in targets and (not expect_from or state in expect_from)
            )
            reasons = [errors.get(rid, reason) for rid in ids] if errors else [reason] * len(ids)
            with arrow_view(con, {"id": ids, "reason": reasons}) as view:
                known = movable = 0
                if allowed:
                    in_allowed = f"r.state IN ({', '.join('?' * len(allowed))})"
                    known, movable = one_row(
                        con.execute(
                            f"SELECT count(r.request_id), coalesce(sum(CASE WHEN {in_allowed} THEN 1 ELSE 0 END), 0)"
                            f" FROM {view} v LEFT JOIN requests r ON r.request_id = v.id",
                            allowed,
                        )
                    )
                if known < len(ids) or movable < len(ids):
                    self._refuse_move(con, view, ids, to_state, set(allowed))
                con.execute(
                    "INSERT INTO request_events (request_id, event_at, from_state, to_state, batch_key, reason)"
                    " SELECT v.id, CAST(? AS DOUBLE PRECISION), r.state, CAST(? AS VARCHAR), CAST(? AS VARCHAR),"
                    f" v.reason FROM {view} v JOIN requests r ON r.request_id = v.id",
                    [now, str(to_state), batch_key],
                )
                sets = "state = ?, updated_at = ?"
                params: list[Any] = [str(to_state), now]
                if batch_key is not None:
                    sets += ", batch_key = ?"
                    params.append(batch_key)
                if count_attempt:
                    sets += ", attempts = attempts + 1"
                con.execute(f"UPDATE requests SET {sets} WHERE request_id IN (SELECT id FROM {view})", params)
        if errors:
            with arrow_view(con, {"id": list(errors), "error": list(errors.values())}) as view:
                con.execute(f"UPDATE requests SET last_error = e.error FROM {view} e WHERE requests.request_id = e.id")

    @staticmethod
    def _refuse_move(con: Connection, view: str, ids: Any, to_state: RequestState, allowed: set[str]) -> None:
        """The first of `ids` (in their order) that is unknown or may not move to `to_state`, as the error."""
        ids = ids if isinstance(ids, list) else ids.to_pylist()
        current = dict(
            con.execute(f"SELECT r.request_id, r.state FROM {view} v JOIN requests r ON r.request_id = v.id").fetchall()
        )
        for rid in ids:
            if current.get(rid) not in allowed:
                if rid not in current:
                    raise StateTransitionError(f"unknown request {rid!r}")
                raise StateTransitionError(
                    f"request {rid!r}: {RequestState(current[rid])} -> {to_state} is not allowed"
                )
        raise LedgerError(f"moving {len(ids)} requests to {to_state}: the check failed but no request is at fault")

    def _move_batch(self, con: Connection, batch_key: str, to_phase: BatchPhase, **fields: Any) -> None:
        row = con.execute("SELECT phase FROM batches WHERE batch_key = ?", [batch_key]).fetchone()
        if row is None:
            raise LedgerError(f"unknown batch {batch_key!r}")
        if to_phase not in BATCH_TRANSITIONS[BatchPhase(row[0])]:
            raise StateTransitionError(f"batch {batch_key!r}: {row[0]} -> {to_phase} is not allowed")
        sets = ", ".join(f"{name} = ?" for name in fields)
        con.execute(
            f"UPDATE batches SET phase = ?, updated_at = ?{', ' + sets if sets else ''} WHERE batch_key = ?",
            [str(to_phase), self.clock(), *fields.values(), batch_key],
        )

    def _apply_outcomes(
        self,
        con: Connection,
        outcomes: list[RequestOutcome],
        attempts: dict[str, int],
        batch_key: str | None,
        max_attempts: int,
    ) -> None:
        self._apply_outcome_rows(
            con,
            pa.array([o.request_id for o in outcomes], pa.string()),
            pa.array([str(o.outcome) for o in outcomes], pa.string()),
            pa.array([o.error_message or o.error_code for o in outcomes], pa.string()),
            attempts,
            batch_key,
            max_attempts,
        )

    def _apply_outcome_rows(
        self,
        con: Connection,
        ids: pa.Array,
        outcomes: pa.Array,
        messages: pa.Array,
        attempts: dict[str, int],
        batch_key: str | None,
        max_attempts: int,
    ) -> None:
        """Move each request by its outcome (Arrow columns: id, outcome, error text), through `_move_requests`.
        Each outcome's ids are picked out in Arrow: the successes (most of a batch) move as the Arrow column
        they are, and only the other requests' ids and error texts become Python values."""
        final = {
            Outcome.SUCCEEDED: RequestState.SUCCEEDED,
            Outcome.FAILED_PERMANENT: RequestState.FAILED,
            Outcome.CANCELLED: RequestState.CANCELLED,
        }
        moves: dict[RequestState, Any] = {}
        errors: dict[str, str] = {}
        retry_groups: dict[RequestState, list[str]] = defaultdict(list)
        for kind in pc.unique(outcomes).to_pylist():
            picked = pc.equal(outcomes, kind)
            group = ids.filter(picked)
            if kind != Outcome.SUCCEEDED:
                group = group.to_pylist()
                texts = messages.filter(picked).to_pylist()
                errors.update((rid, text or kind) for rid, text in zip(group, texts, strict=True))
            if kind in final:
                moves[final[Outcome(kind)]] = group
            else:
                retry_groups[RequestState.EXPIRED if kind == Outcome.EXPIRED else RequestState.FAILED].extend(group)
        self._move_requests(con, moves, batch_key=batch_key, reason="result", errors=errors)
        for end_state, group in retry_groups.items():
            self._requeue_or_end(con, group, end_state, batch_key, "retry", max_attempts, errors, attempts)

    def _requeue_or_end(
        self,
        con: Connection,
        ids: list[str],
        end_state: RequestState,
        batch_key: str | None,
        reason: str,
        max_attempts: int,
        errors: dict[str, str] | None = None,
        attempts: dict[str, int] | None = None,
    ) -> None:
        """Retryable requests go back to the queue until they have used `max_attempts`."""
        if not ids:
            return
        if attempts is None:
            attempts = dict(
                con.execute(
                    "SELECT request_id, attempts FROM requests WHERE request_id IN (SELECT unnest(?::VARCHAR[]))", [ids]
                ).fetchall()
            )
        # A request of a session that was cancelled (or ended) is never sent again: it ends cancelled.
        ended = _ended_sessions_of(con, ids)
        again = [rid for rid in ids if attempts[rid] < max_attempts and rid not in ended]
        done = [rid for rid in ids if attempts[rid] >= max_attempts and rid not in ended]
        errors = {rid: e for rid, e in (errors or {}).items() if rid in set(ids)}
        errors |= {rid: f"session {status}" for rid, status in ended.items()}
        self._move_requests(
            con,
            {RequestState.QUEUED: again, end_state: done, RequestState.CANCELLED: list(ended)},
            batch_key=batch_key,
            reason=reason,
            errors=errors or None,
        )

    @staticmethod
    def _insert_results(con: Connection, rows: list[tuple[RequestOutcome, int, str | None, Tier]], now: float) -> None:
        insert_rows(
            con,
            "results",
            _RESULT_COLUMNS,
            [
                (
                    o.request_id,
                    attempt,
                    batch_key,
                    str(tier),
                    str(o.outcome),
                    o.status_code,
                    orjson.dumps(o.response).decode() if o.response is not None else None,
                    o.error_code,
                    o.error_message,
                    o.input_tokens,
                    o.cached_tokens,
                    o.output_tokens,
                    o.images,
                    o.cost_usd,
                    o.standard_cost_usd,
                    o.price_version,
                    now,
                )
                for o, attempt, batch_key, tier in rows
            ],
        )

    @staticmethod
    def _insert_result_rows(
        con: Connection,
        rows: list[tuple],
        attempts: dict[str, int],
        batch_key: str | None,
        tier: Tier | str,
        now: float,
    ) -> tuple[pa.Array, pa.Array, pa.Array]:
        """Rows of a `ResultTable` (its `STORED` columns) into `results` through Arrow, `RESULT_CHUNK` rows at
        a time, emptying `rows` as they go in (Python's copy shrinks while DuckDB's grows). Costs go in as
        integer 1e-12 USD units and become the exact DECIMAL in SQL; responses as the JSON text they are.

        Returns what the state moves read of the rows, taken from the same Arrow columns (no other pass over
        the rows): the ids, the outcomes and the error texts (the message, else the code), in the rows' order."""
        pool = pa.system_memory_pool()  # gives memory back at once (the default pool keeps it for reuse)
        types = (
            pa.string(),
            pa.string(),
            pa.int32(),
            pa.string(),
            pa.string(),
            pa.string(),
            pa.int64(),
            pa.int64(),
            pa.int64(),
            pa.int32(),
            pa.int64(),
            pa.int64(),
            pa.string(),
        )
        # The table's own stored columns; the two in 1e-12 USD units become the DECIMAL costs in SQL.
        names = tuple(f"_{name}" if name.endswith("_units") else name for name in ResultTable.STORED)
        kept: list[tuple[pa.Array, pa.Array, pa.Array]] = []  # per chunk, last chunk first
        while rows:  # consumed from the end: each chunk's responses are freed once DuckDB has its copy
            chunk = rows[-RESULT_CHUNK:]
            del rows[-RESULT_CHUNK:]
            n = len(chunk)
            # one list per column, straight into Arrow: twice as fast as transposing the rows with zip (a slice of
            # each row, a tuple per column), and no tuples left for the garbage collector to walk
            columns = {
                name: string_column([row[at] for row in chunk])  # the long text: joined in one piece
                if name == "response"
                else pa.array([row[at] for row in chunk], kind, memory_pool=pool)
                for at, (name, kind) in enumerate(zip(names, types, strict=True))
            }
            columns["attempt"] = pa.array([attempts[row[0]] for row in chunk], pa.int32())
            del chunk
            columns |= {
                "batch_key": pa.array([batch_key] * n, pa.string()),
                "tier": pa.array([str(tier)] * n),
                "recorded_at": pa.array([now] * n, pa.float64()),
            }
            insert_columns(
                con,
                "results",
                columns,
                select={
                    "cost_usd": f"_cost_units::DECIMAL(18, 0) * {_UNIT}",
                    "standard_cost_usd": f"_standard_cost_units::DECIMAL(18, 0) * {_UNIT}",
                },
            )
            kept.append(
                (
                    columns["request_id"],
                    columns["outcome"],
                    _message_or_code(columns["error_message"], columns["error_code"]),
                )
            )
            del columns
            _release_freed_memory()  # the chunk's responses, freed by Python, back to the system as DuckDB grows
        kept.reverse()
        return tuple(
            pa.concat_arrays([chunk[at] for chunk in kept]) if kept else pa.array([], pa.string()) for at in range(3)
        )


def _message_or_code(message: pa.Array, code: pa.Array) -> pa.Array:
    """`message or code` of each row, in Arrow (an empty message counts as none, as `or` has it)."""
    return pc.coalesce(pc.if_else(pc.equal(message, ""), pa.scalar(None, pa.string()), message), code)


def _release_freed_memory() -> None:
    """Give memory Python has freed back to the system (glibc's `malloc_trim`; elsewhere nothing). Freed blocks
    stay in the process otherwise, so an ingest would peak at Python's copy of a batch's responses plus DuckDB's:
    trimming after each chunk lowered the peak of a 50,000-outcome ingest by about 30 MB (docs/PERFORMANCE.md)."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None


_MALLOC_TRIM = _malloc_trim()


# Requests of a session that has ended (cancelled, failed, completed) are never sent: they are not the queue.
_NOT_OF_AN_ENDED_SESSION = (
    "NOT EXISTS (SELECT 1 FROM sessions s WHERE s.session_id = requests.session_id AND s.status != 'running')"
)
_REQUEST_INSERT_COLUMNS = (
    "request_id",
    "session_id",
    "operation",
    "endpoint",
    "model",
    "tier",
    "tier_reason",
    "iteration",
    "round",
    "body",
    "body_hash",
    "est_prompt_tokens",
    "line_bytes",
    "state",
    "attempts",
    "created_at",
    "updated_at",
)
_EVENT_COLUMNS = ("request_id", "event_at", "from_state", "to_state", "batch_key", "reason")
_RESULT_COLUMNS = (
    "request_id",
    "attempt",
    "batch_key",
    "tier",
    "outcome",
    "status_code",
    "response",
    "error_code",
    "error_message",
    "input_tokens",
    "cached_tokens",
    "output_tokens",
    "images",
    "cost_usd",
    "standard_cost_usd",
    "price_version",
    "recorded_at",
)


def _split_round_keys(con: Connection) -> None:
    """Ledgers written before rounds were columns kept them as one `i{iteration}-{round}` key: split it, once."""
    if con.execute(
        "SELECT 1 FROM information_schema.columns WHERE table_name = 'requests' AND column_name = 'round_key'"
    ).fetchone():
        con.execute(
            "UPDATE requests SET iteration = CAST(regexp_extract(round_key, '^i([0-9]+)-', 1) AS INTEGER),"
            " round = regexp_extract(round_key, '^i[0-9]+-(.+)$', 1) WHERE round_key IS NOT NULL"
        )
        con.execute("ALTER TABLE requests DROP COLUMN round_key")


# Stores whose schema this process has created or migrated, by identity: a file deleted and created again
# at the same path (tests, a user starting over) is migrated again.
_MIGRATED: set[tuple[str, int, int]] = set()


def _request_from_row(row: tuple) -> RequestRow:
    data = dict(zip(RequestRow.model_fields, row, strict=True))
    return RequestRow(**data | {"body": orjson.loads(data["body"])})


def _ended_sessions(con: Connection, session_ids: Iterable[str]) -> set[str]:
    """Which of these sessions exist and are no longer running."""
    return {
        sid
        for (sid,) in con.execute(
            "SELECT session_id FROM sessions WHERE session_id IN (SELECT unnest(?::VARCHAR[])) AND status != 'running'",
            [list(session_ids)],
        ).fetchall()
    }


def _ended_sessions_of(con: Connection, request_ids: Iterable[str]) -> dict[str, str]:
    """Request id -> its session's status, for the requests whose session is no longer running."""
    return dict(
        con.execute(
            "SELECT q.request_id, s.status FROM requests q JOIN sessions s USING (session_id)"
            " WHERE q.request_id IN (SELECT unnest(?::VARCHAR[])) AND s.status != 'running'",
            [list(request_ids)],
        ).fetchall()
    )


# Result rows go into DuckDB this many at a time: large enough that per-statement costs vanish, small
# enough that the Arrow copy of a chunk stays a few MB.
RESULT_CHUNK = 10_000
# One 1e-12 USD unit as an exact DECIMAL literal: integer units times this are the ledger's DECIMAL(24, 12).
_UNIT = "0.000000000001"


def _batch_from_row(row: tuple) -> BatchRecord:
    data = dict(zip(BatchRecord.model_fields, row, strict=True))
    data["errors"] = orjson.loads(data["errors"]) if data["errors"] else None
    return BatchRecord(**data)


def _outcome_from_row(row: tuple) -> RequestOutcome:
    (rid, outcome, status_code, response, error_code, error_message, inp, cached, out, images, cost, std, version) = row
    return RequestOutcome(
        request_id=rid,
        outcome=Outcome(outcome),
        status_code=status_code,
        response=orjson.loads(response) if response else None,
        error_code=error_code,
        error_message=error_message,
        input_tokens=inp,
        cached_tokens=cached,
        output_tokens=out,
        images=images,
        cost_usd=cost,
        standard_cost_usd=std,
        price_version=version,
    )
