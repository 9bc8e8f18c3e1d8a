"""Batch input checks: the bytes of an uploaded JSONL file -> parsed request lines or BatchError dicts.

Run by `batches.py` at create time (errors make the batch fail) and again to read lines for processing.
"""

# Error codes (BatchError.code), with the 1-based `line` where one line is at fault:
#   file_too_large              the file is over `max_file_bytes` (real limit 200 MB)
#   too_many_requests           more than `max_lines` requests (real limit 50,000)
#   empty_file                  no request lines at all
#   invalid_json_line           a line is not a JSON object
#   missing_required_parameter  a line lacks custom_id, method, url or body (`param` names it)
#   invalid_value               `method` is not POST, or `body` is not an object
#   duplicate_custom_id         a custom_id seen on an earlier line
#   mismatched_endpoint         the line's `url` differs from the batch's endpoint
#   mismatched_model            the line's body.model differs from the first line's (one model a batch)
#   token_limit_exceeded        (set by batches.py, line null) the model's enqueued-token queue is full
# Public reports also name `url_mismatch`, `model_mismatch` and `too_many_tasks`; the codes above
# follow the project's contract and live here, in one place, should they need to change.
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from .content import estimate_prompt_tokens


@dataclass(frozen=True)
class RequestLine:
    line: int  # 1-based line number in the input file
    custom_id: str
    body: dict
    raw: str  # the line as uploaded, for `body_contains` fault matching


@dataclass
class ParsedInput:
    lines: list[RequestLine] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)
    model: str | None = None
    prompt_tokens: int = 0


def batch_error(code: str, message: str, line: int | None = None, param: str | None = None) -> dict:
    return {"code": code, "line": line, "message": message, "param": param}


def parse_input(raw: bytes, endpoint: str, *, max_bytes: int, max_lines: int) -> ParsedInput:
    """Every line-level problem is reported (as the real API lists several), file-level ones alone."""
    if len(raw) > max_bytes:
        return ParsedInput(
            errors=[
                batch_error(
                    "file_too_large",
                    f"The input file is {len(raw):,} bytes; a batch input file may be at most {max_bytes:,} bytes.",
                )
            ]
        )
    numbered = [
        (number, text) for number, text in enumerate(raw.decode("utf-8", "replace").split("\n"), 1) if text.strip()
    ]
    if not numbered:
        return ParsedInput(errors=[batch_error("empty_file", "The batch input file is empty.")])
    if len(numbered) > max_lines:
        return ParsedInput(
            errors=[
                batch_error(
                    "too_many_requests",
                    f"The input file has {len(numbered):,} requests; a batch may hold at most {max_lines:,}.",
                )
            ]
        )

    parsed = ParsedInput()
    seen_ids: set[str] = set()
    for number, text in numbered:
        problem = _check_line(number, text, endpoint, seen_ids, parsed)
        if problem is not None:
            parsed.errors.append(problem)
    return parsed


def _check_line(number: int, text: str, endpoint: str, seen_ids: set[str], parsed: ParsedInput) -> dict | None:
    try:
        request: Any = orjson.loads(text)
    except orjson.JSONDecodeError:
        request = None
    if not isinstance(request, dict):
        return batch_error("invalid_json_line", "This line is not parseable as valid JSON.", number)

    for key in ("custom_id", "method", "url", "body"):
        if request.get(key) in (None, ""):
            return batch_error("missing_required_parameter", f"Missing required parameter: '{key}'.", number, key)
    custom_id, body = str(request["custom_id"]), request["body"]
    if request["method"] != "POST":
        return batch_error(
            "invalid_value", f"Invalid method '{request['method']}'; only POST is supported.", number, "method"
        )
    if not isinstance(body, dict):
        return batch_error("invalid_value", "The request body must be a JSON object.", number, "body")
    if custom_id in seen_ids:
        return batch_error(
            "duplicate_custom_id",
            f"The custom_id '{custom_id}' is a duplicate of another request. "
            "The custom_id parameter must be unique for each request in a batch.",
            number,
            "custom_id",
        )
    seen_ids.add(custom_id)
    if request["url"] != endpoint:
        return batch_error(
            "mismatched_endpoint",
            f"The URL of this request ('{request['url']}') does not match the batch endpoint ('{endpoint}').",
            number,
            "url",
        )
    model = body.get("model")
    if isinstance(model, str) and model:
        if parsed.model is None:
            parsed.model = model
        elif model != parsed.model:
            return batch_error(
                "mismatched_model",
                f"The model '{model}' of this request differs from '{parsed.model}' used by the first request; "
                "a batch may only use one model.",
                number,
                "body.model",
            )

    parsed.lines.append(RequestLine(number, custom_id, body, text))
    parsed.prompt_tokens += estimate_prompt_tokens(endpoint, body)
    return None
