"""Synchronous endpoints of the simulator through the real SDK, each answer checked against `openai.types`.

Files, models, chat completions, image generation, auth and unknown routes.
"""

from __future__ import annotations

import base64
import io
import json
import re
import urllib.error
import urllib.request

import openai
import pytest
from openai.types import FileDeleted, FileObject, ImagesResponse, Model
from openai.types.chat import ChatCompletion
from PIL import Image

from openai_simulator.content import PNG_PROMPT_KEY

from .support import START, Api


def test_file_round_trip_upload_retrieve_list_content_delete(api: Api) -> None:
    data = b'{"hello": "world"}\n'
    created = FileObject.model_validate(
        api.raw_json(api.client.files.with_raw_response.create(file=("in.jsonl", data), purpose="batch"))
    )
    assert re.fullmatch(r"file-[0-9A-Za-z]{22}", created.id)
    assert (created.bytes, created.filename, created.purpose, created.status) == (
        len(data),
        "in.jsonl",
        "batch",
        "processed",
    )
    assert created.expires_at == START + 30 * 24 * 3600, "batch files expire after 30 days by default"

    assert FileObject.model_validate(api.raw_json(api.client.files.with_raw_response.retrieve(created.id))) == created
    assert api.client.files.content(created.id).read() == data
    listed = api.raw_json(api.client.files.with_raw_response.list())
    assert listed["object"] == "list" and [FileObject.model_validate(f).id for f in listed["data"]] == [created.id]

    deleted = FileDeleted.model_validate(api.raw_json(api.client.files.with_raw_response.delete(created.id)))
    assert deleted.deleted and deleted.id == created.id
    with pytest.raises(openai.NotFoundError):
        api.client.files.retrieve(created.id)


def test_file_upload_honours_expires_after_and_list_filters_by_purpose(api: Api) -> None:
    kept = api.client.files.create(
        file=("a.jsonl", b"{}\n"), purpose="batch", expires_after={"anchor": "created_at", "seconds": 7200}
    )
    api.client.files.create(file=("b.txt", b"notes"), purpose="user_data")
    assert kept.expires_at == START + 7200
    assert [f.id for f in api.client.files.list(purpose="batch")] == [kept.id]
    assert len(api.client.files.list().data) == 2


def test_batch_purpose_requires_a_jsonl_file(api: Api) -> None:
    with pytest.raises(openai.BadRequestError, match=r"Must be \.jsonl"):
        api.client.files.create(file=("in.csv", b"a,b\n"), purpose="batch")


def test_models_list_and_any_model_id_retrieves(api: Api) -> None:
    listed = api.raw_json(api.client.models.with_raw_response.list())
    models = [Model.model_validate(m) for m in listed["data"]]
    assert {"gpt-5-mini", "gpt-image-1-mini"} <= {m.id for m in models}
    assert (
        Model.model_validate(api.raw_json(api.client.models.with_raw_response.retrieve("my-custom-model"))).id
        == "my-custom-model"
    )


def test_chat_answer_is_deterministic_validates_and_echoes_the_user_words(api: Api) -> None:
    kwargs = {
        "model": "gpt-5-mini",
        "messages": [{"role": "user", "content": "Paint a lighthouse during a thunderstorm"}],
    }
    raw = api.client.chat.completions.with_raw_response.create(**kwargs)
    completion = ChatCompletion.model_validate(api.raw_json(raw))
    again = api.client.chat.completions.create(**kwargs)
    text = completion.choices[0].message.content
    assert text == again.choices[0].message.content, "the same request gets the same answer"
    assert {"lighthouse", "thunderstorm"} & set(re.findall(r"[a-z]+", text.lower()))
    assert completion.service_tier == "default" and completion.choices[0].finish_reason == "stop"
    assert raw.headers["x-request-id"].startswith("req_")
    other = api.client.chat.completions.create(
        **{**kwargs, "messages": [{"role": "user", "content": "Describe a quiet harbor"}]}
    )
    assert other.choices[0].message.content != text


def test_chat_usage_counts_four_chars_a_token_plus_a_fixed_cost_per_image(api: Api) -> None:
    png = "data:image/png;base64," + base64.b64encode(b"not really a png").decode()
    text = "x" * 40
    completion = api.client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": text},
                    {"type": "image_url", "image_url": {"url": png, "detail": "low"}},
                    {"type": "image_url", "image_url": {"url": png, "detail": "high"}},
                ],
            }
        ],
    )
    assert completion.usage.prompt_tokens == 10 + 85 + 765
    content = completion.choices[0].message.content
    assert completion.usage.completion_tokens == -(-len(content) // 4)
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens


def test_flex_service_tier_is_echoed(api: Api) -> None:
    completion = api.client.chat.completions.create(
        model="gpt-5-nano", service_tier="flex", messages=[{"role": "user", "content": "hi"}]
    )
    assert completion.service_tier == "flex"


def test_image_generation_returns_n_pngs_that_carry_their_prompt(api: Api) -> None:
    prompt = "a lighthouse in a storm, chiaroscuro"
    raw = api.client.images.with_raw_response.generate(
        model="gpt-image-1-mini", prompt=prompt, n=2, size="1024x1536", quality="low"
    )
    response = ImagesResponse.model_validate(api.raw_json(raw))
    assert len(response.data) == 2 and response.size == "1024x1536", "the requested size is echoed"
    assert response.usage.output_tokens == 2 * 408 and response.usage.input_tokens == -(-len(prompt) // 4)
    pictures = [base64.b64decode(image.b64_json) for image in response.data]
    for picture in pictures:
        with Image.open(io.BytesIO(picture)) as image:
            assert image.format == "PNG" and image.size == (64, 64)
            assert image.text[PNG_PROMPT_KEY] == prompt
    again = api.client.images.generate(model="gpt-image-1-mini", prompt=prompt, n=2, size="1024x1536", quality="low")
    assert [base64.b64decode(i.b64_json) for i in again.data] == pictures, "drawing is deterministic"


def test_a_request_without_api_key_is_401_and_unknown_routes_are_json_404(api: Api) -> None:
    request = urllib.request.Request(f"{api.base_url}/models")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=5)
    assert refused.value.code == 401
    assert json.loads(refused.value.read())["error"]["type"] == "invalid_request_error"

    with pytest.raises(openai.NotFoundError) as missing:
        api.client.get("/nowhere", cast_to=object)
    assert missing.value.body["message"] == "Invalid URL (GET /v1/nowhere)"
