"""Several writers on one PostgreSQL ledger at once: row locks keep two flushes from sending one request,
and a transaction that loses a conflict is rolled back whole and reported as transient."""

from __future__ import annotations

import threading

import pytest

from batch_pipeline.errors import is_transient, is_write_conflict
from batch_pipeline.ledger import Ledger, RequestState


@pytest.fixture
def ledgers(postgres_url: str, clock) -> tuple[Ledger, Ledger]:
    """Two writers (as two run workers would be) on one PostgreSQL ledger."""
    return Ledger(postgres_url, clock=clock), Ledger(postgres_url, clock=clock)


def test_two_flushes_at_once_split_the_queue_and_never_send_one_request_twice(ledgers, make_request):
    first, second = ledgers
    first.enqueue([make_request(k) for k in "abcdef"])
    rows = first.queued_rows()
    claimed, release = threading.Event(), threading.Event()

    def slow_flush() -> None:
        # The first flush claims a, b, c inside its transaction and holds them until told to commit.
        with first.transaction() as con:
            ids = first._claim_queued(con, [r.request_id for r in rows[:3]])
            first._move_requests(
                con, {RequestState.SUBMITTED: sorted(ids)}, batch_key=None, reason="test", count_attempt=True
            )
            claimed.set()
            assert release.wait(30)

    worker = threading.Thread(target=slow_flush)
    worker.start()
    assert claimed.wait(30)
    # The second flush planned from the same queue read: it skips the locked rows instead of waiting.
    record = second.create_batch_intent("bpb_second", rows[0].endpoint, rows[0].model, rows)
    release.set()
    worker.join(30)
    assert record is not None
    assert sorted(second.batch_members("bpb_second").values()) == sorted(r.request_id for r in rows[3:])
    states = second.request_states([r.request_id for r in rows])
    assert set(states.values()) == {RequestState.SUBMITTED}
    with second.connect() as con:
        attempts = dict(con.execute("SELECT request_id, attempts FROM requests").fetchall())
    assert set(attempts.values()) == {1}  # every request claimed once
    assert second.check_invariants() == []


def test_a_writer_that_loses_a_conflict_is_rolled_back_and_told_to_try_again(ledgers, make_request):
    first, second = ledgers
    first.enqueue([make_request("a")])
    inside, release = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def hold() -> None:
        with first.transaction() as con:
            con.execute("SELECT state FROM requests WHERE request_id = 't-a'").fetchall()
            con.execute("UPDATE requests SET tier_reason = 'first' WHERE request_id = 't-a'")
            inside.set()
            assert release.wait(30)

    worker = threading.Thread(target=hold)
    worker.start()
    assert inside.wait(30)
    timer = threading.Timer(0.5, release.set)  # the first commits while the second waits for the row
    timer.start()
    try:
        with second.transaction() as con:
            con.execute("UPDATE requests SET tier_reason = 'second' WHERE request_id = 't-a'")
    except Exception as exc:  # the second writer waited for the row, then lost: serialization failure
        errors.append(exc)
    worker.join(30)
    assert len(errors) == 1 and is_write_conflict(errors[0]) and is_transient(errors[0])
    assert first.request_rows(["t-a"])["t-a"].tier_reason == "first"  # the loser changed nothing


def test_ticks_of_one_driver_take_turns_and_others_do_not_wait(ledgers):
    first, second = ledgers
    inside, release = threading.Event(), threading.Event()
    order: list[str] = []

    def first_tick() -> None:
        with first.unit(), first.turn("tick:dagster:*"):
            order.append("first in")
            inside.set()
            assert release.wait(30)
            order.append("first out")

    worker = threading.Thread(target=first_tick)
    worker.start()
    assert inside.wait(30)
    with second.unit(), second.turn("tick:cli:s1"):  # another driver's tick goes ahead at once
        order.append("other driver")
    threading.Timer(0.5, release.set).start()
    with second.unit(), second.turn("tick:dagster:*"):  # the same driver's waits for the first to end
        order.append("second in")
    worker.join(30)
    assert order == ["first in", "other driver", "first out", "second in"]


def test_a_reader_of_a_database_without_the_ledger_yet_finds_none(postgres_url, clock):
    from batch_pipeline.ledger.reader import LedgerReader

    reader = LedgerReader(postgres_url)
    assert not reader.exists()  # a sensor before the first session skips instead of failing on a missing table
    Ledger(postgres_url, clock=clock)
    assert reader.exists()
