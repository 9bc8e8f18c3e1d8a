"""Price and time before (and while) spending: what a session or a round will cost on each tier, and when
a session will finish, each with the basis it rests on.

Costs come from the price catalog and the call counts (`search.expected_call_counts`); token sizes from the
requests themselves (prompt estimate) and, for output, the ledger's history (mean output tokens per operation
and model) or, with no history, the request's `max_completion_tokens` (an upper bound). Waits come from the
ledger's observed batch turnaround (median per model and endpoint) or, with none, the API's 24 h window.
Framework-free: the CLI, the API, the Dagster launch and `SessionService` (the budget stop) call it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from batch_pipeline.batching.limits import BATCH_WINDOW_SECONDS
from batch_pipeline.batching.pricing import PriceCatalog, TokenUsage
from batch_pipeline.batching.requests import IMAGE_TOKENS
from batch_pipeline.records import QueuedRequest
from batch_pipeline.search import SearchParams, SearchState, TextCall, expected_call_counts, plan_round, start_search
from batch_pipeline.search.prompts import judge_system, judge_text
from batch_pipeline.vocabulary import Endpoint, Tier

# Output history counts once this many calls of an operation and model were answered.
MIN_HISTORY = 3
# What one synchronous (standard/flex) round is assumed to take when nothing better is known.
SYNC_ROUND_SECONDS = 120.0
ROUND_NAMES = ("text", "image", "vision")

OutputHistory = Mapping[tuple[str, str], tuple[float, int]]


def _tokens(text: str) -> int:
    return max(1, -(-len(text) // 4))  # the request builder's estimate: about four characters a token


def _output_tokens(operation: str, model: str, max_tokens: int, history: OutputHistory) -> tuple[int, bool]:
    """(output tokens to price, whether it is observed) for one call."""
    mean, n = history.get((operation, model), (0.0, 0))
    if n >= MIN_HISTORY:
        return round(mean), True
    return max_tokens, False


def call_cost(
    *,
    model: str,
    tier: Tier,
    input_tokens: int = 0,
    output_tokens: int = 0,
    images: int = 0,
    quality: str | None = None,
    size: str | None = None,
    catalog: PriceCatalog,
) -> Decimal:
    """One call's cost on `tier` (raises UnknownPriceError: nothing is ever costed at $0 by default)."""
    if images:
        return catalog.cost(
            model,
            Tier.STANDARD if tier == Tier.FLEX else tier,
            TokenUsage.from_image_request(images, quality or "", size or ""),
        )
    if tier == Tier.FLEX and not catalog.supports_flex(model):
        tier = Tier.STANDARD
    return catalog.cost(model, tier, TokenUsage(input_tokens=input_tokens, output_tokens=output_tokens))


def request_cost(request: QueuedRequest, catalog: PriceCatalog, history: OutputHistory) -> Decimal:
    """A queued request's likely cost on its tier: prompt estimate in, history (or its max tokens) out."""
    body = request.body
    if request.endpoint == Endpoint.IMAGES:
        return call_cost(
            model=request.model,
            tier=request.tier,
            images=int(body.get("n") or 1),
            quality=body.get("quality"),
            size=body.get("size"),
            catalog=catalog,
        )
    max_tokens = int(body.get("max_completion_tokens") or body.get("max_tokens") or 0)
    out, _ = _output_tokens(request.operation, request.model, max_tokens, history)
    return call_cost(
        model=request.model,
        tier=request.tier,
        input_tokens=request.est_prompt_tokens,
        output_tokens=out,
        catalog=catalog,
    )


@dataclass
class SessionEstimate:
    """What a whole session will cost on each tier, from the call counts and the catalog."""

    calls: dict[str, int]
    per_tier: dict[str, Decimal]
    basis: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        from batch_pipeline.batching.pricing import format_usd

        return {
            "calls": self.calls,
            "costUsd": {t: str(v) for t, v in self.per_tier.items()},
            "cost": {t: format_usd(v) for t, v in self.per_tier.items()},
            "basis": self.basis,
        }


def estimate_session(
    prompt: str, params: SearchParams, catalog: PriceCatalog, *, history: OutputHistory | None = None
) -> SessionEstimate:
    """Price a session before it runs, on standard, flex and batch (raises UnknownPriceError)."""
    history = history or {}
    counts = expected_call_counts(params)
    calls = {
        "text": sum(c.text for c in counts),
        "image": sum(c.image for c in counts),
        "vision": sum(c.vision for c in counts),
    }
    first_text = [c for c in plan_round(start_search(prompt, params, "estimate")) if isinstance(c, TextCall)]
    text_in = max(_tokens(json.dumps(c.messages)) + _tokens(json.dumps(c.response_schema)) for c in first_text)
    vision_in = (
        _tokens(judge_system(params))
        + _tokens(judge_text(prompt, 0, params.E))
        + 2 * IMAGE_TOKENS[params.vision_detail]
        + _tokens(json.dumps(first_text[0].response_schema))
    )
    text_out, text_seen = _output_tokens("expand", params.text_model, params.max_completion_tokens, history)
    vision_out, vision_seen = _output_tokens("compare", params.vision_model, params.max_completion_tokens, history)
    per_tier = {}
    for tier in (Tier.STANDARD, Tier.FLEX, Tier.BATCH):
        per_tier[str(tier)] = (
            calls["text"]
            * call_cost(
                model=params.text_model, tier=tier, input_tokens=text_in, output_tokens=text_out, catalog=catalog
            )
            + calls["image"]
            * call_cost(
                model=params.image_model,
                tier=tier,
                images=1,
                quality=params.image_quality,
                size=params.image_size,
                catalog=catalog,
            )
            + calls["vision"]
            * call_cost(
                model=params.vision_model, tier=tier, input_tokens=vision_in, output_tokens=vision_out, catalog=catalog
            )
        )
    basis = [
        f"price catalog {catalog.version}",
        f"{calls['text']} text, {calls['image']} image, {calls['vision']} vision calls if nothing fails",
        f"text: ~{text_in} tokens in, {text_out} out "
        + ("(observed mean)" if text_seen else "(max_completion_tokens: an upper bound, no history)"),
        f"vision: ~{vision_in} tokens in, {vision_out} out "
        + ("(observed mean)" if vision_seen else "(max_completion_tokens: an upper bound, no history)"),
        "flex: text and vision on flex where the model has it, else standard; images have no flex",
    ]
    return SessionEstimate(calls=calls, per_tier=per_tier, basis=basis)


# -- time ------------------------------------------------------------------------------------------


def rounds_left(state: SearchState) -> list[str]:
    """The rounds a session still has to run, the current one first (empty when done)."""
    return [] if state.done else rounds_after(state.params, state.iteration, state.next_round)


def rounds_after(params: SearchParams, iteration: int, next_round: str | None) -> list[str]:
    """`rounds_left` from where a session stands (its ledger row's iteration and next round; None when
    done), so a pass over many sessions need not parse each one's whole state."""
    if next_round is None:
        return []
    current = ROUND_NAMES.index(next_round)
    later = ROUND_NAMES if params.rounds_per_iteration == 3 else ROUND_NAMES[1:]
    return list(ROUND_NAMES[current:]) + list(later) * (params.K - 1 - iteration)


def round_model(params: SearchParams, round_name: str) -> tuple[str, str]:
    """(model, endpoint) a round's calls use."""
    if round_name == "image":
        return params.image_model, str(Endpoint.IMAGES)
    return (params.text_model if round_name == "text" else params.vision_model), str(Endpoint.CHAT)


@dataclass
class CompletionEstimate:
    at: float
    wait_hours: float
    basis: str

    def to_json(self) -> dict[str, Any]:
        return {
            "estimatedCompletionTime": iso_utc(self.at),
            "estimatedWaitHours": round(self.wait_hours, 4),
            "estimateBasis": self.basis,
        }


def estimate_completion(
    *,
    now: float,
    deadline_at: float,
    rounds: Sequence[str],
    params: SearchParams,
    mode: str,
    turnaround: Mapping[tuple[str, str], tuple[float, int]],
) -> CompletionEstimate:
    """When a session will finish: each batch round at the observed median turnaround of its model and
    endpoint (or the API's 24 h window with no history), each synchronous round at SYNC_ROUND_SECONDS;
    never later than the deadline, which the driver holds (a late batch is cancelled, its rest run now)."""
    seconds, parts = 0.0, []
    for name in rounds:
        model, endpoint = round_model(params, name)
        if mode in ("batch", "hybrid"):
            median, n = turnaround.get((model, endpoint), (None, 0))
            if median is not None:
                seconds += median
                parts.append(f"{name}: observed median {median:.0f} s over {n} {model} batches")
            else:
                seconds += BATCH_WINDOW_SECONDS
                parts.append(f"{name}: the API's 24 h window (no {model} batch observed yet)")
        else:
            seconds += SYNC_ROUND_SECONDS
            parts.append(f"{name}: ~{SYNC_ROUND_SECONDS:.0f} s synchronous")
    at = now + seconds
    capped = at > deadline_at
    basis = "; ".join(dict.fromkeys(parts)) if parts else "finished"
    if capped:
        at, basis = deadline_at, f"the session deadline (rounds left would take longer: {basis})"
    return CompletionEstimate(at=at, wait_hours=max(0.0, at - now) / 3600, basis=basis)


def session_completion(
    *,
    now: float,
    deadline_at: float,
    state: SearchState,
    mode: str,
    turnaround: Mapping[tuple[str, str], tuple[float, int]],
) -> CompletionEstimate:
    """A session's completion estimate from the rounds it has left (API, CLI, session assets)."""
    return estimate_completion(
        now=now,
        deadline_at=deadline_at,
        rounds=rounds_left(state),
        params=state.params,
        mode=mode,
        turnaround=turnaround,
    )


def iso_utc(epoch: float) -> str:
    """The one timestamp format of answers and metadata: 2026-11-28T23:04:05Z."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
