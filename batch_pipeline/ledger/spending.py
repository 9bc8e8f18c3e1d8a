"""Money and time as the ledger saw them: the three cost figures, observed batch turnaround, output sizes.

Mixed into `Ledger` (read-mostly; the writes mark a batch cancelled at its round's deadline and record when
each session's round is due). The
estimates (`estimates.py`) and deadlines (`deadlines.py`) read their history from here.
"""

from __future__ import annotations

from decimal import Decimal
from statistics import median

from batch_pipeline.ledger.db import Connection, LedgerCore, one_row
from batch_pipeline.records import CostFigures
from batch_pipeline.vocabulary import RoundId


def cost_figures_on(con: Connection, session_id: str | None = None) -> CostFigures:
    """Paid; what the standard tier would have charged for the calls actually made (cache hits are no call);
    what the cache avoided (cache hits at the standard price). Duplicate lines are paid calls. Over the `spend`
    view, on an open connection (the ledger's or a read-only reader's)."""
    where, params = ("WHERE session_id = ?", [session_id]) if session_id is not None else ("", [])
    paid, standard, avoided, hits, calls, unpriced = one_row(
        con.execute(
            "SELECT coalesce(sum(cost_usd) FILTER (WHERE counted_tier != 'cache'), 0),"
            " coalesce(sum(standard_cost_usd) FILTER (WHERE counted_tier != 'cache'), 0),"
            " coalesce(sum(standard_cost_usd) FILTER (WHERE counted_tier = 'cache'), 0),"
            " count(*) FILTER (WHERE counted_tier = 'cache' AND outcome = 'succeeded'),"
            " count(*) FILTER (WHERE counted_tier != 'cache' AND (outcome = 'succeeded' OR tier = 'duplicate')),"
            " count(*) FILTER (WHERE unpriced)"
            f" FROM spend {where}",
            params,
        )
    )
    return CostFigures(
        paid=Decimal(paid),
        standard_for_calls=Decimal(standard),
        cache_avoided=Decimal(avoided),
        cache_hits=hits,
        calls=calls,
        unpriced_calls=unpriced,
    )


class SpendingRecords(LedgerCore):
    """Ledger methods for costs and turnaround (see `schema.sql`: results, duplicate_results, batch_turnaround)."""

    def cost_figures(self, *, session_id: str | None = None) -> CostFigures:
        """The three cost figures of a session, or of the whole ledger (`cost_figures_on`)."""
        with self.connect() as con:
            return cost_figures_on(con, session_id)

    def mark_deadline_cancel(self, batch_key: str, *, tier: str, reason: str) -> bool:
        """Record that we cancel this batch at its round's deadline; its unrun members then go to `tier`.
        False if it was marked already (the cancel is sent once)."""
        with self.transaction() as con:
            return bool(
                con.execute(
                    "UPDATE batches SET deadline_tier = ?, deadline_reason = ?, updated_at = ?"
                    " WHERE batch_key = ? AND deadline_tier IS NULL RETURNING batch_key",
                    [tier, reason, self.clock(), batch_key],
                ).fetchall()
            )

    def set_round_deadlines(self, due: dict[str, float]) -> None:
        """Record when each session's current round is due (only rows whose value changed are written)."""
        if not due:
            return
        with self.transaction() as con:
            con.execute(
                "UPDATE sessions s SET round_due_at = d.due FROM (SELECT unnest(?::VARCHAR[]) AS sid,"
                " unnest(?::DOUBLE PRECISION[]) AS due) d"
                " WHERE s.session_id = d.sid AND s.round_due_at IS DISTINCT FROM d.due",
                [list(due), list(due.values())],
            )

    def batches_cancelled_at_deadline(self, batch_keys: list[str]) -> set[str]:
        if not batch_keys:
            return set()
        with self.connect() as con:
            return {
                k
                for (k,) in con.execute(
                    "SELECT batch_key FROM batches"
                    " WHERE batch_key IN (SELECT unnest(?::VARCHAR[])) AND deadline_tier IS NOT NULL",
                    [batch_keys],
                ).fetchall()
            }

    def observed_turnaround(self) -> dict[tuple[str, str], tuple[float, int]]:
        """(model, endpoint) -> (median seconds from create to completed, number of batches observed)."""
        with self.connect() as con:
            rows = con.execute(
                "SELECT model, endpoint, array_agg(seconds) FROM batch_turnaround GROUP BY 1, 2"
            ).fetchall()
        return {(model, endpoint): (float(median(seconds)), len(seconds)) for model, endpoint, seconds in rows}

    def observed_output_tokens(self) -> dict[tuple[str, str], tuple[float, int]]:
        """(operation, model) -> (mean output tokens of answered calls, how many): the estimates' history."""
        with self.connect() as con:
            rows = con.execute(
                "SELECT q.operation, q.model, avg(r.output_tokens), count(*)"
                " FROM results r JOIN requests q USING (request_id)"
                " WHERE r.outcome = 'succeeded' AND r.tier != 'cache' AND r.price_version NOT LIKE 'estimate:%'"
                " GROUP BY 1, 2"
            ).fetchall()
        return {(op, model): (float(mean), int(n)) for op, model, mean, n in rows}

    def round_started_at(self, session_id: str, round_id: RoundId) -> float | None:
        """When a session's round was first queued (None: not yet)."""
        with self.connect() as con:
            (started,) = one_row(
                con.execute(
                    "SELECT min(created_at) FROM requests WHERE session_id = ? AND iteration = ? AND round = ?",
                    [session_id, *round_id],
                )
            )
        return started
