"""Session records in the ledger: the search state after every step, candidates, rounds, costs.

Mixed into `Ledger`; the search state itself is opaque JSON here (the ledger imports no search code).
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import orjson
from pydantic import BaseModel

from batch_pipeline.errors import LedgerError
from batch_pipeline.ledger.db import LedgerCore, insert_rows


class SessionRow(BaseModel):
    session_id: str
    user_prompt: str
    config: dict[str, Any]
    status: str
    iteration: int
    next_round: str | None
    winner_id: str | None
    error: str | None
    deadline_at: float
    created_at: float
    updated_at: float


class CandidateRow(BaseModel):
    session_id: str
    candidate_id: str
    iteration: int
    parent_id: str | None = None
    what: str | None = None
    how: str | None = None
    combined: str | None = None
    critique: str | None = None
    image_path: str | None = None
    failed: bool = False
    score: float | None = None
    rank: int | None = None
    survived: bool | None = None
    votes_won: int = 0
    votes_lost: int = 0


class RoundRow(BaseModel):
    session_id: str
    iteration: int
    round: str
    calls: int
    succeeded: int
    failed: int
    input_tokens: int
    output_tokens: int


class SessionSave(BaseModel):
    """One session's state after a step, as `save_sessions` writes it."""

    session_id: str
    state_json: str
    status: str
    iteration: int
    next_round: str | None
    winner_id: str | None
    candidates: list[CandidateRow]
    rounds: list[RoundRow]
    error: str | None = None


_SESSION_COLUMNS = ", ".join(SessionRow.model_fields)


class SessionRecords(LedgerCore):
    """Ledger methods for beam-search sessions (see `schema.sql`: sessions, candidates, rounds)."""

    def create_session(
        self,
        session_id: str,
        user_prompt: str,
        config: dict[str, Any],
        state_json: str,
        deadline_at: float,
        *,
        next_round: str,
    ) -> bool:
        """Record a new session; False (and no change) if it exists already."""
        now = self.clock()
        with self.transaction() as con:
            if con.execute("SELECT 1 FROM sessions WHERE session_id = ?", [session_id]).fetchone():
                return False
            con.execute(
                "INSERT INTO sessions (session_id, user_prompt, config, status, state, iteration, next_round,"
                " deadline_at, created_at, updated_at) VALUES (?, ?, ?, 'running', ?, 0, ?, ?, ?, ?)",
                [session_id, user_prompt, orjson.dumps(config).decode(), state_json, next_round, deadline_at, now, now],
            )
        return True

    def save_sessions(self, saves: Sequence[SessionSave]) -> set[str]:
        """Replace each session's state and its flat records, all in one transaction and a fixed number of
        statements (a tick that steps a thousand sessions saves them together; a step is all or nothing).

        Only sessions still `running` are written: a step that raced a cancel writes nothing for that
        session. Returns the ids saved."""
        if not saves:
            return set()
        with self.transaction() as con:
            saved = {
                sid
                for (sid,) in con.execute(
                    "UPDATE sessions SET state = v.state, status = v.status, iteration = v.iteration,"
                    " next_round = v.next_round, winner_id = v.winner_id, error = v.error, updated_at = ?"
                    " FROM (SELECT unnest(?::VARCHAR[]) AS session_id, unnest(?::JSON[]) AS state,"
                    "  unnest(?::VARCHAR[]) AS status, unnest(?::INTEGER[]) AS iteration,"
                    "  unnest(?::VARCHAR[]) AS next_round,"
                    "  unnest(?::VARCHAR[]) AS winner_id, unnest(?::VARCHAR[]) AS error) v"
                    " WHERE sessions.session_id = v.session_id AND sessions.status = 'running'"
                    " RETURNING sessions.session_id",
                    [
                        self.clock(),
                        *map(
                            list,
                            zip(
                                *(
                                    (
                                        x.session_id,
                                        x.state_json,
                                        x.status,
                                        x.iteration,
                                        x.next_round,
                                        x.winner_id,
                                        x.error,
                                    )
                                    for x in saves
                                ),
                                strict=True,
                            ),
                        ),
                    ],
                ).fetchall()
            }
            if not saved:
                return saved
            ids = [sid for sid in (x.session_id for x in saves) if sid in saved]
            con.execute("DELETE FROM candidates WHERE session_id IN (SELECT unnest(?::VARCHAR[]))", [ids])
            con.execute("DELETE FROM rounds WHERE session_id IN (SELECT unnest(?::VARCHAR[]))", [ids])
            insert_rows(
                con,
                "candidates",
                tuple(CandidateRow.model_fields),
                [tuple(c.model_dump().values()) for x in saves if x.session_id in saved for c in x.candidates],
            )
            insert_rows(
                con,
                "rounds",
                (*RoundRow.model_fields, "seq", "cost_usd", "standard_cost_usd"),
                [
                    (*r.model_dump().values(), seq, 0, 0)
                    for x in saves
                    if x.session_id in saved
                    for seq, r in enumerate(x.rounds)
                ],
            )
            # Exact costs per round come from the results rows, not from the state's float sums.
            con.execute(
                "UPDATE rounds SET cost_usd = c.cost, standard_cost_usd = c.standard FROM ("
                " SELECT session_id, iteration, round, sum(cost_usd) AS cost, sum(standard_cost_usd) AS standard"
                " FROM spend WHERE session_id IN (SELECT unnest(?::VARCHAR[])) GROUP BY 1, 2, 3) c"
                " WHERE rounds.session_id = c.session_id AND c.iteration = rounds.iteration AND c.round = rounds.round",
                [ids],
            )
        return saved

    def end_session(
        self, session_id: str, status: str, error: str | None = None, *, winner_id: str | None = None
    ) -> bool:
        """running -> `status` (failed, or stopped for a reason) in one transaction with its queued requests,
        which end cancelled; False if it had ended already. A stopped session names its best candidate so far."""
        with self.transaction() as con:
            ended = bool(
                con.execute(
                    "UPDATE sessions SET status = ?, error = ?, updated_at = ?, winner_id = coalesce(?, winner_id)"
                    " WHERE session_id = ? AND status = 'running' RETURNING session_id",
                    [status, error, self.clock(), winner_id, session_id],
                ).fetchall()
            )
            if ended:
                self._cancel_queued(con, session_id, f"session {status}: {error}")
            return ended

    def current_round_starts(self) -> list[tuple[SessionRow, float]]:
        """Every running session whose current round is queued, with when that round was first queued
        (one query for all of them, where a per-session look cost a query each)."""
        columns = ", ".join(f"s.{c.strip()}" for c in _SESSION_COLUMNS.split(","))
        with self.connect() as con:
            rows = con.execute(
                f"SELECT {columns}, q.started FROM sessions s JOIN ("
                "  SELECT session_id, iteration, round, min(created_at) AS started FROM requests"
                "  GROUP BY session_id, iteration, round) q"
                "  ON q.session_id = s.session_id AND q.iteration = s.iteration AND q.round = s.next_round"
                " WHERE s.status = 'running' ORDER BY s.created_at, s.session_id"
            ).fetchall()
        return [(_session_from_row(row[:-1]), row[-1]) for row in rows]

    def session_state_json(self, session_id: str) -> str:
        with self.connect() as con:
            row = con.execute("SELECT state FROM sessions WHERE session_id = ?", [session_id]).fetchone()
        if row is None:
            raise LedgerError(f"unknown session {session_id!r}")
        return row[0]

    def sessions_with_state(self, session_ids: Sequence[str]) -> dict[str, tuple[SessionRow, str]]:
        """Several sessions' rows and state JSON in one query."""
        with self.connect() as con:
            rows = con.execute(
                f"SELECT {_SESSION_COLUMNS}, state FROM sessions WHERE session_id IN (SELECT unnest(?::VARCHAR[]))",
                [list(session_ids)],
            ).fetchall()
        return {row[0]: (_session_from_row(row[:-1]), row[-1]) for row in rows}

    def session(self, session_id: str) -> SessionRow | None:
        with self.connect() as con:
            row = con.execute(f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE session_id = ?", [session_id]).fetchone()
        return _session_from_row(row) if row else None

    def sessions(self, status: str | None = None) -> list[SessionRow]:
        sql, params = f"SELECT {_SESSION_COLUMNS} FROM sessions", []
        if status is not None:
            sql += " WHERE status = ?"
            params.append(status)
        with self.connect() as con:
            return [_session_from_row(r) for r in con.execute(sql + " ORDER BY created_at", params).fetchall()]

    def session_rounds(self, session_id: str) -> list[dict[str, Any]]:
        with self.connect() as con:
            cur = con.execute("SELECT * FROM rounds WHERE session_id = ? ORDER BY seq, iteration", [session_id])
            names = [d[0] for d in cur.description]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def session_candidates(self, session_id: str) -> list[CandidateRow]:
        return self.candidates_of([session_id]).get(session_id, [])

    def candidates_of(self, session_ids: Sequence[str]) -> dict[str, list[CandidateRow]]:
        """Several sessions' candidates in one query, each session's by iteration, then rank."""
        with self.connect() as con:
            cur = con.execute(
                f"SELECT {', '.join(CandidateRow.model_fields)} FROM candidates"
                " WHERE session_id IN (SELECT unnest(?::VARCHAR[]))"
                " ORDER BY session_id, iteration, rank NULLS LAST, candidate_id",
                [list(session_ids)],
            )
            found: dict[str, list[CandidateRow]] = {}
            for row in cur.fetchall():
                candidate = CandidateRow(**dict(zip(CandidateRow.model_fields, row, strict=True)))
                found.setdefault(candidate.session_id, []).append(candidate)
            return found

    def session_costs(self, session_id: str) -> dict[str, dict[str, Decimal | int]]:
        """Per tier: calls, tokens, actual and standard-tier cost of a session's requests. Lines of duplicate
        batches (paid for, answer not needed) are their own `duplicate` line; answers lost in flight, whose
        cost is estimated, are the `lost` line."""
        with self.connect() as con:
            rows = con.execute(
                "SELECT tier, count(*), sum(input_tokens), sum(output_tokens), sum(images), sum(cost_usd),"
                " sum(standard_cost_usd) FROM spend WHERE session_id = ?"
                "  AND (outcome = 'succeeded' OR tier IN ('lost', 'duplicate')) GROUP BY 1 ORDER BY 1",
                [session_id],
            ).fetchall()
        return {
            tier: {
                "calls": n,
                "input_tokens": int(i or 0),
                "output_tokens": int(o or 0),
                "images": int(im or 0),
                "cost_usd": Decimal(c or 0),
                "standard_cost_usd": Decimal(s or 0),
            }
            for tier, n, i, o, im, c, s in rows
        }


def _session_from_row(row: tuple) -> SessionRow:
    data = dict(zip(SessionRow.model_fields, row, strict=True))
    return SessionRow(**data | {"config": orjson.loads(data["config"])})
