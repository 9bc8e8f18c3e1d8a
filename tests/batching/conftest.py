"""Shared fixtures for the batch-core tests: a ledger on a manual clock, request factories,
real PNG bytes, and result lines shaped like the Batch API's output and error files."""

from __future__ import annotations

import io
import itertools
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from batch_pipeline.batching.image_store import ImageStore
from batch_pipeline.batching.requests import ChatRequest, ImageRequest, QueuedRequest, build_request
from batch_pipeline.ledger import Ledger
from tests.conftest import ManualClock


@pytest.fixture
def ledger(ledger_location: str, clock: ManualClock) -> Ledger:
    """On each backend: the same test runs on DuckDB and on PostgreSQL."""
    return Ledger(ledger_location, clock=clock)


@pytest.fixture
def image_store(tmp_path: Path) -> ImageStore:
    return ImageStore(tmp_path / "images")


@pytest.fixture
def png_bytes() -> Callable[..., bytes]:
    """Real PNG files; different seeds give different bytes."""

    def make(seed: int = 0, size: tuple[int, int] = (16, 16)) -> bytes:
        rng = random.Random(seed)  # noise: PNG cannot compress it, so the byte size grows with the area
        img = Image.frombytes("RGB", size, bytes(rng.randrange(256) for _ in range(size[0] * size[1] * 3)))
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        return buf.getvalue()

    return make


@pytest.fixture
def chat() -> Callable[..., QueuedRequest]:
    """Build a validated chat QueuedRequest: chat("k1", model="gpt-5-mini", text="...")."""

    def make(
        key: str,
        *,
        model: str = "gpt-4o-mini",
        text: str = "Summarise the report.",
        namespace: str = "t",
        session_id: str | None = None,
        messages: list[dict[str, Any]] | None = None,
        image_store: ImageStore | None = None,
        **params: Any,
    ) -> QueuedRequest:
        request = ChatRequest(key=key, model=model, messages=messages or [{"role": "user", "content": text}], **params)
        return build_request(
            request, namespace=namespace, operation="expand", session_id=session_id, image_store=image_store
        )

    return make


@pytest.fixture
def image_request() -> Callable[..., QueuedRequest]:
    def make(
        key: str, *, model: str = "gpt-image-1-mini", prompt: str = "a red lighthouse at dusk", **kw: Any
    ) -> QueuedRequest:
        return build_request(
            ImageRequest(key=key, model=model, prompt=prompt, **kw), namespace="img", operation="image"
        )

    return make


_ids = itertools.count(1)


@pytest.fixture
def output_line() -> Callable[..., dict[str, Any]]:
    """A successful chat line of an output file (shape from the Batch API reference)."""

    def make(
        custom_id: str,
        *,
        content: str = "done",
        prompt_tokens: int = 1000,
        cached_tokens: int = 200,
        completion_tokens: int = 500,
        model: str = "gpt-5-mini-2025-08-07",
    ) -> dict[str, Any]:
        n = next(_ids)
        return {
            "id": f"batch_req_{n:024d}",
            "custom_id": custom_id,
            "response": {
                "status_code": 200,
                "request_id": f"req_{n:032x}",
                "body": {
                    "id": f"chatcmpl-{n:020d}",
                    "object": "chat.completion",
                    "created": 1790000000,
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": content, "refusal": None},
                            "logprobs": None,
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {
                        "prompt_tokens": prompt_tokens,
                        "completion_tokens": completion_tokens,
                        "total_tokens": prompt_tokens + completion_tokens,
                        "prompt_tokens_details": {"cached_tokens": cached_tokens, "audio_tokens": 0},
                        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
                    },
                    "service_tier": "default",
                },
            },
            "error": None,
        }

    return make


@pytest.fixture
def failed_line() -> Callable[..., dict[str, Any]]:
    """An error-file line of a request that ran and failed (kind (a))."""

    def make(
        custom_id: str,
        status: int = 400,
        code: str | None = "unsupported_parameter",
        message: str = "Unsupported parameter: 'max_tokens'. Use 'max_completion_tokens' instead.",
        err_type: str = "invalid_request_error",
    ) -> dict[str, Any]:
        n = next(_ids)
        return {
            "id": f"batch_req_{n:024d}",
            "custom_id": custom_id,
            "response": {
                "status_code": status,
                "request_id": f"req_{n:032x}",
                "body": {"error": {"message": message, "type": err_type, "param": None, "code": code}},
            },
            "error": None,
        }

    return make


@pytest.fixture
def never_ran_line() -> Callable[..., dict[str, Any]]:
    """An error-file line of a request that never ran (kind (b))."""

    def make(custom_id: str, code: str = "batch_expired") -> dict[str, Any]:
        n = next(_ids)
        return {
            "id": f"batch_req_{n:024d}",
            "custom_id": custom_id,
            "response": None,
            "error": {"code": code, "message": f"This request could not be executed: {code}."},
        }

    return make
