"""The sensors, called with built contexts: run requests, run keys, cursors, and a ledger they never change."""
from __future__ import annotations

import json
import time

import dagster as dg
import httpx2
import openai
import pytest

from batch_pipeline.defs.decisions import BatchCursor
from batch_pipeline.defs.resources import OpenAIResource, runtime_from
from batch_pipeline.defs.sensors import batch_sensor, flush_sensor, session_driver_sensor
from batch_pipeline.ledger import Ledger
from batch_pipeline.search import SearchParams
from batch_pipeline.sessions import SessionConfig
from batch_pipeline.simulator import FaultRule
from tests.lock_holder import hold_lock
from tests.defs.support import file_digest, flush, ingest, launch, record_prior_run, step

API_CALLS: list[tuple[str, str]] = []


class CountingOpenAIResource(OpenAIResource):
    """The real client, recording every HTTP call it makes (method, path)."""

    def get_client(self) -> openai.OpenAI:
        hook = lambda request: API_CALLS.append((request.method, request.url.path))  # noqa: E731
        return openai.OpenAI(api_key=self.api_key, base_url=self.base_url,
                             http_client=httpx2.Client(event_hooks={"request": [hook]}))


def tick(sensor, instance, resources, cursor=None):
    context = dg.build_sensor_context(instance=instance, resources=resources, cursor=cursor, sensor_name=sensor.name)
    return sensor(context)


def keys(result) -> list[str]:
    return [r.run_key for r in result.run_requests] if isinstance(result, dg.SensorResult) else []


# -- session_driver_sensor --------------------------------------------------------------------------

def test_driver_requests_the_first_step_of_a_new_session_idempotently(instance, resources):
    assert launch(instance, resources, "s1").success
    ledger_path = resources["ledger"].ledger().path
    before = file_digest(ledger_path)

    first = tick(session_driver_sensor, instance, resources)
    (request,) = first.run_requests
    assert (request.run_key, request.partition_key, request.job_name) == ("s1:i0:text:queue:a0", "s1", None)
    assert request.tags["batch_pipeline/step_reason"] == "the round has no requests yet"
    assert keys(tick(session_driver_sensor, instance, resources)) == ["s1:i0:text:queue:a0"], "same state, same key"
    assert file_digest(ledger_path) == before, "a tick writes nothing to the ledger"


def test_driver_waits_while_requests_are_out_then_requests_the_apply_step(instance, resources):
    assert launch(instance, resources, "s1").success
    step(instance, resources, "s1")
    waiting = tick(session_driver_sensor, instance, resources)
    assert keys(waiting) == [] and "none ready" in waiting.skip_reason.skip_message
    flush(instance, resources)
    assert keys(tick(session_driver_sensor, instance, resources)) == [], "submitted, not answered"
    ingest(instance, resources)
    assert keys(tick(session_driver_sensor, instance, resources)) == ["s1:i0:text:apply:a0"]


def test_driver_retries_a_failed_step_under_a_new_attempt_key(instance, resources):
    assert launch(instance, resources, "s1").success
    record_prior_run(instance, "session_step_job", "s1:i0:text:queue:a0", "session_driver_sensor", failed=True)
    assert keys(tick(session_driver_sensor, instance, resources)) == ["s1:i0:text:queue:a1"]
    record_prior_run(instance, "session_step_job", "s1:i0:text:queue:a1", "session_driver_sensor", failed=True)
    assert keys(tick(session_driver_sensor, instance, resources)) == ["s1:i0:text:queue:a2"]


def test_driver_leaves_a_session_alone_while_a_step_of_it_is_queued_or_running(instance, resources):
    for sid in ("s1", "s2"):
        assert launch(instance, resources, sid).success
    record_prior_run(instance, "session_step_job", "other-key", "session_driver_sensor", failed=False, partition="s1")
    assert keys(tick(session_driver_sensor, instance, resources)) == ["s2:i0:text:queue:a0"]


def test_driver_adds_the_partition_of_a_session_whose_launch_died_before_adding_it(instance, resources):
    runtime = runtime_from(resources["openai"], resources["ledger"], resources["image_store"])
    runtime.sessions.start(SessionConfig(prompt="a fox", params=SearchParams(N=4, M=2, K=2, E=2), session_id="orphan"))
    result = tick(session_driver_sensor, instance, resources)
    (add,) = result.dynamic_partitions_requests
    assert add.partitions_def_name == "sessions" and list(add.partition_keys) == ["orphan"]
    assert keys(result) == ["orphan:i0:text:queue:a0"]


def test_driver_leaves_sessions_of_the_cli_and_the_http_api_to_their_own_drivers(instance, resources):
    runtime = runtime_from(resources["openai"], resources["ledger"], resources["image_store"])
    params = SearchParams(N=4, M=2, K=2, E=2)
    for driver in ("cli", "api", "dagster"):
        runtime.sessions.start(SessionConfig(prompt="a fox", params=params, session_id=driver, driver=driver))
    result = tick(session_driver_sensor, instance, resources)
    assert keys(result) == ["dagster:i0:text:queue:a0"], "a second driver would submit the same rounds twice"
    (add,) = result.dynamic_partitions_requests
    assert list(add.partition_keys) == ["dagster"]


def test_driver_requests_a_retry_step_when_a_batch_expired_and_its_requests_are_queued_again(instance, resources, sim):
    assert launch(instance, resources, "s1").success
    step(instance, resources, "s1")
    sim.add_fault(FaultRule(kind="expire", nth=1, times=1, params={"complete_fraction": 0}))
    flush(instance, resources)
    ingest(instance, resources)
    assert keys(tick(session_driver_sensor, instance, resources)) == ["s1:i0:text:retry1:a0"]


def test_driver_skips_a_tick_while_a_writer_holds_the_ledger(instance, resources):
    assert launch(instance, resources, "s1").success
    path = resources["ledger"].ledger().path
    holder = hold_lock(path, 4)
    try:
        started = time.monotonic()
        result = tick(session_driver_sensor, instance, resources)
        assert isinstance(result, dg.SkipReason) and "ledger busy" in result.skip_message
        assert time.monotonic() - started < 3.5, "the sensor gives up quickly instead of holding the tick"
    finally:
        holder.wait(timeout=10)
    assert keys(tick(session_driver_sensor, instance, resources)) == ["s1:i0:text:queue:a0"]


# -- flush_sensor -----------------------------------------------------------------------------------

def test_flush_waits_for_size_or_age_then_requests_a_flush_keyed_by_the_queue(instance, resources, monkeypatch):
    for sid in ("s1", "s2"):
        assert launch(instance, resources, sid).success
        step(instance, resources, sid)
    before = file_digest(resources["ledger"].ledger().path)
    assert isinstance(tick(flush_sensor, instance, resources), dg.SkipReason), "8 queued < 1000, and younger than 60 s"

    monkeypatch.setenv("BATCH_FLUSH_MAX_REQUESTS", "8")
    (key,) = keys(tick(flush_sensor, instance, resources))
    assert key.startswith("flush:q") and key.endswith("-8:a0")
    monkeypatch.setenv("BATCH_FLUSH_MAX_REQUESTS", "1000")
    monkeypatch.setenv("BATCH_FLUSH_MAX_AGE_SECONDS", "0")
    assert keys(tick(flush_sensor, instance, resources)) == [key], "the same queue gets the same key"
    assert file_digest(resources["ledger"].ledger().path) == before

    record_prior_run(instance, "flush_batches_job", key, "flush_sensor", failed=True)
    assert keys(tick(flush_sensor, instance, resources)) == [key.replace(":a0", ":a1")]
    flush(instance, resources)
    assert isinstance(tick(flush_sensor, instance, resources), dg.SkipReason), "the queue is empty"


def test_flush_does_nothing_in_immediate_mode_but_finishes_half_sent_batches(instance, resources, monkeypatch):
    assert launch(instance, resources, "s1").success
    step(instance, resources, "s1")
    monkeypatch.setenv("BATCH_API_MODE", "immediate")
    monkeypatch.setenv("BATCH_FLUSH_MAX_AGE_SECONDS", "0")
    skipped = tick(flush_sensor, instance, resources)
    assert isinstance(skipped, dg.SkipReason) and "mode immediate" in skipped.skip_message

    # A crash right after the intent was recorded: the requests are `submitted`, nothing was sent.
    ledger = resources["ledger"].ledger()
    rows = ledger.queued_rows()
    ledger.create_batch_intent("bpb_crashed", rows[0].endpoint, rows[0].model, rows)
    (key,) = keys(tick(flush_sensor, instance, resources))
    assert key.startswith("flush:resume-")
    flush(instance, resources)
    assert ledger.batch("bpb_crashed").phase == "created"


def test_flush_resumes_a_batch_whose_create_went_unanswered_only_once_it_could_no_longer_land(
        instance, resources, monkeypatch):
    assert launch(instance, resources, "s1").success
    step(instance, resources, "s1")
    monkeypatch.setenv("BATCH_API_MODE", "immediate")
    monkeypatch.setenv("BATCH_CREATE_TIMEOUT_SECONDS", "1")  # it may land up to 1 + 30 s after it was sent
    # A worker uploaded the file, sent the create and died before any answer.
    path = resources["ledger"].ledger().path
    ledger = Ledger(path)
    rows = ledger.queued_rows()
    ledger.create_batch_intent("bpb_died", rows[0].endpoint, rows[0].model, rows)
    ledger.mark_uploaded("bpb_died", "file-uploaded")
    ledger.mark_create_sent("bpb_died")
    waiting = tick(flush_sensor, instance, resources)
    assert isinstance(waiting, dg.SkipReason) and "1 half-sent batch(es) wait for a late create" in waiting.skip_message

    Ledger(path, clock=lambda: time.time() - 32).mark_create_sent("bpb_died")  # as if sent 32 s ago
    (key,) = keys(tick(flush_sensor, instance, resources))
    assert key.startswith("flush:resume-")


# -- batch_sensor -----------------------------------------------------------------------------------

SLOW_PHASES = {"validating": 10, "in_progress": 10, "finalizing": 10}


@pytest.mark.parametrize("phase_seconds", [SLOW_PHASES])
def test_batch_sensor_polls_with_one_list_call_and_requests_ingestion_when_batches_end(
        instance, resources, sim_clock, monkeypatch):
    monkeypatch.setenv("BATCH_MAX_REQUESTS_PER_FILE", "1")  # four batches for the four text requests
    resources = resources | {"openai": CountingOpenAIResource(api_key="sk-test", base_url=resources["openai"].base_url)}
    assert launch(instance, resources, "s1").success
    step(instance, resources, "s1")
    flush(instance, resources)
    ledger_path = resources["ledger"].ledger().path
    before = file_digest(ledger_path)

    time.sleep(0.2)  # the first poll is due BATCH_POLL_INTERVAL_MS (100 ms) after creation
    API_CALLS.clear()
    first = tick(batch_sensor, instance, resources)
    assert API_CALLS == [("GET", "/v1/batches")], "four batches, one list call"
    cursor = json.loads(first.cursor)
    assert len(cursor["b"]) == 4 and all(polls == 1 for polls, _, _, ended in cursor["b"].values())
    assert keys(first) == [] and "4 watched, 4 polled, 0 ended" in first.skip_reason.skip_message

    monkeypatch.setenv("BATCH_POLL_INTERVAL_MS", "600000")
    API_CALLS.clear()
    quiet = tick(batch_sensor, instance, resources, cursor=first.cursor)
    assert API_CALLS == [] and keys(quiet) == [], "no batch is due: the tick makes no call"
    monkeypatch.setenv("BATCH_POLL_INTERVAL_MS", "100")

    sim_clock.advance(25)  # all four are finalizing: their lines are done, the batches are not
    time.sleep(0.4)
    finalizing = tick(batch_sensor, instance, resources, cursor=quiet.cursor)
    assert keys(finalizing) == [], "finalizing is not ended"

    sim_clock.advance(10)
    time.sleep(0.4)
    ended = tick(batch_sensor, instance, resources, cursor=finalizing.cursor)
    (key,) = keys(ended)
    assert key.startswith("ingest:") and key.endswith(":a0")
    assert {e for *_, e in json.loads(ended.cursor)["b"].values()} == {"completed"}
    API_CALLS.clear()
    assert keys(tick(batch_sensor, instance, resources, cursor=ended.cursor)) == [key], "idempotent; no poll needed"
    assert API_CALLS == []
    assert file_digest(ledger_path) == before, "ticks never write the ledger"

    record_prior_run(instance, "ingest_batches_job", key, "batch_sensor", failed=True)
    assert keys(tick(batch_sensor, instance, resources, cursor=ended.cursor)) == [key.replace(":a0", ":a1")]

    assert ingest(instance, resources).success
    done = tick(batch_sensor, instance, resources, cursor=ended.cursor)
    assert keys(done) == [] and BatchCursor.from_json(done.cursor).batches == {}, "ingested batches leave the cursor"


@pytest.mark.parametrize("phase_seconds", [SLOW_PHASES])
def test_a_failed_poll_backs_off_and_keeps_the_batch(instance, resources, monkeypatch):
    assert launch(instance, resources, "s1").success
    step(instance, resources, "s1")
    flush(instance, resources)
    time.sleep(0.2)
    broken = resources | {"openai": OpenAIResource(api_key="sk-test", base_url="http://127.0.0.1:9/v1", timeout_s=1)}
    result = tick(batch_sensor, instance, broken)
    ((polls, _last, errors, ended),) = json.loads(result.cursor)["b"].values()
    assert (polls, errors, ended) == (0, 1, None)
    assert keys(result) == []
