"""The shared vocabulary, written once: tiers, endpoints, request outcomes, remote batch statuses, round ids.

Every layer (batch core, ledger, providers, search sessions, API, Dagster) imports these from here;
the request and batch state machines live with the ledger that enforces them (`ledger/states.py`).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal, NamedTuple, get_args


class Tier(StrEnum):
    """How a call was (or will be) executed and paid: flex and batch cost half of standard."""

    STANDARD = "standard"
    FLEX = "flex"
    BATCH = "batch"
    CACHE = "cache"  # answered from the ledger: an identical body was paid for before; costs nothing


class Endpoint(StrEnum):
    CHAT = "/v1/chat/completions"
    IMAGES = "/v1/images/generations"


# The same endpoints, as the SDK types `batches.create(endpoint=...)` (a test keeps the two equal).
BatchEndpoint = Literal["/v1/chat/completions", "/v1/images/generations"]


class Outcome(StrEnum):
    """How one attempt of a request ended."""

    SUCCEEDED = "succeeded"
    FAILED_RETRYABLE = "failed_retryable"  # 429/5xx/timeouts/no line: worth another attempt
    FAILED_PERMANENT = "failed_permanent"  # 4xx: the same body would fail again
    EXPIRED = "expired"  # never ran: the 24 h window closed
    CANCELLED = "cancelled"  # never ran: the batch or the session was cancelled


# A remote batch's status, as the Batch API names it (openai.types.Batch.status).
RemoteBatchStatus = Literal[
    "validating", "failed", "in_progress", "finalizing", "completed", "expired", "cancelling", "cancelled"
]
# Statuses after which a batch changes no more: it is ready to ingest.
ENDED_STATUSES: frozenset[str] = frozenset({"completed", "failed", "expired", "cancelled"})
ACTIVE_STATUSES: frozenset[str] = frozenset(set(get_args(RemoteBatchStatus)) - ENDED_STATUSES)


class RoundId(NamedTuple):
    """Which step of a session asked for a request: the search's iteration and round (`text`, `image`, `vision`).

    Stored as two columns (`requests.iteration`, `requests.round`); `str()` is the label people read, `i1-vision`.
    """

    iteration: int
    round: str

    def __str__(self) -> str:
        return f"i{self.iteration}-{self.round}"


__all__ = [
    "ACTIVE_STATUSES",
    "ENDED_STATUSES",
    "BatchEndpoint",
    "Endpoint",
    "Outcome",
    "RemoteBatchStatus",
    "RoundId",
    "Tier",
]
