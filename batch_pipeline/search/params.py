"""Search parameters: what a user chooses for one beam search, validated once, up front.

Persisted inside SearchState and read by every step, so a resumed run uses the same values.
"""

from __future__ import annotations

from math import comb
from typing import Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator


class SearchParams(BaseModel):
    """One search's configuration; frozen because the persisted state must not drift between steps."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # The original capped N at 8 because its ranking was a chain of sequential round trips. Here every
    # comparison of an iteration goes out in one round, so width costs money (vision calls grow as
    # C(N+M, 2) * E) but no latency. 16 keeps the worst iteration at (C(24,2) - C(8,2)) * 5 = 1240
    # vision calls: one small batch, well under the 50,000-line limit.
    N: int = Field(ge=2, le=16, description="beam width: new candidates per iteration")
    M: int = Field(ge=1, description="survivors kept per iteration; at most N/2 and a divisor of N")
    K: int = Field(ge=1, le=10, description="iterations, counting iteration 0 (expansion)")
    E: int = Field(default=3, ge=1, le=5, description="votes (ensemble size) per pairwise comparison")
    alpha: float = Field(default=0.7, ge=0.0, le=1.0, description="weight of alignment against aesthetics")
    # Passed on every text call; the provider layer drops it for models that reject it (gpt-5 family).
    temperature: float = Field(default=0.7, ge=0.0, le=2.0)
    descriptiveness: Literal["concise", "balanced", "descriptive"] = "balanced"
    prompt_style: Literal["natural", "tags"] = "natural"
    seed: int = Field(default=0, description="the only source of randomness (image order in votes)")
    # The cheapest current models (the reference notes mark gpt-5-mini and gpt-5-nano deprecated). Neither
    # has a flex tier: a flex session runs them on standard and says so; pass gpt-5 for flex.
    text_model: str = Field(default="gpt-4.1-mini", min_length=1, max_length=100)
    vision_model: str = Field(default="gpt-4o-mini", min_length=1, max_length=100)
    image_model: str = Field(default="gpt-image-1-mini", min_length=1, max_length=100)
    image_size: Literal["1024x1024", "1024x1536", "1536x1024"] = "1024x1024"
    image_quality: Literal["low", "medium", "high"] = "low"
    vision_detail: Literal["low", "high", "auto"] = "low"
    max_completion_tokens: int = Field(default=800, ge=1, le=128_000)
    # 3: text (expand/refine), image, vision per iteration. 2: the vision round also critiques each pooled
    # candidate's image and writes its children, so later iterations have no text round (docs/PERFORMANCE.md).
    # The default by the numbers: two fewer batch waits per three iterations, the same calls, cost and winners.
    rounds_per_iteration: Literal[2, 3] = Field(
        default=2, description="dependent rounds per iteration after the first: 2 (vision also refines) or 3"
    )

    @field_validator("M")
    @classmethod
    def _m_fits_n(cls, m: int, info: ValidationInfo) -> int:
        n = info.data.get("N")
        if n is None:  # N failed its own validation; that error is already reported
            return m
        if m > n // 2:
            raise ValueError(f"M must be at most N/2 (N={n}, M={m})")
        if n % m:
            raise ValueError(f"M must divide N (N={n}, M={m})")
        return m

    @property
    def children_per_parent(self) -> int:
        """c = N/M: every survivor gets the same number of children, so each iteration has N new candidates."""
        return self.N // self.M


class IterationCallCounts(NamedTuple):
    iteration: int
    text: int
    image: int
    vision: int


def expected_call_counts(params: SearchParams) -> list[IterationCallCounts]:
    """Calls per iteration when nothing fails (failures only ever lower later counts).

    Every iteration makes N new candidates: one text and one image call each. Vision compares every pair
    of the pool E times, except pairs of survivors, whose comparisons are already known. With 2 rounds per
    iteration the text calls of iteration k >= 1 are made instead in iteration k-1's vision round, one per
    pooled candidate (its children all at once).
    """
    pool = params.M + params.N
    later_vision = (comb(pool, 2) - comb(params.M, 2)) * params.E
    if params.rounds_per_iteration == 2:
        first_pool, later_pool = params.N, pool
        counts = [
            IterationCallCounts(
                0, params.N, params.N, comb(params.N, 2) * params.E + (first_pool if params.K > 1 else 0)
            )
        ]
        counts += [
            IterationCallCounts(k, 0, params.N, later_vision + (later_pool if k + 1 < params.K else 0))
            for k in range(1, params.K)
        ]
        return counts
    counts = [IterationCallCounts(0, params.N, params.N, comb(params.N, 2) * params.E)]
    counts += [IterationCallCounts(k, params.N, params.N, later_vision) for k in range(1, params.K)]
    return counts


def dependent_rounds(params: SearchParams) -> int:
    """Rounds that must wait for the one before: 3 per iteration, or 3 then 2 per iteration."""
    return 3 * params.K if params.rounds_per_iteration == 3 else 3 + 2 * (params.K - 1)
