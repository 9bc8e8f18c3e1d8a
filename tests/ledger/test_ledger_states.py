"""The request and batch state machines, as data: what may follow what."""

from __future__ import annotations

from batch_pipeline.ledger.states import (
    BATCH_TRANSITIONS,
    REQUEST_TRANSITIONS,
    TERMINAL_REQUEST_STATES,
    BatchPhase,
    RequestState,
)


def test_every_state_has_a_row_and_terminal_request_states_have_no_way_out():
    assert set(REQUEST_TRANSITIONS) == set(RequestState)
    assert set(BATCH_TRANSITIONS) == set(BatchPhase)
    for state in TERMINAL_REQUEST_STATES:
        assert REQUEST_TRANSITIONS[state] == frozenset()
    assert BATCH_TRANSITIONS[BatchPhase.INGESTED] == BATCH_TRANSITIONS[BatchPhase.ABANDONED] == frozenset()


def test_requests_go_back_to_the_queue_only_from_a_batch_or_a_sync_call():
    back_to_queue = {s for s, targets in REQUEST_TRANSITIONS.items() if RequestState.QUEUED in targets}
    assert back_to_queue == {RequestState.SUBMITTED, RequestState.RUNNING}
    assert RequestState.SUCCEEDED not in REQUEST_TRANSITIONS[RequestState.QUEUED]  # never succeed without running
    assert RequestState.EXPIRED not in REQUEST_TRANSITIONS[RequestState.QUEUED]
    # a created batch can only be ingested: it can no longer be abandoned or re-uploaded
    assert BATCH_TRANSITIONS[BatchPhase.CREATED] == {BatchPhase.INGESTED}
    assert (
        BatchPhase.CREATED in BATCH_TRANSITIONS[BatchPhase.INTENT]
    )  # re-attach after a crash before upload was recorded
