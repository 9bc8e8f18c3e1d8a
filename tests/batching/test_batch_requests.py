"""Request builder: custom ids, validation, per-model normalisation, token and byte estimates."""

from __future__ import annotations

import re
from typing import get_args

import orjson
import pytest

from batch_pipeline.batching.model_rules import is_reasoning_model, normalise_chat_params
from batch_pipeline.batching.requests import (
    IMAGE_TOKENS,
    ChatRequest,
    RequestValidationError,
    body_hash,
    build_request,
    jsonl_line,
    make_custom_id,
    resolve_image_refs,
)
from batch_pipeline.vocabulary import BatchEndpoint, Endpoint, RoundId

CUSTOM_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


# -- custom ids ---------------------------------------------------------------------------------


def test_safe_keys_stay_readable_and_unsafe_keys_never_collide_with_their_safe_spelling():
    assert make_custom_id("expand", "doc-17_para3") == "expand-doc-17_para3"
    assert make_custom_id("", "doc-17") == "doc-17"
    unsafe, safe = make_custom_id("ns", "what is/this?"), make_custom_id("ns", "what_is_this")
    assert safe == "ns-what_is_this"
    assert CUSTOM_ID.match(unsafe) and unsafe.startswith("ns-what_is_this-") and unsafe != safe


def test_custom_id_over_64_chars_is_hashed_and_stays_unique():
    prefix = "chapter-" + "x" * 80
    a, b = make_custom_id("ns", prefix + "-a"), make_custom_id("ns", prefix + "-b")
    assert a != b
    for cid in (a, b):
        assert len(cid) == 64
        assert CUSTOM_ID.match(cid)
        assert cid.startswith("ns-chapter-xxx")
    assert make_custom_id("ns", prefix + "-a") == a  # deterministic: the ledger finds it again


# -- validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "user", "content": []}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": [{"type": "audio", "data": "x"}]}]}, "messages[0].content[0].type"),
        ({"temperature": 2.5}, "temperature"),
        ({"top_p": -0.1}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format.json_schema"),
        ({"response_format": {"type": "yaml"}}, "response_format.type"),
        ({"model": "  "}, "model"),
        ({"messages": [{"role": "user", "content": "hi"}, "hi"]}, "messages[1]"),
        ({"messages": [["user", "hi"]]}, "messages[0]"),
    ],
)
def test_invalid_chat_request_is_rejected_naming_the_offending_field(overrides, field):
    fields = {"key": "k1", "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]} | overrides
    with pytest.raises(RequestValidationError) as info:
        build_request(ChatRequest(**fields), namespace="t", operation="expand")
    assert info.value.field == field
    assert info.value.key == "k1"


@pytest.mark.parametrize(
    "part",
    ["just a string", {"type": "image_url", "image_url": "https://example.com/a.png"}],  # 2nd: Responses-API spelling
    ids=["bare-string-part", "image_url-as-string"],
)
def test_malformed_content_part_is_a_validation_error_not_a_crash(part):
    request = ChatRequest(key="k1", model="gpt-4o-mini", messages=[{"role": "user", "content": [part]}])
    with pytest.raises(RequestValidationError) as info:
        build_request(request, namespace="t", operation="expand")
    assert info.value.field.startswith("messages[0].content[0]")


def test_image_ref_needs_a_store_and_a_stored_file(image_store):
    ref = "bp-image:" + "ab" * 32 + ".png"
    msg = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": ref}}]}]
    request = ChatRequest(key="k1", model="gpt-4o", messages=msg)
    with pytest.raises(RequestValidationError, match="no image store"):
        build_request(request, namespace="t", operation="describe")
    with pytest.raises(RequestValidationError, match="not in the store"):
        build_request(request, namespace="t", operation="describe", image_store=image_store)


def test_image_request_checks_prompt_count_size_and_extra(image_request):
    assert image_request("ok", n=10, size="auto", extra={"output_format": "webp"}).body["output_format"] == "webp"
    for kw, field in [
        ({"prompt": " "}, "prompt"),
        ({"n": 11}, "n"),
        ({"size": "big"}, "size"),
        ({"extra": {"n": 3}}, "extra.n"),
    ]:
        with pytest.raises(RequestValidationError) as info:
            image_request("bad", **kw)
        assert info.value.field == field


# -- normalisation ------------------------------------------------------------------------------


def test_gpt5_max_tokens_becomes_max_completion_tokens(chat):
    body = chat("k1", model="gpt-5", max_tokens=300, temperature=0.2, top_p=0.5).body
    assert body["max_completion_tokens"] == 300
    assert "max_tokens" not in body and "temperature" not in body and "top_p" not in body
    # an explicit max_completion_tokens wins over a max_tokens given alongside it
    params, notes = normalise_chat_params(
        "o3-mini", {"max_tokens": 100, "max_completion_tokens": 900, "temperature": 1}
    )
    assert params == {"max_completion_tokens": 900}
    assert notes


def test_non_reasoning_models_keep_their_sampling_parameters(chat):
    body = chat("k1", model="gpt-4o-mini", max_tokens=300, temperature=0.2, seed=7).body
    assert (body["max_tokens"], body["temperature"], body["seed"]) == (300, 0.2, 7)
    assert "max_completion_tokens" not in body and "reasoning_effort" not in body  # unset params are omitted


@pytest.mark.parametrize(
    ("model", "reasoning"),
    [
        ("gpt-5", True),
        ("gpt-5-mini-2025-08-07", True),
        ("gpt-5.1", True),
        ("o1", True),
        ("o3-mini", True),
        ("gpt-4o", False),
        ("gpt-4o-mini", False),
        ("gpt-4.1-mini", False),
        ("gpt-50", False),
        ("omni-moderation-latest", False),
    ],
)
def test_reasoning_model_family_is_recognised_by_name(model, reasoning):
    assert is_reasoning_model(model) is reasoning


@pytest.mark.parametrize("extra", [{"max_tokens": 300}, {"temperature": 0.3}, {"model": "gpt-4o"}, {"messages": []}])
def test_extra_cannot_override_typed_fields_or_bypass_model_rules(chat, extra):
    with pytest.raises(RequestValidationError) as info:
        chat("k1", model="gpt-5-mini", extra=extra)
    assert info.value.field == f"extra.{next(iter(extra))}"
    body = chat("k2", model="gpt-5-mini", extra={"verbosity": "low", "service_tier": "flex"}).body
    assert (body["verbosity"], body["service_tier"]) == ("low", "flex")  # other parameters pass through


# -- estimates, lines, cache identity -----------------------------------------------------------


def test_token_estimate_is_text_chars_over_four_plus_a_fixed_cost_per_image_detail(chat):
    assert chat("a", text="x" * 401).est_prompt_tokens == 101
    parts = [
        {"type": "text", "text": "y" * 40},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png", "detail": "low"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/b.png"}},
    ]
    queued = chat("b", model="gpt-4o", messages=[{"role": "user", "content": parts}])
    assert queued.est_prompt_tokens == 10 + IMAGE_TOKENS["low"] + IMAGE_TOKENS["auto"]


def test_line_bytes_equal_the_utf8_length_of_the_jsonl_line(chat):
    queued = chat("k1", text='Zusammenfassung für Ärzte — 長い文章 🙂 "quoted" \\ back')
    line = jsonl_line(queued.request_id, queued.endpoint, queued.body)
    assert queued.line_bytes == len(line) > len(line.decode())
    assert orjson.loads(line) == {
        "custom_id": queued.request_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": queued.body,
    }


def test_image_ref_line_bytes_count_the_inlined_data_url(chat, image_store, png_bytes):
    ref = image_store.put(png_bytes(1, size=(40, 30)))
    msg = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what is this?"},
                {"type": "image_url", "image_url": {"url": ref, "detail": "low"}},
            ],
        }
    ]
    queued = chat("k1", model="gpt-4o", messages=msg, image_store=image_store)
    inlined = resolve_image_refs(queued.body, image_store)
    assert queued.line_bytes == len(jsonl_line(queued.request_id, queued.endpoint, inlined))
    assert queued.body["messages"][0]["content"][1]["image_url"]["url"] == ref  # the stored body keeps the ref


def test_cache_identity_ignores_key_order_and_request_key_but_not_endpoint_or_values(chat):
    a = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "seed": 1}
    b = {"seed": 1, "messages": [{"content": "hi", "role": "user"}], "model": "gpt-4o"}
    assert body_hash(Endpoint.CHAT, a) == body_hash(Endpoint.CHAT, b)
    assert body_hash(Endpoint.CHAT, a) != body_hash(Endpoint.IMAGES, a)
    assert body_hash(Endpoint.CHAT, a) != body_hash(Endpoint.CHAT, a | {"seed": 2})
    one, two = chat("k1", text="same"), chat("k2", text="same")
    assert one.request_id != two.request_id and one.body_hash == two.body_hash


# -- the fast path: a built request is not validated twice, and its body is serialised once ------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"session_id": "s-1", "tier_reason": "deadline", "round_id": RoundId(2, "vision"), "tier": "flex"},
        {"tier": "standard"},
    ],
)
def test_a_built_request_equals_the_validated_model_of_the_same_values(kwargs):
    from batch_pipeline.records import QueuedRequest, canonical_body

    for request in (
        ChatRequest(
            key="k/1 é",
            model="gpt-4.1-mini",
            max_tokens=50,
            temperature=0.3,
            messages=[{"role": "user", "content": 'é 🙂 "q"'}],
            extra={"user": "u"},
        ),
        ChatRequest(
            key="k2",
            model="gpt-5-mini",
            max_tokens=20,
            reasoning_effort="low",
            messages=[{"role": "system", "content": "s"}, {"role": "user", "content": "x"}],
        ),
    ):
        queued = build_request(request, namespace="ns", operation="expand", **kwargs)
        validated = QueuedRequest(**queued.model_dump())
        assert queued == validated and validated == queued
        assert queued.model_dump() == validated.model_dump() and queued.model_fields_set == validated.model_fields_set
        assert type(queued.tier) is type(validated.tier) and type(queued.endpoint) is type(validated.endpoint)
        assert queued.body_text() == validated.body_text() == canonical_body(queued.body).decode()
        assert queued.body_hash == body_hash(queued.endpoint, queued.body)
        # a copy with another body is serialised again, never stored stale
        changed = queued.model_copy(update={"body": {**queued.body, "seed": 7}})
        assert orjson.loads(changed.body_text())["seed"] == 7


def test_request_line_is_the_jsonl_line_with_sorted_keys_and_line_bytes_long():
    from batch_pipeline.batching.requests import request_line

    queued = build_request(
        ChatRequest(key="k", model="gpt-5-mini", max_tokens=9, messages=[{"role": "user", "content": "ünï 🙂"}]),
        namespace="t",
        operation="o",
    )
    line = request_line(queued)
    assert orjson.loads(line) == orjson.loads(jsonl_line(queued.request_id, queued.endpoint, queued.body))
    assert len(line) == len(jsonl_line(queued.request_id, queued.endpoint, queued.body)) == queued.line_bytes


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"operation": 3}, "operation"),
        ({"session_id": 5}, "session_id"),
        ({"round_id": ("2", "text")}, "round_id"),
        ({"tier": "cheap"}, "tier"),
    ],
)
def test_values_stored_without_a_second_validation_are_still_refused_when_wrong(kwargs, field):
    request = ChatRequest(key="k", model="gpt-5-mini", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(RequestValidationError) as err:
        build_request(request, **{"namespace": "t", "operation": "o", **kwargs})
    assert err.value.field == field


def test_remembered_normalisation_equals_the_rule_and_keeps_value_types_apart():
    from batch_pipeline.batching.requests import _normalised_params

    for model in ("gpt-5-mini", "gpt-4.1-mini", "o3"):
        for params in (
            {
                "temperature": 0.7,
                "top_p": None,
                "max_tokens": 300,
                "max_completion_tokens": None,
                "reasoning_effort": None,
                "seed": None,
            },
            {
                "temperature": 1.0,
                "top_p": 1,
                "max_tokens": None,
                "max_completion_tokens": 9,
                "reasoning_effort": "low",
                "seed": 3,
            },
        ):
            for _ in range(2):  # computed, then remembered
                got = _normalised_params(model, **params)
                assert got == normalise_chat_params(model, params)[0]
    as_int = {
        "temperature": None,
        "top_p": None,
        "max_tokens": None,
        "max_completion_tokens": None,
        "reasoning_effort": None,
        "seed": 1,
    }
    as_bool = {**as_int, "seed": True}
    for params in (as_int, as_bool):
        got = _normalised_params("gpt-4.1-mini", **params)
        assert type(got["seed"]) is type(params["seed"])


def test_the_sdk_literal_of_batch_endpoints_names_the_same_endpoints_as_the_vocabulary() -> None:
    assert set(get_args(BatchEndpoint)) == {endpoint.value for endpoint in Endpoint}
