"""Parameter rules of the real API, enforced on every request body, synchronous or a batch line.

`handlers.py` calls `check_chat` / `check_images` first; kept apart from the client's normaliser on purpose.
"""

from __future__ import annotations

import re
from typing import Any

from .errors import APIError, invalid_value, missing_parameter

# gpt-5 family and o-series reasoning models: no max_tokens, sampling knobs fixed at 1.
_REASONING_MODEL = re.compile(r"^(gpt-5|o1|o3|o4)")
# Flex processing is offered for a short list of models only.
_FLEX_MODEL = re.compile(r"^(gpt-5|o3|o4-mini)")
_SERVICE_TIERS = {"auto", "default", "flex", "scale", "priority", "fast"}
_IMAGE_QUALITIES = {"low", "medium", "high", "auto", "standard", "hd", "xhigh", "max"}


def is_reasoning_model(model: str) -> bool:
    return bool(_REASONING_MODEL.match(model))


def check_chat(body: Any) -> None:
    """Raise the APIError the real API would answer for this chat-completions body, if any."""
    if not isinstance(body, dict):
        raise APIError(400, "We could not parse the JSON body of your request.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        # The real wording, with no param or code.
        raise APIError(400, "you must provide a model parameter")
    messages = body.get("messages")
    if messages is None:
        raise missing_parameter("messages")
    if not isinstance(messages, list) or not messages:
        raise APIError(
            400,
            "Invalid 'messages': empty array. Expected an array with minimum length 1.",
            param="messages",
            code="empty_array",
        )

    n = body.get("n")
    if n is not None and (not isinstance(n, int) or not 1 <= n <= 128):
        raise APIError(
            400,
            f"Invalid 'n': integer {n} out of range. Expected a value between 1 and 128.",
            param="n",
            code="integer_out_of_range",
        )

    if is_reasoning_model(model):
        if "max_tokens" in body and body["max_tokens"] is not None:
            raise APIError(
                400,
                "Unsupported parameter: 'max_tokens' is not supported with this model. "
                "Use 'max_completion_tokens' instead.",
                param="max_tokens",
                code="unsupported_parameter",
            )
        for knob in ("temperature", "top_p"):
            value = body.get(knob)
            if value is not None and value != 1:
                raise APIError(
                    400,
                    f"Unsupported value: '{knob}' does not support {value} with this model. "
                    "Only the default (1) value is supported.",
                    param=knob,
                    code="unsupported_value",
                )

    _check_service_tier(model, body.get("service_tier"))
    _check_response_format(body.get("response_format"))


def _check_service_tier(model: str, tier: Any) -> None:
    if tier is None:
        return
    if tier not in _SERVICE_TIERS:
        raise invalid_value("service_tier", f"Invalid value: '{tier}'. Supported values are: {sorted(_SERVICE_TIERS)}.")
    if tier == "flex" and not _FLEX_MODEL.match(model):
        raise APIError(
            400,
            f"Unsupported value: 'service_tier' does not support 'flex' with model '{model}'.",
            param="service_tier",
            code="unsupported_value",
        )


def _check_response_format(response_format: Any) -> None:
    if response_format is None:
        return
    if not isinstance(response_format, dict) or response_format.get("type") not in {
        "text",
        "json_object",
        "json_schema",
    }:
        raise invalid_value("response_format.type", "Invalid value for 'response_format.type'.")
    if response_format["type"] != "json_schema":
        return
    spec = response_format.get("json_schema")
    if not isinstance(spec, dict) or not spec.get("name"):
        raise missing_parameter("response_format.json_schema.name")
    schema = spec.get("schema")
    if not isinstance(schema, dict):
        raise missing_parameter("response_format.json_schema.schema")
    if spec.get("strict"):
        _check_strict_schema(spec["name"], schema, "")


def _check_strict_schema(name: str, node: Any, where: str) -> None:
    """Strict structured outputs demand closed objects whose every property is required."""
    if not isinstance(node, dict):
        return
    if node.get("type") == "object" or "properties" in node:

        def refuse(reason: str) -> APIError:
            return APIError(
                400,
                f"Invalid schema for response_format '{name}': In context=({where or 'root'}), {reason}",
                param="response_format",
                code="invalid_json_schema",
            )

        if node.get("additionalProperties") is not False:
            raise refuse("'additionalProperties' is required to be supplied and to be false.")
        properties = node.get("properties", {})
        missing = [key for key in properties if key not in node.get("required", [])]
        if missing:
            raise refuse(
                f"'required' is required to be supplied and to be an array including every key "
                f"in properties. Missing '{missing[0]}'."
            )
        for key, child in properties.items():
            _check_strict_schema(name, child, f"{where}.{key}" if where else key)
    _check_strict_schema(name, node.get("items"), f"{where}[]")
    for branch in node.get("anyOf", []):
        _check_strict_schema(name, branch, where)
    for def_name, definition in node.get("$defs", {}).items():
        _check_strict_schema(name, definition, f"$defs.{def_name}")


def check_images(body: Any) -> None:
    if not isinstance(body, dict):
        raise APIError(400, "We could not parse the JSON body of your request.")
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise missing_parameter("prompt")
    n = body.get("n", 1)
    if n is not None and (not isinstance(n, int) or not 1 <= n <= 10):
        raise APIError(
            400,
            f"Invalid 'n': integer {n} out of range. Expected a value between 1 and 10.",
            param="n",
            code="integer_out_of_range",
        )
    quality = body.get("quality")
    if quality is not None and quality not in _IMAGE_QUALITIES:
        raise invalid_value("quality", f"Invalid value: '{quality}'. Supported values are: {sorted(_IMAGE_QUALITIES)}.")


def check_expires_after(expires_after: Any, param: str) -> int:
    """`{anchor: "created_at", seconds: 3600..2592000}` -> seconds (real API bounds: 1 hour to 30 days)."""
    if not isinstance(expires_after, dict) or expires_after.get("anchor") != "created_at":
        raise invalid_value(f"{param}.anchor", "Invalid value: expected anchor 'created_at'.")
    value: Any = expires_after.get("seconds")  # None (absent) fails int() like any other non-integer
    try:
        seconds = int(value)
    except (TypeError, ValueError):
        raise invalid_value(f"{param}.seconds", "Invalid value: 'seconds' must be an integer.") from None
    if not 3600 <= seconds <= 2_592_000:
        raise APIError(
            400,
            f"Invalid '{param}.seconds': {seconds} is outside 3600..2592000.",
            param=f"{param}.seconds",
            code="integer_out_of_range",
        )
    return seconds
