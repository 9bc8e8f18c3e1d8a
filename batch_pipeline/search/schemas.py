"""Structured outputs of the search's model calls, and the strict JSON schemas sent with them.

steps.plan_round attaches the schemas to calls; steps.apply_round parses answers into these models.
"""

from __future__ import annotations

import copy
from functools import cache
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


def not_blank(value: str) -> str:
    # A blank prompt would only fail later, at the image call, with a less helpful error.
    if not value.strip():
        raise ValueError("must not be blank")
    return value


class Expansion(BaseModel):
    """Iteration 0: one call turns the user prompt into WHAT, HOW and their fusion (the original made three calls)."""

    model_config = ConfigDict(extra="forbid")

    what: str = Field(description="the content: subjects, objects, actions, setting, mood; no style")
    how: str = Field(description="the visual style: medium, lighting, composition, palette, texture; no content")
    combined: str = Field(description="one image prompt fusing what and how")

    _check = field_validator("what", "how", "combined")(not_blank)


class Refinement(BaseModel):
    """Iterations >= 1: one call per child turns the parent's feedback into critique, new text and new prompt.

    On the wire the new text is named after the part it replaces (`what` or `how`, see RefineWhat and
    RefineHow), so the model is told in the schema itself which part it is writing.
    """

    model_config = ConfigDict(extra="forbid")

    critique: str = Field(description="what the feedback says the current text gets wrong or leaves out")
    recommendation: str = Field(description="the concrete change to make")
    refined: str = Field(description="the complete new text of the part being improved")
    combined: str = Field(description="one image prompt fusing the refined part with the unchanged part")

    _check = field_validator("refined", "combined")(not_blank)


class RefineWhat(BaseModel):
    """The wire form of a Refinement of WHAT (odd iterations)."""

    model_config = ConfigDict(extra="forbid")

    critique: str = Field(description="what the feedback says the current WHAT gets wrong or leaves out")
    recommendation: str = Field(description="the concrete change to make")
    what: str = Field(description="the complete new WHAT: subjects, objects, actions, setting, mood")
    combined: str = Field(description="one image prompt fusing the new WHAT with the unchanged HOW")

    def to_refinement(self) -> Refinement:
        return Refinement(
            critique=self.critique, recommendation=self.recommendation, refined=self.what, combined=self.combined
        )


class RefineHow(BaseModel):
    """The wire form of a Refinement of HOW (even iterations)."""

    model_config = ConfigDict(extra="forbid")

    critique: str = Field(description="what the feedback says the current HOW gets wrong or leaves out")
    recommendation: str = Field(description="the concrete change to make")
    how: str = Field(description="the complete new HOW: medium, lighting, composition, palette, texture")
    combined: str = Field(description="one image prompt fusing the unchanged WHAT with the new HOW")

    def to_refinement(self) -> Refinement:
        return Refinement(
            critique=self.critique, recommendation=self.recommendation, refined=self.how, combined=self.combined
        )


class Comparison(BaseModel):
    """One vote of the vision judge on images A (shown first) and B (shown second)."""

    model_config = ConfigDict(extra="forbid")

    winner: Literal["A", "B"] = Field(description="the better image overall")
    alignment_winner: Literal["A", "B"] = Field(description="the image that shows the user prompt more faithfully")
    aesthetics_winner: Literal["A", "B"] = Field(description="the image that is better as a picture")
    winner_strengths: str = Field(description="what the overall winner does well")
    loser_weaknesses: str = Field(description="what the overall loser does worse")
    reason: str = Field(description="one sentence justifying the verdict")


class ChildWhat(BaseModel):
    model_config = ConfigDict(extra="forbid")

    what: str = Field(description="the complete new WHAT of this child")
    combined: str = Field(description="one image prompt fusing this new WHAT with the unchanged HOW")

    _check = field_validator("what", "combined")(not_blank)


class ChildHow(BaseModel):
    model_config = ConfigDict(extra="forbid")

    how: str = Field(description="the complete new HOW of this child")
    combined: str = Field(description="one image prompt fusing the unchanged WHAT with this new HOW")

    _check = field_validator("how", "combined")(not_blank)


class CritiqueWhat(BaseModel):
    """2-round iterations: the vision model looks at one candidate's image and writes its children (WHAT)."""

    model_config = ConfigDict(extra="forbid")

    critique: str = Field(description="what the image shows wrongly or leaves out of the user prompt")
    recommendation: str = Field(description="the concrete change to make to WHAT")
    children: list[ChildWhat] = Field(description="the refined variants, each its own change")

    def refinements(self) -> list[Refinement]:
        return [
            Refinement(critique=self.critique, recommendation=self.recommendation, refined=c.what, combined=c.combined)
            for c in self.children
        ]


class CritiqueHow(BaseModel):
    """2-round iterations: the vision model looks at one candidate's image and writes its children (HOW)."""

    model_config = ConfigDict(extra="forbid")

    critique: str = Field(description="what the image does poorly as a picture for this prompt")
    recommendation: str = Field(description="the concrete change to make to HOW")
    children: list[ChildHow] = Field(description="the refined variants, each its own change")

    def refinements(self) -> list[Refinement]:
        return [
            Refinement(critique=self.critique, recommendation=self.recommendation, refined=c.how, combined=c.combined)
            for c in self.children
        ]


def critique_schema(model: type[CritiqueWhat] | type[CritiqueHow], children: int) -> dict[str, Any]:
    """The strict schema of a critique call asking for exactly `children` variants."""
    schema = strict_json_schema(model)
    schema["properties"]["children"] |= {"minItems": children, "maxItems": children}
    return schema


# Names sent as json_schema.name; the provider and the ledger see them, so they are part of the wire format.
SCHEMA_NAMES: dict[type[BaseModel], str] = {
    Expansion: "expansion",
    Refinement: "refinement",
    RefineWhat: "refine_what",
    RefineHow: "refine_how",
    Comparison: "comparison",
    CritiqueWhat: "critique_what",
    CritiqueHow: "critique_how",
}


def strict_json_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema in the form OpenAI's strict structured outputs accept.

    Strict mode requires every object to list all its properties as required and to forbid others;
    pydantic omits both for fields with defaults, so they are forced here, at every nesting level.
    """
    # A fresh copy each time: calls own their schema dict and must not share one a caller could mutate.
    return copy.deepcopy(_cached_strict_schema(model))


@cache
def _cached_strict_schema(model: type[BaseModel]) -> dict[str, Any]:
    return _make_strict(model.model_json_schema())


def _make_strict(node: Any) -> Any:
    if isinstance(node, list):
        return [_make_strict(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _make_strict(value) for key, value in node.items()}
    if node.get("type") == "object" or "properties" in node:
        properties = node.get("properties", {})
        # An object's description is its class docstring, written for readers of this code, not for the model.
        node.pop("description", None)
        node["additionalProperties"] = False
        node["required"] = list(properties)
    return node
