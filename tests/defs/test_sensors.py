"""The pipeline sensor, called with built contexts: at most one tick run per tick, run keys, the cursor, and a
ledger it never changes."""

from __future__ import annotations

import json
import time

import dagster as dg
import httpx2
import openai
import pytest

from batch_pipeline.defs.decisions import BatchCursor
from batch_pipeline.defs.resources import OpenAIResource, runtime_from
from batch_pipeline.defs.sensors import pipeline_sensor
from batch_pipeline.ledger import Ledger
from batch_pipeline.search import SearchParams
from batch_pipeline.sessions import SessionConfig
from openai_simulator import FaultRule
from tests.defs.support import file_digest, launch, record_prior_run
from tests.defs.support import tick as tick_run
from tests.lock_holder import hold_lock

API_CALLS: list[tuple[str, str]] = []


class CountingOpenAIResource(OpenAIResource):
    """The real client, recording every HTTP call it makes (method, path)."""

    def get_client(self) -> openai.OpenAI:
        hook = lambda request: API_CALLS.append((request.method, request.url.path))  # noqa: E731 - a one-line event hook
        return openai.OpenAI(
            api_key=self.api_key, base_url=self.base_url, http_client=httpx2.Client(event_hooks={"request": [hook]})
        )


def tick(instance, resources, cursor=None):
    context = dg.build_sensor_context(
        instance=instance, resources=resources, cursor=cursor, sensor_name=pipeline_sensor.name
    )
    return pipeline_sensor(context)


def queue_round(instance, resources) -> None:
    """A tick run in deferred mode with the queue not due yet: every ready session queues its round."""
    assert tick_run(instance, resources).success


def flush_and_ingest(instance, resources, monkeypatch) -> None:
    """A tick run with the queue due: it is flushed (and what ended, ingested)."""
    monkeypatch.setenv("BATCH_FLUSH_MAX_AGE_SECONDS", "0")
    assert tick_run(instance, resources).success
    monkeypatch.setenv("BATCH_FLUSH_MAX_AGE_SECONDS", "60")


def keys(result) -> list[str]:
    return [r.run_key for r in result.run_requests] if isinstance(result, dg.SensorResult) else []


# -- session steps ---------------------------------------------------------------------------------


def test_a_new_session_gets_one_tick_run_requested_idempotently(instance, resources):
    assert launch(instance, resources, "s1").success
    ledger_path = resources["ledger"].ledger().path
    before = file_digest(ledger_path)

    first = tick(instance, resources)
    (request,) = first.run_requests
    assert request.run_key.startswith("tick:") and request.run_key.endswith(":a0") and request.partition_key is None
    assert "1 session step(s) due: s1 (the round has no requests yet)" in request.tags["batch_pipeline/tick_reason"]
    assert keys(tick(instance, resources)) == [request.run_key], "same state, same key"
    assert file_digest(ledger_path) == before, "a tick writes nothing to the ledger"


def test_a_hundred_ready_sessions_are_one_run_not_a_hundred(instance, resources):
    runtime = runtime_from(resources["openai"], resources["ledger"], resources["image_store"])
    params = SearchParams(N=4, M=2, K=2, E=2)
    for i in range(100):
        runtime.sessions.start(SessionConfig(prompt=f"a fox {i}", params=params, session_id=f"s{i:03d}"))
    result = tick(instance, resources)
    assert len(result.run_requests) == 1
    assert "100 session step(s) due" in result.run_requests[0].tags["batch_pipeline/tick_reason"]


def test_nothing_is_due_while_requests_are_out_then_the_answered_round_is(instance, resources, monkeypatch):
    assert launch(instance, resources, "s1").success
    queue_round(instance, resources)
    waiting = tick(instance, resources)
    assert keys(waiting) == [] and "nothing due" in waiting.skip_reason.skip_message, "queued, younger than 60 s"
    monkeypatch.setenv("BATCH_FLUSH_MAX_REQUESTS", "4")
    (_flush_key,) = keys(tick(instance, resources))
    assert "flush: 4 queued >= 4" in tick(instance, resources).run_requests[0].tags["batch_pipeline/tick_reason"]
    monkeypatch.setenv("BATCH_FLUSH_MAX_REQUESTS", "1000")
    # Flushed; the simulator ends the batch at once and the same run ingests it, applies the round and, the
    # queue being due at once, sends the image round too: what is due next is that batch's ingestion.
    flush_and_ingest(instance, resources, monkeypatch)
    time.sleep(0.2)
    (request,) = tick(instance, resources).run_requests
    assert request.tags["batch_pipeline/tick_reason"] == "1 batch(es) ended"


def test_a_failed_tick_run_is_requested_again_under_a_new_attempt_key(instance, resources):
    assert launch(instance, resources, "s1").success
    (key,) = keys(tick(instance, resources))
    record_prior_run(instance, "tick_job", key, "pipeline_sensor", failed=True)
    assert keys(tick(instance, resources)) == [key.replace(":a0", ":a1")]
    record_prior_run(instance, "tick_job", key.replace(":a0", ":a1"), "pipeline_sensor", failed=True)
    assert keys(tick(instance, resources)) == [key.replace(":a0", ":a2")]


def test_no_second_tick_run_while_one_is_queued_or_running(instance, resources):
    assert launch(instance, resources, "s1").success
    record_prior_run(instance, "tick_job", "other-key", "pipeline_sensor", failed=False)
    waiting = tick(instance, resources)
    assert keys(waiting) == [] and "a tick run is already queued or running" in waiting.skip_reason.skip_message


def test_the_partition_of_a_session_whose_launch_died_before_adding_it_is_added(instance, resources):
    runtime = runtime_from(resources["openai"], resources["ledger"], resources["image_store"])
    runtime.sessions.start(SessionConfig(prompt="a fox", params=SearchParams(N=4, M=2, K=2, E=2), session_id="orphan"))
    result = tick(instance, resources)
    (add,) = result.dynamic_partitions_requests
    assert add.partitions_def_name == "sessions" and list(add.partition_keys) == ["orphan"]
    assert len(keys(result)) == 1


def test_sessions_of_the_cli_and_the_http_api_are_left_to_their_own_drivers(instance, resources):
    runtime = runtime_from(resources["openai"], resources["ledger"], resources["image_store"])
    params = SearchParams(N=4, M=2, K=2, E=2)
    for driver in ("cli", "api"):
        runtime.sessions.start(SessionConfig(prompt="a fox", params=params, session_id=driver, driver=driver))
    result = tick(instance, resources)
    assert keys(result) == [] and not result.dynamic_partitions_requests, "a second driver would send them twice"
    runtime.sessions.start(SessionConfig(prompt="a fox", params=params, session_id="dagster"))
    result = tick(instance, resources)
    assert "1 session step(s) due: dagster " in result.run_requests[0].tags["batch_pipeline/tick_reason"]
    (add,) = result.dynamic_partitions_requests
    assert list(add.partition_keys) == ["dagster"]


def test_a_retry_step_after_an_expired_batch_is_asked_for_once(instance, resources, sim, monkeypatch):
    assert launch(instance, resources, "s1").success
    queue_round(instance, resources)
    sim.add_fault(FaultRule(kind="expire", nth=1, times=1, params={"complete_fraction": 0}))
    monkeypatch.setenv("BATCH_FLUSH_MAX_REQUESTS", "4")
    assert tick_run(instance, resources).success  # sent, expired at once, ingested: the requests are queued again
    monkeypatch.setenv("BATCH_FLUSH_MAX_REQUESTS", "1000")
    first = tick(instance, resources)
    assert (
        "s1 (requests are back in the queue after 1 attempt(s))"
        in first.run_requests[0].tags["batch_pipeline/tick_reason"]
    )
    assert json.loads(first.cursor)["r"] == ["s1:i0:text:retry1"]
    assert keys(tick(instance, resources, cursor=first.cursor)) == [], "asked for once"


def test_a_tick_is_skipped_while_a_writer_holds_the_ledger(instance, resources):
    assert launch(instance, resources, "s1").success
    path = resources["ledger"].ledger().path
    holder = hold_lock(path, 4)
    try:
        started = time.monotonic()
        result = tick(instance, resources)
        assert isinstance(result, dg.SkipReason) and "ledger busy" in result.skip_message
        assert time.monotonic() - started < 3.5, "the sensor gives up quickly instead of holding the tick"
    finally:
        holder.wait(timeout=10)
    assert len(keys(tick(instance, resources))) == 1


# -- flushes ----------------------------------------------------------------------------------------


def test_half_sent_batches_are_due_in_immediate_mode(instance, resources, monkeypatch):
    assert launch(instance, resources, "s1").success
    queue_round(instance, resources)
    monkeypatch.setenv("BATCH_API_MODE", "immediate")
    # A crash right after the intent was recorded: the requests are `submitted`, nothing was sent.
    ledger = resources["ledger"].ledger()
    rows = ledger.queued_rows()
    ledger.create_batch_intent("bpb_crashed", rows[0].endpoint, rows[0].model, rows)
    (request,) = tick(instance, resources).run_requests
    assert "flush: 1 half-sent batch(es) to resume" in request.tags["batch_pipeline/tick_reason"]
    assert tick_run(instance, resources).success
    assert ledger.batch("bpb_crashed").phase in ("created", "ingested")


def test_a_batch_whose_create_went_unanswered_is_resumed_only_once_it_could_no_longer_land(
    instance, resources, monkeypatch
):
    assert launch(instance, resources, "s1").success
    queue_round(instance, resources)
    monkeypatch.setenv("BATCH_API_MODE", "immediate")
    monkeypatch.setenv("BATCH_CREATE_TIMEOUT_SECONDS", "1")  # it may land up to 1 + 30 s after it was sent
    # A worker uploaded the file, sent the create and died before any answer.
    path = resources["ledger"].ledger().path
    ledger = Ledger(path)
    rows = ledger.queued_rows()
    ledger.create_batch_intent("bpb_died", rows[0].endpoint, rows[0].model, rows)
    ledger.mark_uploaded("bpb_died", "file-uploaded")
    ledger.mark_create_sent("bpb_died")
    waiting = tick(instance, resources)
    assert keys(waiting) == [] and "nothing due" in waiting.skip_reason.skip_message

    Ledger(path, clock=lambda: time.time() - 32).mark_create_sent("bpb_died")  # as if sent 32 s ago
    (request,) = tick(instance, resources).run_requests
    assert "half-sent batch(es) to resume" in request.tags["batch_pipeline/tick_reason"]


# -- polling batches --------------------------------------------------------------------------------

SLOW_PHASES = {"validating": 10, "in_progress": 10, "finalizing": 10}


@pytest.mark.parametrize("phase_seconds", [SLOW_PHASES])
def test_batches_are_polled_with_one_list_call_and_a_tick_is_due_when_they_end(
    instance, resources, sim_clock, monkeypatch
):
    monkeypatch.setenv("BATCH_MAX_REQUESTS_PER_FILE", "1")  # four batches for the four text requests
    resources = resources | {"openai": CountingOpenAIResource(api_key="sk-test", base_url=resources["openai"].base_url)}
    assert launch(instance, resources, "s1").success
    flush_and_ingest(instance, resources, monkeypatch)
    ledger_path = resources["ledger"].ledger().path
    before = file_digest(ledger_path)

    time.sleep(0.2)  # the first poll is due BATCH_POLL_INTERVAL_MS (100 ms) after creation
    API_CALLS.clear()
    first = tick(instance, resources)
    assert API_CALLS == [("GET", "/v1/batches")], "four batches, one list call"
    cursor = json.loads(first.cursor)
    assert len(cursor["b"]) == 4 and all(polls == 1 for polls, _, _, ended in cursor["b"].values())
    assert keys(first) == [] and "4 batch(es) watched, 4 polled; nothing due" in first.skip_reason.skip_message

    monkeypatch.setenv("BATCH_POLL_INTERVAL_MS", "600000")
    API_CALLS.clear()
    quiet = tick(instance, resources, cursor=first.cursor)
    assert API_CALLS == [] and keys(quiet) == [], "no batch is due: the tick makes no call"
    monkeypatch.setenv("BATCH_POLL_INTERVAL_MS", "100")

    sim_clock.advance(25)  # all four are finalizing: their lines are done, the batches are not
    time.sleep(0.4)
    finalizing = tick(instance, resources, cursor=quiet.cursor)
    assert keys(finalizing) == [], "finalizing is not ended"

    sim_clock.advance(10)
    time.sleep(0.4)
    ended = tick(instance, resources, cursor=finalizing.cursor)
    (request,) = ended.run_requests
    assert "4 batch(es) ended" in request.tags["batch_pipeline/tick_reason"]
    assert {e for *_, e in json.loads(ended.cursor)["b"].values()} == {"completed"}
    API_CALLS.clear()
    assert keys(tick(instance, resources, cursor=ended.cursor)) == [request.run_key], "idempotent; no poll needed"
    assert API_CALLS == []
    assert file_digest(ledger_path) == before, "ticks never write the ledger"

    API_CALLS.clear()
    assert tick_run(instance, resources).success
    assert API_CALLS.count(("GET", "/v1/batches")) <= 2 and not [
        c for c in API_CALLS if c[1].startswith("/v1/batches/")
    ], "the run reads the ended batches from one list walk, not once more each"
    done = tick(instance, resources, cursor=ended.cursor)
    assert BatchCursor.from_json(done.cursor).batches == {}, "ingested batches leave the cursor"


@pytest.mark.parametrize("phase_seconds", [SLOW_PHASES])
def test_a_failed_poll_backs_off_and_keeps_the_batch(instance, resources, monkeypatch):
    assert launch(instance, resources, "s1").success
    flush_and_ingest(instance, resources, monkeypatch)
    time.sleep(0.2)
    broken = resources | {"openai": OpenAIResource(api_key="sk-test", base_url="http://127.0.0.1:9/v1", timeout_s=1)}
    result = tick(instance, broken)
    ((polls, _last, errors, ended),) = json.loads(result.cursor)["b"].values()
    assert (polls, errors, ended) == (0, 1, None)
    assert keys(result) == []
