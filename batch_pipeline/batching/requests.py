"""Request builder: typed chat and image requests -> validated, normalised queue records and JSONL lines.

First step of the data flow: everything a provider or a workload wants to run becomes a
`QueuedRequest` here, with a deterministic custom ID from which the ledger finds it again.
"""

from __future__ import annotations

import functools
import hashlib
import re
from typing import Any, Literal

import orjson
from pydantic import BaseModel, Field

from batch_pipeline.batching.image_store import ImageStore, is_ref
from batch_pipeline.batching.limits import MAX_CUSTOM_ID_CHARS
from batch_pipeline.batching.model_rules import normalise_chat_params
from batch_pipeline.errors import BatchPipelineError
from batch_pipeline.records import QueuedRequest, canonical_body
from batch_pipeline.vocabulary import Endpoint, RoundId, Tier

_URL_SAFE = re.compile(r"[^A-Za-z0-9_-]+")
# What `make_custom_id` keeps as it is: URL-safe, neither starting nor ending with "_", at most 64 characters.
_SAFE_AS_IS = re.compile(rf"[A-Za-z0-9-](?:[A-Za-z0-9_-]{{0,{MAX_CUSTOM_ID_CHARS - 2}}}[A-Za-z0-9-])?")
_ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
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
    if _SAFE_AS_IS.fullmatch(raw):  # the common case, decided by one match: the rule below would keep it
        return raw
    safe = _URL_SAFE.sub("_", raw).strip("_") or "r"
    if len(safe) <= MAX_CUSTOM_ID_CHARS and safe == raw:
        return safe
    digest = hashlib.sha256(raw.encode()).hexdigest()[:16]
    return f"{safe[: MAX_CUSTOM_ID_CHARS - 17]}-{digest}"


class ChatRequest(BaseModel):
    """One chat completion, as a caller describes it (before per-model normalisation)."""

    key: str = Field(description="caller's identity of the request, unique within its namespace")
    model: str
    # Each message is checked by `build_request` (an object with a known role and text or parts); pydantic would
    # copy every message dict first (about a fifth of the model's cost), and only one level deep.
    messages: list[Any]
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
    # `type(...) is` first: isinstance on a pydantic model class goes through ABCMeta, a microsecond a call
    if type(request) is ChatRequest or isinstance(request, ChatRequest):
        body, est_tokens, inline_extra = _chat_body(request, image_store)
    else:
        body, est_tokens, inline_extra = _image_body(request), _estimate_text_tokens(request.prompt), 0
    fields = request.__dict__  # a pydantic model's attributes pass its `__getattr__` hook (~0.1 us each)
    request_id = make_custom_id(namespace, fields["key"])
    if not (
        type(operation) is str
        and (session_id is None or type(session_id) is str)
        and (tier_reason is None or type(tier_reason) is str)
    ):
        _check_strings(request.key, operation=operation, session_id=session_id, tier_reason=tier_reason)
    if round_id is None:
        iteration = round_ = None
    else:
        iteration, round_ = round_id
        if not (type(iteration) is int and type(round_) is str):
            raise RequestValidationError(
                request.key, "round_id", f"must be (iteration: int, round: str), got {round_id!r}"
            )
    if type(tier) is not Tier:
        try:
            tier = Tier(tier)
        except ValueError:
            raise RequestValidationError(request.key, "tier", f"unknown tier {tier!r}") from None
    # One serialisation: the hash, the line's length, the ledger's copy and the line all come from these bytes.
    body_bytes = canonical_body(body)
    endpoint = fields["endpoint"]
    # Every value is checked above (make_custom_id only makes valid ids): no second validation.
    return QueuedRequest.from_checked(
        body_bytes.decode(),  # text: orjson's bytes keep a 4 KB buffer each, a str is its exact size
        {
            "request_id": request_id,
            "session_id": session_id,
            "operation": operation,
            "endpoint": endpoint,
            "model": fields["model"],
            "tier": tier,
            "tier_reason": tier_reason,
            "iteration": iteration,
            "round": round_,
            "body": body,
            "body_hash": _hash(endpoint, body_bytes),
            "est_prompt_tokens": est_tokens,
            # A custom_id is [A-Za-z0-9_-] only, so its JSON string is the id and two quotes.
            "line_bytes": len(request_id) + 2 + _HEAD_BYTES[endpoint] + len(body_bytes) + 1 + inline_extra,
        },
    )


def _check_strings(key: str, *, operation: Any, **optional: Any) -> None:
    """The string-typed values `build_request` stores unvalidated: refused here, by name, if not strings."""
    for name, value in {"operation": operation, **optional}.items():
        if not isinstance(value, str) and (name == "operation" or value is not None):
            raise RequestValidationError(key, name, f"must be a string, got {type(value).__name__}")


def jsonl_line(custom_id: str, endpoint: str, body: dict[str, Any]) -> bytes:
    """The exact input-file line for one request (without the trailing newline)."""
    return orjson.dumps({"custom_id": custom_id, "method": "POST", "url": str(endpoint), "body": body})


def request_line(request: QueuedRequest) -> bytes:
    """A queued request's input-file line (without the newline), from the body serialised at build time.

    A custom_id is [A-Za-z0-9_-] only (`QueuedRequest` checks it), so its JSON string is the id in quotes."""
    return (_LINE_TEMPLATE[request.endpoint] % (request.request_id, request.body_text())).encode()


def body_hash(endpoint: str, body: dict[str, Any]) -> str:
    """Cache identity of a request: same endpoint and same canonical body."""
    return _hash(endpoint, canonical_body(body))


def _hash(endpoint: Endpoint | str, body_bytes: bytes) -> str:
    """SHA-256 of the endpoint, a newline and the body: a copy of a hasher that has read the prefix already."""
    primed = _HASH_PRIMED.get(endpoint)
    hasher = primed.copy() if primed is not None else hashlib.sha256(str(endpoint).encode() + b"\n")
    hasher.update(body_bytes)
    return hasher.hexdigest()


def _line_head(custom_id: str, endpoint: str) -> bytes:
    """Everything of a JSONL line before its body; the same bytes `jsonl_line` and the file writer produce."""
    return b'{"custom_id":%s,"method":"POST","url":%s,"body":' % (orjson.dumps(custom_id), orjson.dumps(str(endpoint)))


# Per endpoint, computed once: the hash prefix and the bytes of a line's head besides the custom_id.
_HASH_PRIMED: dict[str, Any] = {e: hashlib.sha256(str(e).encode() + b"\n") for e in Endpoint}
_HEAD_BYTES = {e: len(_line_head("", e)) - len(orjson.dumps("")) for e in Endpoint}
_LINE_TEMPLATE = {e: _line_head("%s", e).decode() + "%s}" for e in Endpoint}


def _chat_body(req: ChatRequest, image_store: ImageStore | None) -> tuple[dict[str, Any], int, int]:
    fields = req.__dict__  # read once: each attribute of a pydantic model passes its `__getattr__` hook
    model, messages, extra = fields["model"], fields["messages"], fields["extra"]
    response_format = fields["response_format"]
    if not model.strip():
        raise RequestValidationError(req.key, "model", "must not be empty")
    if not messages:
        raise RequestValidationError(req.key, "messages", "must contain at least one message")
    text_chars, image_tokens, inline_extra = 0, 0, 0
    for i, message in enumerate(messages):
        if not (type(message) is dict or isinstance(message, dict)):
            raise RequestValidationError(req.key, f"messages[{i}]", "must be an object with a role and content")
        if message.get("role") not in _ROLES:
            raise RequestValidationError(req.key, f"messages[{i}].role", f"unknown role {message.get('role')!r}")
        content = message.get("content")
        if type(content) is str or isinstance(content, str):
            text_chars += len(content)
            continue
        if not isinstance(content, list) or not content:
            raise RequestValidationError(
                req.key, f"messages[{i}].content", "must be a string or a non-empty list of parts"
            )
        for j, part in enumerate(content):
            where = f"messages[{i}].content[{j}]"
            if not isinstance(part, dict):
                raise RequestValidationError(req.key, where, "each content part must be an object with a 'type'")
            if part.get("type") == "image_url" and not isinstance(part.get("image_url"), dict):
                raise RequestValidationError(
                    req.key, f"{where}.image_url", "must be an object {url, detail} (chat format)"
                )
            if part.get("type") == "text":
                text_chars += len(part.get("text") or "")
            elif part.get("type") == "image_url":
                url = (part.get("image_url") or {}).get("url", "")
                detail = (part.get("image_url") or {}).get("detail", "auto")
                if detail not in IMAGE_TOKENS:
                    raise RequestValidationError(
                        req.key, f"{where}.image_url.detail", f"must be one of {sorted(IMAGE_TOKENS)}"
                    )
                if is_ref(url):
                    if image_store is None:
                        raise RequestValidationError(
                            req.key, f"{where}.image_url.url", "image ref given but no image store"
                        )
                    if not image_store.path(url).exists():
                        raise RequestValidationError(req.key, f"{where}.image_url.url", f"image {url} not in the store")
                    inline_extra += image_store.data_url_length(url) - len(url)
                elif not url.startswith(("data:image/", "https://", "http://")):
                    raise RequestValidationError(
                        req.key, f"{where}.image_url.url", "must be a data URL, an http(s) URL or an image ref"
                    )
                image_tokens += IMAGE_TOKENS[detail]
            else:
                raise RequestValidationError(req.key, f"{where}.type", f"unsupported part type {part.get('type')!r}")
    if response_format is not None:
        _check_response_format(req)
    if extra:  # reading `model_fields` costs microseconds: only when there is something to check
        _check_extra(req.key, extra, ChatRequest.model_fields)
    try:
        params = _normalised_params(
            model,
            fields["temperature"],
            fields["top_p"],
            fields["max_tokens"],
            fields["max_completion_tokens"],
            fields["reasoning_effort"],
            fields["seed"],
        )
    except _ParamError as exc:
        raise RequestValidationError(req.key, *exc.args) from None
    body: dict[str, Any] = {"model": model, "messages": messages, **params, **extra}
    if response_format is not None:
        body["response_format"] = response_format
    return body, _estimate_chars_tokens(text_chars) + image_tokens, inline_extra


class _ParamError(ValueError):
    """A sampling parameter out of range: (field, message), made a `RequestValidationError` with the key."""


# typed: 1, 1.0 and True are equal arguments but serialise differently
@functools.lru_cache(maxsize=1024, typed=True)
def _normalised_params(
    model: str,
    temperature: float | None,
    top_p: float | None,
    max_tokens: int | None,
    max_completion_tokens: int | None,
    reasoning_effort: str | None,
    seed: int | None,
) -> dict[str, Any]:
    """The sampling parameters checked (`_ParamError` names the one out of range) and normalised for `model`
    (`normalise_chat_params`), remembered: both are pure functions of the arguments, and a workload sends the
    same few parameter sets to the same few models. The dict returned is shared: callers copy it (a body
    unpacks it), never change it."""
    if temperature is not None and not 0 <= temperature <= 2:
        raise _ParamError("temperature", f"out of range: {temperature}")
    if top_p is not None and not 0 <= top_p <= 1:
        raise _ParamError("top_p", f"out of range: {top_p}")
    if max_tokens is not None and max_tokens < 1:
        raise _ParamError("max_tokens", "must be at least 1")
    if max_completion_tokens is not None and max_completion_tokens < 1:
        raise _ParamError("max_completion_tokens", "must be at least 1")
    params = {
        "temperature": temperature,
        "top_p": top_p,
        "max_tokens": max_tokens,
        "max_completion_tokens": max_completion_tokens,
        "reasoning_effort": reasoning_effort,
        "seed": seed,
    }
    return normalise_chat_params(model, params)[0]


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
    if req.extra:
        _check_extra(req.key, req.extra, ImageRequest.model_fields)
    if not req.prompt.strip():
        raise RequestValidationError(req.key, "prompt", "must not be empty")
    if not 1 <= req.n <= 10:
        raise RequestValidationError(req.key, "n", f"must be 1..10, got {req.n}")
    if not re.fullmatch(r"\d+x\d+|auto", req.size):
        raise RequestValidationError(req.key, "size", f"must look like 1024x1024 or 'auto', got {req.size!r}")
    return {"model": req.model, "prompt": req.prompt, "n": req.n, "size": req.size, "quality": req.quality, **req.extra}


def _estimate_chars_tokens(chars: int) -> int:
    """A quarter of the characters, rounded up, at least 1 (integers only: no float division per request)."""
    return (chars + 3) // 4 or 1


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
