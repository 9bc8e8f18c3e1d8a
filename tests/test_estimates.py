"""Round deadlines and estimates, decided without any network."""

from __future__ import annotations

from decimal import Decimal

from batch_pipeline.batching.pricing import PriceCatalog, format_usd
from batch_pipeline.deadlines import round_deadline
from batch_pipeline.estimates import estimate_completion, estimate_session, rounds_left
from batch_pipeline.search import SearchParams, start_search

CATALOG = PriceCatalog.load()
HOUR = 3600.0


def test_each_round_gets_an_equal_share_of_the_time_left_less_a_reserve():
    # 9 h left, 10% kept back (capped at 15 min), three rounds left: 2 h 55 min for this one.
    assert round_deadline(round_started_at=0, session_deadline_at=9 * HOUR, rounds_left=3) == (9 * HOUR - 900) / 3
    assert round_deadline(round_started_at=0, session_deadline_at=60, rounds_left=1) == 54
    assert round_deadline(round_started_at=100, session_deadline_at=50, rounds_left=2) == 100, "past due at once"


def test_rounds_left_follow_the_rounds_per_iteration():
    three = start_search("a fox", SearchParams(N=4, M=2, K=3, rounds_per_iteration=3), "t")
    two = start_search("a fox", SearchParams(N=4, M=2, K=3, rounds_per_iteration=2), "t")
    assert len(rounds_left(three)) == 9 and rounds_left(two) == ["text", "image", "vision"] + ["image", "vision"] * 2


def test_completion_uses_observed_turnaround_else_the_api_window_capped_by_the_deadline():
    params = SearchParams(N=4, M=2, K=1)
    seen = {
        ("gpt-4.1-mini", "/v1/chat/completions"): (600.0, 5),
        ("gpt-image-1-mini", "/v1/images/generations"): (900.0, 2),
    }
    done = estimate_completion(
        now=0, deadline_at=24 * HOUR, rounds=["text", "image", "vision"], params=params, mode="batch", turnaround=seen
    )
    assert done.at == 24 * HOUR and done.basis.startswith("the session deadline")  # 600 s + 900 s + 24 h > 24 h
    assert "observed median 600 s over 5 gpt-4.1-mini batches" in done.basis and "24 h window" in done.basis
    partial = estimate_completion(
        now=0, deadline_at=24 * HOUR, rounds=["text", "image"], params=params, mode="batch", turnaround=seen
    )
    assert partial.at == 1500 and partial.wait_hours == 1500 / HOUR
    sync = estimate_completion(now=0, deadline_at=HOUR, rounds=["text"], params=params, mode="standard", turnaround={})
    assert sync.at == 120 and "synchronous" in sync.basis


def test_a_session_is_priced_on_every_tier_with_batch_at_half_and_its_basis():
    estimate = estimate_session("a fox", SearchParams(N=4, M=2, K=2, E=1), CATALOG)
    assert estimate.per_tier["batch"] * 2 == estimate.per_tier["standard"] > 0
    assert estimate.per_tier["flex"] == estimate.per_tier["standard"], "neither default model has a flex tier"
    assert any("upper bound" in line for line in estimate.basis)
    observed = estimate_session(
        "a fox",
        SearchParams(N=4, M=2, K=2, E=1),
        CATALOG,
        history={("expand", "gpt-4.1-mini"): (20.0, 10), ("compare", "gpt-4o-mini"): (30.0, 10)},
    )
    assert observed.per_tier["standard"] < estimate.per_tier["standard"]
    assert format_usd(Decimal("0.0034")) == "$0.0034"
