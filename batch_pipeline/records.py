"""The records the batch core hands the ledger: a request to queue, and how one attempt of it ended.

They live outside both packages so that the ledger imports nothing from the batch core (which imports
the ledger): `batching` builds them, `ledger` stores them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

import orjson
from pydantic import BaseModel, Field, model_validator

from batch_pipeline.vocabulary import Endpoint, Outcome, RoundId, Tier

# The Batch API's custom_id: what a request id must look like (batching.requests.make_custom_id makes them).
_CUSTOM_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# Bulk pricing and the ledger's bulk insert count money in whole units of 1e-12 USD: the scale of its DECIMAL(24, 12).
UNITS_PER_USD = Decimal(10) ** 12


class QueuedRequest(BaseModel):
    """What the ledger stores per request: the normalised body plus what splitting needs."""

    # `body` serialised once (keys sorted) by the builder, as text: a slot, not a field, so comparisons, copies
    # and pickles never carry it, and a copy with another body is serialised again.
    __slots__ = ("_body_text",)

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

    def body_text(self) -> str:
        """`body` as the JSON text the ledger stores and input lines embed (keys sorted), serialised once."""
        try:
            return self._body_text  # type: ignore[attr-defined]  # the slot, set by from_checked or below
        except AttributeError:
            text = canonical_body(self.body).decode()
            object.__setattr__(self, "_body_text", text)
            return text

    @classmethod
    def from_checked(cls, body_text: str, values: dict[str, Any]) -> QueuedRequest:
        """A request from values its builder has already checked (`batching.requests.build_request`), without
        validating them again: every field given, of its declared type, the custom_id made by `make_custom_id`
        and `body_text` the canonical serialisation of `body`. Equal to `QueuedRequest(**values)` (a test holds
        this); validating costs about as much again as building the whole request. `values` becomes the
        model's `__dict__` (not copied)."""
        request = _new(cls)
        _set(request, "__dict__", values)
        # every field is set, so every request's set is the same: one shared set (pydantic only ever adds to it
        # a name assigned later, which is in it already, or copies it)
        _set(request, "__pydantic_fields_set__", _ALL_FIELDS)
        _set(request, "__pydantic_extra__", None)
        _set(request, "__pydantic_private__", None)
        _set(request, "_body_text", body_text)
        return request

    @model_validator(mode="after")
    def _custom_id_is_valid(self) -> QueuedRequest:
        if not _CUSTOM_ID.match(self.request_id):
            raise ValueError(f"request_id {self.request_id!r} is not a valid custom_id (<=64 chars, [A-Za-z0-9_-])")
        return self


_new, _set = object.__new__, object.__setattr__
_ALL_FIELDS = set(QueuedRequest.model_fields)


def canonical_body(body: dict[str, Any]) -> bytes:
    """The one serialisation of a body (keys sorted): the cache identity hashes it, the ledger stores it."""
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


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


class ResultTable:
    """Classified result lines, one row per custom_id: what bulk pricing fills in and the ledger inserts as
    one Arrow table, without a `RequestOutcome` (a pydantic object) per line.

    A row is a tuple in `COLUMNS` order (one tuple per line is what keeps reading a file fast).
    `response` is the body as the JSON text the ledger stores (the per-outcome path's
    `orjson.dumps(response)`), never a parsed object that outlives its line. Costs are whole units of
    1e-12 USD (`UNITS_PER_USD`), exact like the Decimals they stand for. `usage` is a success's
    (input, cached, output) tokens read from its `usage`, or that object itself when it is not plain
    integers (pricing then validates it like the per-outcome path); `image_spec` is (images, quality, size).
    """

    COLUMNS = (
        "request_id",
        "outcome",
        "status_code",
        "response",
        "error_code",
        "error_message",
        "input_tokens",
        "cached_tokens",
        "output_tokens",
        "images",
        "cost_units",
        "standard_cost_units",
        "price_version",
        "usage",
        "image_spec",
    )
    # The columns the ledger stores (the last two only serve pricing).
    STORED = COLUMNS[:13]

    __slots__ = ("_index", "rows")

    def __init__(self) -> None:
        self.rows: list[tuple] = []
        self._index: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def add(self, row: tuple, *, replace: bool = False) -> bool:
        """Add a row (a tuple in `COLUMNS` order). A custom_id seen before keeps its row unless this one is a
        success replacing a failure (the API billed it) or `replace` is given. True if the row was taken."""
        at = self._index.get(row[0])
        if at is None:
            self._index[row[0]] = len(self.rows)
            self.rows.append(row)
            return True
        if replace or (self.rows[at][1] != Outcome.SUCCEEDED and row[1] == Outcome.SUCCEEDED):
            self.rows[at] = row
            return True
        return False

    def add_outcome(self, o: RequestOutcome, *, replace: bool = False) -> None:
        """A row from an already-built outcome (validation failures, the per-outcome API), costs included."""
        self.add(
            (
                o.request_id,
                str(o.outcome),
                o.status_code,
                orjson.dumps(o.response).decode() if o.response is not None else None,
                o.error_code,
                o.error_message,
                o.input_tokens,
                o.cached_tokens,
                o.output_tokens,
                o.images,
                to_units(o.cost_usd),
                to_units(o.standard_cost_usd),
                o.price_version,
                None,
                None,
            ),
            replace=replace,
        )

    @classmethod
    def from_outcomes(cls, outcomes: Iterable[RequestOutcome]) -> ResultTable:
        table = cls()
        for o in outcomes:
            table.add_outcome(o)
        return table

    def column(self, name: str) -> list:
        at = self.COLUMNS.index(name)
        return [row[at] for row in self.rows]

    def request_ids(self) -> list[str]:
        return [row[0] for row in self.rows]

    def outcomes(self) -> list[RequestOutcome]:
        """The rows as `RequestOutcome`s (for the per-outcome API; the bulk path never builds them)."""
        return [self._outcome(row) for row in self.rows]

    @staticmethod
    def _outcome(row: tuple) -> RequestOutcome:
        rid, outcome, status, raw, code, message, inp, cached, out, images, cost, standard, version = row[:13]
        return RequestOutcome(
            request_id=rid,
            outcome=Outcome(outcome),
            status_code=status,
            response=orjson.loads(raw) if raw is not None else None,
            error_code=code,
            error_message=message,
            input_tokens=inp,
            cached_tokens=cached,
            output_tokens=out,
            images=images,
            cost_usd=from_units(cost),
            standard_cost_usd=from_units(standard),
            price_version=version,
        )


def to_units(amount: Decimal) -> int:
    """USD -> whole 1e-12 USD units (the ledger's scale), banker's rounding past 12 places."""
    return int((amount * UNITS_PER_USD).to_integral_value(ROUND_HALF_EVEN))


def from_units(units: int) -> Decimal:
    return Decimal(units).scaleb(-12)


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
