"""The three sensors that move sessions forward: drive steps, flush the queue, watch batches until they end.

Thin: each reads the ledger read-only (a short bounded wait, never a write), asks `decisions.py` what is
due and returns RunRequests whose run keys make a repeated tick harmless and a failed run retryable.
"""

import time
from collections.abc import Callable, Iterable
from typing import TypeVar

import dagster as dg
import openai as openai_sdk

from batch_pipeline.batching.jobs import create_settle_s, find_batches
from batch_pipeline.batching.polling import PollPolicy
from batch_pipeline.defs.batch_assets import flush_batches_job, ingest_batches_job
from batch_pipeline.defs.decisions import (
    BatchCursor,
    due_for_poll,
    ended_batches,
    flush_due,
    ingest_base_key,
    next_attempt,
    record_polls,
    step_due,
)
from batch_pipeline.defs.launch import SESSIONS
from batch_pipeline.defs.resources import LedgerResource, OpenAIResource
from batch_pipeline.defs.run_history import PARTITION_TAG, prior_runs, runs_in_progress
from batch_pipeline.defs.session_assets import session_step_job
from batch_pipeline.errors import LedgerBusy
from batch_pipeline.ledger.reports import LedgerReader, WatchedBatch
from batch_pipeline.settings import load_settings

# Per tick, batches missing from the list are fetched one by one; past this many they wait a tick,
# so a tick stays short however many batches fell out of the list window.
MAX_RETRIEVES_PER_TICK = 50
# How far past the oldest due batch the list walk goes before giving up on finding it there.
LIST_SLACK_S = 3600
T = TypeVar("T")

# Dagster fixes a sensor's interval when the code location loads; an invalid value fails the load naming it.
INTERVAL_S = load_settings().batch_sensor_interval_seconds


def read_ledger(context: dg.SensorEvaluationContext, ledger: LedgerResource,
                read: Callable[[LedgerReader, float], T]) -> tuple[T, float] | dg.SkipReason:
    """One read-only look at the ledger and the time it was taken, or why this tick skips.

    A writer holding the file for longer than the reader's short wait skips the tick; the cursor is not
    returned then, so it does not move and the next tick repeats this one.
    """
    reader = ledger.reader()
    if not reader.exists():
        return dg.SkipReason("no ledger yet: launch a session with the launch_session job")
    snapshot_at = time.time()
    try:
        return read(reader, snapshot_at), snapshot_at
    except LedgerBusy as exc:
        context.log.info(f"skipping this tick: {exc}")
        return dg.SkipReason(f"ledger busy: {exc}")


@dg.sensor(
    name="session_driver_sensor", job=session_step_job, minimum_interval_seconds=INTERVAL_S,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Requests the next step of every running session whose current round is ready: not queued "
                "yet, all answered, or back from a failed batch. Reads the ledger read-only.")
def session_driver_sensor(context: dg.SensorEvaluationContext, ledger: LedgerResource) -> dg.SensorResult | dg.SkipReason:
    snapshot = read_ledger(context, ledger, lambda reader, _at: reader.running_session_rounds())
    if isinstance(snapshot, dg.SkipReason):
        return snapshot
    rounds, snapshot_at = snapshot
    known = set(context.instance.get_dynamic_partitions(SESSIONS.name))
    stepping = {run.tags.get(PARTITION_TAG) for run in runs_in_progress(context.instance, session_step_job.name)}
    lookup = prior_runs(context.instance, context.sensor_name)
    requests = []
    for r in rounds:
        due = step_due(r)
        if due is None or r.session_id in stepping:
            continue
        attempt = next_attempt(due.base_key, lookup, snapshot_at=snapshot_at,
                               again_after_success=due.again_after_success)
        if attempt is None:
            continue
        requests.append(dg.RunRequest(run_key=f"{due.base_key}:a{attempt}", partition_key=r.session_id,
                                      tags={"batch_pipeline/step_reason": due.reason}))
    # A session whose launch run died before adding its partition still gets one here.
    missing = sorted({r.session_id for r in rounds} - known)
    return dg.SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=[SESSIONS.build_add_request(missing)] if missing else None,
        skip_reason=None if requests else f"{len(rounds)} running session(s), none ready for a step")


@dg.sensor(
    name="flush_sensor", job=flush_batches_job, minimum_interval_seconds=INTERVAL_S,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Deferred mode: flushes the batch-tier queue of all sessions when it reaches "
                "BATCH_FLUSH_MAX_REQUESTS or its oldest request BATCH_FLUSH_MAX_AGE_SECONDS. Both modes: "
                "finishes batches a crash left half-sent.")
def flush_sensor(context: dg.SensorEvaluationContext, ledger: LedgerResource) -> dg.SensorResult | dg.SkipReason:
    settings = load_settings()
    settle_s = create_settle_s(settings.batch_create_timeout_seconds)
    snapshot = read_ledger(context, ledger, lambda reader, at: reader.queue_state(settled_before=at - settle_s))
    if isinstance(snapshot, dg.SkipReason):
        return snapshot
    queue, snapshot_at = snapshot
    due = flush_due(queue, mode=settings.batch_api_mode, max_requests=settings.batch_flush_max_requests,
                    max_age_s=settings.batch_flush_max_age_seconds, now=snapshot_at)
    if due is None:
        settling = f"; {queue.settling} half-sent batch(es) wait for a late create to land" if queue.settling else ""
        return dg.SkipReason(f"{queue.queued} batch-tier request(s) queued; no flush due "
                             f"(mode {settings.batch_api_mode}){settling}")
    if runs_in_progress(context.instance, flush_batches_job.name):
        return dg.SkipReason("a flush run is already queued or running")
    attempt = next_attempt(due.base_key, prior_runs(context.instance, context.sensor_name), snapshot_at=snapshot_at)
    if attempt is None:
        return dg.SkipReason(f"flush {due.base_key} waits for its previous run")
    return dg.SensorResult(run_requests=[dg.RunRequest(run_key=f"{due.base_key}:a{attempt}",
                                                       tags={"batch_pipeline/flush_reason": due.reason})])


def poll_remote(client: openai_sdk.OpenAI, due: list[WatchedBatch], watched: Iterable[WatchedBatch]) -> dict[str, str]:
    """Remote status of every due batch (and of any other watched batch the walk passes), by batch id.

    1,000 batches cost 10 list pages, not 1,000 calls; at most MAX_RETRIEVES_PER_TICK stragglers the
    list walk missed are fetched one by one, the rest wait a tick.
    """
    found = find_batches(client, [b.openai_batch_id for b in due], also=[b.openai_batch_id for b in watched],
                         created_after=min(b.created_at for b in due) - LIST_SLACK_S,
                         max_retrieves=MAX_RETRIEVES_PER_TICK)
    return {batch_id: remote.status for batch_id, remote in found.items()}


@dg.sensor(
    name="batch_sensor", job=ingest_batches_job, minimum_interval_seconds=INTERVAL_S,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Polls in-flight batches with one paginated list call, each batch on its own backoff "
                "(state in the cursor), and requests an ingestion run when any has ended. Never writes the ledger.")
def batch_sensor(context: dg.SensorEvaluationContext, ledger: LedgerResource,
                 openai: OpenAIResource) -> dg.SensorResult | dg.SkipReason:
    settings = load_settings()
    policy = PollPolicy(initial_s=settings.batch_poll_interval_ms / 1000)
    snapshot = read_ledger(context, ledger, lambda reader, _at: reader.watched_batches())
    if isinstance(snapshot, dg.SkipReason):
        return snapshot
    watched, snapshot_at = snapshot
    cursor = BatchCursor.from_json(context.cursor)
    cursor.prune(watched)
    due = due_for_poll(watched, cursor, policy, snapshot_at)
    if due:
        try:
            seen = poll_remote(openai.get_client(), due, watched)
            record_polls(cursor, watched, due, seen, time.time())
        except openai_sdk.OpenAIError as exc:
            # A failed poll is not a failed batch: back off harder and look again later.
            context.log.warning(f"polling {len(due)} batch(es) failed: {type(exc).__name__}: {exc}")
            record_polls(cursor, watched, due, {}, time.time(), failed=True)
    ended = ended_batches(watched, cursor)
    requests = []
    if ended and not runs_in_progress(context.instance, ingest_batches_job.name):
        base = ingest_base_key(ended)
        attempt = next_attempt(base, prior_runs(context.instance, context.sensor_name), snapshot_at=snapshot_at)
        if attempt is not None:
            requests.append(dg.RunRequest(run_key=f"{base}:a{attempt}",
                                          tags={"batch_pipeline/ended_batches": str(len(ended))}))
    return dg.SensorResult(
        run_requests=requests, cursor=cursor.to_json(),
        skip_reason=None if requests else f"{len(watched)} watched, {len(due)} polled, {len(ended)} ended")


ALL_SENSORS = [session_driver_sensor, flush_sensor, batch_sensor]
