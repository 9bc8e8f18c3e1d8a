"""The sensors' decisions as plain functions: attempts, due steps, flushes, polls and the cursor."""

from __future__ import annotations

from batch_pipeline.batching.polling import PollPolicy
from batch_pipeline.defs.decisions import (
    MAX_RUN_ATTEMPTS,
    BatchCursor,
    PriorRun,
    due_for_poll,
    ended_batches,
    flush_due,
    ingest_base_key,
    next_attempt,
    record_polls,
    step_due,
    tick_due,
)
from batch_pipeline.ledger.reader import QueueState, SessionRound, WatchedBatch


def runs(**by_key: PriorRun):
    return lambda key: by_key.get(key)


def test_a_new_key_starts_at_attempt_zero_and_a_finished_run_earns_the_next():
    assert next_attempt("k", runs(), snapshot_at=100) == 0
    assert next_attempt("k", runs(**{"k:a0": PriorRun("finished", 50)}), snapshot_at=100) == 1


def test_a_run_in_progress_or_finished_after_the_snapshot_is_waited_for():
    assert next_attempt("k", runs(**{"k:a0": PriorRun("in_progress")}), snapshot_at=100) is None
    # It may have done the work after the ledger was read: a second run now could do it twice.
    assert next_attempt("k", runs(**{"k:a0": PriorRun("finished", 101)}), snapshot_at=100) is None


def test_a_retry_step_that_succeeded_is_not_repeated():
    done = runs(**{"k:a0": PriorRun("finished", 50, succeeded=True)})
    assert next_attempt("k", done, snapshot_at=100, again_after_success=False) is None
    failed = runs(**{"k:a0": PriorRun("finished", 50, succeeded=False)})
    assert next_attempt("k", failed, snapshot_at=100, again_after_success=False) == 1
    assert step_due(SessionRound("s", 0, "text", 4, 4, 1)).again_after_success is False


def test_attempts_stop_after_the_limit():
    failed = {f"k:a{i}": PriorRun("finished", 1) for i in range(MAX_RUN_ATTEMPTS)}
    assert next_attempt("k", runs(**failed), snapshot_at=100) is None


def test_step_phases():
    r = SessionRound("s", 1, "image", requests=0, pending=0, requeued_attempts=0)
    assert step_due(r).base_key == "s:i1:image:queue"
    assert step_due(SessionRound("s", 1, "image", 4, 0, 0)).base_key == "s:i1:image:apply"
    assert step_due(SessionRound("s", 1, "image", 4, 2, 1)).base_key == "s:i1:image:retry1"
    assert step_due(SessionRound("s", 1, "image", 4, 2, 0)) is None


def test_flush_by_size_or_age_only_in_deferred_mode_and_resume_always():
    queue = QueueState(queued=5, oldest_queued_at=100.0, half_sent=())
    kwargs = {"max_requests": 10, "max_age_s": 30}
    assert flush_due(queue, mode="deferred", now=120, **kwargs) is None
    assert flush_due(queue, mode="deferred", now=130, **kwargs).base_key == "flush:q100.000000-5"
    assert flush_due(QueueState(10, 100.0, ()), mode="deferred", now=101, **kwargs).reason == "10 queued >= 10"
    assert flush_due(queue, mode="immediate", now=1000, **kwargs) is None
    resume = flush_due(QueueState(0, None, ("bpb_1",)), mode="immediate", now=0, **kwargs)
    assert resume.base_key.startswith("flush:resume-") and "half-sent" in resume.reason


def watched(n: int, created_at: float = 1000.0, status: str | None = "in_progress") -> list[WatchedBatch]:
    return [WatchedBatch(f"key{i}", f"batch_{i}", created_at, status) for i in range(n)]


def test_polls_follow_each_batch_s_backoff_and_ended_batches_are_not_polled():
    policy = PollPolicy(initial_s=10, multiplier=2, jitter=0)
    cursor = BatchCursor()
    batches = watched(3)
    assert due_for_poll(batches, cursor, policy, now=1005) == []
    assert len(due_for_poll(batches, cursor, policy, now=1010)) == 3
    record_polls(cursor, batches, batches, {"batch_0": "in_progress", "batch_1": "completed"}, now=1010)
    assert cursor.batches["batch_0"].polls == 1 and cursor.batches["batch_1"].ended_status == "completed"
    # batch_0 polled once: next after 20 s; batch_1 ended; batch_2 missing from `seen` still counts its poll.
    assert [b.openai_batch_id for b in due_for_poll(batches, cursor, policy, now=1029)] == []
    assert [b.openai_batch_id for b in due_for_poll(batches, cursor, policy, now=1030)] == ["batch_0", "batch_2"]
    assert [b.openai_batch_id for b in ended_batches(batches, cursor)] == ["batch_1"]


def test_a_failed_poll_counts_an_error_and_backs_off_harder():
    policy = PollPolicy(initial_s=10, multiplier=2, error_multiplier=3, jitter=0)
    cursor, batches = BatchCursor(), watched(1)
    record_polls(cursor, batches, batches, {}, now=1010, failed=True)
    assert (cursor.batches["batch_0"].polls, cursor.batches["batch_0"].errors) == (0, 1)
    assert due_for_poll(batches, cursor, policy, now=1039) == []
    assert due_for_poll(batches, cursor, policy, now=1040) == batches


def test_the_cursor_round_trips_and_forgets_ingested_batches():
    cursor, batches = BatchCursor(), watched(2)
    record_polls(cursor, batches, batches, {"batch_1": "expired"}, now=1010.5)  # stored to the millisecond
    again = BatchCursor.from_json(cursor.to_json())
    assert again == cursor
    again.prune(batches[:1])
    assert list(again.batches) == ["batch_0"]
    assert BatchCursor.from_json(None) == BatchCursor()


def test_the_ingest_key_names_the_set_of_ended_batches():
    a, b = watched(2)
    assert ingest_base_key([a, b]) == ingest_base_key([b, a]) != ingest_base_key([a])


def test_a_round_past_its_deadline_with_requests_out_makes_a_tick_due_once():
    idle = QueueState(queued=0, oldest_queued_at=None, half_sent=())
    kwargs = {"mode": "deferred", "max_requests": 10, "max_age_s": 30}
    in_flight = SessionRound("s", 0, "image", 4, 4, 0, round_due_at=1000.0)
    assert tick_due([in_flight], idle, [], BatchCursor(), now=999.0, **kwargs) is None
    due = tick_due([in_flight], idle, [], BatchCursor(), now=1000.0, **kwargs)
    assert "past their deadline: s" in due.reason
    # The same late round asks for the same run key: a repeated tick of the sensor requests nothing new.
    assert tick_due([in_flight], idle, [], BatchCursor(), now=5000.0, **kwargs).base_key == due.base_key
    answered = SessionRound("s", 0, "image", 4, 0, 0, round_due_at=1000.0)
    assert "deadline" not in tick_due([answered], idle, [], BatchCursor(), now=5000.0, **kwargs).reason
