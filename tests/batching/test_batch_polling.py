"""Polling policy: capped exponential backoff with deterministic jitter; honest progress."""

from __future__ import annotations

import pytest

from batch_pipeline.batching.polling import PollPolicy, progress


def test_delay_grows_exponentially_until_the_cap_and_errors_back_off_harder():
    policy = PollPolicy(initial_s=10, multiplier=2, max_s=100, jitter=0, error_multiplier=2)
    assert [policy.delay(n) for n in range(6)] == [10, 20, 40, 80, 100, 100]
    assert policy.delay(1, consecutive_errors=1) == 40
    assert policy.delay(1, consecutive_errors=10) == 100


def test_jitter_is_deterministic_per_key_and_spreads_batches_apart():
    policy = PollPolicy(initial_s=30, jitter=0.2)
    assert policy.delay(3, key="bpb_a") == policy.delay(3, key="bpb_a")
    delays = {policy.delay(3, key=f"bpb_{i}") for i in range(20)}
    assert len(delays) > 10
    base = 30 * 1.5**3
    assert all(base * 0.8 <= d <= base * 1.2 for d in delays)
    d = policy.delay(3, key="bpb_a")
    assert not policy.due(now=1000 + d - 0.01, last_polled_at=1000, polls=3, key="bpb_a")
    assert policy.due(now=1000 + d, last_polled_at=1000, polls=3, key="bpb_a")


def test_delay_never_exceeds_max_even_with_jitter():
    policy = PollPolicy(initial_s=30, max_s=600, jitter=0.2)
    longest = max(policy.delay(50, key=f"batch-{i}") for i in range(50))
    assert longest <= policy.max_s, f"waited {longest:.0f}s; max_s promises never more than {policy.max_s:.0f}s"


def test_finalizing_progress_is_below_one():
    assert progress("finalizing", 100, 0, 100) < 1.0
    assert progress("in_progress", 60, 40, 100) < 1.0
    assert progress("in_progress", 30, 10, 100) == pytest.approx(0.4)


def test_ended_batches_are_complete_and_unknown_totals_are_zero():
    for status in ("completed", "failed", "expired", "cancelled"):
        assert progress(status, 0, 0, 0) == 1.0
    assert progress("validating", None, None, None) == 0.0
    assert progress("in_progress", 5, None, 0) == 0.0
