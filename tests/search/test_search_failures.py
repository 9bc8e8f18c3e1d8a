"""Failed calls: dropped candidates, missing votes, and the more-than-half rule that stops a search."""

import pickle

import pytest

from batch_pipeline.search import (
    ImageCall,
    SearchFailed,
    SearchParams,
    TextCall,
    VisionCall,
    apply_round,
    plan_round,
    run_search,
    start_search,
)

PROMPT = "a lighthouse in a storm"
NINE = SearchParams(rounds_per_iteration=3, N=9, M=3, K=2, E=3)


def images_of(ids):
    return lambda call: "content_policy_violation" if isinstance(call, ImageCall) and call.candidate_id in ids else None


def test_more_than_half_failed_images_stop_the_search_with_a_clear_message(executor_factory):
    failing = {f"i0c0{n}" for n in range(5)}
    with pytest.raises(SearchFailed) as caught:
        run_search(PROMPT, NINE, "t1", executor_factory(fail=images_of(failing)))
    message = str(caught.value)
    assert "iteration 0: 5 of 9 new candidates failed" in message
    assert "i0c00: image: content_policy_violation" in message
    assert set(caught.value.failed_ids) == failing
    # The failed state travels with the error, so the orchestrator can store how the session ended.
    assert caught.value.state.candidate("i0c00").failed
    assert str(pickle.loads(pickle.dumps(caught.value))) == message


def test_a_few_failed_images_drop_only_those_candidates(executor_factory):
    failing = {"i0c01", "i0c02", "i0c05", "i0c08"}  # 4 of 9: not more than half
    log = []
    execute = executor_factory(fail=images_of(failing))

    def execute_and_log(calls):
        log.extend(calls)
        return execute(calls)

    state = run_search(PROMPT, NINE, "t1", execute_and_log)
    record = state.iterations[0]
    assert failing.isdisjoint(record.pool) and len(record.pool) == 5
    assert all(state.candidate(cid).error == "image: content_policy_violation" for cid in failing)
    vision_keys = [c.key for c in log if isinstance(c, VisionCall) and "-i0-" in c.key]
    assert len(vision_keys) == 10 * 3  # C(5, 2) pairs, 3 votes each
    assert not any(cid in key for key in vision_keys for cid in failing)
    assert state.rounds[1].failed == 4 and state.done


def test_failed_text_calls_drop_candidates_before_the_image_round(executor_factory):
    failing_keys = {"st1-i0-exp-c00", "st1-i0-exp-c03"}
    execute = executor_factory(fail=lambda call: "server_error" if call.key in failing_keys else None)
    state = start_search(PROMPT, NINE, "t1")
    state = apply_round(state, execute(plan_round(state)))
    images = plan_round(state)
    assert len(images) == 7 and {c.candidate_id for c in images}.isdisjoint({"i0c00", "i0c03"})
    assert state.candidate("i0c00").failed and state.candidate("i0c00").error == "text: server_error"


def test_more_than_half_failed_text_calls_stop_before_any_image_is_paid_for(executor_factory):
    execute = executor_factory(fail=lambda call: "server_error" if isinstance(call, TextCall) else None)
    state = start_search(PROMPT, NINE, "t1")
    with pytest.raises(SearchFailed, match="9 of 9"):
        apply_round(state, execute(plan_round(state)))


def test_an_unparseable_or_missing_text_answer_counts_as_a_failure(execute):
    state = start_search(PROMPT, NINE, "t1")
    results = execute(plan_round(state))
    broken = results["st1-i0-exp-c01"].model_copy(update={"content": {"what": "x"}})
    results["st1-i0-exp-c01"] = broken
    del results["st1-i0-exp-c02"]
    state = apply_round(state, results)
    assert state.candidate("i0c01").error.startswith("text: unusable expansion output")
    assert state.candidate("i0c02").error == "text: no result"
    assert state.rounds[0].succeeded == 7 and state.rounds[0].failed == 2


def test_failed_refinements_count_against_the_later_iteration(executor_factory):
    first_five = {f"st1-i1-ref-c0{n}" for n in range(5)}
    execute = executor_factory(fail=lambda call: "server_error" if call.key in first_five else None)
    with pytest.raises(SearchFailed, match="iteration 1: 5 of 9"):
        run_search(PROMPT, NINE, "t1", execute)


def test_failed_votes_are_missing_evidence_not_a_failure(executor_factory):
    # Every first vote of every pair times out; the second and third still count.
    execute = executor_factory(fail=lambda call: "timeout" if call.key.endswith("-v1") else None)
    state = run_search(PROMPT, NINE, "t1", execute)
    vision_rounds = [r for r in state.rounds if r.round == "vision"]
    assert all(r.failed == r.calls // 3 for r in vision_rounds)
    assert len(state.votes) == sum(r.succeeded for r in vision_rounds)
    assert state.done and state.winner_id in state.iterations[-1].pool


def test_a_pool_of_one_needs_no_votes_and_the_search_still_finishes(executor_factory):
    execute = executor_factory(fail=images_of({"i0c01"}))
    state = start_search(PROMPT, SearchParams(rounds_per_iteration=3, N=2, M=1, K=1, E=3), "t1")
    state = apply_round(state, execute(plan_round(state)))
    state = apply_round(state, execute(plan_round(state)))
    assert plan_round(state) == []
    state = apply_round(state, {})
    assert state.done and state.winner_id == "i0c00" and state.lineage == ["i0c00"]
