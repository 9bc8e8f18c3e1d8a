"""A deterministic fake of the text, image and vision models, for driving the search without any server.

Text answers are built from the request's material; an "image" is a file holding its prompt; the judge
counts words in the two prompts. The real simulator is exercised by its own tests, not here.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from batch_pipeline.search import Call, CallResult, ImageCall, TextCall, VisionCall

USER_PROMPT = "a lighthouse in a storm"
CONTENT_WORDS = ["waves", "cliff", "keeper", "gulls", "rain", "ship", "rocks", "beam"]
STYLE_WORDS = ["cinematic", "golden", "volumetric", "painterly", "moody", "dramatic", "misty", "grainy"]

Failure = Callable[[Call], str | None]  # an error message to fail the call with, or None to answer it


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


def material(call: TextCall) -> dict[str, str]:
    """The 'Label: value' lines of the last user message, plus the nonce line under 'nonce'."""
    lines = call.messages[-1]["content"].splitlines()
    fields = {"nonce": lines[-1]}
    for line in lines[:-1]:
        label, _, value = line.partition(": ")
        fields[label] = value
    return fields


def nonce_number(call: TextCall) -> int:
    return int(material(call)["nonce"].split()[1])


def with_one_more(text: str, vocabulary: list[str], variant: int) -> str:
    unused = [w for w in vocabulary if w not in words(text)]
    return f"{text}, {unused[(variant - 1) % len(unused)]}" if unused else text


def make_executor(
    image_dir: Path,
    *,
    fail: Failure | None = None,
    children: str = "better",
    judge_answer: str | None = None,
) -> Callable[[list[Call]], dict[str, CallResult]]:
    """children="better" adds one judged word per refinement, "worse" throws the parent's words away.
    judge_answer="A" or "B" makes the judge always pick that position."""

    def answer_text(call: TextCall) -> dict:
        fields = material(call)
        i = nonce_number(call)
        if call.operation == "expand":
            # Candidates differ in how many judged words they carry, so iteration 0 has a clear order.
            what = ", ".join([fields["User prompt"], *CONTENT_WORDS[: i % 3]])
            how = ", ".join(["photo", *STYLE_WORDS[: (i // 3) % 3]])
            return {"what": what, "how": how, "combined": f"{what}; {how}"}
        refines_what = "The part to improve is WHAT" in call.messages[0]["content"]
        what, how = fields["WHAT"], fields["HOW"]
        if children == "better":
            refined = with_one_more(what, CONTENT_WORDS, i) if refines_what else with_one_more(how, STYLE_WORDS, i)
        else:
            refined = "plain"
        what, how = (refined, how) if refines_what else (what, refined)
        combined = f"{what}; {how}"
        return {
            "critique": "needs more",
            "recommendation": "add detail",
            ("what" if refines_what else "how"): refined,
            "combined": combined,
        }

    def answer_vision(call: VisionCall) -> dict:
        first, second = (Path(p).read_text() for p in call.image_paths)
        wanted = words(USER_PROMPT) | set(CONTENT_WORDS)

        def alignment(prompt: str) -> int:
            return len(words(prompt) & wanted)

        def aesthetics(prompt: str) -> int:
            return len(words(prompt) & set(STYLE_WORDS))

        # Ties go to the image shown first: the position bias real judges have.
        def pick(score: Callable[[str], float]) -> str:
            return judge_answer or ("A" if score(first) >= score(second) else "B")

        winner = pick(lambda p: 0.7 * alignment(p) + 0.3 * aesthetics(p))
        winning, losing = (first, second) if winner == "A" else (second, first)
        return {
            "winner": winner,
            "alignment_winner": pick(alignment),
            "aesthetics_winner": pick(aesthetics),
            "winner_strengths": f"shows {' '.join(sorted(words(winning) - words(losing))) or 'the same'}",
            "loser_weaknesses": f"lacks {' '.join(sorted(words(winning) - words(losing))) or 'nothing'}",
            "reason": "more of the prompt",
        }

    def execute(calls: list[Call]) -> dict[str, CallResult]:
        results = {}
        for call in calls:
            error = fail(call) if fail else None
            if error is not None:
                results[call.key] = CallResult(key=call.key, ok=False, error=error)
            elif isinstance(call, ImageCall):
                path = image_dir / f"{call.candidate_id}.png"
                path.write_text(call.prompt)
                usage = {"output_tokens": 272}
                results[call.key] = CallResult(key=call.key, ok=True, image_path=str(path), usage=usage)
            else:
                content = answer_text(call) if isinstance(call, TextCall) else answer_vision(call)
                usage = {"input_tokens": 100, "output_tokens": 10, "cached_tokens": 50}
                results[call.key] = CallResult(key=call.key, ok=True, content=content, usage=usage)
        return results

    return execute


@pytest.fixture
def executor_factory(tmp_path: Path) -> Callable[..., Callable[[list[Call]], dict[str, CallResult]]]:
    return lambda **options: make_executor(tmp_path, **options)


@pytest.fixture
def execute(executor_factory):
    return executor_factory()
