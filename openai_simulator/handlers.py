"""Request executors: one validated request body -> the response body the real endpoint would give.

Shared by the synchronous routes in `app.py` and by batch processing in `batches.py`.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from . import content
from .errors import APIError
from .faults import FaultBook, FaultTarget
from .ids import derived_base62
from .judge import Judge, is_judge_request
from .rules import check_chat, check_images

CHAT_ENDPOINT = "/v1/chat/completions"
IMAGES_ENDPOINT = "/v1/images/generations"
CONTENT_POLICY_MESSAGE = (
    "Your request was rejected as a result of our safety system. Your request may contain content "
    "that is not allowed by our safety system."
)
# Qualities priced like one of the three tiers GPT Image models bill; "auto" and unknown ones as medium.
_BILLED_QUALITY = {"low": "low", "medium": "medium", "high": "high", "hd": "high", "xhigh": "high", "max": "high"}


@dataclass(frozen=True)
class Context:
    """What an executor needs besides the body: time, seed, sizes and the faults that act on content."""

    now: float
    seed: int
    image_size: int
    faults: FaultBook
    target: FaultTarget


def chat_completion(body: Any, ctx: Context) -> dict:
    check_chat(body)
    digest = content.request_digest(body, ctx.seed)
    user_words = content.content_words(content.last_user_text(body))
    response_format = body.get("response_format") or {}
    judging = is_judge_request(body)

    choices: list[dict[str, Any]] = []
    for index in range(int(body.get("n") or 1)):
        rng = content.rng_for(digest, "choice", index)
        if response_format.get("type") == "json_schema":
            schema = response_format["json_schema"]["schema"]
            judge = Judge(body, digest, index) if judging else None
            value = content.fill_schema(
                schema, root=schema, rng=rng, user_words=user_words, choose_ab=judge.vote if judge else None
            )
            text = orjson.dumps(value).decode()
        elif response_format.get("type") == "json_object":
            text = orjson.dumps({"answer": content.plain_reply(user_words, rng)}).decode()
        else:
            text = content.plain_reply(user_words, rng)
        choices.append(
            {
                "index": index,
                "message": {"role": "assistant", "content": text, "refusal": None, "annotations": []},
                "logprobs": None,
                "finish_reason": "stop",
            }
        )

    prompt_tokens = content.chat_prompt_tokens(body)
    completion_tokens = sum(max(1, content.text_tokens(c["message"]["content"])) for c in choices)
    return {
        "id": "chatcmpl-" + derived_base62(digest, 29),
        "object": "chat.completion",
        "created": int(ctx.now),
        "model": body["model"],
        "choices": choices,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        },
        "service_tier": "flex" if body.get("service_tier") == "flex" else "default",
        "system_fingerprint": "fp_simulator",
    }


def image_generation(body: Any, ctx: Context) -> dict:
    check_images(body)
    refusals = ctx.faults.fire({"content_policy"}, ctx.target)
    if refusals:
        # The shape GPT Image models answer when the safety system refuses a prompt.
        raise APIError(
            400,
            refusals[0].params.get("message", CONTENT_POLICY_MESSAGE),
            type="image_generation_user_error",
            code="content_policy_violation",
        )
    prompt: str = body["prompt"]
    n = int(body.get("n") or 1)
    size = body.get("size") or "auto"
    quality = body.get("quality") or "auto"
    billed_quality = _BILLED_QUALITY.get(quality, "medium")
    images = [
        {"b64_json": base64.b64encode(content.draw_png(prompt, seed=ctx.seed, size=ctx.image_size, variant=i)).decode()}
        for i in range(n)
    ]
    input_tokens = content.image_prompt_tokens(body)
    output_tokens = n * content.image_output_tokens(size, billed_quality)
    return {
        "created": int(ctx.now),
        "data": images,
        "background": "opaque",
        "output_format": "png",
        "quality": billed_quality,
        # Echoed, not drawn: pictures are image_size pixels square whatever was asked.
        "size": "1024x1024" if size == "auto" else size,
        "usage": {
            "input_tokens": input_tokens,
            "input_tokens_details": {"text_tokens": input_tokens, "image_tokens": 0},
            "output_tokens": output_tokens,
            "output_tokens_details": {"text_tokens": 0, "image_tokens": output_tokens},
            "total_tokens": input_tokens + output_tokens,
        },
    }


EXECUTORS: dict[str, Callable[[Any, Context], dict]] = {
    CHAT_ENDPOINT: chat_completion,
    IMAGES_ENDPOINT: image_generation,
}


def execute(endpoint: str, body: Any, ctx: Context) -> dict:
    """Run one request; raises APIError for anything the real endpoint would refuse."""
    return EXECUTORS[endpoint](body, ctx)


def usage_of(endpoint: str, response: dict) -> tuple[int, int, int, int]:
    """(input, cached input, output, reasoning) tokens a successful response bills."""
    usage = response.get("usage") or {}
    if endpoint == CHAT_ENDPOINT:
        return (
            usage.get("prompt_tokens", 0),
            (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0),
            usage.get("completion_tokens", 0),
            (usage.get("completion_tokens_details") or {}).get("reasoning_tokens", 0),
        )
    return usage.get("input_tokens", 0), 0, usage.get("output_tokens", 0), 0
