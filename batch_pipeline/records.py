"""The records the batch core hands the ledger: a request to queue, and how one attempt of it ended.

They live outside both packages so that the ledger imports nothing from the batch core (which imports
the ledger): `batching` builds them, `ledger` stores them.
"""
from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, Field, model_validator

from batch_pipeline.vocabulary import Endpoint, Outcome, RoundId, Tier

# The Batch API's custom_id: what a request id must look like (batching.requests.make_custom_id makes them).
_CUSTOM_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class QueuedRequest(BaseModel):
    """What the ledger stores per request: the normalised body plus what splitting needs."""

    request_id: str
    session_id: str | None = None
    operation: str
    endpoint: Endpoint
    model: str
    tier: Tier = Tier.BATCH
    tier_reason: str | None = None
    iteration: int | None = None  # with `round`: the session step that asked for it (a RoundId)
    round: str | None = None
    body: dict[str, Any]
    body_hash: str
    est_prompt_tokens: int
    line_bytes: int = Field(description="bytes of the JSONL line once image refs are inlined")

    @property
    def round_id(self) -> RoundId | None:
        return None if self.iteration is None or self.round is None else RoundId(self.iteration, self.round)

    @model_validator(mode="after")
    def _custom_id_is_valid(self) -> QueuedRequest:
        if not _CUSTOM_ID.match(self.request_id):
            raise ValueError(f"request_id {self.request_id!r} is not a valid custom_id (<=64 chars, [A-Za-z0-9_-])")
        return self


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


class CostFigures(BaseModel):
    """The three figures every report shows (README, "What was paid and what was saved"): what was paid, what
    the standard tier would have charged for the calls actually made (so paid vs this is the batch/flex
    discount), and what the cache avoided (cache hits at the standard price) on a line of its own."""

    paid: Decimal
    standard_for_calls: Decimal
    cache_avoided: Decimal
    calls: int = 0
    cache_hits: int = 0
    unpriced_calls: int = 0  # answered by a model without a price: their cost is unknown, never $0

    @property
    def tier_saved(self) -> Decimal:
        return self.standard_for_calls - self.paid
