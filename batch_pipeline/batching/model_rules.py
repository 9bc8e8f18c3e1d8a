"""Per-model parameter rules: the one place that knows which model accepts which parameter.

The request builder calls `normalise_chat_params` on every chat body before it is queued, so a
body that works synchronously is also valid inside a batch, and vice versa.
"""

from __future__ import annotations

import re

# gpt-5 family and o-series are reasoning models: they reject `max_tokens` (400
# unsupported_parameter) and any `temperature`/`top_p` other than the default (400 unsupported_value).
_REASONING_MODEL = re.compile(r"^(gpt-5|o\d)(\b|[-.])")


def is_reasoning_model(model: str) -> bool:
    return bool(_REASONING_MODEL.match(model))


def normalise_chat_params(model: str, params: dict) -> tuple[dict, list[str]]:
    """Return (params the model accepts, notes on what was changed and why)."""
    out = dict(params)
    notes: list[str] = []
    if is_reasoning_model(model):
        if "max_tokens" in out:
            value = out.pop("max_tokens")
            if value is not None and out.get("max_completion_tokens") is None:
                out["max_completion_tokens"] = value
            notes.append("max_tokens -> max_completion_tokens")
        for name in ("temperature", "top_p"):
            if name in out:
                value = out.pop(name)
                if value is not None and value != 1:
                    notes.append(f"{name}={value} dropped: {model} only accepts the default")
    return {k: v for k, v in out.items() if v is not None}, notes
