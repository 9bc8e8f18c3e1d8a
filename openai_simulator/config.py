"""Simulator knobs and clocks: the one `SimulatorConfig` every other simulator module reads.

Built by tests or the CLI, handed to `Simulator`; the clock drives every batch phase transition.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Phases whose duration can be configured; "cancelling" is how long a cancel takes to land.
PHASES = ("validating", "in_progress", "finalizing", "cancelling")

# Limits of the real Batch API (see the reference notes); configurable so tests can use tiny ones.
REAL_MAX_FILE_BYTES = 200 * 1024 * 1024
REAL_MAX_LINES = 50_000
# The only completion window the API accepts, in seconds: `expires_at = created_at + this`.
COMPLETION_WINDOW_SECONDS = 24 * 3600


@runtime_checkable
class Clock(Protocol):
    """Anything that tells the time in epoch seconds; injected so tests can step batch phases."""

    def now(self) -> float: ...


class SystemClock:
    """Wall-clock time; what a standalone simulator uses."""

    def now(self) -> float:
        return time.time()

    def __repr__(self) -> str:
        return "SystemClock()"


class ManualClock:
    """Time that moves only when a test says so, so batch phases are stepped deterministically."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = float(start)
        # The server thread reads the clock while the test thread advances it.
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError("a clock cannot go backwards")
        with self._lock:
            self._now += float(seconds)
            return self._now

    def __repr__(self) -> str:
        return f"ManualClock(now={self.now()!r})"


class SimulatorConfig(BaseModel):
    """Everything a Simulator is built from; a pydantic model, so `model_copy(update=...)` works."""

    model_config = ConfigDict(arbitrary_types_allowed=True, validate_assignment=True)

    data_dir: Path = Path("var/simulator")
    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535)
    # Seconds spent in each of PHASES; a missing phase takes 0, so a batch completes at its first read.
    phase_seconds: dict[str, float] = Field(default_factory=dict)
    token_limits: dict[str, int] = Field(default_factory=dict)
    default_token_limit: int = Field(default=5_000_000, ge=0)
    clock: Clock = Field(default_factory=SystemClock)
    seed: int = 0
    # Edge of the drawn PNGs. Deliberate departure: the requested `size` is echoed, not drawn,
    # so image batches stay small and fast.
    image_size: int = Field(default=64, ge=1, le=4096)
    cancel_keep_fraction: float = Field(default=0.5, ge=0.0, le=1.0)
    max_file_bytes: int = Field(default=REAL_MAX_FILE_BYTES, ge=1)
    max_lines: int = Field(default=REAL_MAX_LINES, ge=1)

    @field_validator("phase_seconds")
    @classmethod
    def _known_phases(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = set(value) - set(PHASES)
        if unknown:
            raise ValueError(f"unknown phase(s) {sorted(unknown)}; known: {PHASES}")
        if any(seconds < 0 for seconds in value.values()):
            raise ValueError("phase durations must be >= 0")
        return value

    def phase_duration(self, phase: str) -> float:
        # .get, not indexing: `model_copy(update=...)` skips validation, so any phase may be missing.
        return float(self.phase_seconds.get(phase, 0.0))

    def token_limit(self, model: str) -> int:
        return self.token_limits.get(model, self.default_token_limit)
