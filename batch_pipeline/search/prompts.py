"""The words sent to the models: system messages carry instructions, the last user message the material.

Called by steps.plan_round for TextCall messages and VisionCall system/text; decides nothing else.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from .params import SearchParams

Dimension = Literal["what", "how"]

# Instructions stay out of the last user message: it should hold only the material the answer is
# about (user prompt, parent prompts, feedback, nonce), which also keeps local simulators that echo
# its words from echoing instructions.

_LENGTH = {
    "concise": "Keep each description to about 15 words and the combined prompt under 40 words.",
    "balanced": "Keep each description to about 30 words and the combined prompt under 80 words.",
    "descriptive": "Give each description about 60 words of specific detail and the combined prompt under 150 words.",
}

_FORM = {
    "natural": "Write natural, flowing prose.",
    "tags": "Write comma-separated tags (short noun phrases, most important first), not sentences.",
}

_SCOPE = {
    "what": "the content: subjects, objects, actions, setting, mood; no style words",
    "how": "the visual style: medium, lighting, composition, palette, texture, atmosphere; no content words",
}


def expansion_messages(user_prompt: str, params: SearchParams, number: int) -> list[dict[str, str]]:
    """Iteration 0. `number` is 1..N; the nonce makes sibling requests differ so each is its own sample."""
    system = "\n".join(
        [
            "You write prompts for an image model. From the user's short request, describe:",
            f"- what: {_SCOPE['what']}.",
            f"- how: {_SCOPE['how']}.",
            "- combined: a single image prompt that fuses what and how, faithful to the request.",
            f"{_LENGTH[params.descriptiveness]} {_FORM[params.prompt_style]}",
            "Several writers receive the same request independently; the last line only numbers them. "
            "Make distinctive choices of your own rather than the most obvious ones.",
        ]
    )
    material = f"User prompt: {user_prompt}\nCandidate {number} of {params.N}"
    return [{"role": "system", "content": system}, {"role": "user", "content": material}]


def refinement_messages(
    user_prompt: str,
    params: SearchParams,
    dimension: Dimension,
    parent_what: str,
    parent_how: str,
    strengths: Sequence[str],
    weaknesses: Sequence[str],
    variant: int,
) -> list[dict[str, str]]:
    """Iterations >= 1: one child of a parent. `variant` is 1-based; the nonce separates siblings."""
    kept: Dimension = "how" if dimension == "what" else "what"
    part, other = dimension.upper(), kept.upper()
    system = "\n".join(
        [
            "You improve one part of an image prompt. A judge compared the images of several prompts "
            "against the user's request; under Feedback, 'won:' lines are what the judge praised when this "
            "prompt's image won and 'lost:' lines what it criticised when it lost.",
            f"The part to improve is {part}, {_SCOPE[dimension]}. Keep {other} unchanged.",
            "Return:",
            f"- critique: what the feedback says the current {part} gets wrong or leaves out;",
            "- recommendation: the concrete change to make;",
            f"- {dimension}: the complete new {part}, not a list of edits;",
            f"- combined: one image prompt fusing the refined {part} with the unchanged {other}, "
            "faithful to the user's request.",
            f"{_LENGTH[params.descriptiveness]} {_FORM[params.prompt_style]}",
            "Several variants are made from the same prompt; the last line only numbers them. "
            "Make this variant's change your own.",
        ]
    )
    feedback = [f"- won: {s}" for s in strengths] + [f"- lost: {w}" for w in weaknesses]
    material = "\n".join(
        [
            f"User prompt: {user_prompt}",
            f"WHAT: {parent_what}",
            f"HOW: {parent_how}",
            "Feedback:",
            *(feedback or ["- none yet"]),
            f"Variant {variant} of {params.children_per_parent}",
        ]
    )
    return [{"role": "system", "content": system}, {"role": "user", "content": material}]


def judge_system(params: SearchParams) -> str:
    """The vision judge's instructions; its overall verdict leans the way alpha does."""
    if params.alpha > 0.5:
        weighting = "giving faithfulness to the prompt more weight than looks"
    elif params.alpha < 0.5:
        weighting = "giving looks more weight than faithfulness to the prompt"
    else:
        weighting = "weighing faithfulness to the prompt and looks equally"
    return "\n".join(
        [
            "You are an impartial judge of two images, A (shown first) and B (shown second), made for the "
            "same user prompt. The order of the images carries no meaning.",
            "- alignment_winner: the image that shows the user prompt more faithfully: its subjects, "
            "actions, setting and mood.",
            "- aesthetics_winner: the image that is better as a picture: composition, lighting, colour, "
            "detail, coherence, regardless of the prompt.",
            f"- winner: the better image overall, {weighting}.",
            "- winner_strengths: one or two sentences on what the overall winner does well.",
            "- loser_weaknesses: one or two sentences on what the overall loser does worse.",
            "- reason: one sentence justifying the verdict.",
            "The last line of the request only numbers independent votes on the same pair.",
        ]
    )


def critique_messages(
    user_prompt: str,
    params: SearchParams,
    dimension: Dimension,
    what: str,
    how: str,
    strengths: Sequence[str],
    weaknesses: Sequence[str],
) -> tuple[str, str]:
    """2-round iterations: (system, text) of the vision call that critiques one candidate's image and writes
    its children, so the next iteration needs no text round."""
    kept: Dimension = "how" if dimension == "what" else "what"
    part, other = dimension.upper(), kept.upper()
    system = "\n".join(
        [
            "You improve an image prompt by looking at the image it produced. The image is attached; the "
            "prompt's two parts and what a judge said of it against other images are under the request.",
            f"The part to improve is {part}, {_SCOPE[dimension]}. Keep {other} unchanged.",
            "Return:",
            "- critique: what the image shows wrongly, weakly or not at all, judged against the user's request;",
            f"- recommendation: the concrete change to make to {part};",
            f"- children: {params.children_per_parent} variants, each with the complete new {part} (not a list "
            f"of edits) and combined, one image prompt fusing it with the unchanged {other}. Make each "
            "variant's change its own.",
            f"{_LENGTH[params.descriptiveness]} {_FORM[params.prompt_style]}",
        ]
    )
    feedback = [f"- won: {s}" for s in strengths] + [f"- lost: {w}" for w in weaknesses]
    material = "\n".join(
        [f"User prompt: {user_prompt}", f"WHAT: {what}", f"HOW: {how}", "Feedback:", *(feedback or ["- none yet"])]
    )
    return system, material


def judge_text(user_prompt: str, vote_index: int, votes: int) -> str:
    return f"User prompt: {user_prompt}\nVote {vote_index} of {votes}"
