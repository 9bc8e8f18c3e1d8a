"""Records that cross module boundaries in the batch core (the vocabulary itself is in `vocabulary.py`)."""
from __future__ import annotations

from decimal import Decimal
from typing import Any

from pydantic import BaseModel

from batch_pipeline.vocabulary import Endpoint, Outcome, Tier

__all__ = ["Endpoint", "Outcome", "Tier", "RequestOutcome"]


class RequestOutcome(BaseModel):
    """One mapped result line (or the absence of one), with its cost."""

    request_id: str
    outcome: Outcome
    status_code: int | None = None
    response: dict[str, Any] | None = None
    error_code: str | None = None
    error_message: str | None = None
    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    images: int = 0
    cost_usd: Decimal = Decimal(0)
    standard_cost_usd: Decimal = Decimal(0)
    price_version: str | None = None
