"""Which tier runs a round: the configured one, or (hybrid) the cheapest that meets the deadline.

Also the fallback rule: when a batch failed or expired, do its requests get another batch or
go to standard? Every choice comes with a reason, which the ledger stores per request.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from batch_pipeline.batching.pricing import PriceCatalog
from batch_pipeline.vocabulary import Tier

TierMode = Literal["standard", "flex", "batch", "hybrid"]
# Per-operation switches (BATCH_LLM_ENABLED, BATCH_VISION_ENABLED, BATCH_IMAGES_ENABLED) by operation.
OPERATION_SWITCH = {
    "expand": "llm",
    "refine": "llm",
    "rephrase": "llm",
    "compare": "vision",
    "critique": "vision",
    "image": "images",
}


class TierChoice(BaseModel):
    tier: Tier
    reason: str


class TierPolicy(BaseModel):
    """Settings that decide tiers (built from `Settings` by `runtime.tier_policy_from`)."""

    batch_enabled: bool = True
    enabled_for: dict[str, bool] = Field(default_factory=lambda: {"llm": True, "vision": True, "images": True})
    hybrid: bool = False
    fallback_to_standard: bool = True
    # A batch may take up to 24 h; most finish far sooner. Hybrid mode wants this much time left.
    expected_batch_turnaround_s: float = 3600.0
    # A handful of requests is not worth a batch (a one-request batch can wait over half an hour).
    min_batch_round: int = 8

    def choose(
        self,
        *,
        mode: TierMode,
        operation: str,
        model: str,
        round_size: int,
        seconds_left: float,
        catalog: PriceCatalog,
        observed_s: float | None = None,
    ) -> TierChoice:
        """`seconds_left`: the time this round may take (its planned deadline); `observed_s`: the median
        turnaround of this model's batches in the ledger (None: no history yet)."""
        switch = OPERATION_SWITCH.get(operation, "llm")
        if mode == "standard":
            return TierChoice(tier=Tier.STANDARD, reason="session tier: standard")
        if mode == "flex":
            if catalog.supports_flex(model):
                return TierChoice(tier=Tier.FLEX, reason="session tier: flex")
            return TierChoice(tier=Tier.STANDARD, reason=f"session tier flex, but {model} has no flex tier")
        if mode == "batch" and not self.hybrid:
            if not self.batch_enabled:
                return TierChoice(tier=Tier.STANDARD, reason="batch requested but BATCH_API_ENABLED is off")
            if not self.enabled_for.get(switch, True):
                return TierChoice(
                    tier=Tier.STANDARD, reason=f"batching disabled for {switch} (BATCH_{switch.upper()}_ENABLED)"
                )
            if observed_s is not None and seconds_left < observed_s:
                tier = self.deadline_tier(model, catalog)
                return TierChoice(
                    tier=tier,
                    reason=f"deadline: {seconds_left / 60:.0f} min left for this round is less than "
                    f"the observed {observed_s / 60:.0f} min a {model} batch takes; {tier} instead",
                )
            return TierChoice(tier=Tier.BATCH, reason="session tier: batch")
        return self._hybrid(
            operation=operation,
            switch=switch,
            model=model,
            round_size=round_size,
            seconds_left=seconds_left,
            catalog=catalog,
            observed_s=observed_s,
        )

    def deadline_tier(self, model: str, catalog: PriceCatalog) -> Tier:
        """Where a round goes when a batch cannot meet its deadline: standard (BATCH_FALLBACK_TO_STANDARD,
        the fastest), else flex where the model has it (half price, slower), else standard."""
        if not self.fallback_to_standard and catalog.supports_flex(model):
            return Tier.FLEX
        return Tier.STANDARD

    def _hybrid(
        self,
        *,
        operation: str,
        switch: str,
        model: str,
        round_size: int,
        seconds_left: float,
        catalog: PriceCatalog,
        observed_s: float | None = None,
    ) -> TierChoice:
        cheap_sync = Tier.FLEX if catalog.supports_flex(model) else Tier.STANDARD
        if not self.batch_enabled or not self.enabled_for.get(switch, True):
            return TierChoice(tier=cheap_sync, reason=f"hybrid: batching off for {switch}; {cheap_sync} for {model}")
        expected, basis = (
            (observed_s, "observed") if observed_s is not None else (self.expected_batch_turnaround_s, "expected")
        )
        if seconds_left < expected:
            return TierChoice(
                tier=cheap_sync,
                reason=f"hybrid: {seconds_left / 60:.0f} min to the deadline is less than a "
                f"batch's {basis} {expected / 60:.0f} min",
            )
        if round_size < self.min_batch_round:
            return TierChoice(
                tier=cheap_sync,
                reason=f"hybrid: a round of {round_size} {operation} requests is not worth a "
                f"batch (< {self.min_batch_round})",
            )
        return TierChoice(
            tier=Tier.BATCH,
            reason=f"hybrid: {round_size} {operation} requests, {seconds_left / 3600:.1f} h to the deadline",
        )

    def fallback(self, *, attempts: int, max_attempts: int, seconds_left: float) -> TierChoice | None:
        """For a request back from a failed or expired batch: standard now, or None (batch again)."""
        if not self.fallback_to_standard:
            return None
        if seconds_left < self.expected_batch_turnaround_s:
            return TierChoice(
                tier=Tier.STANDARD,
                reason=f"fallback: batch attempt {attempts} did not finish it and "
                f"{seconds_left / 60:.0f} min left is too little for another batch",
            )
        if attempts >= max_attempts - 1:
            return TierChoice(
                tier=Tier.STANDARD, reason=f"fallback: {attempts} batch attempts failed; last attempt on standard"
            )
        return None
