"""The DuckDB ledger: idempotent enqueue and ingest, two-phase batches, retries, sync tiers, cache, costs."""

from __future__ import annotations

import hashlib
from decimal import Decimal

import pyarrow as pa
import pytest

from batch_pipeline.ledger import BatchPhase, Ledger, LedgerError, RequestState, StateTransitionError
from batch_pipeline.ledger.db import string_column
from batch_pipeline.ledger.ledger import _RESULT_COLUMNS, RemoteStatus
from batch_pipeline.ledger.states import TERMINAL_REQUEST_STATES
from batch_pipeline.records import RequestOutcome
from batch_pipeline.vocabulary import Outcome, Tier

EXPIRED, RETRY, PERMANENT, CANCELLED = (
    Outcome.EXPIRED,
    Outcome.FAILED_RETRYABLE,
    Outcome.FAILED_PERMANENT,
    Outcome.CANCELLED,
)


def events(ledger: Ledger, rid: str) -> list[tuple]:
    # Events of one transaction share a time; the row's place in the table (never updated) is the order.
    physical = "rowid" if ledger.store.dialect == "duckdb" else "ctid"
    with ledger.connect() as con:
        return con.execute(
            "SELECT from_state, to_state, batch_key, reason FROM request_events WHERE request_id = ?"
            f" ORDER BY event_at, {physical}",
            [rid],
        ).fetchall()


def attempts(ledger: Ledger, rid: str) -> int:
    with ledger.connect() as con:
        return con.execute("SELECT attempts FROM requests WHERE request_id = ?", [rid]).fetchone()[0]


def table_counts(ledger: Ledger) -> dict[str, int]:
    with ledger.connect() as con:
        return {
            t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
            for t in ("requests", "request_events", "batches", "batch_members", "results")
        }


# -- enqueue ------------------------------------------------------------------------------------


def test_enqueue_returns_new_ids_and_reenqueueing_identical_requests_is_a_noop(ledger, make_request):
    first = [make_request("a"), make_request("b")]
    assert ledger.enqueue(first) == ["t-a", "t-b"]
    before = table_counts(ledger)
    assert ledger.enqueue([make_request("a"), make_request("b"), make_request("c")]) == ["t-c"]
    assert ledger.enqueue([make_request("a")]) == []
    assert table_counts(ledger)["requests"] == before["requests"] + 1
    assert ledger.request_body("t-a") == first[0].body


def test_same_custom_id_with_a_different_body_or_twice_in_one_call_is_refused(ledger, make_request):
    ledger.enqueue([make_request("a", text="one")])
    with pytest.raises(LedgerError, match="different body"):
        ledger.enqueue([make_request("b"), make_request("a", text="two")])
    with pytest.raises(LedgerError, match="duplicate"):
        ledger.enqueue([make_request("c"), make_request("c")])
    assert ledger.request_states() == {"t-a": RequestState.QUEUED}  # each refused call was rolled back whole


def test_queued_rows_are_oldest_first_and_filter_by_tier_and_session(ledger, queue, submit, clock):
    queue("z", session_id="s1")
    clock.advance(5)
    queue("a", session_id="s2")
    clock.advance(5)
    queue("m", "n", session_id="s1")
    ledger.requeue(["t-m"], tier=Tier.FLEX, reason="small job")
    assert [r.request_id for r in ledger.queued_rows()] == ["t-z", "t-a", "t-n"]
    assert [r.request_id for r in ledger.queued_rows(session_id="s2")] == ["t-a"]
    assert [r.request_id for r in ledger.queued_rows(tier=Tier.FLEX)] == ["t-m"]
    assert ledger.queue_summary() == (3, clock.now - 10)
    submit("bpb_1", ["t-n"])
    with pytest.raises(StateTransitionError, match="only queued"):  # only queued requests change tier
        ledger.requeue(["t-n"], tier=Tier.FLEX, reason="x")


# -- batches ------------------------------------------------------------------------------------


def test_batch_intent_moves_members_to_submitted_counts_an_attempt_and_numbers_lines(ledger, queue):
    ids = queue("a", "b", "c")
    rows = ledger.queued_rows()
    record = ledger.create_batch_intent("bpb_1", rows[0].endpoint, "gpt-5-mini", rows[::-1])
    assert record.phase == BatchPhase.INTENT and record.status is None
    assert record.request_count == 3
    assert record.input_bytes == sum(r.line_bytes + 1 for r in rows)
    assert record.est_prompt_tokens == sum(r.est_prompt_tokens for r in rows)
    assert ledger.batch_members("bpb_1") == {1: "t-c", 2: "t-b", 3: "t-a"}
    assert set(ledger.request_states(ids).values()) == {RequestState.SUBMITTED}
    assert [attempts(ledger, rid) for rid in ids] == [1, 1, 1]
    assert ledger.queued_rows() == []


def test_batch_intent_leaves_out_a_member_another_batch_took_since_planning(ledger, queue, submit):
    queue("a", "b")
    rows = ledger.queued_rows()
    submit("bpb_1", ["t-a"])  # another flush sent t-a after this one read the queue
    record = ledger.create_batch_intent("bpb_2", rows[0].endpoint, "gpt-5-mini", rows)
    assert record is not None and record.request_count == 1
    assert ledger.batch_members("bpb_2") == {1: "t-b"}
    assert ledger.batch_members("bpb_1") == {1: "t-a"}
    assert attempts(ledger, "t-a") == 1  # its attempt is counted once, by the batch that sent it
    assert ledger.check_invariants() == []


def test_batch_intent_of_members_all_taken_persists_nothing(ledger, queue, submit):
    queue("a")
    rows = ledger.queued_rows()
    submit("bpb_1", ["t-a"])
    before = table_counts(ledger)
    assert ledger.create_batch_intent("bpb_2", rows[0].endpoint, "gpt-5-mini", rows) is None
    assert table_counts(ledger) == before
    with pytest.raises(LedgerError):
        ledger.batch("bpb_2")


def test_a_refused_state_move_names_the_first_request_at_fault_and_persists_nothing(ledger, queue, submit):
    queue("a", "b", "c")
    submit("bpb_1", ["t-b"])
    before = table_counts(ledger)
    with pytest.raises(StateTransitionError, match="unknown request 'nope'"):
        ledger.fail_queued(["t-a", "nope", "t-b"], "too big")
    with pytest.raises(StateTransitionError, match="request 't-b': submitted -> failed is not allowed"):
        ledger.fail_queued(["t-a", "t-b", "nope"], "too big")
    assert table_counts(ledger) == before
    assert ledger.request_states(["t-a", "t-b", "t-c"]) == {
        "t-a": RequestState.QUEUED,
        "t-b": RequestState.SUBMITTED,
        "t-c": RequestState.QUEUED,
    }


def test_illegal_transition_raises(ledger, queue, submit):
    queue("a", "b")
    submit("bpb_1", ["t-a"])
    with pytest.raises(StateTransitionError, match="created -> created"):
        ledger.mark_created("bpb_1", "batch_other")
    with pytest.raises(StateTransitionError, match="created -> uploaded"):
        ledger.mark_uploaded("bpb_1", "file-x")
    with pytest.raises(StateTransitionError, match="created -> abandoned"):
        ledger.abandon_batch("bpb_1", "too late", max_attempts=3)
    rows = [r for r in ledger.queued_rows() if r.request_id == "t-b"]
    ledger.create_batch_intent("bpb_2", rows[0].endpoint, "gpt-5-mini", rows)
    with pytest.raises(StateTransitionError, match="intent -> ingested"):
        ledger.record_batch_outcome("bpb_2", [], max_attempts=3)
    assert ledger.batch("bpb_1").openai_batch_id == "batch_bpb_1"
    assert ledger.request_states(["t-b"]) == {"t-b": RequestState.SUBMITTED}  # the failed ingest rolled back


def test_remote_status_is_recorded_only_for_created_batches_and_ended_at_is_set_once(ledger, queue, submit, clock):
    queue("a", "b")
    rows = {r.request_id: r for r in ledger.queued_rows()}
    submit("bpb_1", ["t-a"])
    ledger.create_batch_intent("bpb_2", rows["t-b"].endpoint, "gpt-5-mini", [rows["t-b"]])
    clock.advance(60)
    ledger.record_remote_status(
        [
            RemoteStatus(batch_key="bpb_1", status="finalizing", completed_count=1, failed_count=0),
            RemoteStatus(batch_key="bpb_2", status="completed"),
        ]
    )
    b1, b2 = ledger.batch("bpb_1"), ledger.batch("bpb_2")
    assert (b1.status, b1.polls, b1.completed_count, b1.ended_at) == ("finalizing", 1, 1, None)
    assert (b2.status, b2.polls) == (None, 0)
    clock.advance(60)
    ledger.record_remote_status(
        [
            RemoteStatus(
                batch_key="bpb_1",
                status="completed",
                output_file_id="file-out",
                errors=[{"code": "x", "line": 1, "message": "m", "param": None}],
            )
        ]
    )
    ended = clock.now
    clock.advance(60)
    ledger.record_remote_status([RemoteStatus(batch_key="bpb_1", status="completed", output_file_id="file-out")])
    b1 = ledger.batch("bpb_1")
    assert (b1.status, b1.output_file_id, b1.polls, b1.ended_at) == ("completed", "file-out", 3, ended)


def test_inflight_tokens_count_batches_until_their_remote_status_ends(ledger, queue, submit):
    queue("a", "b", "c")
    rows = {r.request_id: r for r in ledger.queued_rows()}
    submit("bpb_1", ["t-a"])
    submit("bpb_2", ["t-b"])
    ledger.create_batch_intent("bpb_3", rows["t-c"].endpoint, "gpt-5-mini", [rows["t-c"]])
    tokens = {rid: r.est_prompt_tokens for rid, r in rows.items()}
    assert ledger.inflight_tokens_by_model() == {"gpt-5-mini": sum(tokens.values())}
    ledger.record_remote_status(
        [RemoteStatus(batch_key="bpb_1", status="failed"), RemoteStatus(batch_key="bpb_2", status="finalizing")]
    )
    assert ledger.inflight_tokens_by_model() == {"gpt-5-mini": tokens["t-b"] + tokens["t-c"]}


# -- ingesting ----------------------------------------------------------------------------------


def test_ingesting_twice_changes_nothing(ledger, queue, submit, outcomes):
    ids = submit("bpb_1", queue("a", "b", "c"))
    results = [
        outcomes.ok("t-a"),
        outcomes.bad("t-b", PERMANENT, "invalid_request_error", 400),
        outcomes.bad("t-c", EXPIRED, "batch_expired"),
    ]
    assert ledger.record_batch_outcome("bpb_1", results, max_attempts=3) is True
    before, states = table_counts(ledger), ledger.request_states(ids)
    assert ledger.record_batch_outcome("bpb_1", results, max_attempts=3) is False
    assert ledger.record_batch_outcome("bpb_1", [outcomes.ok("t-b"), outcomes.ok("t-c")], max_attempts=3) is False
    assert table_counts(ledger) == before
    assert (
        ledger.request_states(ids)
        == states
        == {"t-a": RequestState.SUCCEEDED, "t-b": RequestState.FAILED, "t-c": RequestState.QUEUED}
    )
    assert ledger.batch("bpb_1").phase == BatchPhase.INGESTED


def test_expired_rows_are_requeued_until_max_attempts_then_end_expired(ledger, queue, submit, outcomes):
    [rid] = queue("a")
    for attempt in (1, 2, 3):
        submit(f"bpb_{attempt}", [rid])
        assert attempts(ledger, rid) == attempt
        ledger.record_batch_outcome(f"bpb_{attempt}", [outcomes.bad(rid, EXPIRED, "batch_expired")], max_attempts=3)
        expected = RequestState.QUEUED if attempt < 3 else RequestState.EXPIRED
        assert ledger.request_states([rid]) == {rid: expected}
    assert [e[1] for e in events(ledger, rid)] == [
        "queued",
        "submitted",
        "queued",
        "submitted",
        "queued",
        "submitted",
        "expired",
    ]
    final = ledger.final_results([rid])[rid]
    assert (final.outcome, final.error_code) == (EXPIRED, "batch_expired")
    assert ledger.check_invariants() == []


def test_retryable_failures_are_requeued_while_permanent_failures_and_cancellations_end(
    ledger, queue, submit, outcomes
):
    ids = submit("bpb_1", queue("r429", "r500", "perm", "canc"))
    ledger.record_batch_outcome(
        "bpb_1",
        [
            outcomes.bad("t-r429", RETRY, "rate_limit_exceeded", 429),
            outcomes.bad("t-r500", RETRY, "server_error", 500),
            outcomes.bad("t-perm", PERMANENT, "unsupported_parameter", 400),
            outcomes.bad("t-canc", CANCELLED, "batch_cancelled"),
        ],
        max_attempts=1 + 1,
    )
    assert ledger.request_states(ids) == {
        "t-r429": RequestState.QUEUED,
        "t-r500": RequestState.QUEUED,
        "t-perm": RequestState.FAILED,
        "t-canc": RequestState.CANCELLED,
    }
    submit("bpb_2", ["t-r429", "t-r500"])
    ledger.record_batch_outcome(
        "bpb_2", [outcomes.ok("t-r429"), outcomes.bad("t-r500", RETRY, "server_error", 500)], max_attempts=2
    )
    assert ledger.request_states(["t-r429", "t-r500"]) == {
        "t-r429": RequestState.SUCCEEDED,
        "t-r500": RequestState.FAILED,
    }
    final = ledger.final_results(ids)
    assert {rid: o.outcome for rid, o in final.items()} == {
        "t-r429": Outcome.SUCCEEDED,
        "t-r500": RETRY,
        "t-perm": PERMANENT,
        "t-canc": CANCELLED,
    }
    assert final["t-perm"].status_code == 400


def test_member_without_a_result_line_is_retried_and_foreign_lines_are_ignored(ledger, queue, submit, outcomes):
    queue("a", "b", "other")
    submit("bpb_1", ["t-a", "t-b"])
    ledger.record_batch_outcome(
        "bpb_1",
        [outcomes.ok("t-a"), outcomes.ok("t-other")],
        max_attempts=3,
        missing_reason="batch completed without a result line",
    )
    assert ledger.request_states() == {
        "t-a": RequestState.SUCCEEDED,
        "t-b": RequestState.QUEUED,
        "t-other": RequestState.QUEUED,
    }
    with ledger.connect() as con:
        rows = con.execute("SELECT request_id, attempt, outcome, error_message FROM results ORDER BY 1").fetchall()
    assert rows == [
        ("t-a", 1, "succeeded", None),
        ("t-b", 1, "failed_retryable", "batch completed without a result line"),
    ]


def test_abandoned_batch_requeues_its_members_and_cannot_be_ingested(ledger, queue, outcomes):
    ids = queue("a", "b")
    rows = ledger.queued_rows()
    ledger.create_batch_intent("bpb_1", rows[0].endpoint, "gpt-5-mini", rows)
    ledger.mark_uploaded("bpb_1", "file-1")
    ledger.abandon_batch("bpb_1", "create rejected: 400 invalid file", max_attempts=3)
    batch = ledger.batch("bpb_1")
    assert batch.phase == BatchPhase.ABANDONED
    assert batch.errors == [{"message": "create rejected: 400 invalid file"}]
    assert set(ledger.request_states(ids).values()) == {RequestState.QUEUED}
    assert ledger.inflight_tokens_by_model() == {}
    with pytest.raises(StateTransitionError):
        ledger.record_batch_outcome("bpb_1", [outcomes.ok("t-a")], max_attempts=3)
    assert ledger.check_invariants() == []


def test_abandoned_batch_out_of_attempts_fails_members_with_a_final_result(ledger, queue):
    [rid] = queue("a")
    rows = ledger.queued_rows()
    ledger.create_batch_intent("bpb_1", rows[0].endpoint, "gpt-5-mini", rows)
    ledger.abandon_batch("bpb_1", "create rejected: 400 bad input", max_attempts=1)
    assert ledger.request_states([rid]) == {rid: RequestState.FAILED}
    final = ledger.final_results([rid])
    assert rid in final, "a failed request must have a terminal result row, as fail_queued and ingest write one"
    # The attempt's own outcome: a rejected create is worth another batch while attempts remain.
    assert final[rid].outcome == Outcome.FAILED_RETRYABLE
    assert "400 bad input" in (final[rid].error_message or "")


# -- synchronous tiers, requeue, fail, cache, costs ---------------------------------------------


def test_sync_call_runs_on_its_tier_and_records_its_result_without_a_batch(ledger, queue, outcomes):
    ids = queue("a", "b")
    ledger.start_sync(ids, Tier.FLEX, reason="small job: flex is faster")
    assert set(ledger.request_states(ids).values()) == {RequestState.RUNNING}
    ledger.record_sync_outcomes(
        [outcomes.ok("t-a"), outcomes.bad("t-b", RETRY, "resource_unavailable", 429)], Tier.FLEX, max_attempts=3
    )
    assert ledger.request_states(ids) == {"t-a": RequestState.SUCCEEDED, "t-b": RequestState.QUEUED}
    with ledger.connect() as con:
        assert con.execute("SELECT request_id, attempt, batch_key, tier FROM results ORDER BY 1").fetchall() == [
            ("t-a", 1, None, "flex"),
            ("t-b", 1, None, "flex"),
        ]
    assert [r.request_id for r in ledger.queued_rows(tier=Tier.FLEX)] == ["t-b"]
    with pytest.raises(StateTransitionError, match="not running"):
        ledger.record_sync_outcomes([outcomes.ok("t-b")], Tier.FLEX, max_attempts=3)
    with pytest.raises(StateTransitionError):
        ledger.start_sync(["t-b", "t-missing"], Tier.STANDARD, reason="x")
    assert [r.request_id for r in ledger.queued_rows(tier=Tier.FLEX)] == ["t-b"]  # the tier change was rolled back


def test_fail_queued_ends_requests_with_a_permanent_failure_result(ledger, queue):
    ids = queue("a", "b")
    ledger.fail_queued(["t-a"], "larger than one batch file allows")
    assert ledger.request_states(ids) == {"t-a": RequestState.FAILED, "t-b": RequestState.QUEUED}
    final = ledger.final_results(ids)
    assert list(final) == ["t-a"]
    assert (final["t-a"].outcome, final["t-a"].error_message) == (PERMANENT, "larger than one batch file allows")
    with pytest.raises(StateTransitionError):
        ledger.fail_queued(["t-a"], "again")


def test_fail_queued_after_an_expired_attempt_reports_the_failure_as_final_result(ledger, queue, submit, outcomes):
    [rid] = queue("a")
    submit("bpb_1", [rid])
    ledger.record_batch_outcome("bpb_1", [outcomes.bad(rid, EXPIRED, "batch_expired")], max_attempts=3)
    ledger.fail_queued([rid], "larger than one batch file allows")
    assert ledger.request_states([rid]) == {rid: RequestState.FAILED}
    final = ledger.final_results([rid])[rid]
    assert final.outcome == PERMANENT, f"final result is the earlier {final.outcome} attempt, not the failure"
    assert final.error_message == "larger than one batch file allows"


def test_cached_response_is_found_only_for_a_succeeded_identical_body(ledger, make_request, submit, outcomes):
    first, twin, other = make_request("a", text="same"), make_request("b", text="same"), make_request("c", text="other")
    ledger.enqueue([first, twin, other])
    assert first.body_hash == twin.body_hash != other.body_hash
    assert ledger.find_cached_results([first.body_hash]) == {}  # queued is not an answer
    submit("bpb_1", ["t-a", "t-c"])
    ledger.record_batch_outcome(
        "bpb_1", [outcomes.ok("t-a"), outcomes.bad("t-c", PERMANENT, "invalid", 400)], max_attempts=3
    )
    hit = ledger.find_cached_results([twin.body_hash])[twin.body_hash]
    assert hit.request_id == "t-a" and hit.response["choices"][0]["message"]["content"] == "answer to t-a"
    assert ledger.find_cached_results([other.body_hash]) == {}  # failures are never served from cache
    assert ledger.find_cached_results([hashlib.sha256(b"never seen").hexdigest()]) == {}


def test_cost_figures_sum_paid_and_standard_costs_per_session(ledger, queue, submit, outcomes):
    queue("a", "b", session_id="s1")
    queue("c", session_id="s2")
    submit("bpb_1", ["t-a", "t-b", "t-c"])
    ledger.record_batch_outcome(
        "bpb_1",
        [
            outcomes.ok("t-a", cost="0.00060250", standard="0.00120500"),
            outcomes.ok("t-b", cost="0.10000000", standard="0.20000000"),
            outcomes.ok("t-c", cost="1.25", standard="2.50"),
        ],
        max_attempts=3,
    )
    s1 = ledger.cost_figures(session_id="s1")
    assert (s1.paid, s1.standard_for_calls, s1.tier_saved, s1.calls) == (
        Decimal("0.1006025"),
        Decimal("0.201205"),
        Decimal("0.1006025"),
        2,
    )
    assert ledger.cost_figures().paid == Decimal("1.3506025")
    nobody = ledger.cost_figures(session_id="nobody")
    assert (nobody.paid, nobody.standard_for_calls, nobody.cache_avoided, nobody.calls) == (0, 0, 0, 0)


# -- invariants and durability ------------------------------------------------------------------


def test_every_request_reaches_exactly_one_terminal_state(ledger, queue, outcomes, clock):
    """Rounds of batches and sync calls with mixed outcomes, every batch ingested twice, until the queue drains."""
    ids = queue(*[f"k{i:02d}" for i in range(14)])
    pattern = [
        lambda r: outcomes.ok(r),
        lambda r: outcomes.bad(r, RETRY, "server_error", 500),
        lambda r: outcomes.bad(r, EXPIRED, "batch_expired"),
        lambda r: None,  # no line at all
        lambda r: outcomes.bad(r, PERMANENT, "invalid_request_error", 400),
        lambda r: outcomes.ok(r),
        lambda r: outcomes.bad(r, CANCELLED, "batch_cancelled"),
    ]
    for round_no in range(10):
        queued = ledger.queued_rows(tier=Tier.BATCH)
        if not queued:
            break
        clock.advance(3600)
        sync_ids = [r.request_id for r in queued[-1:]]  # the newest goes to the standard tier
        ledger.start_sync(sync_ids, Tier.STANDARD, reason="urgent")
        ledger.record_sync_outcomes([outcomes.ok(rid) for rid in sync_ids], Tier.STANDARD, max_attempts=3)
        members = queued[:-1]
        for n in range(0, len(members), 4):
            key, chunk = f"bpb_{round_no}_{n}", members[n : n + 4]
            ledger.create_batch_intent(key, chunk[0].endpoint, chunk[0].model, chunk)
            ledger.mark_created(key, f"batch_{key}")
            results = [o for m in chunk if (o := pattern[int(m.request_id[-2:]) % 7](m.request_id)) is not None]
            assert ledger.record_batch_outcome(key, results, max_attempts=3)
            assert not ledger.record_batch_outcome(key, results, max_attempts=3)
    states = ledger.request_states(ids)
    assert set(states.values()) <= TERMINAL_REQUEST_STATES
    for rid in ids:
        terminal = [e for e in events(ledger, rid) if e[1] in TERMINAL_REQUEST_STATES]
        assert len(terminal) == 1 and terminal[0][1] == states[rid]
        assert 1 <= attempts(ledger, rid) <= 3
    assert ledger.check_invariants() == []
    assert set(ledger.final_results(ids)) == set(ids)
    with ledger.connect() as con:  # one result row per attempt, none lost, none doubled by the re-ingest
        assert dict(con.execute("SELECT request_id, count(*) FROM results GROUP BY 1").fetchall()) == {
            rid: attempts(ledger, rid) for rid in ids
        }
    assert set(states.values()) == TERMINAL_REQUEST_STATES  # every ending was exercised


def test_a_ledger_that_kept_rounds_as_one_key_is_split_into_columns_once(ledger, ledger_path, clock, tmp_path):
    from batch_pipeline.batching.requests import ChatRequest, build_request
    from batch_pipeline.vocabulary import RoundId

    request = build_request(
        ChatRequest(key="k1", model="gpt-5-mini", messages=[{"role": "user", "content": "Hi?"}]),
        namespace="t",
        operation="expand",
        session_id="s1",
        round_id=RoundId(12, "vision"),
    )
    ledger.enqueue([request])
    with ledger.transaction() as con:  # what a ledger written before the columns looked like
        con.execute("ALTER TABLE requests ADD COLUMN round_key VARCHAR")
        con.execute("UPDATE requests SET round_key = 'i12-vision', iteration = NULL, round = NULL")
    old = tmp_path / "old" / "ledger.duckdb"
    old.parent.mkdir()
    old.write_bytes(ledger_path.read_bytes())
    migrated = Ledger(old, clock=clock)
    with migrated.connect() as con:
        assert con.execute("SELECT iteration, round FROM requests").fetchall() == [(12, "vision")]
        columns = {
            c
            for (c,) in con.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'requests'"
            ).fetchall()
        }
    assert "round_key" not in columns


def test_bulk_ingest_stores_the_response_and_exact_costs(ledger, queue, submit, tmp_path):
    import orjson

    from batch_pipeline.batching.pricing import PriceCatalog
    from batch_pipeline.batching.results import price_results, read_result_table

    submit("bpb_1", queue("a", "b"))
    body = {
        "id": "c-1",
        "choices": [{"message": {"content": "ünï 🙂"}}],
        "x": 0.1,
        "usage": {"prompt_tokens": 1001, "completion_tokens": 7, "prompt_tokens_details": {"cached_tokens": 3}},
    }
    path = tmp_path / "out.jsonl"
    path.write_bytes(orjson.dumps({"custom_id": "t-a", "response": {"status_code": 200, "body": body}}) + b"\n")
    table = price_results(
        read_result_table([path], None),
        endpoint="/v1/chat/completions",
        model="gpt-5-mini",
        tier=Tier.BATCH,
        catalog=PriceCatalog.load(),
        request_bodies=lambda ids: {},
    )
    assert ledger.record_batch_results("bpb_1", table, max_attempts=3)
    results = ledger.final_results(["t-a"])
    assert results["t-a"].response == body
    # batch gpt-5-mini: (998 x 0.125 + 3 x 0.0125 + 7 x 1.00) / 1M, exact to the 12th place
    assert results["t-a"].cost_usd == Decimal("0.0001317875") and results["t-a"].standard_cost_usd == Decimal(
        "0.000263575"
    )
    assert ledger.request_states(["t-a", "t-b"]) == {"t-a": RequestState.SUCCEEDED, "t-b": RequestState.QUEUED}


def test_bulk_result_rows_are_stored_exactly_as_the_per_outcome_insert_stores_them(ledger):
    from batch_pipeline.records import ResultTable

    outcomes = [
        RequestOutcome(
            request_id="a",
            outcome=Outcome.SUCCEEDED,
            status_code=200,
            input_tokens=1001,
            cached_tokens=3,
            output_tokens=7,
            cost_usd=Decimal("0.0001317875"),
            standard_cost_usd=Decimal("0.000263575"),
            price_version="2026-11-01",
            response={"x": 0.1, "t": 'ünï 🙂 "q"', "n": [1, None, 1e-7]},
        ),
        RequestOutcome(
            request_id="b",
            outcome=Outcome.FAILED_RETRYABLE,
            status_code=429,
            error_code="rate_limit",
            error_message="slow down",
            response={"error": {"code": "rate_limit"}},
        ),
        RequestOutcome(request_id="c", outcome=Outcome.EXPIRED, error_code="batch_expired"),
        RequestOutcome(
            request_id="d",
            outcome=Outcome.SUCCEEDED,
            status_code=200,
            images=2,
            response={},
            cost_usd=Decimal("0.015"),
            standard_cost_usd=Decimal("0.03"),
            price_version="unpriced:m",
        ),
    ]
    with ledger.transaction() as con:
        Ledger._insert_results(con, [(o, 2, "plain", Tier.BATCH) for o in outcomes], 5.0)
        rows = ResultTable.from_outcomes(outcomes).rows
        Ledger._insert_result_rows(con, rows, dict.fromkeys("abcd", 3), "bulk", Tier.BATCH, 5.0)
        assert rows == []  # consumed as inserted
        compared = ", ".join(c for c in _RESULT_COLUMNS if c not in ("batch_key", "attempt"))
        stored = {
            key: con.execute(f"SELECT {compared} FROM results WHERE batch_key = ? ORDER BY 1", [key]).fetchall()
            for key in ("plain", "bulk")
        }
    assert stored["bulk"] == stored["plain"] and len(stored["plain"]) == 4


@pytest.mark.parametrize(
    "values",
    [
        [],
        [""],
        [None],
        ['{"a": 1}', None, ""],
        ["caf\u00e9", None, "\u65e5\u672c", "plain", "\U0001f600"],
        ["x" * 5000] * 3,
    ],
)
def test_string_column_equals_arrows_own_conversion(values):
    """The responses' column, built from one joined buffer, is the column `pa.array` makes: bytes, nulls, order."""
    column = string_column(values)
    column.validate(full=True)
    assert column.equals(pa.array(values, pa.string()))
    assert column.to_pylist() == values


def test_a_failure_records_its_message_else_its_code_else_its_outcome_as_the_error(ledger, queue, submit, outcomes):
    """The ingest reads the error texts from its Arrow columns: an empty message counts as none, as `or` has it."""
    ids = submit("bpb_1", queue("msg", "empty", "none", "bare"))
    failures = [outcomes.bad(f"t-{key}", PERMANENT, "bad_request", 400) for key in ("msg", "empty", "none", "bare")]
    failures[1] = failures[1].model_copy(update={"error_message": ""})
    failures[2] = failures[2].model_copy(update={"error_message": None})
    failures[3] = failures[3].model_copy(update={"error_message": None, "error_code": None})
    ledger.record_batch_outcome("bpb_1", failures, max_attempts=3)
    errors = {rid: row.last_error for rid, row in ledger.request_rows(ids).items()}
    assert errors == {
        "t-msg": "bad_request happened",
        "t-empty": "bad_request",
        "t-none": "bad_request",
        "t-bare": str(PERMANENT),
    }
