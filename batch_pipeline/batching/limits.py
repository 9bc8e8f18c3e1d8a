"""Limits the OpenAI Batch API enforces, as data, with where they come from.

The assembler splits files to stay inside them; the simulator enforces its own copy.
"""

from __future__ import annotations

from typing import Final

from pydantic import BaseModel, Field

# Source: the OpenAI API reference (Batch), collected 2026-11.
MAX_REQUESTS_PER_FILE = 50_000
MAX_FILE_BYTES = 200 * 1024 * 1024
COMPLETION_WINDOW: Final = "24h"  # Final: typed as the literal the SDK's create() asks for
BATCH_WINDOW_SECONDS = 24 * 3600
MAX_CUSTOM_ID_CHARS = 64

# Per-model enqueued-prompt-token queue (usage tier 1). Over it a batch fails validation with
# `token_limit_exceeded`; unknown models get the conservative default.
DEFAULT_ENQUEUED_TOKEN_LIMITS: dict[str, int] = {
    "gpt-5": 1_500_000,
    "gpt-5-mini": 5_000_000,
    "gpt-5-nano": 5_000_000,
}
DEFAULT_ENQUEUED_TOKEN_LIMIT = 1_500_000


class SplitLimits(BaseModel):
    """How large one batch input file may grow. Lower values than the API's are for tests and safety."""

    max_requests: int = Field(MAX_REQUESTS_PER_FILE, ge=1, le=MAX_REQUESTS_PER_FILE)
    max_bytes: int = Field(MAX_FILE_BYTES, ge=1024, le=MAX_FILE_BYTES)
    enqueued_token_limits: dict[str, int] = Field(default_factory=lambda: dict(DEFAULT_ENQUEUED_TOKEN_LIMITS))
    default_enqueued_token_limit: int = Field(DEFAULT_ENQUEUED_TOKEN_LIMIT, ge=1)

    def token_budget(self, model: str) -> int:
        """The enqueued-token queue of `model`: exact id first, then the longest known prefix."""
        if model in self.enqueued_token_limits:
            return self.enqueued_token_limits[model]
        prefixes = [m for m in self.enqueued_token_limits if model.startswith(m + "-")]
        if prefixes:
            return self.enqueued_token_limits[max(prefixes, key=len)]
        return self.default_enqueued_token_limit
