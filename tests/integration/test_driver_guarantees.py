"""The driver's promise on every path: nothing lost, nothing paid twice, a cancel sticks.

Each test reproduces one failure the old per-path loops had (issue: "One session driver"), with the real
SDK, the simulator and DuckDB. The SIGKILL-and-rerun tests of the CLI are in tests/e2e.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import openai
import pytest

from batch_pipeline.batching.limits import SplitLimits
from batch_pipeline.driver import Driver
from batch_pipeline.ledger import Ledger
from batch_pipeline.ledger.states import BatchPhase, RequestState
from batch_pipeline.search import SearchParams, plan_round
from batch_pipeline.sessions import SessionConfig
from batch_pipeline.vocabulary import RoundId, Tier
from openai_simulator import FaultRule, Simulator, SimulatorConfig
from tests.conftest import ManualClock
from tests.integration.support import chat_requests, drive, make_manager, runtime_for, wait_until
from tests.lock_holder import hold_lock

SMALL = SearchParams(N=4, M=2, K=2, E=2, seed=3)


def start(runtime, tier: str, session_id: str = "s1", params: SearchParams = SMALL) -> str:
    return runtime.sessions.start(
        SessionConfig(prompt="a lighthouse in a storm", params=params, tier=tier, session_id=session_id, driver="cli")
    )


def test_the_same_launch_resumes_the_unfinished_session_instead_of_paying_again(tmp_path):
    with Simulator(SimulatorConfig(data_dir=tmp_path / "sim")).serve() as url:
        runtime = runtime_for(url, tmp_path)
        config = SessionConfig(prompt="a koi pond", params=SMALL, tier="batch", driver="cli")
        first, resumed = runtime.sessions.resume_or_start(config)
        assert not resumed
        assert runtime.sessions.resume_or_start(config) == (first, True)
        assert runtime.sessions.resume_or_start(config, new=True)[0] != first
        other = config.model_copy(update={"params": SMALL.model_copy(update={"seed": 4})})
        assert runtime.sessions.resume_or_start(other)[0] != first
        named = config.model_copy(update={"session_id": "mine"})
        assert runtime.sessions.resume_or_start(named) == ("mine", False)
        assert runtime.sessions.resume_or_start(named) == ("mine", True)


def test_a_cancel_during_a_standard_round_sticks_and_answers_every_time(tmp_path):
    sim = Simulator(SimulatorConfig(data_dir=tmp_path / "sim"))
    sim.add_fault(FaultRule(kind="slow", path="chat/completions", params={"seconds": 0.2}))
    with sim.serve() as url:
        runtime = runtime_for(url, tmp_path)
        sid = start(runtime, "standard")
        worker = threading.Thread(target=drive, args=(runtime, sid), kwargs={"timeout_s": 120})
        worker.start()
        wait_until(lambda: runtime.ledger.state_counts(session_id=sid).get("succeeded", 0) >= 2, timeout=60)
        first = runtime.sessions.cancel(sid)
        again = runtime.sessions.cancel(sid)  # idempotent: same answer, no error
        worker.join(timeout=120)
        assert not worker.is_alive()
        requests_after_cancel = sum(runtime.ledger.state_counts(session_id=sid).values())
        Driver(runtime, owner="cli", session_ids=[sid]).tick()
    assert first.status == again.status == "cancelled"
    assert runtime.ledger.session(sid).status == "cancelled"
    counts = runtime.ledger.state_counts(session_id=sid)
    assert not counts.get("queued") and not counts.get("running"), counts
    assert sum(counts.values()) == requests_after_cancel  # no round queued after the cancel
    assert runtime.sessions.state(sid).iteration == 0 and runtime.ledger.session(sid).winner_id is None
    assert runtime.ledger.check_invariants() == []


def test_a_batch_cancelled_while_validating_is_never_sent_again(tmp_path):
    sim = Simulator(SimulatorConfig(data_dir=tmp_path / "sim", phase_seconds={"validating": 3600}))
    with sim.serve() as url:
        runtime = runtime_for(url, tmp_path)
        sid = start(runtime, "batch")
        driver = Driver(runtime, owner="cli", session_ids=[sid])
        driver.tick()
        (batch,) = runtime.ledger.batches()
        assert batch.phase == BatchPhase.CREATED
        runtime.sessions.cancel(sid)
        wait_until(
            lambda: driver.tick() and runtime.ledger.batch(batch.batch_key).phase == BatchPhase.INGESTED,
            timeout=60,
            interval=0.2,
        )
        for _ in range(3):
            driver.tick()
        assert sim.batch_count() == 1
    states = runtime.ledger.request_states(session_id=sid)
    assert set(states.values()) == {RequestState.CANCELLED}, states
    assert runtime.ledger.check_invariants() == []


def test_calls_lost_by_a_dead_process_go_back_to_the_queue_with_their_cost_estimated(tmp_path):
    with Simulator(SimulatorConfig(data_dir=tmp_path / "sim")).serve() as url:
        runtime = runtime_for(url, tmp_path)
        sid = start(runtime, "standard")
        # A process on this host started the first round's calls and died before any answer was recorded.
        calls = plan_round(runtime.sessions.state(sid))
        requests = [runtime.executor._request(sid, c, Tier.STANDARD, "standard", RoundId(0, "text")) for c in calls]
        runtime.ledger.enqueue(requests)
        dead = f"{socket.gethostname()}:999999:1"
        started = runtime.ledger.start_sync([r.request_id for r in requests], Tier.STANDARD, lease_owner=dead)
        assert len(started) == len(calls)
        progress = drive(runtime, sid, timeout_s=120)
    assert progress.status == "completed"
    costs = runtime.ledger.session_costs(sid)
    assert costs["lost"]["calls"] == len(calls) and costs["lost"]["cost_usd"] > 0
    with runtime.ledger.connect() as con:
        lost = con.execute(
            "SELECT count(*) FROM results WHERE error_code = 'lost_in_flight' AND price_version LIKE 'estimate:%'"
        ).fetchone()[0]
    assert lost == len(calls)
    assert runtime.ledger.check_invariants() == []


def _two_ended_batches(sim, client, ledger, tmp_path):
    manager = make_manager(client, ledger, tmp_path, limits=SplitLimits(max_requests=2))
    ledger.enqueue(chat_requests(4))
    keys = manager.submit_queued()
    assert len(keys) == 2
    wait_until(
        lambda: manager.refresh() is not None and all(ledger.batch(k).status == "completed" for k in keys),
        timeout=30,
        interval=0.1,
    )
    return manager, keys


def test_a_batch_whose_output_file_is_gone_does_not_block_the_others(sim, client, ledger, tmp_path):
    manager, (bad, good) = _two_ended_batches(sim, client, ledger, tmp_path)
    sim.store.delete_file(ledger.batch(bad).output_file_id)
    assert manager.ingest_ended() == [good]
    record = ledger.batch(bad)
    assert record.phase == BatchPhase.INGESTED and "NotFoundError" in record.errors[0]["message"]
    assert set(ledger.request_states([ledger.batch_members(bad)[i] for i in (1, 2)]).values()) == {RequestState.QUEUED}
    manager.submit_queued()  # the re-queued pair goes out again and succeeds
    wait_until(
        lambda: (manager.refresh(), manager.ingest_ended(), ledger.state_counts())[-1] == {"succeeded": 4},
        timeout=30,
        interval=0.1,
    )
    assert ledger.check_invariants() == []


def test_a_malformed_result_file_is_given_up_after_a_few_tries_not_retried_forever(sim, client, ledger, tmp_path):
    manager, (bad, good) = _two_ended_batches(sim, client, ledger, tmp_path)
    path = sim.store.content_path(ledger.batch(bad).output_file_id)
    path.write_bytes(b"{" * path.stat().st_size)  # same length: the download is whole, its lines are not JSON
    assert manager.ingest_ended() == [good]
    assert ledger.batch(bad).phase == BatchPhase.CREATED  # once may be a fluke
    for _ in range(manager.max_ingest_errors - 1):
        manager.ingest_ended()
    assert ledger.batch(bad).phase == BatchPhase.INGESTED
    assert ledger.state_counts() == {"succeeded": 2, "queued": 2}
    assert ledger.check_invariants() == []


def test_a_ledger_held_by_another_process_is_waited_for_not_fatal(tmp_path):
    with Simulator(SimulatorConfig(data_dir=tmp_path / "sim")).serve() as url:
        ledger = Ledger(tmp_path / "ledger.duckdb", lock_timeout_s=0.5)
        runtime = runtime_for(url, tmp_path, ledger=ledger)
        sid = start(runtime, "standard")
        holder = hold_lock(ledger.path, 3)
        try:
            progress = drive(runtime, sid, timeout_s=180)
        finally:
            holder.wait(timeout=60)
    assert progress.status == "completed"
    assert ledger.check_invariants() == []


@contextlib.contextmanager
def _create_landing_late(tmp_path, *faults: FaultRule):
    """Three requests whose batch create the server answers only after the client gave up and the settle
    window passed (on the client's clock), so the batch is created again: two batches, both completed."""
    clock = ManualClock(time.time())
    sim = Simulator(SimulatorConfig(data_dir=tmp_path / "sim", phase_seconds={"validating": 0.2, "in_progress": 0.2}))
    with sim.serve() as url:
        client = openai.OpenAI(api_key="sk-test", base_url=url, max_retries=0, timeout=10)
        ledger = Ledger(tmp_path / "ledger.duckdb", clock=clock)
        manager = make_manager(client, ledger, tmp_path, clock=clock, create_timeout_s=0.3)
        sim.add_fault(FaultRule(kind="slow", path=r"^/v1/batches$", method="POST", times=1, params={"seconds": 2}))
        for fault in faults:
            sim.add_fault(fault)
        ledger.enqueue(chat_requests(3))
        (key,) = manager.submit_queued()
        clock.advance(manager.create_settle_s + 1)
        manager.submit_queued()
        assert ledger.batch(key).phase == BatchPhase.CREATED
        wait_until(lambda: [b.status for b in client.batches.list()] == ["completed", "completed"], timeout=30)
        yield sim, ledger, manager, key


def test_a_create_that_lands_after_the_settle_window_is_found_accounted_and_its_answers_used(tmp_path):
    with _create_landing_late(tmp_path) as (_sim, ledger, manager, key):
        # Other batches come and go; the sweep for the late create goes on regardless.
        wait_until(
            lambda: (manager.refresh(), manager.ingest_ended(), ledger.state_counts())[-1] == {"succeeded": 3}
            and all(b.phase == BatchPhase.INGESTED for b in ledger.batches()),
            timeout=30,
            interval=0.1,
        )
    (duplicate,) = [b for b in ledger.batches() if b.duplicate_of == key]
    assert duplicate.openai_batch_id != ledger.batch(key).openai_batch_id
    with ledger.connect() as con:
        dup_lines, dup_cost = con.execute("SELECT count(*), sum(cost_usd) FROM duplicate_results").fetchone()
        paid = con.execute("SELECT sum(cost_usd) FROM results").fetchone()[0]
    # Paid for, so accounted: every line the duplicate ran is costed, and the totals include it.
    assert dup_lines == 3 and dup_cost > 0
    assert ledger.cost_figures().paid == paid + dup_cost
    assert ledger.session_costs("s1")["duplicate"]["calls"] == 3
    assert ledger.check_invariants() == []


def test_a_duplicate_still_running_is_cancelled_and_its_answers_used_by_requests_waiting_for_them(tmp_path):
    # The batch that was recorded fails every line; the one that landed late answers them all.
    with _create_landing_late(tmp_path, FaultRule(kind="all_fail", times=1)) as (sim, ledger, manager, key):
        manager.refresh()
        ingested = manager.ingest_ended()
        assert key in ingested
        assert ledger.state_counts() == {"succeeded": 3}  # answered by the duplicate: not sent a third time
        assert sim.batch_count() == 2
    with ledger.connect() as con:
        tiers = con.execute("SELECT DISTINCT batch_key FROM results WHERE outcome = 'succeeded'").fetchall()
    assert [k for (k,) in tiers] == [b.batch_key for b in ledger.batches() if b.duplicate_of == key]
    assert ledger.check_invariants() == []


@pytest.fixture(autouse=True)
def _quiet_simulator_logs(caplog):
    caplog.set_level("WARNING")
