"""One session step as assets on the session's partition: queue the next round, then show prompts, images, ranking.

`session_driver_sensor` runs `session_step_job` whenever the round a session waits for is ready; the
views read what the step left in the ledger. The loop itself lives in the ledger, not in the graph.
"""

import dagster as dg

from batch_pipeline.defs.launch import SESSIONS
from batch_pipeline.defs.rendering import prompts_md, ranking_md, table, thumbnails_md
from batch_pipeline.defs.resources import LEDGER_POOL, ImageStoreResource, LedgerResource, OpenAIResource, runtime_from
from batch_pipeline.search import SearchState

GROUP = "search"


@dg.asset(
    partitions_def=SESSIONS, pool=LEDGER_POOL, group_name=GROUP, kinds={"duckdb", "openai"},
    description=(
        "The requests of the session's next round, queued in the ledger. Each materialisation is one step "
        "of the beam search: it applies every round whose results are all in (text -> candidates, image -> "
        "pictures, vision -> ranking) and queues the next round's requests on the session's tier. In "
        "BATCH_API_MODE=immediate it also submits them; in deferred mode `submitted_batches` collects "
        "the queue of all sessions into shared batches. The latest materialisation is the session's state."),
)
def queued_requests(context: dg.AssetExecutionContext, openai: OpenAIResource, ledger: LedgerResource,
                    image_store: ImageStoreResource) -> dg.MaterializeResult:
    session_id = context.partition_key
    runtime = runtime_from(openai, ledger, image_store)
    # Calls a killed run worker left `running` go back to the queue (the same primitives as driver.py).
    runtime.executor.sync.recover_lost(session_ids=[session_id])
    step = runtime.sessions.advance(session_id)
    reader = ledger.reader(lock_timeout_s=10.0)
    counts = runtime.ledger.state_counts(session_id=session_id)
    metadata: dict[str, object] = {
        "status": step.status,
        "iteration": step.iteration,
        "round": step.next_round or "done",
        "pending_requests": step.pending_requests,
        "requests_by_state": dg.MetadataValue.json(counts),
        "batch_api_mode": runtime.settings.batch_api_mode,
        **runtime.sessions.money_and_time(session_id),
    }
    if step.next_round is not None:
        tiers = reader.round_tiers(session_id, f"i{step.iteration}-{step.next_round}")
        metadata["round_tiers"] = dg.MetadataValue.md(
            table(["tier", "why", "state", "requests"], [(t, r or "-", s, n) for t, r, s, n in tiers]))
    if step.winner_id:
        metadata["winner"] = step.winner_id
    if step.error:
        metadata["error"] = step.error
    context.log.info(f"session {session_id}: {step.status}, iteration {step.iteration}, round {step.next_round}, "
                     f"{step.pending_requests} pending")
    return dg.MaterializeResult(metadata=metadata)


@dg.asset(
    partitions_def=SESSIONS, deps=[queued_requests], pool=LEDGER_POOL, group_name=GROUP, kinds={"duckdb", "markdown"},
    description=(
        "Every candidate's prompts so far: WHAT (the content), HOW (the style) and the combined image prompt, "
        "with its parent in the previous iteration. A view of the ledger, rewritten after each step."),
)
def generated_prompts(context: dg.AssetExecutionContext, ledger: LedgerResource) -> dg.MaterializeResult:
    candidates = ledger.ledger().session_candidates(context.partition_key)
    return dg.MaterializeResult(metadata={
        "candidates": len(candidates),
        "failed": sum(c.failed for c in candidates),
        "prompts": dg.MetadataValue.md(prompts_md(candidates)),
    })


@dg.asset(
    partitions_def=SESSIONS, deps=[generated_prompts], pool=LEDGER_POOL, group_name=GROUP, kinds={"duckdb", "image"},
    description=(
        "The generated image of each candidate of the latest iteration, as thumbnails in the metadata "
        "(full-size files stay in the image store). A view of the ledger, rewritten after each step."),
)
def image_candidates(context: dg.AssetExecutionContext, ledger: LedgerResource,
                     image_store: ImageStoreResource) -> dg.MaterializeResult:
    candidates = ledger.ledger().session_candidates(context.partition_key)
    latest = max((c.iteration for c in candidates if c.image_path), default=None)
    shown = [c for c in candidates if c.iteration == latest]
    return dg.MaterializeResult(metadata={
        "iteration": latest if latest is not None else -1,
        "images": sum(1 for c in candidates if c.image_path),
        "thumbnails": dg.MetadataValue.md(thumbnails_md(shown, image_store.store())),
    })


@dg.asset(
    partitions_def=SESSIONS, deps=[image_candidates], pool=LEDGER_POOL, group_name=GROUP, kinds={"duckdb", "image"},
    description=(
        "The latest ranking of the session's pool, best first: image, Bradley-Terry score (alignment and "
        "aesthetics blended by alpha) and prompt; once the session is done, the winner and its lineage "
        "back to iteration 0."),
)
def ranked_results(context: dg.AssetExecutionContext, ledger: LedgerResource,
                   image_store: ImageStoreResource) -> dg.MaterializeResult:
    session_id = context.partition_key
    core = ledger.ledger()
    state = SearchState.model_validate_json(core.session_state_json(session_id))
    row = core.session(session_id)
    metadata: dict[str, object] = {
        "status": row.status if row else "unknown",
        "ranked_iteration": state.iterations[-1].iteration if state.iterations else -1,
        "ranking": dg.MetadataValue.md(ranking_md(state, image_store.store())),
    }
    if state.done and state.winner_id:
        winner = state.candidate(state.winner_id)
        metadata |= {"winner": state.winner_id, "winner_prompt": winner.combined,
                     "lineage": " <- ".join(state.lineage),
                     "final_best_scores": dg.MetadataValue.json(state.final_best_scores)}
    return dg.MaterializeResult(metadata=metadata)


session_step_job = dg.define_asset_job(
    "session_step_job",
    selection=dg.AssetSelection.assets(queued_requests, generated_prompts, image_candidates, ranked_results),
    description="One step of one session (its partition): apply finished rounds, queue the next, refresh the views.",
    tags={"batch_pipeline/kind": "step"},
)
