"""The beam search driven round by round with the fake models: rounds, calls, refinement, elitism, lineage."""

import re
from itertools import combinations, pairwise

import pytest

from batch_pipeline.search import (
    ImageCall,
    SearchParams,
    SearchState,
    TextCall,
    VisionCall,
    apply_round,
    plan_round,
    run_search,
    start_search,
)
from batch_pipeline.search.candidates import ranking_feedback

PROMPT = "a lighthouse in a storm"
NINE = SearchParams(rounds_per_iteration=3, N=9, M=3, K=3, E=3)


def recording(execute, log):
    """Wrap an executor so every call it receives is appended to `log`."""

    def run(calls):
        log.extend(calls)
        return execute(calls)

    return run


def advance(state, execute, rounds):
    for _ in range(rounds):
        state = apply_round(state, execute(plan_round(state)))
    return state


def last_user_message(call: TextCall) -> str:
    return call.messages[-1]["content"]


def test_each_iteration_takes_exactly_three_rounds_with_the_planned_call_counts(execute):
    state = run_search(PROMPT, NINE, "t1", execute)
    assert [(r.iteration, r.round, r.calls) for r in state.rounds] == [
        (0, "text", 9),
        (0, "image", 9),
        (0, "vision", 108),
        (1, "text", 9),
        (1, "image", 9),
        (1, "vision", 189),
        (2, "text", 9),
        (2, "image", 9),
        (2, "vision", 189),
    ]
    assert all(r.failed == 0 and r.succeeded == r.calls for r in state.rounds)
    assert state.done and len(state.iterations) == 3


def test_each_round_plans_only_calls_of_its_kind(execute):
    state = start_search(PROMPT, NINE, "t1")
    kinds = []
    while not state.done:
        calls = plan_round(state)
        kinds.append({type(c) for c in calls})
        state = apply_round(state, execute(calls))
    assert kinds == [{TextCall}, {ImageCall}, {VisionCall}] * 3
    assert plan_round(state) == []


def test_all_vision_calls_of_an_iteration_go_out_in_one_round_covering_every_pair_e_times(execute):
    state = advance(start_search(PROMPT, NINE, "t1"), execute, 2)
    calls = plan_round(state)
    pairs = {tuple(re.search(r"cmp-(\w+)-(\w+)-v\d", c.key).groups()) for c in calls}
    assert pairs == set(combinations(sorted(c.id for c in state.candidates), 2))
    assert len(calls) == 36 * 3


def test_pairs_of_surviving_parents_are_not_compared_again(execute):
    state = advance(start_search(PROMPT, NINE, "t1"), execute, 5)
    parents = set(state.iterations[0].survivors)
    calls = plan_round(state)
    compared = [set(re.search(r"cmp-(\w+)-(\w+)-v", c.key).groups()) for c in calls]
    assert not any(pair <= parents for pair in compared)
    assert len(calls) == (66 - 3) * 3


def test_expansion_siblings_are_independent_samples_with_distinct_nonces():
    calls = plan_round(start_search(PROMPT, NINE, "t1"))
    messages = [last_user_message(c) for c in calls]
    assert len(set(messages)) == 9
    assert messages[0] == f"User prompt: {PROMPT}\nCandidate 1 of 9"
    assert {c.operation for c in calls} == {"expand"}


def test_descriptiveness_and_prompt_style_change_instructions_not_material():
    plain = plan_round(start_search(PROMPT, NINE, "t1"))[0]
    terse = SearchParams(rounds_per_iteration=3, N=9, M=3, K=3, E=3, prompt_style="tags", descriptiveness="concise")
    tagged = plan_round(start_search(PROMPT, terse, "t1"))[0]
    assert plain.messages[0] != tagged.messages[0]
    assert "comma-separated tags" in tagged.messages[0]["content"]
    assert last_user_message(plain) == last_user_message(tagged)


def test_children_of_one_parent_differ_by_a_variant_nonce_and_carry_its_prompts_and_feedback(execute):
    state = advance(start_search(PROMPT, NINE, "t1"), execute, 3)
    best = state.candidate(state.iterations[0].survivors[0])
    calls = plan_round(state)[:3]  # the children of the best parent come first
    strengths, _weaknesses = ranking_feedback(state, best.id)
    assert strengths  # the best parent won comparisons, so the judge named strengths
    for j, call in enumerate(calls, start=1):
        text = last_user_message(call)
        assert call.operation == "refine"
        assert f"User prompt: {PROMPT}\nWHAT: {best.what}\nHOW: {best.how}\nFeedback:\n" in text
        assert f"- won: {strengths[0]}" in text
        assert text.endswith(f"Variant {j} of 3")


def test_feedback_holds_strengths_from_won_votes_and_weaknesses_from_lost_votes(execute):
    state = advance(start_search(PROMPT, NINE, "t1"), execute, 3)
    third = state.iterations[0].survivors[-1]  # survived, but lost to the two ahead of it
    strengths, weaknesses = ranking_feedback(state, third)
    assert strengths and weaknesses and len(strengths) <= 3 and len(weaknesses) <= 3
    won = {v.strengths for v in state.votes if v.winner == third}
    lost = {v.weaknesses for v in state.votes if third in (v.a, v.b) and v.winner != third}
    assert set(strengths) <= won and set(weaknesses) <= lost


def test_odd_iterations_refine_what_and_even_iterations_refine_how(execute):
    state = run_search(PROMPT, NINE, "t1", execute)
    for child in state.candidates:
        if child.iteration == 0:
            continue
        parent = state.candidate(child.parent_id)
        if child.iteration % 2 == 1:
            assert child.what != parent.what and child.how == parent.how
        else:
            assert child.how != parent.how and child.what == parent.what
        assert child.critique and child.recommendation


def test_a_parent_better_than_all_its_children_survives(executor_factory):
    state = run_search(PROMPT, NINE, "t1", executor_factory(children="worse"))
    best_parent = state.iterations[0].best_id
    assert state.iterations[1].survivors == state.iterations[0].survivors  # no child beat any parent
    assert all(record.best_id == best_parent for record in state.iterations)
    assert state.winner_id == best_parent and state.lineage == [best_parent]


def test_the_top_m_of_the_pool_survive_in_rank_order(execute):
    state = run_search(PROMPT, NINE, "t1", execute)
    for record in state.iterations:
        ranked = sorted(record.pool, key=lambda cid: record.ranks[cid])
        assert record.survivors == ranked[:3]
        assert record.best_id == ranked[0]
        assert [record.scores[cid].combined for cid in ranked] == sorted(
            (record.scores[cid].combined for cid in ranked), reverse=True
        )


def test_lineage_runs_from_the_winner_back_to_iteration_zero(execute):
    state = run_search(PROMPT, NINE, "t1", execute)
    assert state.winner_id == state.iterations[-1].best_id
    chain = [state.candidate(cid) for cid in state.lineage]
    assert chain[0].id == state.winner_id and chain[-1].iteration == 0
    for child, parent in pairwise(chain):
        assert child.parent_id == parent.id and child.iteration > parent.iteration
    # With children that always improve, the winner is a grandchild refined in both dimensions.
    assert [c.iteration for c in chain] == [2, 1, 0]


def test_final_best_scores_rescore_every_iteration_with_the_final_fit(execute):
    state = run_search(PROMPT, NINE, "t1", execute)
    assert len(state.final_best_scores) == 3
    assert state.final_best_scores[-1] == state.iterations[-1].best_score
    # Improving children: each iteration's best beats the previous one on the common scale.
    assert state.final_best_scores == sorted(state.final_best_scores)


def test_each_vote_shows_the_images_in_a_seeded_order_and_maps_a_and_b_back(executor_factory):
    execute = executor_factory(judge_answer="A")
    state = advance(start_search(PROMPT, NINE, "t1"), execute, 2)
    calls = plan_round(state)
    state = apply_round(state, execute(calls))
    paths = {c.id: c.image_path for c in state.candidates}
    assert all(v.winner == v.first_shown == v.alignment_winner for v in state.votes)
    a_first = sum(v.first_shown == v.a for v in state.votes)
    assert 0 < a_first < len(state.votes)
    for call, vote in zip(calls, state.votes, strict=True):
        assert call.image_paths[0] == paths[vote.first_shown]
        assert f"User prompt: {PROMPT}\nVote {vote.vote_index} of 3" == call.text


def test_apply_round_returns_a_new_state_and_leaves_its_input_alone(execute):
    state = start_search(PROMPT, NINE, "t1")
    before = state.model_dump_json()
    after = apply_round(state, execute(plan_round(state)))
    assert state.model_dump_json() == before
    assert after is not state and after.next_round == "image"


def test_a_finished_search_plans_nothing_and_refuses_more_results(execute):
    state = run_search(PROMPT, SearchParams(rounds_per_iteration=3, N=2, M=1, K=1, E=1), "t1", execute)
    assert state.done and plan_round(state) == []
    with pytest.raises(ValueError, match="already done"):
        apply_round(state, {})


def test_keys_are_unique_url_safe_and_at_most_48_characters_at_the_largest_settings(execute):
    log = []
    widest = SearchParams(rounds_per_iteration=3, N=16, M=8, K=10, E=1)  # E only adds v1..v5, one character either way
    run_search(PROMPT, widest, "S" * 16, recording(execute, log))
    keys = [c.key for c in log]
    assert len(keys) == len(set(keys))
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{1,48}", key) for key in keys)
    assert max(map(len, keys)) <= 48


@pytest.mark.parametrize("session_id", ["", "x" * 17, "a b", "a/b"])
def test_session_ids_that_would_break_keys_are_rejected(session_id):
    with pytest.raises(ValueError, match="session_id"):
        start_search(PROMPT, NINE, session_id)


def test_round_stats_add_up_tokens_from_the_results(execute):
    state = advance(start_search(PROMPT, NINE, "t1"), execute, 2)
    text, image = state.rounds
    assert (text.input_tokens, text.output_tokens, text.cached_tokens) == (900, 90, 450)
    assert image.output_tokens == 9 * 272


def test_a_state_saved_with_the_old_float_costs_still_loads(execute):
    """States saved before money left the search carried float sums per round; the ledger has the exact ones."""
    state = advance(start_search(PROMPT, NINE, "t1"), execute, 1)
    old = state.model_dump(mode="json")
    old["rounds"][0] |= {"cost_usd": 0.009, "standard_cost_usd": 0.018}
    assert SearchState.model_validate(old) == state
