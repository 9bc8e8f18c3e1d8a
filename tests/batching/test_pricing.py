"""Tests for `batch_pipeline.batching.pricing`: usage + model + tier -> exact USD cost.

Expected figures are worked out by hand from the table in openai-batch-api.md.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest
from openai.types import CompletionUsage

from batch_pipeline.batching import pricing
from batch_pipeline.batching.pricing import (
    CostBreakdown,
    PriceCatalog,
    TokenUsage,
    UnknownPriceError,
    round_cents,
)
from batch_pipeline.vocabulary import Tier

PACKAGED_PRICES = Path(pricing.__file__).with_name("prices.json")
# 1,000 input tokens of which 200 cached, 500 output tokens.
CHAT_USAGE = TokenUsage(input_tokens=1000, cached_tokens=200, output_tokens=500)


@pytest.fixture(scope="module")
def catalog() -> PriceCatalog:
    return PriceCatalog.load()


def test_packaged_catalog_carries_version_date_and_source(catalog: PriceCatalog) -> None:
    assert catalog.version == "2026-11-01"
    assert catalog.as_of.isoformat() == "2026-11-01"
    assert "re-check" in catalog.source
    assert catalog.currency == "USD"


def test_standard_chat_cost_matches_hand_calculation(catalog: PriceCatalog) -> None:
    # gpt-5: 800 x 1.25 + 200 x 0.125 + 500 x 10.00 = 1000 + 25 + 5000 = 6025 per 1M tokens.
    assert catalog.cost("gpt-5", Tier.STANDARD, CHAT_USAGE) == Decimal("0.006025")


def test_batch_chat_cost_matches_hand_calculation(catalog: PriceCatalog) -> None:
    # gpt-4o-mini batch: 800 x 0.075 + 200 x 0.0375 + 500 x 0.30 = 60 + 7.5 + 150 = 217.5 per 1M.
    assert catalog.cost("gpt-4o-mini", Tier.BATCH, CHAT_USAGE) == Decimal("0.0002175")


def test_flex_chat_cost_is_billed_at_batch_rates(catalog: PriceCatalog) -> None:
    # gpt-5-mini flex: 800 x 0.125 + 200 x 0.0125 + 500 x 1.00 = 100 + 2.5 + 500 = 602.5 per 1M.
    assert catalog.cost("gpt-5-mini", Tier.FLEX, CHAT_USAGE) == Decimal("0.0006025")
    assert catalog.cost("gpt-5-mini", Tier.FLEX, CHAT_USAGE) == catalog.cost("gpt-5-mini", Tier.BATCH, CHAT_USAGE)


def test_a_tier_read_back_as_its_string_value_costs_the_same(catalog: PriceCatalog) -> None:
    assert catalog.cost("gpt-5", Tier("batch"), CHAT_USAGE) == catalog.cost("gpt-5", Tier.BATCH, CHAT_USAGE)


def test_batch_costs_exactly_half_of_standard_for_every_catalog_price(catalog: PriceCatalog) -> None:
    data = json.loads(PACKAGED_PRICES.read_text(), parse_float=Decimal)
    for model in data["models"]:
        assert catalog.cost(model, Tier.BATCH, CHAT_USAGE) * 2 == catalog.cost(model, Tier.STANDARD, CHAT_USAGE)
    for model, prices in data["images"].items():
        for quality, sizes in prices["standard"].items():
            for size in sizes:
                usage = TokenUsage.from_image_request(1, quality, size)
                assert catalog.cost(model, Tier.BATCH, usage) * 2 == catalog.cost(model, Tier.STANDARD, usage)


def test_cached_tokens_are_billed_at_the_cached_price(catalog: PriceCatalog) -> None:
    all_cached = TokenUsage(input_tokens=1_000_000, cached_tokens=1_000_000, output_tokens=0)
    none_cached = TokenUsage(input_tokens=1_000_000, output_tokens=0)

    assert catalog.cost("gpt-4o", Tier.STANDARD, all_cached) == Decimal("1.25")
    assert catalog.cost("gpt-4o", Tier.STANDARD, none_cached) == Decimal("2.50")


def test_cached_tokens_cannot_exceed_input_tokens() -> None:
    with pytest.raises(ValueError, match="cached_tokens"):
        TokenUsage(input_tokens=10, cached_tokens=11, output_tokens=0)


@pytest.mark.parametrize(
    ("quality", "size", "standard", "batch"),
    [
        ("low", "1024x1024", "0.005", "0.0025"),
        ("low", "1536x1024", "0.006", "0.003"),
        ("medium", "1024x1024", "0.011", "0.0055"),
        ("medium", "1024x1536", "0.015", "0.0075"),
        ("high", "1024x1024", "0.036", "0.018"),
        ("high", "1536x1024", "0.052", "0.026"),
    ],
)
def test_images_are_priced_per_image_by_quality_and_size(
    catalog: PriceCatalog, quality: str, size: str, standard: str, batch: str
) -> None:
    usage = TokenUsage.from_image_request(3, quality, size)

    assert catalog.cost("gpt-image-1-mini", Tier.STANDARD, usage) == 3 * Decimal(standard)
    assert catalog.cost("gpt-image-1-mini", Tier.BATCH, usage) == 3 * Decimal(batch)


def test_image_size_the_catalog_does_not_list_raises(catalog: PriceCatalog) -> None:
    with pytest.raises(UnknownPriceError, match="'auto'"):
        catalog.cost("gpt-image-1-mini", Tier.BATCH, TokenUsage.from_image_request(1, "low", "auto"))


@pytest.mark.parametrize("model", ["gpt-4o-mini", "gpt-4o", "gpt-4.1-mini", "gpt-image-1-mini"])
def test_flex_on_a_model_without_flex_raises_naming_model_and_tier(catalog: PriceCatalog, model: str) -> None:
    usage = CHAT_USAGE if model != "gpt-image-1-mini" else TokenUsage.from_image_request(1, "low", "1024x1024")

    assert not catalog.supports_flex(model)
    with pytest.raises(UnknownPriceError) as caught:
        catalog.cost(model, Tier.FLEX, usage)

    assert model in str(caught.value) and "flex" in str(caught.value)
    assert (caught.value.model, caught.value.tier) == (model, Tier.FLEX)


def test_flex_is_supported_by_the_gpt5_family(catalog: PriceCatalog) -> None:
    assert all(catalog.supports_flex(model) for model in ("gpt-5", "gpt-5-mini", "gpt-5-nano"))
    assert catalog.supports_flex("gpt-5-nano-2025-08-07")
    assert not catalog.supports_flex("no-such-model")


def test_unknown_model_raises_naming_the_model(catalog: PriceCatalog) -> None:
    with pytest.raises(UnknownPriceError, match="'gpt-9-ultra'"):
        catalog.cost("gpt-9-ultra", Tier.STANDARD, CHAT_USAGE)


@pytest.mark.parametrize(
    ("model", "catalog_key"),
    [
        ("gpt-5-mini-2025-08-07", "gpt-5-mini"),
        ("gpt-5-2025-08-07", "gpt-5"),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("gpt-5-mini", "gpt-5-mini"),
    ],
)
def test_dated_snapshot_resolves_to_its_alias(catalog: PriceCatalog, model: str, catalog_key: str) -> None:
    assert catalog.resolve_model(model) == catalog_key
    assert catalog.cost(model, Tier.STANDARD, CHAT_USAGE) == catalog.cost(catalog_key, Tier.STANDARD, CHAT_USAGE)


@pytest.mark.parametrize("model", ["gpt-5-mini-latest", "gpt-5-chat", "gpt-5-2025-08", "gpt-5-mini2025-08-07"])
def test_only_a_full_date_suffix_is_stripped(catalog: PriceCatalog, model: str) -> None:
    # Otherwise an unknown variant would silently be billed as its base model.
    with pytest.raises(UnknownPriceError):
        catalog.resolve_model(model)


def test_usage_from_sdk_completion_usage_reads_cached_tokens() -> None:
    usage = CompletionUsage.model_validate(
        {
            "prompt_tokens": 1200,
            "completion_tokens": 300,
            "total_tokens": 1500,
            "prompt_tokens_details": {"cached_tokens": 1024},
        }
    )

    assert TokenUsage.from_chat_usage(usage) == TokenUsage(input_tokens=1200, cached_tokens=1024, output_tokens=300)


def test_usage_from_dicts_in_chat_and_responses_spelling() -> None:
    chat = {"prompt_tokens": 50, "completion_tokens": 7, "total_tokens": 57, "prompt_tokens_details": None}
    responses = {"input_tokens": 50, "input_tokens_details": {"cached_tokens": 10}, "output_tokens": 7}

    assert TokenUsage.from_chat_usage(chat) == TokenUsage(input_tokens=50, cached_tokens=0, output_tokens=7)
    assert TokenUsage.from_chat_usage(responses) == TokenUsage(input_tokens=50, cached_tokens=10, output_tokens=7)


def test_cost_breakdown_reports_standard_cost_and_savings(catalog: PriceCatalog) -> None:
    breakdown = catalog.cost_breakdown("gpt-5", Tier.BATCH, CHAT_USAGE)

    assert breakdown == CostBreakdown(actual=Decimal("0.0030125"), standard=Decimal("0.006025"))
    assert breakdown.saved == Decimal("0.0030125")
    assert catalog.cost_breakdown("gpt-5", Tier.STANDARD, CHAT_USAGE).saved == 0


def test_costs_are_exact_decimals_over_ten_thousand_small_requests(catalog: PriceCatalog) -> None:
    small = TokenUsage(input_tokens=37, cached_tokens=3, output_tokens=11)
    # gpt-5-nano batch: 34 x 0.025 + 3 x 0.0025 + 11 x 0.20 = 0.85 + 0.0075 + 2.2 = 3.0575 per 1M.
    single = catalog.cost("gpt-5-nano", Tier.BATCH, small)

    total = sum((catalog.cost("gpt-5-nano", Tier.BATCH, small) for _ in range(10_000)), Decimal(0))

    assert isinstance(single, Decimal) and single == Decimal("0.0000030575")
    assert total == Decimal("0.030575")


def test_round_cents_uses_bankers_rounding() -> None:
    assert round_cents(Decimal("0.125")) == Decimal("0.12")
    assert round_cents(Decimal("0.135")) == Decimal("0.14")
    assert round_cents(Decimal("0.030575")) == Decimal("0.03")


def test_catalog_loads_from_an_explicit_path(tmp_path: Path) -> None:
    data = json.loads(PACKAGED_PRICES.read_text())
    data["version"] = "test-version"
    path = tmp_path / "prices.json"
    path.write_text(json.dumps(data))

    assert PriceCatalog.load(path).version == "test-version"
