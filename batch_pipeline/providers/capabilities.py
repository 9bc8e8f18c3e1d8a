"""One provider per capability: how a search Call becomes a ledger request and how its outcome
becomes a CallResult. Nothing here knows which tier runs the request.

text   -> chat completion with a strict JSON-schema response
vision -> chat completion with two image parts (image-store refs, inlined only when sent)
image  -> image generation; the picture lands in the content-addressed image store
"""

from __future__ import annotations

from typing import Any, Protocol, TypeVar

import orjson

from batch_pipeline.batching.image_store import ImageStore
from batch_pipeline.batching.requests import ChatRequest, ImageRequest
from batch_pipeline.records import RequestOutcome
from batch_pipeline.search.calls import Call, CallResult, ImageCall, TextCall, VisionCall
from batch_pipeline.vocabulary import Outcome

# Each provider takes the one kind of Call it serves.
CallT = TypeVar("CallT", TextCall, VisionCall, ImageCall, contravariant=True)


class CapabilityProvider(Protocol[CallT]):
    def to_request(self, call: CallT) -> ChatRequest | ImageRequest: ...

    def to_result(self, call: CallT, outcome: RequestOutcome, tier: str | None = None) -> CallResult: ...


def _json_schema_format(name: str, schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


def _base_result(call: Call, outcome: RequestOutcome, tier: str | None) -> CallResult:
    return CallResult(
        key=call.key,
        ok=outcome.outcome == Outcome.SUCCEEDED,
        error=None
        if outcome.outcome == Outcome.SUCCEEDED
        else (f"{outcome.error_code or outcome.outcome}: {outcome.error_message or ''}".strip()),
        usage={
            "input_tokens": outcome.input_tokens,
            "output_tokens": outcome.output_tokens,
            "cached_tokens": outcome.cached_tokens,
        },
        tier=tier,
    )


def _parsed_content(call: Call, outcome: RequestOutcome, tier: str | None) -> CallResult:
    result = _base_result(call, outcome, tier)
    if not result.ok:
        return result
    try:
        content = (outcome.response or {})["choices"][0]["message"]["content"]
        return result.model_copy(update={"content": orjson.loads(content)})
    except (KeyError, IndexError, TypeError, orjson.JSONDecodeError) as exc:
        return result.model_copy(update={"ok": False, "error": f"unparseable answer: {exc}"})


class TextProvider:
    def to_request(self, call: TextCall) -> ChatRequest:
        return ChatRequest(
            key=call.key,
            model=call.model,
            messages=list(call.messages),
            temperature=call.temperature,
            max_completion_tokens=call.max_completion_tokens,
            seed=call.seed,
            response_format=_json_schema_format(call.response_schema_name, call.response_schema),
        )

    def to_result(self, call: TextCall, outcome: RequestOutcome, tier: str | None = None) -> CallResult:
        return _parsed_content(call, outcome, tier)


class VisionProvider:
    def __init__(self, image_store: ImageStore):
        self.image_store = image_store

    def to_request(self, call: VisionCall) -> ChatRequest:
        parts: list[dict] = [{"type": "text", "text": call.text}]
        for path in call.image_paths:
            parts.append(
                {"type": "image_url", "image_url": {"url": self.image_store.ref_for(path), "detail": call.detail}}
            )
        return ChatRequest(
            key=call.key,
            model=call.model,
            max_completion_tokens=call.max_completion_tokens,
            seed=call.seed,
            messages=[{"role": "system", "content": call.system}, {"role": "user", "content": parts}],
            response_format=_json_schema_format(call.response_schema_name, call.response_schema),
        )

    def to_result(self, call: VisionCall, outcome: RequestOutcome, tier: str | None = None) -> CallResult:
        return _parsed_content(call, outcome, tier)


class ImageProvider:
    def __init__(self, image_store: ImageStore):
        self.image_store = image_store

    def to_request(self, call: ImageCall) -> ImageRequest:
        return ImageRequest(key=call.key, model=call.model, prompt=call.prompt, size=call.size, quality=call.quality)

    def to_result(self, call: ImageCall, outcome: RequestOutcome, tier: str | None = None) -> CallResult:
        result = _base_result(call, outcome, tier)
        if not result.ok:
            return result
        data = (outcome.response or {}).get("data") or []
        ref = data[0].get("image_ref") if data else None
        if not ref:
            return result.model_copy(update={"ok": False, "error": "image response without an image"})
        return result.model_copy(update={"image_path": str(self.image_store.path(ref))})


def providers_for(image_store: ImageStore) -> dict[str, CapabilityProvider[Any]]:
    """Capability providers by Call.kind (chosen at run time by the call's kind, so typed for any call)."""
    return {"text": TextProvider(), "vision": VisionProvider(image_store), "image": ImageProvider(image_store)}
