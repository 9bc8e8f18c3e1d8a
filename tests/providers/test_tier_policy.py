"""Tier choice and fallback rules, decided without any network."""

from __future__ import annotations

import pytest

from batch_pipeline.batching.pricing import PriceCatalog
from batch_pipeline.providers.tier_policy import TierPolicy
from batch_pipeline.vocabulary import Tier

CATALOG = PriceCatalog.load()
HOUR = 3600.0


def choose(policy: TierPolicy, mode: str, *, operation="compare", model="gpt-5-nano", size=50, left=20 * HOUR):
    return policy.choose(
        mode=mode, operation=operation, model=model, round_size=size, seconds_left=left, catalog=CATALOG
    )


@pytest.mark.parametrize("mode, tier", [("standard", Tier.STANDARD), ("flex", Tier.FLEX), ("batch", Tier.BATCH)])
def test_configured_tier_is_used_as_is(mode, tier):
    assert choose(TierPolicy(), mode).tier == tier


def test_flex_for_a_model_without_flex_runs_standard_and_says_why():
    choice = choose(TierPolicy(), "flex", model="gpt-4o-mini")
    assert choice.tier == Tier.STANDARD and "gpt-4o-mini has no flex tier" in choice.reason


def test_batch_with_the_api_disabled_runs_standard():
    choice = choose(TierPolicy(batch_enabled=False), "batch")
    assert choice.tier == Tier.STANDARD and "BATCH_API_ENABLED" in choice.reason


@pytest.mark.parametrize(
    "operation, switch", [("compare", "vision"), ("expand", "llm"), ("refine", "llm"), ("image", "images")]
)
def test_per_operation_switch_keeps_that_operation_off_batch(operation, switch):
    policy = TierPolicy(enabled_for={"llm": True, "vision": True, "images": True} | {switch: False})
    assert choose(policy, "batch", operation=operation).tier == Tier.STANDARD
    assert choose(TierPolicy(), "batch", operation=operation).tier == Tier.BATCH


def test_hybrid_batches_a_large_round_with_time_to_spare():
    choice = choose(TierPolicy(), "hybrid", size=200, left=10 * HOUR)
    assert choice.tier == Tier.BATCH and "200 compare requests" in choice.reason


def test_hybrid_sends_a_small_round_to_flex_when_the_model_has_it():
    assert choose(TierPolicy(), "hybrid", size=3).tier == Tier.FLEX
    assert choose(TierPolicy(), "hybrid", size=3, model="gpt-4o-mini").tier == Tier.STANDARD


def test_hybrid_avoids_batch_close_to_the_deadline():
    choice = choose(TierPolicy(), "hybrid", size=500, left=0.5 * HOUR)
    assert choice.tier == Tier.FLEX and "30 min to the deadline" in choice.reason


def test_batch_hybrid_mode_setting_turns_batch_sessions_hybrid():
    assert choose(TierPolicy(hybrid=True), "batch", size=2).tier == Tier.FLEX


def test_fallback_goes_to_standard_when_no_time_is_left_for_another_batch():
    choice = TierPolicy().fallback(attempts=1, max_attempts=3, seconds_left=0.2 * HOUR)
    assert choice is not None and choice.tier == Tier.STANDARD and choice.reason.startswith("fallback:")


def test_fallback_keeps_batching_while_time_and_attempts_remain():
    assert TierPolicy().fallback(attempts=1, max_attempts=3, seconds_left=10 * HOUR) is None


def test_fallback_uses_standard_for_the_last_attempt():
    choice = TierPolicy().fallback(attempts=2, max_attempts=3, seconds_left=10 * HOUR)
    assert choice is not None and "last attempt" in choice.reason


def test_no_fallback_when_switched_off():
    assert TierPolicy(fallback_to_standard=False).fallback(attempts=2, max_attempts=3, seconds_left=60) is None


def test_batch_tier_skips_the_batch_when_the_rounds_time_is_shorter_than_observed_turnaround():
    observed = TierPolicy().choose(
        mode="batch",
        operation="compare",
        model="gpt-5-nano",
        round_size=50,
        seconds_left=0.5 * HOUR,
        catalog=CATALOG,
        observed_s=2 * HOUR,
    )
    assert observed.tier == Tier.STANDARD and observed.reason.startswith("deadline: 30 min left")
    unknown = TierPolicy().choose(
        mode="batch",
        operation="compare",
        model="gpt-5-nano",
        round_size=50,
        seconds_left=0.5 * HOUR,
        catalog=CATALOG,
        observed_s=None,
    )
    assert unknown.tier == Tier.BATCH, "no history: the batch is tried; the round deadline cancels it if late"


def test_hybrid_compares_the_observed_turnaround_when_there_is_one():
    quick = TierPolicy(hybrid=True).choose(
        mode="hybrid",
        operation="compare",
        model="gpt-5-nano",
        round_size=50,
        seconds_left=0.5 * HOUR,
        catalog=CATALOG,
        observed_s=60,
    )
    assert quick.tier == Tier.BATCH


@pytest.mark.parametrize(
    "to_standard, model, tier",
    [(True, "gpt-5", Tier.STANDARD), (False, "gpt-5", Tier.FLEX), (False, "gpt-4o-mini", Tier.STANDARD)],
)
def test_deadline_fallback_tier_follows_batch_fallback_to_standard(to_standard, model, tier):
    assert TierPolicy(fallback_to_standard=to_standard).deadline_tier(model, CATALOG) == tier
