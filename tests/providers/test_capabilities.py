"""Search calls -> ledger requests -> CallResults, per capability (no network)."""

from __future__ import annotations

import io

import orjson
from PIL import Image

from batch_pipeline.batching.image_store import ImageStore, is_ref
from batch_pipeline.batching.requests import build_request, jsonl_line, resolve_image_refs
from batch_pipeline.providers.capabilities import ImageProvider, TextProvider, VisionProvider
from batch_pipeline.records import RequestOutcome
from batch_pipeline.search.calls import ImageCall, TextCall, VisionCall
from batch_pipeline.vocabulary import Outcome

SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["what"],
    "properties": {"what": {"type": "string"}},
}


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), "red").save(buffer, "PNG")
    return buffer.getvalue()


def text_call(**kw) -> TextCall:
    return TextCall(
        key="sx-i0-exp-c00",
        operation="expand",
        model="gpt-5-mini",
        temperature=0.7,
        max_completion_tokens=300,
        response_schema_name="expansion",
        response_schema=SCHEMA,
        messages=[{"role": "system", "content": "s"}, {"role": "user", "content": "User prompt: a fox"}],
        **kw,
    )


def chat_outcome(content: str, outcome=Outcome.SUCCEEDED) -> RequestOutcome:
    return RequestOutcome(
        request_id="sx-i0-exp-c00",
        outcome=outcome,
        input_tokens=10,
        output_tokens=5,
        response={"choices": [{"message": {"content": content}}]},
    )


def test_text_call_becomes_a_strict_json_schema_request_normalised_for_gpt5():
    queued = build_request(TextProvider().to_request(text_call()), namespace="", operation="expand")
    assert queued.body["response_format"]["json_schema"] == {"name": "expansion", "schema": SCHEMA, "strict": True}
    assert "temperature" not in queued.body, "gpt-5 models only accept the default temperature"
    assert queued.body["max_completion_tokens"] == 300


def test_text_result_carries_parsed_json_and_usage():
    result = TextProvider().to_result(text_call(), chat_outcome('{"what": "fox"}'), "batch")
    assert result.ok and result.content == {"what": "fox"} and result.tier == "batch"
    assert result.usage["input_tokens"] == 10


def test_unparseable_answer_is_a_failed_result_not_an_exception():
    result = TextProvider().to_result(text_call(), chat_outcome("not json"))
    assert not result.ok and "unparseable" in result.error


def test_failed_outcome_keeps_its_error():
    outcome = RequestOutcome(
        request_id="x", outcome=Outcome.FAILED_PERMANENT, error_code="invalid_value", error_message="bad"
    )
    result = TextProvider().to_result(text_call(), outcome)
    assert not result.ok and result.error == "invalid_value: bad"


def test_vision_call_refers_to_images_by_ref_not_bytes(tmp_path):
    store = ImageStore(tmp_path)
    a, b = store.path(store.put(png())), store.path(store.put(png()[:-1] + b"\x00"))
    call = VisionCall(
        key="sx-i0-cmp-a-b-v1",
        model="gpt-5-nano",
        system="judge",
        text="User prompt: a fox",
        image_paths=(str(a), str(b)),
        detail="low",
        response_schema_name="comparison",
        response_schema=SCHEMA,
        max_completion_tokens=200,
    )
    request = VisionProvider(store).to_request(call)
    parts = request.messages[1]["content"]
    assert [p["type"] for p in parts] == ["text", "image_url", "image_url"]
    assert all(is_ref(p["image_url"]["url"]) for p in parts[1:])
    queued = build_request(request, namespace="", operation="compare", image_store=store)
    assert b"base64" not in orjson.dumps(queued.body)
    sent = jsonl_line(queued.request_id, queued.endpoint, resolve_image_refs(queued.body, store))
    assert queued.line_bytes == len(sent), "the split accounts for the inlined images exactly"


def test_image_result_points_at_the_stored_file(tmp_path):
    store = ImageStore(tmp_path)
    ref = store.put(png())
    call = ImageCall(
        key="sx-i0-img-c00",
        model="gpt-image-1-mini",
        prompt="a fox",
        size="1024x1024",
        quality="low",
        candidate_id="i0c00",
    )
    outcome = RequestOutcome(
        request_id="x", outcome=Outcome.SUCCEEDED, images=1, response={"data": [{"image_ref": ref}]}
    )
    result = ImageProvider(store).to_result(call, outcome)
    assert result.ok and result.image_path == str(store.path(ref))


def test_image_response_without_an_image_is_a_failure(tmp_path):
    call = ImageCall(key="k", model="gpt-image-1-mini", prompt="p", size="1024x1024", quality="low", candidate_id="c")
    outcome = RequestOutcome(request_id="x", outcome=Outcome.SUCCEEDED, response={"data": []})
    assert not ImageProvider(ImageStore(tmp_path)).to_result(call, outcome).ok
