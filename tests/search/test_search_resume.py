"""Resumability and determinism: the state, calls and results survive JSON between every step."""

from batch_pipeline.search import (
    CallResult,
    SearchParams,
    SearchState,
    apply_round,
    calls_adapter,
    plan_round,
    run_search,
    start_search,
)

PROMPT = "a lighthouse in a storm"
PARAMS = SearchParams(rounds_per_iteration=3, N=6, M=2, K=3, E=2)


def reload(state: SearchState) -> SearchState:
    return SearchState.model_validate_json(state.model_dump_json())


def run_with_a_restart_after_every_step(params, execute) -> SearchState:
    """What an orchestrator running each step in a new process does: persist, reload, continue."""
    state = reload(start_search(PROMPT, params, "t1"))
    while not state.done:
        calls = calls_adapter.validate_json(calls_adapter.dump_json(plan_round(reload(state))))
        results = {key: CallResult.model_validate_json(r.model_dump_json()) for key, r in execute(calls).items()}
        state = reload(apply_round(reload(state), results))
    return state


def test_resuming_from_json_after_every_step_equals_an_uninterrupted_run(execute):
    uninterrupted = run_search(PROMPT, PARAMS, "t1", execute)
    resumed = run_with_a_restart_after_every_step(PARAMS, execute)
    assert resumed.model_dump_json() == uninterrupted.model_dump_json()
    assert resumed.winner_id is not None


def test_planning_again_after_a_reload_gives_identical_calls(execute):
    state = start_search(PROMPT, PARAMS, "t1")
    for _ in range(5):
        calls = plan_round(state)
        assert plan_round(reload(state)) == calls
        state = apply_round(state, execute(calls))


def test_on_round_sees_every_intermediate_state(execute):
    seen = []
    final = run_search(
        PROMPT, PARAMS, "t1", execute, on_round=lambda s: seen.append((s.iteration, s.next_round, s.done))
    )
    assert len(seen) == 9 and seen[-1] == (2, "vision", True) and final.done
    assert seen[0] == (0, "image", False)


def test_the_same_seed_gives_the_same_search(executor_factory):
    first = run_search(PROMPT, PARAMS, "t1", executor_factory())
    second = run_search(PROMPT, PARAMS, "t1", executor_factory())
    assert first.model_dump_json() == second.model_dump_json()


def test_a_different_seed_changes_the_presentation_order_and_may_change_the_outcome(executor_factory):
    # The fake judge, like real ones, favours the image shown first when it cannot tell them apart,
    # so the seed (which orders the images) is the only thing that separates these two runs.
    seeded = [
        run_search(PROMPT, SearchParams(rounds_per_iteration=3, N=6, M=2, K=3, E=2, seed=s), "t1", executor_factory())
        for s in (0, 1)
    ]
    orders = [[(v.a, v.b, v.vote_index, v.first_shown) for v in state.votes] for state in seeded]
    assert orders[0] != orders[1]
    winners = [[v.winner for v in s.votes] for s in seeded]
    assert winners[0] != winners[1]
