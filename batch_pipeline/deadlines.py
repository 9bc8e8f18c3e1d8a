"""Deadlines that hold: a per-round deadline planned from the session's deadline and the rounds left, and
the enforcement — a batch still running past its round's deadline is cancelled, its finished lines kept,
the rest sent to flex or standard (BATCH_FALLBACK_TO_STANDARD) with the reason on every request.

Framework-free: `Driver.tick` calls `enforce_round_deadlines` for the sessions it owns (Dagster's runs call
the same function); the ledger finishes the job when the cancelled batch is ingested (`deadline_tier`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from batch_pipeline.batching.lifecycle import BatchLifecycle
from batch_pipeline.batching.pricing import PriceCatalog
from batch_pipeline.estimates import round_model, rounds_after
from batch_pipeline.ledger import Ledger
from batch_pipeline.ledger.states import BatchPhase
from batch_pipeline.providers.tier_policy import TierPolicy
from batch_pipeline.search import SearchParams
from batch_pipeline.vocabulary import ENDED_STATUSES, RoundId, Tier

log = logging.getLogger(__name__)

# Time kept back from the per-round plan for finishing a late round synchronously: 10% of what is
# left, at most 15 minutes, so the last round's fallback still ends before the session's deadline.
RESERVE_FRACTION = 0.1
MAX_RESERVE_S = 15 * 60


def round_deadline(*, round_started_at: float, session_deadline_at: float, rounds_left: int) -> float:
    """The time by which a round that started at `round_started_at` must be done: an equal share of the
    time left (less the reserve) for it and every round after it."""
    left = max(0.0, session_deadline_at - round_started_at)
    usable = left - min(MAX_RESERVE_S, RESERVE_FRACTION * left)
    return round_started_at + usable / max(1, rounds_left)


@dataclass
class DeadlineAction:
    session_id: str
    round_id: RoundId
    reason: str
    cancelled_batches: list[str]
    moved_queued: int


def enforce_round_deadlines(
    ledger: Ledger,
    manager: BatchLifecycle,
    policy: TierPolicy,
    catalog: PriceCatalog,
    *,
    session_ids: Sequence[str] | None,
    now: Callable[[], float],
) -> list[DeadlineAction]:
    """For every running session (of `session_ids`, or all) whose current round is past its deadline:
    its batch-tier queue moves to the fallback tier, and its batches still running are cancelled (once;
    what never ran is re-queued on that tier when the batch is ingested)."""
    wanted = set(session_ids) if session_ids is not None else None
    actions, planned = [], {}
    for row, started in ledger.current_round_starts():
        if (wanted is not None and row.session_id not in wanted) or row.next_round is None:
            continue
        params = SearchParams.model_validate(row.config["params"])
        left = rounds_after(params, row.iteration, row.next_round)
        if not left:
            continue
        round_id = RoundId(row.iteration, row.next_round)
        due = round_deadline(round_started_at=started, session_deadline_at=row.deadline_at, rounds_left=len(left))
        planned[row.session_id] = due
        if now() < due:
            continue
        model, _endpoint = round_model(params, row.next_round)
        tier = policy.deadline_tier(model, catalog)
        reason = (
            f"deadline: round {round_id} was due by {_hhmm(due)} (session deadline {_hhmm(row.deadline_at)}, "
            f"{len(left)} rounds left); its batch was cancelled and the rest runs on {tier}"
        )
        queued = [r.request_id for r in ledger.queued_rows(tier=Tier.BATCH, session_id=row.session_id)]
        if queued:
            ledger.requeue(queued, tier=tier, reason=reason)
        cancelled = []
        for batch, _exclusive in ledger.batches_of_session(row.session_id, in_flight=True):
            # A shared batch is cancelled too: the deadline holds; the other sessions' unrun lines move on the same way.
            if batch.phase != BatchPhase.CREATED or batch.status in ENDED_STATUSES or batch.status == "cancelling":
                continue
            ledger.mark_deadline_cancel(batch.batch_key, tier=str(tier), reason=reason)  # first reason kept
            manager.cancel(batch.batch_key)  # again on a later tick if this one was lost: cancel is idempotent
            cancelled.append(batch.batch_key)
        if queued or cancelled:
            log.warning(
                "session %s: %s (%d queued moved, batches cancelled: %s)",
                row.session_id,
                reason,
                len(queued),
                cancelled or "none",
            )
            actions.append(DeadlineAction(row.session_id, round_id, reason, cancelled, len(queued)))
    ledger.set_round_deadlines(planned)  # so a sensor that only reads knows when to call this again
    return actions


def _hhmm(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%H:%M:%S UTC")
