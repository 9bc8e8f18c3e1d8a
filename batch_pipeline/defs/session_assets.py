"""Each session's partition: its queued round, prompts, images and ranking, recorded by the tick run.

The tick run (`batch_assets.pipeline_tick`) moves every ready session at once; for each session it
moved it records one materialisation of each of these four assets on the session's partition, so a
session's partition still shows its history and its latest state, however many sessions one run moves.
They are asset specs without a compute function of their own: the loop lives in the ledger, the run
that moves it is one per tick, not one per session.
"""

from dataclasses import dataclass
from typing import TYPE_CHECKING

import dagster as dg

from batch_pipeline.defs.launch import SESSIONS
from batch_pipeline.defs.rendering import prompts_md, ranking_md, table, thumbnails_md
from batch_pipeline.ledger.reader import LedgerReader, SessionRound
from batch_pipeline.ledger.session_rows import CandidateRow
from batch_pipeline.runtime import Runtime
from batch_pipeline.search import SearchState
from batch_pipeline.sessions import SessionProgress
from batch_pipeline.vocabulary import RoundId

if TYPE_CHECKING:  # what Dagster accepts as a metadata value; it exports no public name for it
    from dagster._core.definitions.metadata import RawMetadataValue

GROUP = "search"

queued_requests = dg.AssetSpec(
    "queued_requests",
    partitions_def=SESSIONS,
    group_name=GROUP,
    kinds={"duckdb", "openai"},
    description=(
        "The requests of the session's next round, queued in the ledger. Each materialisation is one step "
        "of the beam search, recorded by the tick run that made it: it applied every round whose results "
        "are all in (text -> candidates, image -> pictures, vision -> ranking) and queued the next round's "
        "requests on the session's tier. The latest materialisation is the session's state."
    ),
)

generated_prompts = dg.AssetSpec(
    "generated_prompts",
    partitions_def=SESSIONS,
    deps=[queued_requests],
    group_name=GROUP,
    kinds={"duckdb", "markdown"},
    description=(
        "Every candidate's prompts so far: WHAT (the content), HOW (the style) and the combined image prompt, "
        "with its parent in the previous iteration. A view of the ledger, recorded after each step."
    ),
)

image_candidates = dg.AssetSpec(
    "image_candidates",
    partitions_def=SESSIONS,
    deps=[generated_prompts],
    group_name=GROUP,
    kinds={"duckdb", "image"},
    description=(
        "The generated image of each candidate of the latest iteration, as thumbnails in the metadata "
        "(full-size files stay in the image store). A view of the ledger, recorded after each step."
    ),
)

ranked_results = dg.AssetSpec(
    "ranked_results",
    partitions_def=SESSIONS,
    deps=[image_candidates],
    group_name=GROUP,
    kinds={"duckdb", "image"},
    description=(
        "The latest ranking of the session's pool, best first: image, Bradley-Terry score (alignment and "
        "aesthetics blended by alpha) and prompt; once the session is done, the winner and its lineage "
        "back to iteration 0."
    ),
)

SESSION_VIEWS = [queued_requests, generated_prompts, image_candidates, ranked_results]


# What each round of an iteration changes, in their order: text -> prompts, image -> images, vision -> ranking.
ROUND_VIEWS = {"text": generated_prompts, "image": image_candidates, "vision": ranked_results}


def changed_views(before: SessionRound | None, step: SessionProgress) -> list[dg.AssetSpec]:
    """The views a step changed: its queued round always; a view whose round it applied; all four on a
    session's first step and when it ends. Rendering only these keeps a tick's cost to what moved."""
    if (
        before is None
        or (step.status != "running" and step.status != "waiting")
        or (before.iteration, before.next_round, before.requests) == (0, "text", 0)
    ):
        return SESSION_VIEWS
    order = list(ROUND_VIEWS)
    was = (before.iteration, order.index(before.next_round) if before.next_round in order else len(order))
    now = (step.iteration, order.index(step.next_round) if step.next_round in order else len(order))
    if now[0] > was[0]:
        applied = order[was[1] :] + order[: now[1]] if now[0] == was[0] + 1 else order
    else:
        applied = order[was[1] : now[1]]
    return [queued_requests, *(ROUND_VIEWS[r] for r in order if r in applied)]


@dataclass
class ViewInputs:
    """What one session's views show after a step, read from the ledger (`read_view_inputs`)."""

    state: SearchState
    requests_by_state: dict[str, int]
    money_and_time: dict[str, str]
    round_tiers: list[tuple[str, str | None, str, int]]
    candidates: list[CandidateRow]


def read_view_inputs(
    runtime: Runtime, reader: LedgerReader, steps: list[tuple[SessionProgress, list[dg.AssetSpec]]]
) -> dict[str, ViewInputs]:
    """Everything these steps' views show, read in a few queries for all of them (inside the run's ledger
    unit); rendering them (`session_views`) then needs no ledger, so it runs after the unit lets go."""
    ledger = runtime.ledger
    ids = [step.session_id for step, _views in steps]
    loaded = ledger.sessions_with_state(ids)
    counts = ledger.state_counts_of(ids)
    tiers = reader.rounds_tiers(
        {
            step.session_id: RoundId(step.iteration, step.next_round)
            for step, _views in steps
            if step.next_round is not None
        }
    )
    candidates = ledger.candidates_of(
        [
            step.session_id
            for step, views in steps
            if {v.key.path[-1] for v in views} & {"generated_prompts", "image_candidates"}
        ]
    )
    turnaround = ledger.observed_turnaround()
    inputs = {}
    for session_id in ids:
        row, state_json = loaded[session_id]
        state = SearchState.model_validate_json(state_json)
        inputs[session_id] = ViewInputs(
            state=state,
            requests_by_state=counts.get(session_id, {}),
            round_tiers=tiers.get(session_id, []),
            money_and_time=runtime.sessions.money_and_time(session_id, row=row, state=state, turnaround=turnaround),
            candidates=candidates.get(session_id, []),
        )
    return inputs


def session_views(
    runtime: Runtime, step: SessionProgress, inputs: ViewInputs, views: list[dg.AssetSpec] = SESSION_VIEWS
) -> "dict[str, dict[str, RawMetadataValue]]":
    """The metadata of these views of one session after a step, by asset name, from what was read for it
    (`read_view_inputs`; no ledger access)."""
    store = runtime.image_store
    names = {v.key.path[-1] for v in views}
    step_md: dict[str, RawMetadataValue] = {
        "status": step.status,
        "iteration": step.iteration,
        "round": step.next_round or "done",
        "pending_requests": step.pending_requests,
        "requests_by_state": dg.MetadataValue.json(inputs.requests_by_state),
        "batch_api_mode": runtime.settings.batch_api_mode,
        **inputs.money_and_time,
    }
    if step.next_round is not None:
        step_md["round_tiers"] = dg.MetadataValue.md(
            table(["tier", "why", "state", "requests"], [(t, r or "-", s, n) for t, r, s, n in inputs.round_tiers])
        )
    if step.winner_id:
        step_md["winner"] = step.winner_id
    if step.error:
        step_md["error"] = step.error

    found: dict[str, dict[str, RawMetadataValue]] = {queued_requests.key.path[-1]: step_md}
    if names & {"generated_prompts", "image_candidates"}:
        candidates = inputs.candidates
        latest = max((c.iteration for c in candidates if c.image_path), default=None)
        found["generated_prompts"] = {
            "candidates": len(candidates),
            "failed": sum(c.failed for c in candidates),
            "prompts": dg.MetadataValue.md(prompts_md(candidates)),
        }
        found["image_candidates"] = (
            {
                "iteration": latest if latest is not None else -1,
                "images": sum(1 for c in candidates if c.image_path),
                "thumbnails": dg.MetadataValue.md(
                    thumbnails_md([c for c in candidates if c.iteration == latest], store)
                ),
            }
            if "image_candidates" in names
            else {}
        )
    if "ranked_results" in names:
        state = inputs.state
        ranking: dict[str, RawMetadataValue] = {
            "status": step.status,
            "ranked_iteration": state.iterations[-1].iteration if state.iterations else -1,
            "ranking": dg.MetadataValue.md(ranking_md(state, store)),
        }
        if state.done and state.winner_id:
            winner = state.candidate(state.winner_id)
            ranking |= {
                "winner": state.winner_id,
                "winner_prompt": winner.combined,
                "lineage": " <- ".join(state.lineage),
                "final_best_scores": dg.MetadataValue.json(state.final_best_scores),
            }
        found["ranked_results"] = ranking
    return {name: found[name] for name in (v.key.path[-1] for v in SESSION_VIEWS) if name in names}


def view_materializations(
    runtime: Runtime, steps: list[tuple[SessionProgress, list[dg.AssetSpec]]], inputs: dict[str, ViewInputs]
) -> list[dg.AssetMaterialization]:
    """A materialisation of each view each step changed, on the session's partition (no ledger access)."""
    return [
        dg.AssetMaterialization(asset_key=asset, partition=step.session_id, metadata=metadata)
        for step, views in steps
        for asset, metadata in session_views(runtime, step, inputs[step.session_id], views).items()
    ]
