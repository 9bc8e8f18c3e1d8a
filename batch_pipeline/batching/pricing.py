"""Pricing: usage of a finished request (tokens, images) + model + tier -> exact USD cost.

Prices come from the versioned `prices.json` beside this module; the ledger and reports call in here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import date
from decimal import ROUND_HALF_EVEN, Decimal
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, computed_field, model_validator

from batch_pipeline.errors import BatchPipelineError
from batch_pipeline.records import UNITS_PER_USD, CostFigures
from batch_pipeline.vocabulary import Tier

if TYPE_CHECKING:
    from openai.types import CompletionUsage

# Text prices are quoted per million tokens.
TOKENS_PER_PRICE_UNIT = Decimal(1_000_000)
CENT = Decimal("0.01")

# OpenAI snapshot ids are an alias plus a release date: "gpt-5-mini-2025-08-07" -> "gpt-5-mini".
_DATED_SNAPSHOT = re.compile(r"(?P<alias>.+)-\d{4}-\d{2}-\d{2}")


class UnknownPriceError(BatchPipelineError, LookupError):
    """The catalog holds no price for this model (or its snapshot) on this tier."""

    def __init__(self, model: str, tier: Tier | None, reason: str) -> None:
        self.model = model
        self.tier = tier
        on_tier = f" on tier {str(tier)!r}" if tier is not None else ""
        super().__init__(f"no price for model {model!r}{on_tier}: {reason}")


class TokenUsage(BaseModel):
    """What one request consumed, as billed: tokens for text models, images for image models."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    input_tokens: int = Field(ge=0)
    # The part of input_tokens served from the prompt cache, billed at the cached_input price.
    cached_tokens: int = Field(default=0, ge=0)
    # Includes reasoning tokens: the API bills them as output.
    output_tokens: int = Field(ge=0)
    images: int = Field(default=0, ge=0)
    image_quality: str | None = None
    image_size: str | None = None

    @model_validator(mode="after")
    def _check_consistency(self) -> TokenUsage:
        if self.cached_tokens > self.input_tokens:
            raise ValueError(f"cached_tokens ({self.cached_tokens}) exceed input_tokens ({self.input_tokens})")
        if self.images and (self.image_quality is None or self.image_size is None):
            # Image prices depend on both; without them the cost cannot be known.
            raise ValueError("image_quality and image_size are required when images > 0")
        return self

    @classmethod
    def from_chat_usage(cls, usage: CompletionUsage | Mapping[str, Any]) -> TokenUsage:
        """From a response's `usage`: the SDK's `CompletionUsage` or the same thing as a dict.

        Chat Completions says prompt/completion tokens; the Responses API and a Batch object's
        `usage` say input/output tokens. Both spellings are read.
        """
        data: Mapping[str, Any] = usage.model_dump() if hasattr(usage, "model_dump") else usage
        if "prompt_tokens" in data:
            input_tokens, output_tokens = data["prompt_tokens"], data["completion_tokens"]
            details = data.get("prompt_tokens_details")
        else:
            input_tokens, output_tokens = data["input_tokens"], data["output_tokens"]
            details = data.get("input_tokens_details")
        # The details object and its cached_tokens may both be null when nothing was cached.
        cached_tokens = (details or {}).get("cached_tokens") or 0
        return cls(input_tokens=input_tokens, cached_tokens=cached_tokens, output_tokens=output_tokens)

    @classmethod
    def from_image_request(cls, n: int, quality: str, size: str) -> TokenUsage:
        """For `n` generated images of one quality and size, priced per image."""
        return cls(input_tokens=0, output_tokens=0, images=n, image_quality=quality, image_size=size)


class CostBreakdown(BaseModel):
    """The cost of some usage on the tier actually used, next to what standard would have cost."""

    model_config = ConfigDict(frozen=True)

    actual: Decimal
    standard: Decimal

    @computed_field  # type: ignore[prop-decorator]  # mypy rejects a decorator over @property; pydantic documents this
    @property
    def saved(self) -> Decimal:
        return self.standard - self.actual


def round_cents(amount: Decimal) -> Decimal:
    """Round to whole cents for reports; banker's rounding keeps sums of rounded rows unbiased."""
    return amount.quantize(CENT, rounding=ROUND_HALF_EVEN)


def format_usd(amount: Decimal | float | int | None) -> str:
    """The one way money is shown: whole cents from $1 up ($12.34, $1,234.50), below that enough digits
    to read two significant figures ($0.0034, $0.000012), and $0 only for exactly nothing."""
    if amount is None:
        return "-"
    value = Decimal(str(amount)) if isinstance(amount, float) else Decimal(amount)
    sign, value = ("-" if value < 0 else ""), abs(value)
    if value == 0:
        return "$0"
    if value >= 1:
        return f"{sign}${round_cents(value):,.2f}"
    # Two significant figures, never fewer than four decimals (so $0.5 reads $0.5000, $0.0034 stays).
    places = max(4, -value.adjusted() + 1)
    return f"{sign}${value.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_EVEN):.{places}f}"


def cost_lines(figures: CostFigures) -> list[str]:
    """The three cost figures as lines of text (CLI, demo, metadata): one wording everywhere."""
    lines = [
        f"paid {format_usd(figures.paid)} for {figures.calls} calls",
        f"standard tier for the same calls {format_usd(figures.standard_for_calls)}: "
        f"batch/flex saved {format_usd(figures.tier_saved)}"
        + (f" ({figures.tier_saved / figures.standard_for_calls:.0%})" if figures.standard_for_calls else ""),
        f"cache avoided {format_usd(figures.cache_avoided)} ({figures.cache_hits} calls answered from the ledger)",
    ]
    if figures.unpriced_calls:
        lines.append(f"{figures.unpriced_calls} calls have no price in the catalog: their cost is unknown, not $0")
    return lines


def cost_json(figures: CostFigures) -> dict[str, Any]:
    """The three figures for JSON answers and metadata: exact decimal strings plus the formatted text."""
    return {
        "paidUsd": str(figures.paid),
        "standardUsd": str(figures.standard_for_calls),
        "tierSavedUsd": str(figures.tier_saved),
        "cacheAvoidedUsd": str(figures.cache_avoided),
        "calls": figures.calls,
        "cacheHits": figures.cache_hits,
        "unpricedCalls": figures.unpriced_calls,
        "paid": format_usd(figures.paid),
        "standard": format_usd(figures.standard_for_calls),
        "tierSaved": format_usd(figures.tier_saved),
        "cacheAvoided": format_usd(figures.cache_avoided),
    }


class TokenPrices(BaseModel):
    """USD per 1M tokens on one tier."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    input: Decimal = Field(ge=0)
    cached_input: Decimal = Field(ge=0)
    output: Decimal = Field(ge=0)


class TextModelPrices(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    standard: TokenPrices
    batch: TokenPrices
    # None: the model does not accept service_tier="flex".
    flex: TokenPrices | None


# quality -> size -> USD per image.
ImagePrices = dict[str, dict[str, Decimal]]


class ImageModelPrices(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    standard: ImagePrices
    batch: ImagePrices
    # Flex covers chat and responses calls only, never image generation.
    flex: None = None


class _CatalogFile(BaseModel):
    """The shape of prices.json; a malformed file fails at load time, not at the first cost."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: str
    as_of: date
    source: str
    currency: Literal["USD"]
    units: dict[str, str]
    models: dict[str, TextModelPrices]
    images: dict[str, ImageModelPrices]
    # Models the provider marks deprecated (model -> note): still priced, never a default.
    deprecated: dict[str, str] = Field(default_factory=dict)


class _ExtraPricesFile(BaseModel):
    """Prices a user passes for models the catalog lacks (BATCH_PRICES_FILE / --prices): same shape."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: str = "user"
    models: dict[str, TextModelPrices] = Field(default_factory=dict)
    images: dict[str, ImageModelPrices] = Field(default_factory=dict)


class UnpricedModelError(BatchPipelineError, ValueError):
    """A session names a model (or an image size/quality) the price catalog cannot cost: refused at launch,
    because a cost of $0 would be a lie and a budget could not hold."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(message)


class UnitPrices(BaseModel):
    """Prices of one model on one tier in units of 1e-12 USD: per token (input, cached input, output)
    for text models, per image by (quality, size) for image models."""

    model_config = ConfigDict(frozen=True)

    text: tuple[int, int, int] | None = None
    image: dict[tuple[str, str], int] | None = None


class PriceCatalog:
    """One version of the price list; answers "what did this usage cost on this tier"."""

    def __init__(self, data: _CatalogFile) -> None:
        self._data = data

    @classmethod
    def load(cls, path: Path | None = None, *, extra: Path | None = None) -> PriceCatalog:
        """Read a catalog file; by default the one packaged with batch_pipeline. `extra` adds (or
        replaces) the prices of the models it names; the version then says so (`2026-11-01+user`)."""
        if path is None:
            text = resources.files(__package__).joinpath("prices.json").read_text(encoding="utf-8")
        else:
            text = path.read_text(encoding="utf-8")
        # parse_float=Decimal: a price must never pass through a binary float, or 0.1 stops being 0.1.
        data = _CatalogFile.model_validate(json.loads(text, parse_float=Decimal))
        if extra is not None:
            added = _ExtraPricesFile.model_validate(json.loads(extra.read_text(encoding="utf-8"), parse_float=Decimal))
            data = data.model_copy(
                update={
                    "version": f"{data.version}+{added.version}",
                    "models": data.models | added.models,
                    "images": data.images | added.images,
                    "deprecated": {
                        m: n for m, n in data.deprecated.items() if m not in added.models and m not in added.images
                    },
                }
            )
        return cls(data)

    @property
    def version(self) -> str:
        return self._data.version

    @property
    def as_of(self) -> date:
        return self._data.as_of

    @property
    def source(self) -> str:
        return self._data.source

    @property
    def currency(self) -> str:
        return self._data.currency

    def resolve_model(self, model: str) -> str:
        """The catalog key for a model id: the id itself, or the alias of a dated snapshot.

        Only a full date suffix is stripped, so "gpt-5-mini" never falls back to "gpt-5".
        """
        if model in self._data.models or model in self._data.images:
            return model
        match = _DATED_SNAPSHOT.fullmatch(model)
        if match is not None:
            alias = match["alias"]
            if alias in self._data.models or alias in self._data.images:
                return alias
        raise UnknownPriceError(model, None, f"not in price catalog {self.version}")

    def deprecation(self, model: str) -> str | None:
        """The catalog's note if the provider marks this model deprecated, else None."""
        try:
            return self._data.deprecated.get(self.resolve_model(model))
        except UnknownPriceError:
            return None

    def check_search_models(
        self, *, text_model: str, vision_model: str, image_model: str, image_size: str, image_quality: str
    ) -> list[str]:
        """Refuse (UnpricedModelError naming the field) any model this catalog cannot cost on every tier
        the session may use; return notes (deprecated models) for the user."""
        hint = "pass its prices in a file (BATCH_PRICES_FILE, or --prices on the CLI) to use it"
        notes = []
        for field, model in (("text_model", text_model), ("vision_model", vision_model)):
            try:
                key = self.resolve_model(model)
            except UnknownPriceError:
                raise UnpricedModelError(field, f"{model!r} is not in price catalog {self.version}: {hint}") from None
            if key not in self._data.models:
                raise UnpricedModelError(field, f"{model!r} is an image model, not a text model")
            if note := self._data.deprecated.get(key):
                notes.append(f"{field} {model} is deprecated ({note})")
        try:
            key = self.resolve_model(image_model)
        except UnknownPriceError:
            raise UnpricedModelError(
                "image_model", f"{image_model!r} is not in price catalog {self.version}: {hint}"
            ) from None
        prices = self._data.images.get(key)
        if prices is None:
            raise UnpricedModelError("image_model", f"{image_model!r} is a text model, not an image model")
        for tier in (Tier.STANDARD, Tier.BATCH):
            if getattr(prices, tier.value).get(image_quality, {}).get(image_size) is None:
                raise UnpricedModelError(
                    "image_size",
                    f"{image_model} has no {tier} price for quality {image_quality!r} at {image_size}: {hint}",
                )
        if note := self._data.deprecated.get(key):
            notes.append(f"image_model {image_model} is deprecated ({note})")
        return notes

    def supports_flex(self, model: str) -> bool:
        """Whether the model accepts service_tier="flex"; False for models the catalog does not know."""
        try:
            key = self.resolve_model(model)
        except UnknownPriceError:
            return False
        text_prices = self._data.models.get(key)
        return text_prices is not None and text_prices.flex is not None

    def cost(self, model: str, tier: Tier, usage: TokenUsage) -> Decimal:
        """Exact USD cost of `usage` on `tier`; raises UnknownPriceError when there is no price."""
        key = self.resolve_model(model)
        # Price blocks are named after the Tier values, so a tier selects its block by name.
        text_prices = self._data.models.get(key)
        if text_prices is not None:
            if usage.images:
                raise UnknownPriceError(model, tier, "a text model has no per-image price")
            return self._token_cost(model, tier, getattr(text_prices, tier.value), usage)
        if usage.input_tokens or usage.output_tokens:
            # Per-image prices already cover generated image tokens; per-token prices of image
            # models are not in the catalog, so a cost built from them would be a guess.
            raise UnknownPriceError(model, tier, "the catalog prices image models per image, not per token")
        return self._image_cost(model, tier, getattr(self._data.images[key], tier.value), usage)

    def unit_prices(self, model: str, tier: Tier) -> UnitPrices | None:
        """The prices of `model` on `tier` as whole units of 1e-12 USD (the ledger's DECIMAL scale).

        Bulk pricing multiplies integers with these instead of building a Decimal per row; the result
        is the same exact amount. None when a price is finer than the scale (then price per row).
        Raises UnknownPriceError like `cost` when the model or tier has no price.
        """
        tier = Tier(tier)
        key = self.resolve_model(model)
        text_prices = self._data.models.get(key)
        if text_prices is not None:
            prices = getattr(text_prices, tier.value)
            if prices is None:
                raise UnknownPriceError(model, tier, "the model does not support this tier")
            per_token = [
                price * UNITS_PER_USD / TOKENS_PER_PRICE_UNIT
                for price in (prices.input, prices.cached_input, prices.output)
            ]
            if any(p != p.to_integral_value() for p in per_token):
                return None
            return UnitPrices(text=tuple(int(p) for p in per_token))
        prices_img = getattr(self._data.images[key], tier.value)
        if prices_img is None:
            raise UnknownPriceError(model, tier, "the model does not support this tier")
        per_image = {
            (quality, size): price * UNITS_PER_USD
            for quality, sizes in prices_img.items()
            for size, price in sizes.items()
        }
        if any(p != p.to_integral_value() for p in per_image.values()):
            return None
        return UnitPrices(image={k: int(p) for k, p in per_image.items()})

    def cost_breakdown(self, model: str, tier: Tier, usage: TokenUsage) -> CostBreakdown:
        """The cost on `tier` and, for the savings report, on the standard tier for the same usage."""
        return CostBreakdown(
            actual=self.cost(model, tier, usage),
            standard=self.cost(model, Tier.STANDARD, usage),
        )

    @staticmethod
    def _token_cost(model: str, tier: Tier, prices: TokenPrices | None, usage: TokenUsage) -> Decimal:
        if prices is None:
            raise UnknownPriceError(model, tier, "the model does not support this tier")
        uncached_tokens = usage.input_tokens - usage.cached_tokens
        per_unit = (
            uncached_tokens * prices.input
            + usage.cached_tokens * prices.cached_input
            + usage.output_tokens * prices.output
        )
        return per_unit / TOKENS_PER_PRICE_UNIT

    @staticmethod
    def _image_cost(model: str, tier: Tier, prices: ImagePrices | None, usage: TokenUsage) -> Decimal:
        if prices is None:
            raise UnknownPriceError(model, tier, "the model does not support this tier")
        if not usage.images:
            return Decimal(0)
        per_image = prices.get(usage.image_quality or "", {}).get(usage.image_size or "")
        if per_image is None:
            # e.g. quality or size "auto": price from the size and quality the response reports.
            raise UnknownPriceError(
                model, tier, f"quality {usage.image_quality!r} at size {usage.image_size!r} is not priced"
            )
        return usage.images * per_image
