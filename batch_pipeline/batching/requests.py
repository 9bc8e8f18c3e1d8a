"""Request builder: typed chat and image requests -> validated, normalised queue records and JSONL lines.

First step of the data flow: everything a provider or a workload wants to run becomes a
`QueuedRequest` here, with a deterministic custom ID from which the ledger finds it again.
"""
from __future__ import annotations

import hashlib
import math
import re
from typing import Any, Literal

import orjson
from pydantic import BaseModel, Field, ValidationError

from batch_pipeline.batching.image_store import ImageStore, is_ref
from batch_pipeline.batching.limits import MAX_CUSTOM_ID_CHARS
from batch_pipeline.batching.model_rules import normalise_chat_params
from batch_pipeline.errors import BatchPipelineError
from batch_pipeline.records import QueuedRequest
from batch_pipeline.vocabulary import Endpoint, RoundId, Tier

_URL_SAFE = re.compile(r"[^A-Za-z0-9_-]+")
# Prompt-token estimate for an image part, by detail (OpenAI vision pricing: low is a fixed 85
# tokens; high/auto up to 765 for a 1024px square). Estimates size batches to the token queue.
IMAGE_TOKENS = {"low": 85, "high": 765, "auto": 765, "original": 765}


class RequestValidationError(BatchPipelineError, ValueError):
    """A request that must not be queued; names the request and the offending field."""

    def __init__(self, key: str, field: str, message: str):
        self.key, self.field = key, field
        super().__init__(f"request {key!r}: {field}: {message}")


def make_custom_id(namespace: str, key: str) -> str:
    """Deterministic, URL-safe, unique-per-(namespace, key) id of at most 64 characters.

    Readable when it fits; otherwise a readable prefix plus a hash of the full identity, so two
    long keys that share a prefix still get different ids.
    """
    raw = f"{namespace}-{key}" if namespace else key
    safe = _URL_SAFE.sub("_", raw).strip("_") or "r"
    if len(safe) <= MAX_CUSTOM_ID_CHARS and safe == raw:
        return safe
    digest = hashlib.sha256(raw.encode()).hexdigest()[:16]
    return f"{safe[: MAX_CUSTOM_ID_CHARS - 17]}-{digest}"


class ChatRequest(BaseModel):
    """One chat completion, as a caller describes it (before per-model normalisation)."""

    key: str = Field(description="caller's identity of the request, unique within its namespace")
    model: str
    messages: list[dict[str, Any]]
    response_format: dict[str, Any] | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    reasoning_effort: str | None = None
    seed: int | None = None
    extra: dict[str, Any] = Field(default_factory=dict, description="other body parameters, passed through")

    endpoint: Literal[Endpoint.CHAT] = Endpoint.CHAT


class ImageRequest(BaseModel):
    """One image generation."""

    key: str
    model: str
    prompt: str
    n: int = 1
    size: str = "1024x1024"
    quality: str = "low"
    extra: dict[str, Any] = Field(default_factory=dict)

    endpoint: Literal[Endpoint.IMAGES] = Endpoint.IMAGES


def build_request(
    request: ChatRequest | ImageRequest,
    *,
    namespace: str,
    operation: str,
    session_id: str | None = None,
    tier: Tier = Tier.BATCH,
    tier_reason: str | None = None,
    round_id: RoundId | None = None,
    image_store: ImageStore | None = None,
) -> QueuedRequest:
    """Validate and normalise `request` into the record the ledger queues."""
    if isinstance(request, ChatRequest):
        body, est_tokens, inline_extra = _chat_body(request, image_store)
    else:
        body, est_tokens, inline_extra = _image_body(request), _estimate_text_tokens(request.prompt), 0
    request_id = make_custom_id(namespace, request.key)
    line_len = len(jsonl_line(request_id, request.endpoint, body)) + inline_extra
    try:
        return QueuedRequest(
            request_id=request_id,
            session_id=session_id,
            operation=operation,
            endpoint=request.endpoint,
            model=request.model,
            tier=tier,
            tier_reason=tier_reason,
            iteration=round_id.iteration if round_id else None,
            round=round_id.round if round_id else None,
            body=body,
            body_hash=body_hash(request.endpoint, body),
            est_prompt_tokens=est_tokens,
            line_bytes=line_len,
        )
    except ValidationError as exc:  # pragma: no cover - only a bad namespace reaches here
        raise RequestValidationError(request.key, "key", str(exc)) from exc


def jsonl_line(custom_id: str, endpoint: str, body: dict[str, Any]) -> bytes:
    """The exact input-file line for one request (without the trailing newline)."""
    return orjson.dumps({"custom_id": custom_id, "method": "POST", "url": str(endpoint), "body": body})


def body_hash(endpoint: str, body: dict[str, Any]) -> str:
    """Cache identity of a request: same endpoint and same canonical body."""
    return hashlib.sha256(str(endpoint).encode() + b"\n" + orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _chat_body(req: ChatRequest, image_store: ImageStore | None) -> tuple[dict[str, Any], int, int]:
    if not req.model.strip():
        raise RequestValidationError(req.key, "model", "must not be empty")
    if not req.messages:
        raise RequestValidationError(req.key, "messages", "must contain at least one message")
    text_chars, image_tokens, inline_extra = 0, 0, 0
    for i, message in enumerate(req.messages):
        if message.get("role") not in {"system", "developer", "user", "assistant", "tool"}:
            raise RequestValidationError(req.key, f"messages[{i}].role", f"unknown role {message.get('role')!r}")
        content = message.get("content")
        if isinstance(content, str):
            text_chars += len(content)
            continue
        if not isinstance(content, list) or not content:
            raise RequestValidationError(req.key, f"messages[{i}].content", "must be a string or a non-empty list of parts")
        for j, part in enumerate(content):
            where = f"messages[{i}].content[{j}]"
            if not isinstance(part, dict):
                raise RequestValidationError(req.key, where, "each content part must be an object with a 'type'")
            if part.get("type") == "image_url" and not isinstance(part.get("image_url"), dict):
                raise RequestValidationError(req.key, f"{where}.image_url", "must be an object {url, detail} (chat format)")
            if part.get("type") == "text":
                text_chars += len(part.get("text") or "")
            elif part.get("type") == "image_url":
                url = (part.get("image_url") or {}).get("url", "")
                detail = (part.get("image_url") or {}).get("detail", "auto")
                if detail not in IMAGE_TOKENS:
                    raise RequestValidationError(req.key, f"{where}.image_url.detail", f"must be one of {sorted(IMAGE_TOKENS)}")
                if is_ref(url):
                    if image_store is None:
                        raise RequestValidationError(req.key, f"{where}.image_url.url", "image ref given but no image store")
                    if not image_store.path(url).exists():
                        raise RequestValidationError(req.key, f"{where}.image_url.url", f"image {url} not in the store")
                    inline_extra += image_store.data_url_length(url) - len(url)
                elif not url.startswith(("data:image/", "https://", "http://")):
                    raise RequestValidationError(req.key, f"{where}.image_url.url", "must be a data URL, an http(s) URL or an image ref")
                image_tokens += IMAGE_TOKENS[detail]
            else:
                raise RequestValidationError(req.key, f"{where}.type", f"unsupported part type {part.get('type')!r}")
    if req.response_format is not None:
        _check_response_format(req)
    params = {
        "temperature": req.temperature,
        "top_p": req.top_p,
        "max_tokens": req.max_tokens,
        "max_completion_tokens": req.max_completion_tokens,
        "reasoning_effort": req.reasoning_effort,
        "seed": req.seed,
    }
    for name, value, top in (("temperature", req.temperature, 2), ("top_p", req.top_p, 1)):
        if value is not None and not (0 <= value <= top):
            raise RequestValidationError(req.key, name, f"out of range: {value}")
    for name, count in (("max_tokens", req.max_tokens), ("max_completion_tokens", req.max_completion_tokens)):
        if count is not None and count < 1:
            raise RequestValidationError(req.key, name, "must be at least 1")
    _check_extra(req.key, req.extra, ChatRequest.model_fields)
    params, _notes = normalise_chat_params(req.model, params)
    body: dict[str, Any] = {"model": req.model, "messages": req.messages, **params, **req.extra}
    if req.response_format is not None:
        body["response_format"] = req.response_format
    return body, _estimate_chars_tokens(text_chars) + image_tokens, inline_extra


def _check_response_format(req: ChatRequest) -> None:
    rf = req.response_format or {}
    kind = rf.get("type")
    if kind == "json_schema":
        spec = rf.get("json_schema") or {}
        if not spec.get("name") or not isinstance(spec.get("schema"), dict):
            raise RequestValidationError(req.key, "response_format.json_schema", "needs a name and a schema object")
    elif kind not in {"text", "json_object"}:
        raise RequestValidationError(req.key, "response_format.type", f"unsupported {kind!r}")


def _check_extra(key: str, extra: dict[str, Any], typed: dict[str, Any]) -> None:
    """`extra` passes other parameters through; it must not override a typed field silently."""
    clashes = sorted(set(extra) & (set(typed) | {"messages", "prompt"}))
    if clashes:
        raise RequestValidationError(key, f"extra.{clashes[0]}", "set it as a field of the request, not in extra")


def _image_body(req: ImageRequest) -> dict[str, Any]:
    _check_extra(req.key, req.extra, ImageRequest.model_fields)
    if not req.prompt.strip():
        raise RequestValidationError(req.key, "prompt", "must not be empty")
    if not 1 <= req.n <= 10:
        raise RequestValidationError(req.key, "n", f"must be 1..10, got {req.n}")
    if not re.fullmatch(r"\d+x\d+|auto", req.size):
        raise RequestValidationError(req.key, "size", f"must look like 1024x1024 or 'auto', got {req.size!r}")
    return {"model": req.model, "prompt": req.prompt, "n": req.n, "size": req.size, "quality": req.quality, **req.extra}


def _estimate_chars_tokens(chars: int) -> int:
    return max(1, math.ceil(chars / 4))


def _estimate_text_tokens(text: str) -> int:
    return _estimate_chars_tokens(len(text))


def resolve_image_refs(body: dict[str, Any], image_store: ImageStore) -> dict[str, Any]:
    """A copy of a chat body with every image ref replaced by its data URL (for sending)."""
    messages = body.get("messages")
    if not messages:
        return body
    resolved = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list) and any(p.get("type") == "image_url" for p in content):
            parts = []
            for part in content:
                url = (part.get("image_url") or {}).get("url", "")
                if part.get("type") == "image_url" and is_ref(url):
                    part = {**part, "image_url": {**part["image_url"], "url": image_store.data_url(url)}}
                parts.append(part)
            message = {**message, "content": parts}
        resolved.append(message)
    return {**body, "messages": resolved}
