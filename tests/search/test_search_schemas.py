"""Structured-output models and the strict JSON schemas sent with every text and vision call."""

import pytest
from pydantic import ValidationError

from batch_pipeline.search import Comparison, Expansion, RefineHow, Refinement, RefineWhat, strict_json_schema


def objects_in(node):
    if isinstance(node, dict):
        if node.get("type") == "object":
            yield node
        for value in node.values():
            yield from objects_in(value)
    elif isinstance(node, list):
        for value in node:
            yield from objects_in(value)


@pytest.mark.parametrize("model", [Expansion, Refinement, RefineWhat, RefineHow, Comparison])
def test_every_object_in_a_response_schema_is_strict(model):
    schema = strict_json_schema(model)
    objects = list(objects_in(schema))
    assert objects
    for node in objects:
        assert node["additionalProperties"] is False
        assert sorted(node["required"]) == sorted(node["properties"])
    assert set(schema["properties"]) == set(model.model_fields)


def test_comparison_schema_restricts_every_winner_to_a_or_b():
    properties = strict_json_schema(Comparison)["properties"]
    for field in ("winner", "alignment_winner", "aesthetics_winner"):
        assert properties[field]["enum"] == ["A", "B"]


def test_schema_copies_are_independent():
    strict_json_schema(Expansion)["properties"].clear()
    assert strict_json_schema(Expansion)["properties"]


def test_a_blank_combined_prompt_is_not_a_usable_answer():
    with pytest.raises(ValidationError):
        Expansion(what="a lighthouse", how="oil painting", combined="  ")
