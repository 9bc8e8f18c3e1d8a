"""The beam search as pure, resumable steps: start_search, then plan_round / apply_round until done.

Orchestrators (run_search here, or Dagster runs hours apart) execute the calls and store the state between.
"""

from __future__ import annotations

# Each iteration takes at most three dependent rounds, because on the batch tier every round may wait hours:
#   text   -> N candidates' WHAT, HOW and combined prompt (one fused structured-output call each)
#   image  -> one image per candidate whose text succeeded
#   vision -> every pair of the pool not compared before, x E votes, all at once; ranked by Bradley-Terry
# With rounds_per_iteration=2 (the default) the vision round also critiques each pooled image and writes its
# children, so iterations after the first start at the image round.
from collections.abc import Callable, Mapping
from typing import Literal, TypeVar

from pydantic import BaseModel, ValidationError

from batch_pipeline.errors import BatchPipelineError

from . import prompts
from .calls import (
    Call,
    CallResult,
    ImageCall,
    TextCall,
    VisionCall,
    check_session_id,
    critique_key,
    image_key,
    text_key,
    vote_key,
)
from .candidates import (
    NewCandidate,
    current_pool,
    lineage,
    new_candidates,
    planned_votes,
    ranked_candidates,
    ranking_feedback,
    refined_dimension,
)
from .params import SearchParams
from .ranking import rank_candidates, score_candidates
from .schemas import (
    SCHEMA_NAMES,
    Comparison,
    CritiqueHow,
    CritiqueWhat,
    Expansion,
    RefineHow,
    RefineWhat,
    critique_schema,
    strict_json_schema,
)
from .state import Candidate, IterationRecord, RoundName, RoundStats, SearchState, Vote

Executor = Callable[[list[Call]], dict[str, CallResult]]
_Output = TypeVar("_Output", bound=BaseModel)


class SearchFailed(BatchPipelineError):
    """More than half of an iteration's new candidates failed: the original pipeline's rule to stop.

    `state` is the state with the failures recorded, for the orchestrator to store as the session's end.
    """

    def __init__(self, state: SearchState, planned: int):
        self.state = state
        self.planned = planned
        self.iteration = state.iteration
        failed = [c for c in state.candidates_of(state.iteration) if c.failed]
        self.failed_ids = [c.id for c in failed]
        examples = "; ".join(f"{c.id}: {c.error}" for c in failed[:3])
        super().__init__(
            f"session {state.session_id}, iteration {state.iteration}: {len(failed)} of {planned} new candidates "
            f"failed (more than half), so the search stops. First errors: {examples}"
        )

    def __reduce__(self):
        # Exceptions pickle their args, not their constructor's; this keeps it intact across processes.
        return type(self), (self.state, self.planned)


def start_search(user_prompt: str, params: SearchParams, session_id: str) -> SearchState:
    """The initial state: iteration 0, text round next, nothing generated yet."""
    if not user_prompt.strip():
        raise ValueError("user_prompt must not be blank")
    return SearchState(session_id=check_session_id(session_id), user_prompt=user_prompt.strip(), params=params)


def plan_round(state: SearchState) -> list[Call]:
    """The calls of the next round, all independent of one another; [] once the search is done.

    A vision round may also be empty (a pool of one after failures); apply_round({}) then advances it.
    """
    if state.done:
        return []
    planners: dict[RoundName, Callable[[SearchState], list[Call]]] = {
        "text": _text_calls,
        "image": _image_calls,
        "vision": _vision_calls,
    }
    return planners[state.next_round](state)


def apply_round(state: SearchState, results: Mapping[str, CallResult]) -> SearchState:
    """The state after the next round, given the results of plan_round's calls by key.

    Pure: the input is not modified. Results for unknown keys are ignored; a missing result counts as a
    failed call. Raises SearchFailed when more than half of the iteration's new candidates have failed.
    """
    if state.done:
        raise ValueError(f"session {state.session_id} is already done")
    # One deep copy up front; the helpers below mutate only this copy.
    new_state = state.model_copy(deep=True)
    appliers: dict[RoundName, Callable[[SearchState, Mapping[str, CallResult]], None]] = {
        "text": _apply_text,
        "image": _apply_image,
        "vision": _apply_vision,
    }
    appliers[new_state.next_round](new_state, results)
    return new_state


def run_search(
    user_prompt: str,
    params: SearchParams,
    session_id: str,
    execute: Executor,
    on_round: Callable[[SearchState], None] | None = None,
) -> SearchState:
    """The whole search in one process: the synchronous orchestrator. `on_round` sees each new state."""
    state = start_search(user_prompt, params, session_id)
    while not state.done:
        calls = plan_round(state)
        results = execute(calls) if calls else {}
        state = apply_round(state, results)
        if on_round is not None:
            on_round(state)
    return state


# --- text round ------------------------------------------------------------------------------------


def _text_operation(
    iteration: int,
) -> tuple[Literal["expand", "refine"], type[Expansion] | type[RefineWhat] | type[RefineHow]]:
    if iteration == 0:
        return "expand", Expansion
    return "refine", _refine_model(iteration)


def _refine_model(iteration: int) -> type[RefineWhat] | type[RefineHow]:
    return RefineWhat if refined_dimension(iteration) == "what" else RefineHow


def _text_calls(state: SearchState) -> list[Call]:
    operation, schema_model = _text_operation(state.iteration)
    params = state.params
    return [
        TextCall(
            key=text_key(state.session_id, state.iteration, operation, spec.index),
            operation=operation,
            model=params.text_model,
            messages=_text_messages(state, spec),
            response_schema_name=SCHEMA_NAMES[schema_model],
            response_schema=strict_json_schema(schema_model),
            temperature=params.temperature,
            max_completion_tokens=params.max_completion_tokens,
            seed=params.seed,
        )
        for spec in new_candidates(state)
    ]


def _text_messages(state: SearchState, spec: NewCandidate) -> list[dict[str, str]]:
    if spec.parent_id is None:
        return prompts.expansion_messages(state.user_prompt, state.params, spec.variant)
    parent = state.candidate(spec.parent_id)
    strengths, weaknesses = ranking_feedback(state, parent.id)
    return prompts.refinement_messages(
        state.user_prompt,
        state.params,
        refined_dimension(state.iteration),
        parent.what,
        parent.how,
        strengths,
        weaknesses,
        spec.variant,
    )


def _apply_text(state: SearchState, results: Mapping[str, CallResult]) -> None:
    k = state.iteration
    operation, _ = _text_operation(k)
    specs = new_candidates(state)
    keys = [text_key(state.session_id, k, operation, spec.index) for spec in specs]
    for spec, key in zip(specs, keys, strict=True):
        candidate = Candidate(id=spec.id, iteration=k, parent_id=spec.parent_id)
        if spec.parent_id is None:
            expansion, error = _parse(results.get(key), Expansion)
            if expansion is not None:
                candidate.what, candidate.how, candidate.combined = expansion.what, expansion.how, expansion.combined
        else:
            wire, error = _parse(results.get(key), _refine_model(k))
            refinement = wire.to_refinement() if wire is not None else None
            if refinement is not None:
                parent = state.candidate(spec.parent_id)
                # The refined text replaces one dimension; the other is inherited unchanged.
                if refined_dimension(k) == "what":
                    candidate.what, candidate.how = refinement.refined, parent.how
                else:
                    candidate.what, candidate.how = parent.what, refinement.refined
                candidate.combined = refinement.combined
                candidate.critique = refinement.critique
                candidate.recommendation = refinement.recommendation
        if error is not None:
            candidate.failed, candidate.error = True, f"text: {error}"
        state.candidates.append(candidate)
    succeeded = sum(not c.failed for c in state.candidates_of(k))
    state.rounds.append(_round_stats(state, "text", keys, results, succeeded=succeeded))
    # No point paying for images when the iteration is already lost.
    _raise_if_most_failed(state, planned=len(specs))
    state.next_round = "image"


# --- image round -----------------------------------------------------------------------------------


def _image_calls(state: SearchState) -> list[Call]:
    params = state.params
    index = _indices(state)
    return [
        ImageCall(
            key=image_key(state.session_id, state.iteration, index[c.id]),
            model=params.image_model,
            prompt=c.combined,
            size=params.image_size,
            quality=params.image_quality,
            candidate_id=c.id,
        )
        for c in state.candidates_of(state.iteration)
        if not c.failed
    ]


def _apply_image(state: SearchState, results: Mapping[str, CallResult]) -> None:
    # A refused or failed image drops the candidate. (The original rephrased and retried refusals once;
    # that would be a fourth dependent round, so here the other candidates carry the iteration.)
    index = _indices(state)
    keys = []
    succeeded = 0
    for candidate in state.candidates_of(state.iteration):
        if candidate.failed:
            continue
        key = image_key(state.session_id, state.iteration, index[candidate.id])
        keys.append(key)
        result = results.get(key)
        if result is not None and result.ok and result.image_path:
            candidate.image_path = result.image_path
            succeeded += 1
        else:
            candidate.failed, candidate.error = True, f"image: {_failure_reason(result)}"
    state.rounds.append(_round_stats(state, "image", keys, results, succeeded=succeeded))
    _raise_if_most_failed(state, planned=len(state.candidates_of(state.iteration)))
    state.next_round = "vision"


# --- vision round ----------------------------------------------------------------------------------


def _vision_calls(state: SearchState) -> list[Call]:
    params = state.params
    paths = {c.id: c.image_path for c in state.candidates if c.image_path}
    system = prompts.judge_system(params)
    schema_name, schema = SCHEMA_NAMES[Comparison], strict_json_schema(Comparison)
    return [
        VisionCall(
            key=vote_key(state.session_id, state.iteration, vote.a, vote.b, vote.vote_index),
            model=params.vision_model,
            system=system,
            text=prompts.judge_text(state.user_prompt, vote.vote_index, params.E),
            image_paths=(paths[vote.first_shown], paths[vote.second_shown]),
            detail=params.vision_detail,
            response_schema_name=schema_name,
            response_schema=schema,
            max_completion_tokens=params.max_completion_tokens,
            seed=params.seed,
        )
        for vote in planned_votes(state)
    ] + _critique_calls(state)


def _refines_in_vision(state: SearchState) -> bool:
    """2-round iterations: this vision round also writes the next iteration's candidates."""
    return state.params.rounds_per_iteration == 2 and state.iteration + 1 < state.params.K


def _critique_model(iteration: int) -> type[CritiqueWhat] | type[CritiqueHow]:
    return CritiqueWhat if refined_dimension(iteration) == "what" else CritiqueHow


def _critique_calls(state: SearchState) -> list[Call]:
    """One call per pooled candidate: the vision model sees its image and writes its c children for the next
    iteration (only the survivors' are used; which survive is known only once this round's votes are in)."""
    if not _refines_in_vision(state):
        return []
    params, nxt = state.params, state.iteration + 1
    model = _critique_model(nxt)
    calls: list[Call] = []
    for cid in current_pool(state):
        candidate = state.candidate(cid)
        strengths, weaknesses = ranking_feedback(state, cid)
        system, text = prompts.critique_messages(
            state.user_prompt, params, refined_dimension(nxt), candidate.what, candidate.how, strengths, weaknesses
        )
        calls.append(
            VisionCall(
                key=critique_key(state.session_id, state.iteration, cid),
                operation="critique",
                model=params.vision_model,
                system=system,
                text=text,
                image_paths=(candidate.image_path,),
                detail=params.vision_detail,
                response_schema_name=SCHEMA_NAMES[model],
                response_schema=critique_schema(model, params.children_per_parent),
                max_completion_tokens=params.max_completion_tokens,
                seed=params.seed,
            )
        )
    return calls


def _apply_critiques(state: SearchState, results: Mapping[str, CallResult]) -> None:
    """The new iteration's candidates from its parents' critique calls (2-round iterations), as the text round
    would have made them: the refined part replaces one dimension, the other is inherited."""
    k = state.iteration
    model = _critique_model(k)
    by_parent: dict[str, tuple[list, str | None]] = {}
    for spec in new_candidates(state):
        assert spec.parent_id is not None, "only iteration 0 has no parents, and it has no critiques"
        if spec.parent_id not in by_parent:
            parsed, error = _parse(results.get(critique_key(state.session_id, k - 1, spec.parent_id)), model)
            by_parent[spec.parent_id] = (parsed.refinements() if parsed is not None else [], error)
        refinements, error = by_parent[spec.parent_id]
        candidate = Candidate(id=spec.id, iteration=k, parent_id=spec.parent_id)
        if spec.variant <= len(refinements):
            refinement, parent = refinements[spec.variant - 1], state.candidate(spec.parent_id)
            if refined_dimension(k) == "what":
                candidate.what, candidate.how = refinement.refined, parent.how
            else:
                candidate.what, candidate.how = parent.what, refinement.refined
            candidate.combined, candidate.critique = refinement.combined, refinement.critique
            candidate.recommendation = refinement.recommendation
        else:
            candidate.failed, candidate.error = True, f"critique: {error or 'too few children'}"
        state.candidates.append(candidate)
    _raise_if_most_failed(state, planned=len(new_candidates(state)))


def _apply_vision(state: SearchState, results: Mapping[str, CallResult]) -> None:
    k = state.iteration
    keys = []
    succeeded = 0
    for planned in planned_votes(state):
        key = vote_key(state.session_id, k, planned.a, planned.b, planned.vote_index)
        keys.append(key)
        comparison, _ = _parse(results.get(key), Comparison)
        if comparison is None:
            continue  # a failed vote is simply missing; the fit's prior absorbs it
        succeeded += 1
        shown = {"A": planned.first_shown, "B": planned.second_shown}
        state.votes.append(
            Vote(
                iteration=k,
                a=planned.a,
                b=planned.b,
                vote_index=planned.vote_index,
                first_shown=planned.first_shown,
                alignment_winner=shown[comparison.alignment_winner],
                aesthetics_winner=shown[comparison.aesthetics_winner],
                winner=shown[comparison.winner],
                strengths=comparison.winner_strengths,
                weaknesses=comparison.loser_weaknesses,
                reason=comparison.reason,
            )
        )
    critiques = (
        [critique_key(state.session_id, k, cid) for cid in current_pool(state)] if _refines_in_vision(state) else []
    )
    succeeded += sum(1 for key in critiques if (r := results.get(key)) is not None and r.ok)
    state.rounds.append(_round_stats(state, "vision", keys + critiques, results, succeeded=succeeded))

    # One fit over every vote of the session: earlier votes (parents against their old rivals) still
    # inform this iteration, and the parents' mutual order is known without being asked again.
    scores = score_candidates(ranked_candidates(state), state.votes, state.params.alpha)
    pool = current_pool(state)
    order = rank_candidates(pool, scores)
    state.iterations.append(
        IterationRecord(
            iteration=k,
            pool=pool,
            scores={cid: scores[cid] for cid in pool},
            ranks={cid: rank for rank, cid in enumerate(order, start=1)},
            survivors=order[: state.params.M],
            best_id=order[0],
            best_score=scores[order[0]].combined,
        )
    )
    if k + 1 < state.params.K:
        if critiques:  # 2-round iterations: the children are written already; the next round draws them
            state.iteration, state.next_round = k + 1, "image"
            _apply_critiques(state, results)
            return
        state.iteration, state.next_round = k + 1, "text"
        return
    state.done = True
    state.winner_id = order[0]
    state.lineage = lineage(state, order[0])
    state.final_best_scores = [scores[record.best_id].combined for record in state.iterations]


# --- shared ----------------------------------------------------------------------------------------


def _indices(state: SearchState) -> dict[str, int]:
    """Candidate id -> its index within the current iteration, the number in its keys."""
    return {spec.id: spec.index for spec in new_candidates(state)}


def _parse(result: CallResult | None, model: type[_Output]) -> tuple[_Output | None, str | None]:
    """The structured output of a successful call, or None and why there is none."""
    if result is None or not result.ok or result.content is None:
        return None, _failure_reason(result)
    try:
        return model.model_validate(result.content), None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(map(str, first["loc"])) or SCHEMA_NAMES[model]
        return None, f"unusable {SCHEMA_NAMES[model]} output ({where}: {first['msg']})"


def _failure_reason(result: CallResult | None) -> str:
    if result is None:
        return "no result"
    if not result.ok:
        return result.error or "failed without an error message"
    return "empty result"


def _raise_if_most_failed(state: SearchState, planned: int) -> None:
    failed = sum(c.failed for c in state.candidates_of(state.iteration))
    if 2 * failed > planned:
        raise SearchFailed(state, planned)


def _round_stats(
    state: SearchState, round_name: RoundName, keys: list[str], results: Mapping[str, CallResult], succeeded: int
) -> RoundStats:
    answered = [results[key] for key in keys if key in results]
    return RoundStats(
        iteration=state.iteration,
        round=round_name,
        calls=len(keys),
        succeeded=succeeded,
        failed=len(keys) - succeeded,
        input_tokens=sum(r.usage.get("input_tokens", 0) for r in answered),
        output_tokens=sum(r.usage.get("output_tokens", 0) for r in answered),
        cached_tokens=sum(r.usage.get("cached_tokens", 0) for r in answered),
    )
