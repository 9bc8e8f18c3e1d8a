"""The one sensor that moves sessions forward: it watches batches until they end and requests a tick run
when a session step, a flush or an ingestion is due.

Thin: it reads the ledger read-only (one short bounded wait, never a write), asks `decisions.py` what is
due and returns at most one RunRequest per tick whatever the number of sessions; its run key makes a
repeated tick harmless and a failed run retryable.
"""

import time
from collections.abc import Callable, Iterable
from typing import TypeVar

import dagster as dg
import openai as openai_sdk

from batch_pipeline.batching.lifecycle import create_settle_s, find_batches
from batch_pipeline.batching.polling import PollPolicy
from batch_pipeline.defs.batch_assets import tick_job
from batch_pipeline.defs.decisions import (
    BatchCursor,
    due_for_poll,
    ended_batches,
    next_attempt,
    record_polls,
    tick_due,
)
from batch_pipeline.defs.launch import SESSIONS, SESSIONS_NAME
from batch_pipeline.defs.resources import LedgerResource, OpenAIResource
from batch_pipeline.defs.run_history import prior_runs, runs_in_progress
from batch_pipeline.errors import LedgerBusy
from batch_pipeline.ledger.reader import LedgerReader, WatchedBatch
from batch_pipeline.settings import load_settings

# Per tick, batches missing from the list are fetched one by one; past this many they wait a tick,
# so a tick stays short however many batches fell out of the list window.
MAX_RETRIEVES_PER_TICK = 50
# How far past the oldest due batch the list walk goes before giving up on finding it there.
LIST_SLACK_S = 3600
T = TypeVar("T")

# Dagster fixes a sensor's interval when the code location loads; an invalid value fails the load naming it.
INTERVAL_S = load_settings().batch_sensor_interval_seconds


def read_ledger(
    context: dg.SensorEvaluationContext, ledger: LedgerResource, read: Callable[[LedgerReader, float], T]
) -> tuple[T, float] | dg.SkipReason:
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


def poll_remote(client: openai_sdk.OpenAI, due: list[WatchedBatch], watched: Iterable[WatchedBatch]) -> dict[str, str]:
    """Remote status of every due batch (and of any other watched batch the walk passes), by batch id.

    1,000 batches cost 10 list pages, not 1,000 calls; at most MAX_RETRIEVES_PER_TICK stragglers the
    list walk missed are fetched one by one, the rest wait a tick.
    """
    found = find_batches(
        client,
        [b.openai_batch_id for b in due],
        also=[b.openai_batch_id for b in watched],
        created_after=min(b.created_at for b in due) - LIST_SLACK_S,
        max_retrieves=MAX_RETRIEVES_PER_TICK,
    )
    return {batch_id: remote.status for batch_id, remote in found.items()}


@dg.sensor(
    name="pipeline_sensor",
    job=tick_job,
    minimum_interval_seconds=INTERVAL_S,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Requests one tick run (tick_job) when any running session's round is ready (not queued yet, "
    "all answered, or back from a failed batch), a flush is due (deferred mode: queue size or age; "
    "any mode: a half-sent batch) or a batch ended. Polls in-flight batches with one paginated list "
    "call, each on its own backoff (state in the cursor). Reads the ledger read-only, never writes.",
)
def pipeline_sensor(
    context: dg.SensorEvaluationContext, ledger: LedgerResource, openai: OpenAIResource
) -> dg.SensorResult | dg.SkipReason:
    settings = load_settings()
    settle_s = create_settle_s(settings.batch_create_timeout_seconds)
    snapshot = read_ledger(context, ledger, lambda reader, at: reader.tick_snapshot(settled_before=at - settle_s))
    if isinstance(snapshot, dg.SkipReason):
        return snapshot
    (rounds, queue, watched), snapshot_at = snapshot
    cursor = BatchCursor.from_json(context.cursor)
    cursor.prune(watched)
    due_polls = due_for_poll(watched, cursor, PollPolicy(initial_s=settings.batch_poll_interval_ms / 1000), snapshot_at)
    if due_polls:
        try:
            seen = poll_remote(openai.get_client(), due_polls, watched)
            record_polls(cursor, watched, due_polls, seen, time.time())
        except openai_sdk.OpenAIError as exc:
            # A failed poll is not a failed batch: back off harder and look again later.
            context.log.warning(f"polling {len(due_polls)} batch(es) failed: {type(exc).__name__}: {exc}")
            record_polls(cursor, watched, due_polls, {}, time.time(), failed=True)
    due = tick_due(
        rounds,
        queue,
        ended_batches(watched, cursor),
        cursor,
        mode=settings.batch_api_mode,
        max_requests=settings.batch_flush_max_requests,
        max_age_s=settings.batch_flush_max_age_seconds,
        now=snapshot_at,
    )
    # A session whose launch run died before adding its partition still gets one here.
    known = set(context.instance.get_dynamic_partitions(SESSIONS_NAME))
    missing = sorted({r.session_id for r in rounds} - known)
    partitions = [SESSIONS.build_add_request(missing)] if missing else None
    summary = (
        f"{len(rounds)} running session(s), {queue.queued} queued, {len(watched)} batch(es) watched, "
        f"{len(due_polls)} polled"
    )
    if due is None:
        return dg.SensorResult(
            cursor=cursor.to_json(), dynamic_partitions_requests=partitions, skip_reason=f"{summary}; nothing due"
        )
    if runs_in_progress(context.instance, tick_job.name):
        return dg.SensorResult(
            cursor=cursor.to_json(),
            dynamic_partitions_requests=partitions,
            skip_reason=f"{summary}; a tick run is already queued or running",
        )
    attempt = next_attempt(due.base_key, prior_runs(context.instance, context.sensor_name), snapshot_at=snapshot_at)
    if attempt is None:
        return dg.SensorResult(
            cursor=cursor.to_json(),
            dynamic_partitions_requests=partitions,
            skip_reason=f"{summary}; {due.base_key} waits for its previous run",
        )
    cursor.requested_retries |= due.retries
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(run_key=f"{due.base_key}:a{attempt}", tags={"batch_pipeline/tick_reason": due.reason[:2000]})
        ],
        cursor=cursor.to_json(),
        dynamic_partitions_requests=partitions,
    )


ALL_SENSORS = [pipeline_sensor]
