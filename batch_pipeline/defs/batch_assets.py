"""The shared batch stage, unpartitioned: flush the queue of all sessions into batches, ingest ended batches.

`flush_sensor` requests `submitted_batches`, `batch_sensor` requests `batch_results`; both are thin
calls into the core `BatchJobManager`, which makes submission and ingestion idempotent.
"""

from collections import Counter

import dagster as dg

from batch_pipeline.batching.polling import ACTIVE_STATUSES
from batch_pipeline.defs.rendering import batches_md
from batch_pipeline.defs.resources import LEDGER_POOL, ImageStoreResource, LedgerResource, OpenAIResource, runtime_from
from batch_pipeline.defs.session_assets import queued_requests
from batch_pipeline.ledger.reports import BatchOverview
from batch_pipeline.runtime import Runtime

GROUP = "batches"


def dagster_sessions(runtime: Runtime) -> list[str]:
    """The sessions Dagster drives: a flush or an ingestion here touches no CLI or API session's requests."""
    return [row.session_id for row in runtime.ledger.sessions() if row.config.get("driver", "dagster") == "dagster"]


def _batch_metadata(overview: list[BatchOverview]) -> dict[str, object]:
    in_flight = [b for b in overview if b.phase == "created" and (b.status is None or b.status in ACTIVE_STATUSES)]
    return {
        "batches_in_flight": len(in_flight),
        "requests_in_flight": sum(b.request_count for b in in_flight),
        "batches": dg.MetadataValue.md(batches_md(overview)),
    }


@dg.asset(
    deps=[queued_requests], pool=LEDGER_POOL, group_name=GROUP, kinds={"duckdb", "openai"},
    description=(
        "Batches sent to the Batch API. A flush plans batches from the batch-tier queue of all sessions "
        "(split by request count, bytes and the model's enqueued-token limit), records each as an intent, "
        "uploads its file and creates it; a batch half-sent by a crash is found again by its key in the "
        "remote list, never sent twice. The metadata lists recent batches with status, request counts and "
        "progress (`finalizing` shows at most 99%)."),
)
def submitted_batches(context: dg.AssetExecutionContext, openai: OpenAIResource, ledger: LedgerResource,
                      image_store: ImageStoreResource) -> dg.MaterializeResult:
    runtime = runtime_from(openai, ledger, image_store)
    keys = set(runtime.manager.submit_queued(session_ids=dagster_sessions(runtime)))
    overview = ledger.reader(lock_timeout_s=10.0).batch_overview()
    planned = [b for b in overview if b.batch_key in keys]
    context.log.info(f"flushed {sum(b.request_count for b in planned)} requests into {len(keys)} batch(es)")
    return dg.MaterializeResult(metadata={
        "batches_planned": len(keys),
        "requests_planned": sum(b.request_count for b in planned),
        "shared_by_sessions": max((len(b.sessions) for b in planned), default=0),
        **_batch_metadata(overview),
    })


@dg.asset(
    deps=[submitted_batches], pool=LEDGER_POOL, group_name=GROUP, kinds={"duckdb", "openai"},
    description=(
        "Results of ended batches, mapped back to their requests by custom_id, priced and recorded in one "
        "transaction per batch: output and error files are downloaded and checked for completeness; failed "
        "or expired lines go back to the queue until their attempts run out. Ingesting a batch twice changes "
        "nothing, so a retried run is safe."),
)
def batch_results(context: dg.AssetExecutionContext, openai: OpenAIResource, ledger: LedgerResource,
                  image_store: ImageStoreResource) -> dg.MaterializeResult:
    runtime = runtime_from(openai, ledger, image_store)
    owned = dagster_sessions(runtime)
    runtime.manager.refresh(session_ids=owned)
    ingested = runtime.manager.ingest_ended(session_ids=owned)
    outcomes: Counter[str] = Counter()
    for record in (runtime.ledger.batch(key) for key in ingested):
        outcomes["completed lines"] += record.completed_count or 0
        outcomes["failed lines"] += record.failed_count or 0
        outcomes[f"batches {record.status}"] += 1
    overview = ledger.reader(lock_timeout_s=10.0).batch_overview()
    context.log.info(f"ingested {len(ingested)} batch(es): {dict(outcomes)}")
    return dg.MaterializeResult(metadata={
        "batches_ingested": len(ingested),
        "ingested_keys": ", ".join(ingested) or "-",
        "outcomes": dg.MetadataValue.json(dict(outcomes)),
        **_batch_metadata(overview),
    })


flush_batches_job = dg.define_asset_job(
    "flush_batches_job", selection=dg.AssetSelection.assets(submitted_batches),
    description="Flush the batch-tier queue of all sessions into batches (requested by flush_sensor).",
    tags={"batch_pipeline/kind": "flush"})

ingest_batches_job = dg.define_asset_job(
    "ingest_batches_job", selection=dg.AssetSelection.assets(batch_results),
    description="Ingest every ended batch (requested by batch_sensor).",
    tags={"batch_pipeline/kind": "ingest"})
