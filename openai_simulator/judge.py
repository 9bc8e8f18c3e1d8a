"""The simulated vision judge: a chat request comparing two images -> A/B votes in its JSON schema.

`handlers.py` builds a `Judge` when a request qualifies; `content.fill_schema` asks it for each A/B field.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .content import (
    STYLE_VOCABULARY,
    all_text,
    content_words,
    decode_data_url,
    image_parts,
    png_prompt,
    rng_for,
    words,
)

# Spread of the per-request noise added to each score, so votes near a tie can go either way
# and re-asking with a different nonce in the text can change the answer.
NOISE_STD = 0.05
# Share of votes the judge flips outright: an inconsistent judge, as real ones are.
FLIP_PROBABILITY = 0.1
# Distinct style words at which aesthetics saturates at 1.0.
STYLE_WORDS_FOR_FULL_MARKS = 6
_STYLE = frozenset(STYLE_VOCABULARY)
USER_PROMPT_MARKER = "user prompt:"


def is_judge_request(body: dict) -> bool:
    """Exactly two image parts and a json_schema response format."""
    response_format = body.get("response_format")
    wants_schema = isinstance(response_format, dict) and response_format.get("type") == "json_schema"
    return wants_schema and len(image_parts(body)) == 2


def user_prompt_of(text: str) -> str:
    """The text after a line starting with "User prompt:" (or the next line if that is empty); else all text."""
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if line.strip().lower().startswith(USER_PROMPT_MARKER):
            rest = line.strip()[len(USER_PROMPT_MARKER) :].strip()
            if rest:
                return rest
            following = [candidate.strip() for candidate in lines[index + 1 :] if candidate.strip()]
            return following[0] if following else ""
    return text


def alignment(user_prompt: str, image_prompt: str) -> float:
    """Share of the user prompt's content words that the image's prompt contains."""
    wanted = set(content_words(user_prompt))
    if not wanted:
        return 0.0
    return len(wanted & set(words(image_prompt))) / len(wanted)


def aesthetics(image_prompt: str) -> float:
    """More distinct style words in the image's prompt look better, up to a ceiling."""
    return min(1.0, len(_STYLE & set(words(image_prompt))) / STYLE_WORDS_FOR_FULL_MARKS)


@dataclass(frozen=True)
class Scores:
    alignment: float
    aesthetics: float

    @property
    def overall(self) -> float:
        return 0.7 * self.alignment + 0.3 * self.aesthetics


class Judge:
    """Scores images A and B once per request (with noise), then votes per schema field."""

    def __init__(self, body: dict, digest: bytes, choice_index: int = 0) -> None:
        user_prompt = user_prompt_of(all_text(body))
        noise = rng_for(digest, "judge-noise")
        self.scores: dict[str, Scores] = {}
        for label, part in zip("AB", image_parts(body), strict=False):
            data = decode_data_url(str(part.get("url", "")))
            image_prompt = (png_prompt(data) if data else None) or ""
            self.scores[label] = Scores(
                alignment=alignment(user_prompt, image_prompt) + noise.gauss(0, NOISE_STD),
                aesthetics=aesthetics(image_prompt) + noise.gauss(0, NOISE_STD),
            )
        # Flips differ between the choices of one request (n > 1) but not between identical requests.
        self._flips: random.Random = rng_for(digest, "judge-flip", choice_index)

    def vote(self, field: str) -> str:
        """ "A" or "B" for one enum field, by the criterion its name suggests."""
        lowered = field.lower()
        if "aesthetic" in lowered:
            a, b = self.scores["A"].aesthetics, self.scores["B"].aesthetics
        elif "align" in lowered:
            a, b = self.scores["A"].alignment, self.scores["B"].alignment
        else:
            a, b = self.scores["A"].overall, self.scores["B"].overall
        winner = "A" if a >= b else "B"
        if self._flips.random() < FLIP_PROBABILITY:
            winner = "B" if winner == "A" else "A"
        return winner
