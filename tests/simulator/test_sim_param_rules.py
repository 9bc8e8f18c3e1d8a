"""Model parameter rules: refused the same way synchronously (HTTP 400) and inside a batch (400 error line).

These are the simulator's own rules, independent of the client's normaliser.
"""

from __future__ import annotations

import openai
import pytest

from .support import Api, chat_line

HELLO = [{"role": "user", "content": "hello"}]
MAX_TOKENS_REFUSAL = {
    "message": "Unsupported parameter: 'max_tokens' is not supported with this model. "
    "Use 'max_completion_tokens' instead.",
    "type": "invalid_request_error",
    "param": "max_tokens",
    "code": "unsupported_parameter",
}

REFUSED = [
    ("gpt-5-mini", {"max_tokens": 50}, "max_tokens", "unsupported_parameter"),
    ("o3", {"max_tokens": 50}, "max_tokens", "unsupported_parameter"),
    ("gpt-5", {"temperature": 0.2}, "temperature", "unsupported_value"),
    ("o4-mini", {"top_p": 0.5}, "top_p", "unsupported_value"),
    ("gpt-4o-mini", {"service_tier": "flex"}, "service_tier", "unsupported_value"),
    ("o1-mini", {"service_tier": "flex"}, "service_tier", "unsupported_value"),
]
ACCEPTED = [
    ("gpt-4o-mini", {"max_tokens": 50, "temperature": 0.2, "top_p": 0.9}),
    ("gpt-5-nano", {"max_completion_tokens": 50, "temperature": 1, "service_tier": "flex"}),
    ("o4-mini-2025-04-16", {"service_tier": "flex"}),
    ("some-future-model", {}),
]


@pytest.mark.parametrize("model, extra, param, code", REFUSED, ids=[f"{m}-{p}" for m, _, p, _ in REFUSED])
def test_reasoning_models_and_flex_refuse_unsupported_parameters(api: Api, model, extra, param, code) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        api.client.chat.completions.create(model=model, messages=HELLO, **extra)
    assert (refused.value.param, refused.value.code, refused.value.type) == (param, code, "invalid_request_error")


@pytest.mark.parametrize("model, extra", ACCEPTED, ids=[m for m, _ in ACCEPTED])
def test_supported_parameter_combinations_are_answered(api: Api, model, extra) -> None:
    assert api.client.chat.completions.create(model=model, messages=HELLO, **extra).choices


def test_max_tokens_refusal_is_word_for_word_the_real_one(api: Api) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        api.client.chat.completions.create(model="gpt-5-mini", messages=HELLO, max_tokens=10)
    assert refused.value.response.json() == {"error": MAX_TOKENS_REFUSAL}


def test_bad_parameters_inside_a_batch_run_and_fail_as_400_lines_not_validation(api: Api) -> None:
    lines = [
        chat_line("fine", max_completion_tokens=50),
        chat_line("max_tokens", max_tokens=50),
        chat_line("temperature", temperature=0.3),
    ]
    batch = api.client.batches.retrieve(api.submit(lines).id)
    assert batch.status == "completed" and batch.request_counts.model_dump() == {
        "total": 3,
        "completed": 1,
        "failed": 2,
    }
    errors = {line["custom_id"]: line["response"] for line in api.read(batch.error_file_id)}
    assert errors["max_tokens"]["status_code"] == 400 and errors["max_tokens"]["body"] == {"error": MAX_TOKENS_REFUSAL}
    assert errors["temperature"]["body"]["error"]["code"] == "unsupported_value"
    assert [line["custom_id"] for line in api.read(batch.output_file_id)] == ["fine"]


def test_a_strict_schema_that_leaves_objects_open_is_refused(api: Api) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
    with pytest.raises(openai.BadRequestError) as refused:
        api.client.chat.completions.create(
            model="gpt-5-mini",
            messages=HELLO,
            response_format={"type": "json_schema", "json_schema": {"name": "open", "schema": schema, "strict": True}},
        )
    assert refused.value.param == "response_format" and "additionalProperties" in refused.value.body["message"]
