"""The search's requests (Call) and their answers (CallResult): all that crosses to the providers.

steps.plan_round emits Calls; an executor on any tier returns CallResults by key to steps.apply_round.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

# The batch layer prefixes keys to build custom_ids (at most 64 characters); 48 leaves it 16.
MAX_KEY_LENGTH = 48
MAX_SESSION_ID_LENGTH = 16
_SESSION_ID = re.compile(rf"[A-Za-z0-9_-]{{1,{MAX_SESSION_ID_LENGTH}}}")


class TextCall(BaseModel):
    """A chat completion with a strict structured output (expand in iteration 0, refine later)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["text"] = "text"
    key: str
    operation: Literal["expand", "refine"]
    model: str
    # OpenAI chat message dicts, text only: {"role": "system" | "user", "content": "..."}.
    messages: list[dict[str, str]]
    response_schema_name: str
    response_schema: dict[str, Any]
    temperature: float
    max_completion_tokens: int
    # Sent as the API's `seed` (best-effort reproducibility): sessions with different seeds sample
    # different candidates, the same seed asks the same questions (and hits the response cache).
    seed: int | None = None


class ImageCall(BaseModel):
    """One image generation from a candidate's combined prompt."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["image"] = "image"
    key: str
    operation: Literal["image"] = "image"
    model: str
    prompt: str
    size: str
    quality: str
    candidate_id: str


class VisionCall(BaseModel):
    """One vote of a pairwise comparison (two images), or a critique of one candidate's image that writes its
    children (2-round iterations); the provider turns the paths into data-URL image parts."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["vision"] = "vision"
    key: str
    operation: Literal["compare", "critique"] = "compare"
    model: str
    system: str
    text: str
    # (A, B): already in the randomised presentation order of this vote; one path for a critique.
    image_paths: tuple[str, str] | tuple[str]
    detail: str
    response_schema_name: str
    response_schema: dict[str, Any]
    max_completion_tokens: int
    seed: int | None = None


Call = Annotated[TextCall | ImageCall | VisionCall, Field(discriminator="kind")]

# For orchestrators that persist a round's calls: calls_adapter.dump_json(calls) / .validate_json(raw).
calls_adapter: TypeAdapter[list[Call]] = TypeAdapter(list[Call])


class CallResult(BaseModel):
    """The answer to one Call, matched by key; ok=False carries the provider's error instead of content."""

    model_config = ConfigDict(extra="forbid")

    key: str
    ok: bool
    content: dict[str, Any] | None = None  # parsed JSON of a text or vision answer
    image_path: str | None = None  # where an image call's picture was stored
    error: str | None = None
    usage: dict[str, int] = Field(default_factory=dict)  # input_tokens, output_tokens, cached_tokens
    tier: str | None = None


def check_session_id(session_id: str) -> str:
    """Session ids become part of every key, so they must be short and URL-safe."""
    if not _SESSION_ID.fullmatch(session_id):
        raise ValueError(
            f"session_id must be 1..{MAX_SESSION_ID_LENGTH} characters of letters, digits, '-' or '_'; "
            f"got {session_id!r}"
        )
    return session_id


# Key layout: s{session}-i{iteration}-{operation}-{subject}. Deterministic, so a resumed step
# re-derives the same keys; unique, because a subject appears once per iteration and operation.
def text_key(session_id: str, iteration: int, operation: Literal["expand", "refine"], index: int) -> str:
    short = "exp" if operation == "expand" else "ref"
    return f"s{session_id}-i{iteration}-{short}-c{index:02d}"


def image_key(session_id: str, iteration: int, index: int) -> str:
    return f"s{session_id}-i{iteration}-img-c{index:02d}"


def critique_key(session_id: str, iteration: int, candidate_id: str) -> str:
    return f"s{session_id}-i{iteration}-crt-{candidate_id}"


def vote_key(session_id: str, iteration: int, a: str, b: str, vote_index: int) -> str:
    return f"s{session_id}-i{iteration}-cmp-{a}-{b}-v{vote_index}"
