"""SplitLimits: per-model enqueued-token budgets and bounds that mirror the API's limits."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from batch_pipeline.batching.limits import MAX_FILE_BYTES, MAX_REQUESTS_PER_FILE, SplitLimits


def test_token_budget_uses_exact_model_then_longest_prefix_then_default():
    limits = SplitLimits()
    assert limits.token_budget("gpt-5") == 1_500_000
    assert limits.token_budget("gpt-5-mini") == 5_000_000
    assert limits.token_budget("gpt-5-mini-2025-08-07") == 5_000_000  # longest prefix, not "gpt-5"
    assert limits.token_budget("gpt-5-2025-08-07") == 1_500_000
    assert limits.token_budget("gpt-4o") == limits.default_enqueued_token_limit


def test_split_limits_refuse_values_beyond_what_the_api_allows():
    assert SplitLimits().max_requests == MAX_REQUESTS_PER_FILE == 50_000
    assert SplitLimits().max_bytes == MAX_FILE_BYTES == 200 * 1024 * 1024
    for bad in ({"max_requests": 50_001}, {"max_requests": 0}, {"max_bytes": MAX_FILE_BYTES + 1}, {"max_bytes": 100}):
        with pytest.raises(ValidationError):
            SplitLimits(**bad)
