"""The request and batch state machines, written down once as data.

`Ledger` checks every transition against these tables; nothing else changes a state.
"""

from __future__ import annotations

from enum import StrEnum


class RequestState(StrEnum):
    QUEUED = "queued"  # waiting for a batch (or a synchronous call)
    SUBMITTED = "submitted"  # a member of a batch that has not been ingested yet
    RUNNING = "running"  # a synchronous (standard/flex) call is in flight
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELLED = "cancelled"


TERMINAL_REQUEST_STATES = frozenset(
    {RequestState.SUCCEEDED, RequestState.FAILED, RequestState.EXPIRED, RequestState.CANCELLED}
)

REQUEST_TRANSITIONS: dict[RequestState, frozenset[RequestState]] = {
    RequestState.QUEUED: frozenset(
        {RequestState.SUBMITTED, RequestState.RUNNING, RequestState.CANCELLED, RequestState.FAILED}
    ),
    # back to QUEUED: expired or retryable rows are re-queued for another attempt (or another tier)
    RequestState.SUBMITTED: frozenset({RequestState.QUEUED, *TERMINAL_REQUEST_STATES}),
    RequestState.RUNNING: frozenset({RequestState.QUEUED, *TERMINAL_REQUEST_STATES}),
    **{state: frozenset() for state in TERMINAL_REQUEST_STATES},
}


class BatchPhase(StrEnum):
    """Our side of a batch. The remote status (validating ... completed) is tracked separately."""

    INTENT = "intent"  # members chosen and persisted; nothing sent yet
    UPLOADED = "uploaded"  # input file uploaded; batch not known to be created
    CREATED = "created"  # remote batch id recorded; polling
    INGESTED = "ingested"  # terminal: results mapped back, members moved on
    ABANDONED = "abandoned"  # terminal: never created (e.g. rejected input); members re-queued


BATCH_TRANSITIONS: dict[BatchPhase, frozenset[BatchPhase]] = {
    BatchPhase.INTENT: frozenset({BatchPhase.UPLOADED, BatchPhase.CREATED, BatchPhase.ABANDONED}),
    BatchPhase.UPLOADED: frozenset({BatchPhase.CREATED, BatchPhase.ABANDONED}),
    BatchPhase.CREATED: frozenset({BatchPhase.INGESTED}),
    BatchPhase.INGESTED: frozenset(),
    BatchPhase.ABANDONED: frozenset(),
}
