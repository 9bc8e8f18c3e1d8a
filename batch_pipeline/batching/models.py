"""Records that cross module boundaries in the batch core.

Request and batch state machines are written down here once, as data; the ledger enforces them.
"""
from __future__ import annotations

from decimal import Decimal
from enum import StrEnum
from typing import Any

from pydantic import BaseModel


class Tier(StrEnum):
    """How a call is executed and paid: the same call costs half on flex and batch."""

    STANDARD = "standard"
    FLEX = "flex"
    BATCH = "batch"


class Endpoint(StrEnum):
    CHAT = "/v1/chat/completions"
    IMAGES = "/v1/images/generations"


class Outcome(StrEnum):
    """How one attempt of a request ended, read from a batch's output and error files."""

    SUCCEEDED = "succeeded"
    FAILED_RETRYABLE = "failed_retryable"    # 429/5xx/timeouts: worth another attempt
    FAILED_PERMANENT = "failed_permanent"    # 4xx: the same body would fail again
    EXPIRED = "expired"                      # never ran: the 24 h window closed
    CANCELLED = "cancelled"                  # never ran: the batch was cancelled


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
