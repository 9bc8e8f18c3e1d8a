"""The tick run: one run moves every Dagster session, however many there are.

`pipeline_sensor` requests `tick_job` when any session is ready for a step, a flush is due or a batch
ended. The run is the core driver's tick (`Driver.tick`, as the CLI and the API worker run it) on the
runtime built once for the run and one ledger connection: recover lost calls, step every ready session
(a failing one is ended `failed` with its reason; the others go on), flush the batch-tier queue, poll
and ingest ended batches, and step again the sessions whose round those answered. In deferred mode a
flush that falls due within one sensor interval is waited for in the run rather than in a new run.
It records one materialisation per moved session on each session view's partition, and one of the
shared batch stage.
"""

import time
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import dagster as dg

from batch_pipeline.defs.checks import TICK_CHECKS, budgets_result, invariants_result, rounds_terminal_result
from batch_pipeline.defs.decisions import step_due
from batch_pipeline.defs.rendering import batches_md
from batch_pipeline.defs.resources import LEDGER_POOL, ImageStoreResource, LedgerResource, OpenAIResource, runtime_from
from batch_pipeline.defs.session_assets import changed_views, queued_requests, read_view_inputs, view_materializations
from batch_pipeline.driver import Driver, Tick
from batch_pipeline.ledger.reader import BatchOverview, LedgerReader, SessionRound
from batch_pipeline.runtime import Runtime
from batch_pipeline.sessions import SessionProgress
from batch_pipeline.vocabulary import ACTIVE_STATUSES, Tier

if TYPE_CHECKING:  # what Dagster accepts as a metadata value; it exports no public name for it
    from dagster._core.definitions.metadata import RawMetadataValue

GROUP = "batches"

session_steps = dg.AssetSpec(
    "session_steps",
    group_name="search",
    kinds={"duckdb"},
    description="What one tick run did to the sessions: how many it stepped, which moved, which failed. "
    "Each moved session's own partition of queued_requests, generated_prompts, image_candidates "
    "and ranked_results is materialised by the same run.",
)
submitted_batches = dg.AssetSpec(
    "submitted_batches",
    deps=[queued_requests],
    group_name=GROUP,
    kinds={"duckdb", "openai"},
    description=(
        "Batches sent to the Batch API. A flush plans batches from the batch-tier queue of all sessions "
        "(split by request count, bytes and the model's enqueued-token limit), records each as an intent, "
        "uploads its file and creates it; a batch half-sent by a crash is found again by its key in the "
        "remote list, never sent twice. The metadata lists recent batches with status, request counts and "
        "progress (`finalizing` shows at most 99%)."
    ),
)
batch_results = dg.AssetSpec(
    "batch_results",
    deps=[submitted_batches],
    group_name=GROUP,
    kinds={"duckdb", "openai"},
    description=(
        "Results of ended batches, mapped back to their requests by custom_id, priced and recorded in one "
        "transaction per batch: output and error files are downloaded and checked for completeness; failed "
        "or expired lines go back to the queue until their attempts run out. Ingesting a batch twice changes "
        "nothing, so a retried run is safe."
    ),
)


class ReadyDriver(Driver):
    """The core driver over Dagster's sessions that steps only those ready for a step (`step_due`: a round
    not queued yet, all answered, or back from a failed batch), as the per-session step runs did: a
    session whose batch is still out has nothing to apply, and stepping it anyway would make every tick
    cost as much as there are sessions."""

    def running(self, owned: Sequence[str] | None) -> list[str]:
        ready = {
            r.session_id
            for r in LedgerReader.within(self.runtime.ledger).running_session_rounds()
            if step_due(r) is not None
        }
        return [sid for sid in super().running(owned) if sid in ready]


def moved(before: dict[str, SessionRound], progress: SessionProgress) -> bool:
    """Did the tick change this session: a round applied or queued, or the session ended?"""
    was = before.get(progress.session_id)
    return (
        was is None
        or progress.status != "running"
        or was.requests == 0
        or (was.iteration, was.next_round) != (progress.iteration, progress.next_round)
    )


def flush_wait_s(runtime: Runtime, owned: list[str] | None, *, within_s: float) -> float | None:
    """Seconds until the deferred flush of what is queued falls due, if that is within `within_s`."""
    settings = runtime.settings
    if settings.batch_api_mode != "deferred":
        return None
    queued, oldest = runtime.ledger.queue_summary(tier=Tier.BATCH, session_ids=owned)
    if not queued or oldest is None:
        return None
    wait = oldest + settings.batch_flush_max_age_seconds - time.time()
    return max(0.0, wait) if wait <= within_s else None


def _batch_metadata(overview: list[BatchOverview]) -> "dict[str, RawMetadataValue]":
    in_flight = [b for b in overview if b.phase == "created" and (b.status is None or b.status in ACTIVE_STATUSES)]
    return {
        "batches_in_flight": len(in_flight),
        "requests_in_flight": sum(b.request_count for b in in_flight),
        "batches": dg.MetadataValue.md(batches_md(overview)),
    }


@dg.multi_asset(
    name="pipeline_tick",
    specs=[session_steps, submitted_batches, batch_results],
    check_specs=TICK_CHECKS,
    pool=LEDGER_POOL,
    description="One tick of the driver over every Dagster session: step the ready ones, flush, poll, ingest.",
)
def pipeline_tick(
    context: dg.AssetExecutionContext, openai: OpenAIResource, ledger: LedgerResource, image_store: ImageStoreResource
) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    started = time.monotonic()
    runtime = runtime_from(openai, ledger, image_store)  # once per run: settings, catalog, client, ledger
    driver = ReadyDriver(runtime, owner="dagster")
    reader = LedgerReader.within(runtime.ledger)
    with runtime.ledger.unit():
        before = {r.session_id: r for r in reader.running_session_rounds()}
        keys_before = {b.batch_key for b in runtime.ledger.batches()}
        tick = driver.tick()
    owned = driver.owned()
    wait = flush_wait_s(runtime, owned, within_s=runtime.settings.batch_sensor_interval_seconds)
    if wait is not None:
        # The queue this tick filled falls due before the sensor would look again: flush it in this run
        # (the ledger is not held while waiting) instead of starting a run for it a tick later.
        context.log.info(f"the deferred flush falls due in {wait:.1f} s: waiting for it in this run")
        time.sleep(wait)
        with runtime.ledger.unit():
            tick.planned += len(runtime.manager.submit_queued(session_ids=owned))
    yield from _record(context, runtime, reader, before, keys_before, tick, started)


def _record(
    context: dg.AssetExecutionContext,
    runtime: Runtime,
    reader: LedgerReader,
    before: dict[str, SessionRound],
    keys_before: set[str],
    tick: Tick,
    started: float,
) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    with runtime.ledger.unit():  # every read at once; the views are rendered and logged after it lets go
        steps = [p for p in tick.progress.values() if moved(before, p)]
        corrupt = {
            sid: {str(r): states for r, states in rounds.items()}
            for sid, rounds in reader.open_applied_rounds_of([p.session_id for p in steps]).items()
        }
        viewed = [(p, changed_views(before.get(p.session_id), p)) for p in steps if p.session_id not in corrupt]
        inputs = read_view_inputs(runtime, reader, viewed)
        overview = reader.batch_overview()
        checks = [
            rounds_terminal_result(corrupt, len(steps)),
            budgets_result(reader, [p.session_id for p in steps]),
            invariants_result(runtime.ledger, reader),
        ]
    for materialization in view_materializations(runtime, viewed, inputs):
        context.log_event(materialization)
    statuses: Counter[str] = Counter(p.status for p in steps)
    failed = [p.session_id for p in steps if p.status == "failed"]
    planned = [b for b in overview if b.batch_key not in keys_before]
    context.log.info(
        f"tick: {len(tick.progress)} session(s) looked at, {len(steps)} moved {dict(statuses)}, "
        f"{len(planned)} batch(es) planned, {tick.ingested} ingested, {tick.recovered} calls recovered "
        f"in {time.monotonic() - started:.1f} s"
    )
    yield dg.MaterializeResult(
        asset_key=session_steps.key,
        metadata={
            "sessions_running_before": len(before),
            "sessions_moved": len(steps),
            "by_status": dg.MetadataValue.json(dict(statuses)),
            "failed_sessions": ", ".join(failed) or "-",
            "calls_recovered": tick.recovered,
            "seconds": round(time.monotonic() - started, 2),
        },
    )
    yield dg.MaterializeResult(
        asset_key=submitted_batches.key,
        metadata={
            "batches_planned": len(planned),
            "requests_planned": sum(b.request_count for b in planned),
            "shared_by_sessions": max((len(b.sessions) for b in planned), default=0),
            **_batch_metadata(overview),
        },
    )
    yield dg.MaterializeResult(
        asset_key=batch_results.key,
        metadata={
            "batches_ingested": tick.ingested,
            **_batch_metadata(overview),
        },
    )
    yield from checks


tick_job = dg.define_asset_job(
    "tick_job",
    selection=dg.AssetSelection.assets(pipeline_tick),
    description="One tick over every Dagster session (requested by pipeline_sensor): step the ready sessions, "
    "flush the batch queue, ingest ended batches.",
    tags={"batch_pipeline/kind": "tick"},
)
