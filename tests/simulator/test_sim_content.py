"""Deterministic content: structured outputs that validate, vocabulary-driven strings, and the vision judge.

Structured answers are parsed by the SDK into the very pydantic models that produced their schemas.
"""

from __future__ import annotations

import base64
import io
import json
import random
from typing import Literal

from openai.types import Batch
from PIL import Image
from pydantic import BaseModel, Field

from openai_simulator import STYLE_VOCABULARY
from openai_simulator.content import CONTENT_VOCABULARY, fill_schema

from .support import Api, image_line


class Shot(BaseModel):
    how: str
    weight: float = Field(ge=0, le=1)


class Plan(BaseModel):
    prompt: str
    style_notes: list[str] = Field(min_length=1, max_length=3)
    score: int = Field(ge=1, le=10)
    mood: Literal["calm", "tense", "joyful"]
    shot: Shot
    alternative: Shot | None
    final: bool


USER_TEXT = "Improve this prompt: a lighthouse on a cliff during a thunderstorm"


def test_json_schema_answers_parse_into_the_pydantic_model_that_made_the_schema(api: Api) -> None:
    completion = api.client.chat.completions.parse(
        model="gpt-5-mini", messages=[{"role": "user", "content": USER_TEXT}], response_format=Plan
    )
    plan = completion.choices[0].message.parsed
    assert isinstance(plan, Plan) and plan.alternative is not None, "optional branches get a real value"
    assert Plan.model_validate_json(completion.choices[0].message.content) == plan


def test_style_fields_take_style_words_and_other_strings_keep_the_user_words(api: Api) -> None:
    user_words = {"lighthouse", "cliff", "thunderstorm"}
    for nonce in range(5):
        plan = (
            api.client.chat.completions.parse(
                model="gpt-5-mini",
                messages=[{"role": "user", "content": f"{USER_TEXT} #{nonce}"}],
                response_format=Plan,
            )
            .choices[0]
            .message.parsed
        )
        assert set(plan.shot.how.split()) & set(STYLE_VOCABULARY)
        assert all(set(note.split()) & set(STYLE_VOCABULARY) for note in plan.style_notes)
        prompt_words = set(plan.prompt.split())
        assert prompt_words & set(CONTENT_VOCABULARY) and not prompt_words & set(STYLE_VOCABULARY)
        assert prompt_words & user_words and "this" not in prompt_words, "user words minus stopwords"


def test_schema_filler_follows_refs_anyof_enums_and_bounds() -> None:
    schema = {
        "$defs": {
            "Node": {
                "type": "object",
                "additionalProperties": False,
                "required": ["label", "child"],
                "properties": {
                    "label": {"type": "string", "maxLength": 12},
                    "child": {"anyOf": [{"$ref": "#/$defs/Node"}, {"type": "null"}]},
                },
            }
        },
        "type": "object",
        "properties": {
            "tree": {"$ref": "#/$defs/Node"},
            "level": {"type": "integer", "minimum": 3, "maximum": 4},
            "ratio": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 0.01},
            "tags": {"type": "array", "items": {"enum": ["x", "y"]}, "minItems": 2, "maxItems": 2},
            "note": {"type": ["string", "null"], "minLength": 30},
        },
    }
    value = fill_schema(schema, root=schema, rng=random.Random(1), user_words=["fox"])
    depth, node = 0, value["tree"]
    while node is not None:
        assert len(node["label"]) <= 12
        depth, node = depth + 1, node["child"]
    assert 1 < depth < 10, "recursion bottoms out at the null branch"
    assert value["level"] in (3, 4) and 0 < value["ratio"] < 0.01
    assert len(value["tags"]) == 2 and set(value["tags"]) <= {"x", "y"}
    assert isinstance(value["note"], str) and len(value["note"]) >= 30


# --- the simulated vision judge -------------------------------------------------------------

VERDICT_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["winner", "alignment_winner", "aesthetics_winner", "reason"],
    "properties": {
        "winner": {"type": "string", "enum": ["A", "B"]},
        "alignment_winner": {"type": "string", "enum": ["A", "B"]},
        "aesthetics_winner": {"type": "string", "enum": ["A", "B"]},
        "reason": {"type": "string"},
    },
}


def data_url(api: Api, prompt: str) -> str:
    image = api.client.images.generate(model="gpt-image-1-mini", prompt=prompt).data[0]
    return "data:image/png;base64," + image.b64_json


def verdicts(api: Api, image_a: str, image_b: str, user_prompt: str, rounds: int) -> list[dict]:
    """Ask the judge `rounds` times, each with a different nonce in the text."""
    answers = []
    for nonce in range(rounds):
        completion = api.client.chat.completions.create(
            model="gpt-5-nano",
            messages=[
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "text",
                            "text": f"Compare the two images (nonce {nonce}).\nUser prompt: {user_prompt}",
                        },
                        {"type": "image_url", "image_url": {"url": image_a, "detail": "low"}},
                        {"type": "image_url", "image_url": {"url": image_b, "detail": "low"}},
                    ],
                }
            ],
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "verdict", "schema": VERDICT_SCHEMA, "strict": True},
            },
        )
        answers.append(json.loads(completion.choices[0].message.content))
    return answers


def test_judge_prefers_the_image_whose_prompt_covers_more_of_the_user_prompt(api: Api) -> None:
    user_prompt = "a lighthouse on a cliff during a thunderstorm"
    covering = data_url(api, "a lighthouse on a cliff during a thunderstorm at night")
    partial = data_url(api, "a lighthouse at noon")
    forward = verdicts(api, covering, partial, user_prompt, rounds=20)
    backward = verdicts(api, partial, covering, user_prompt, rounds=20)
    assert sum(v["alignment_winner"] == "A" for v in forward) >= 15
    assert sum(v["winner"] == "B" for v in backward) >= 15, "the preference follows the image, not the slot"
    assert {v["winner"] for v in forward} == {"A", "B"}, "an inconsistent judge sometimes flips"


def test_judge_rates_aesthetics_by_distinct_style_words(api: Api) -> None:
    plain = data_url(api, "a lighthouse on a cliff")
    styled = data_url(api, "a lighthouse on a cliff, chiaroscuro cinematic volumetric bokeh noir moody")
    answers = verdicts(api, plain, styled, "a lighthouse on a cliff", rounds=20)
    assert sum(v["aesthetics_winner"] == "B" for v in answers) >= 15


def test_judge_answers_are_stable_for_an_identical_request(api: Api) -> None:
    a, b = data_url(api, "a fox"), data_url(api, "a fox in the snow")
    assert verdicts(api, a, b, "a fox in snow", rounds=3) == verdicts(api, a, b, "a fox in snow", rounds=3)


def test_images_made_in_a_batch_carry_their_prompt_in_the_png(api: Api) -> None:
    prompts = {"img0": "a harbor at dawn, watercolor", "img1": "a comet over a desert"}
    batch_id = api.submit(
        [image_line(key, prompt) for key, prompt in prompts.items()], endpoint="/v1/images/generations"
    ).id
    batch = Batch.model_validate(api.raw_json(api.client.batches.with_raw_response.retrieve(batch_id)))
    assert batch.model == "gpt-image-1-mini" and batch.usage.output_tokens == 2 * 272
    for line in api.read(batch.output_file_id):
        picture = base64.b64decode(line["response"]["body"]["data"][0]["b64_json"])
        with Image.open(io.BytesIO(picture)) as image:
            assert image.text["prompt"] == prompts[line["custom_id"]]


def test_chat_honours_n_with_distinct_choices(api: Api) -> None:
    completion = api.client.chat.completions.create(
        model="gpt-5-mini", n=3, messages=[{"role": "user", "content": USER_TEXT}]
    )
    assert [choice.index for choice in completion.choices] == [0, 1, 2]
    assert len({choice.message.content for choice in completion.choices}) > 1
