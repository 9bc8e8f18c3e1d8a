"""Polling policy: when to look at a batch again, and when a wait has failed.

One policy, one place: the synchronous wait loop and the Dagster sensor both ask it. A transient
poll error never ends a wait; only the deadline does.
"""

from __future__ import annotations

import hashlib
import random

from pydantic import BaseModel, Field

from batch_pipeline.vocabulary import ENDED_STATUSES


class PollPolicy(BaseModel):
    """Exponential backoff with jitter, capped; errors back off harder but never give up."""

    initial_s: float = Field(30.0, gt=0, description="first delay (BATCH_POLL_INTERVAL_MS)")
    multiplier: float = Field(1.5, ge=1)
    max_s: float = Field(600.0, gt=0, description="never wait longer than this between polls")
    jitter: float = Field(0.2, ge=0, lt=1, description="+/- share of the delay, so many batches do not poll in step")
    error_multiplier: float = Field(2.0, ge=1)

    def delay(self, polls: int, *, key: str = "", consecutive_errors: int = 0) -> float:
        """Seconds until the next poll after `polls` polls of one batch (deterministic per key)."""
        base = min(self.max_s, self.initial_s * self.multiplier ** max(0, polls))
        if consecutive_errors:
            base = min(self.max_s, base * self.error_multiplier**consecutive_errors)
        seed = int.from_bytes(
            hashlib.blake2b(f"{key}:{polls}:{consecutive_errors}".encode(), digest_size=8).digest(), "big"
        )
        return min(self.max_s, base * (1 + self.jitter * (2 * random.Random(seed).random() - 1)))

    def due(self, *, now: float, last_polled_at: float, polls: int, key: str = "", consecutive_errors: int = 0) -> bool:
        return now >= last_polled_at + self.delay(polls, key=key, consecutive_errors=consecutive_errors)


def progress(status: str, completed: int | None, failed: int | None, total: int | None) -> float:
    """Share of work done, never 1.0 before the batch has really ended.

    Real users see 100% while a batch sits in `finalizing` for a long time: lines are done but the
    output file is not ready, so finalizing is reported as at most 99%.
    """
    if status in ENDED_STATUSES:
        return 1.0
    if not total:
        return 0.0
    share = ((completed or 0) + (failed or 0)) / total
    return min(share, 0.99)
