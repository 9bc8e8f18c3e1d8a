"""Deterministic content: request body -> words, JSON-schema values, PNG images and token estimates.

Pure functions called by `handlers.py` (sync and batch alike), so the same request always gets the same answer.
"""

from __future__ import annotations

import base64
import hashlib
import io
import math
import random
import re
from collections.abc import Callable
from typing import Any

import orjson
from PIL import Image, ImageDraw
from PIL.PngImagePlugin import PngInfo

# Words a judge or an image prompter would call "style": a rewritten prompt that gains more of
# these scores higher on aesthetics in the simulated judge (see judge.py).
STYLE_VOCABULARY: tuple[str, ...] = (
    "chiaroscuro",
    "golden-hour",
    "volumetric",
    "cinematic",
    "watercolor",
    "bokeh",
    "impasto",
    "isometric",
    "minimalist",
    "baroque",
    "noir",
    "pastel",
    "neon",
    "ethereal",
    "moody",
    "high-contrast",
    "soft-focus",
    "backlit",
    "rim-lit",
    "dramatic",
    "photorealistic",
    "painterly",
    "gouache",
    "charcoal",
    "art-deco",
    "surreal",
    "vaporwave",
    "tilt-shift",
    "long-exposure",
    "macro",
    "panoramic",
    "symmetrical",
    "filmic",
    "grainy",
    "matte",
    "luminous",
    "hazy",
    "vibrant",
    "monochrome",
    "ukiyo-e",
)

# Neutral subject-matter words, used for every other generated string.
CONTENT_VOCABULARY: tuple[str, ...] = (
    "river",
    "lantern",
    "meadow",
    "harbor",
    "orchard",
    "glacier",
    "market",
    "library",
    "forest",
    "canyon",
    "bridge",
    "garden",
    "village",
    "island",
    "tower",
    "desert",
    "valley",
    "station",
    "cathedral",
    "workshop",
    "balcony",
    "lighthouse",
    "courtyard",
    "mountain",
    "festival",
    "window",
    "staircase",
    "bicycle",
    "teapot",
    "violin",
    "sailboat",
    "kite",
    "fox",
    "heron",
    "owl",
    "tiger",
    "whale",
    "cactus",
    "maple",
    "comet",
)

STOPWORDS = frozenset(
    """a an the and or but if then else of to in on at by for with from into onto over under about
    as is are was were be been being am do does did doing have has had having this that these those
    it its it's i me my we our you your he him his she her they them their there here what which who
    whom whose when where why how not no nor so too very can could should would will shall may might
    must just than such only own same both each few more most other some any all up down out off
    again further once also please make give show write describe using use like""".split()
)

_WORD = re.compile(r"[a-z0-9][a-z0-9'\-]*")


# --- hashing: everything below is derived from one digest of the request ---------------------

# Parameters that change how a request is served, not what it asks: the same request on the flex
# tier, in a batch or synchronously gets the same answer (the real API does not promise this, but
# a deterministic simulator must, so tier choice can be tested without changing results).
SERVING_PARAMETERS = frozenset({"service_tier"})


def request_digest(body: Any, seed: int) -> bytes:
    """sha256 of the seed and the canonical (key-sorted) JSON of the request body, minus serving parameters."""
    if isinstance(body, dict):
        body = {k: v for k, v in body.items() if k not in SERVING_PARAMETERS}
    canonical = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(f"{seed}:".encode() + canonical).digest()


def rng_for(digest: bytes, *salt: object) -> random.Random:
    """An independent random stream per purpose, so adding one draw never shifts another."""
    material = digest + b"|" + "|".join(map(str, salt)).encode()
    return random.Random(hashlib.sha256(material).digest())


# --- reading a chat request ----------------------------------------------------------------


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


# Structure a prompt writer puts around its material: "Label:" at a line start ("User prompt:",
# "WHAT:", "- won:") and nonce lines ("Vote 2 of 3"). They are not content, so they are not echoed.
_LINE_LABEL = re.compile(r"^\s*-?\s*[A-Za-z][A-Za-z ]{0,24}:\s*", re.MULTILINE)
_NONCE_LINE = re.compile(r"^\s*[A-Za-z]+ \d+ of \d+\s*\.?\s*$", re.MULTILINE)


def content_words(text: str) -> list[str]:
    """Lower-cased words minus labels, nonces, numbers and stopwords; first occurrence order, no repeats."""
    text = _LINE_LABEL.sub(" ", _NONCE_LINE.sub(" ", text))
    seen: dict[str, None] = {}
    for word in words(text):
        if word not in STOPWORDS and not word.isdigit():
            seen.setdefault(word, None)
    return list(seen)


def _parts(message: dict) -> list[dict]:
    content = message.get("content")
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, list):
        return [part for part in content if isinstance(part, dict)]
    return []


def message_text(message: dict) -> str:
    return "\n".join(part.get("text", "") for part in _parts(message) if part.get("type") == "text")


def all_text(body: dict) -> str:
    return "\n".join(message_text(m) for m in body.get("messages", []) if isinstance(m, dict))


def last_user_text(body: dict) -> str:
    for message in reversed(body.get("messages", [])):
        if isinstance(message, dict) and message.get("role") == "user":
            return message_text(message)
    return ""


def image_parts(body: dict) -> list[dict]:
    """The `image_url` objects of every message, in order (A is the first, B the second)."""
    found = []
    for message in body.get("messages", []):
        if isinstance(message, dict):
            for part in _parts(message):
                if part.get("type") == "image_url" and isinstance(part.get("image_url"), dict):
                    found.append(part["image_url"])
    return found


def decode_data_url(url: str) -> bytes | None:
    """Bytes of a `data:...;base64,...` URL; None for remote URLs or garbage."""
    if not url.startswith("data:") or "," not in url:
        return None
    header, payload = url.split(",", 1)
    if not header.endswith(";base64"):
        return None
    try:
        return base64.b64decode(payload, validate=False)
    except ValueError:
        return None


# --- token estimates (about four characters a token, fixed cost per image) -----------------

TOKENS_PER_IMAGE_LOW = 85
TOKENS_PER_IMAGE = 765


def text_tokens(text: str) -> int:
    return math.ceil(len(text) / 4)


def chat_prompt_tokens(body: dict) -> int:
    images = image_parts(body)
    image_tokens = sum(TOKENS_PER_IMAGE_LOW if part.get("detail") == "low" else TOKENS_PER_IMAGE for part in images)
    return max(1, text_tokens(all_text(body))) + image_tokens


def image_prompt_tokens(body: dict) -> int:
    return max(1, text_tokens(str(body.get("prompt", ""))))


def estimate_prompt_tokens(endpoint: str, body: Any) -> int:
    """What a request adds to its model's enqueued-token queue."""
    if not isinstance(body, dict):
        return 0
    if endpoint == "/v1/images/generations":
        return image_prompt_tokens(body)
    return chat_prompt_tokens(body)


# Output tokens GPT Image models bill per image, by quality and size (square figures for odd sizes).
_IMAGE_OUTPUT_TOKENS = {
    "low": {"1024x1024": 272, "1024x1536": 408, "1536x1024": 400},
    "medium": {"1024x1024": 1056, "1024x1536": 1584, "1536x1024": 1568},
    "high": {"1024x1024": 4160, "1024x1536": 6240, "1536x1024": 6208},
}


def image_output_tokens(size: str, quality: str) -> int:
    by_size = _IMAGE_OUTPUT_TOKENS.get(quality, _IMAGE_OUTPUT_TOKENS["medium"])
    return by_size.get(size, by_size["1024x1024"])


# --- text ----------------------------------------------------------------------------------


def _kept(source_words: list[str], rng: random.Random, keep: float = 0.8) -> list[str]:
    return [word for word in source_words if rng.random() < keep]


def plain_reply(user_words: list[str], rng: random.Random) -> str:
    """A short sentence: most of the user's content words with two vocabulary words mixed in."""
    sentence = _kept(user_words, rng)[:10]
    for word in rng.sample(CONTENT_VOCABULARY, 2):
        sentence.insert(rng.randint(0, len(sentence)), word)
    text = " ".join(sentence)
    return text[:1].upper() + text[1:] + "."


def field_phrase(field: str, user_words: list[str], rng: random.Random) -> str:
    """A schema string: the user's content words (each kept with p=0.8) plus 1-2 vocabulary words.

    Fields named like "how" or "style" draw from STYLE_VOCABULARY, so a prompt rewriter that is
    asked *how* to improve a prompt adds style words the judge rewards.
    """
    lowered = field.lower()
    vocabulary = STYLE_VOCABULARY if ("how" in lowered or "style" in lowered) else CONTENT_VOCABULARY
    phrase = _kept(user_words, rng)
    for word in rng.sample(vocabulary, rng.randint(1, 2)):
        if word not in phrase:
            phrase.append(word)
    return " ".join(phrase)


# --- JSON schema values --------------------------------------------------------------------

# Below this depth recursive schemas take their shortest shape (null branch, fewest items).
_MAX_DEPTH = 6

ABChooser = Callable[[str], str]


def _resolve(node: dict, root: dict) -> dict:
    """Follow `$ref`s of the local form pydantic emits: `#/$defs/Name` (or `#/definitions/Name`)."""
    seen = 0
    while "$ref" in node:
        ref = node["$ref"]
        if not ref.startswith("#/"):
            raise ValueError(f"only local $ref is supported, got {ref!r}")
        target: Any = root
        for key in ref[2:].split("/"):
            target = target[key.replace("~1", "/").replace("~0", "~")]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        seen += 1
        if seen > 64:
            raise ValueError(f"$ref cycle at {ref!r}")
    return node


def _bounds(node: dict, default_span: float, step: float) -> tuple[float, float]:
    """Inclusive range from minimum/maximum (or their exclusive forms); unbounded sides get a span."""
    lo = (
        node["minimum"]
        if "minimum" in node
        else node["exclusiveMinimum"] + step
        if "exclusiveMinimum" in node
        else None
    )
    hi = (
        node["maximum"]
        if "maximum" in node
        else node["exclusiveMaximum"] - step
        if "exclusiveMaximum" in node
        else None
    )
    if lo is None:
        lo = 0 if hi is None or hi >= 0 else hi - default_span
    if hi is None:
        hi = lo + default_span
    return lo, max(lo, hi)


def fill_schema(
    node: dict,
    *,
    root: dict,
    rng: random.Random,
    user_words: list[str],
    field: str = "",
    choose_ab: ABChooser | None = None,
    depth: int = 0,
) -> Any:
    """A value that validates against `node`; strings come from `field_phrase`.

    Any enum that is exactly {"A", "B"} is decided by `choose_ab(field)` when given (the judge).
    """
    node = _resolve(node, root)

    def fill(child: dict, child_field: str) -> Any:
        return fill_schema(
            child, root=root, rng=rng, user_words=user_words, field=child_field, choose_ab=choose_ab, depth=depth + 1
        )

    if "const" in node:
        return node["const"]
    if "enum" in node:
        options = node["enum"]
        if choose_ab is not None and sorted(map(str, options)) == ["A", "B"]:
            return choose_ab(field)
        return rng.choice(options)
    for combinator in ("anyOf", "oneOf"):
        if combinator in node:
            branches = [_resolve(b, root) for b in node[combinator]]
            non_null = [b for b in branches if b.get("type") != "null"]
            # Prefer a real value (more useful to callers); fall back to null when recursion runs deep.
            if non_null and (depth < _MAX_DEPTH or len(non_null) == len(branches)):
                return fill(non_null[0], field)
            return None
    if "allOf" in node:
        merged: dict = {}
        for part in node["allOf"]:
            merged.update(_resolve(part, root))
        return fill(merged, field)

    kind = node.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in node else "array" if "items" in node else "string"

    if kind == "object":
        return {key: fill(child, key) for key, child in node.get("properties", {}).items()}
    if kind == "array":
        low = node.get("minItems", 0 if depth >= _MAX_DEPTH else 1)
        high = node.get("maxItems", max(low, 3))
        count = low if depth >= _MAX_DEPTH else rng.randint(low, max(low, high))
        items = node.get("items", {"type": "string"})
        return [fill(items, field) for _ in range(count)]
    if kind == "integer":
        lo, hi = _bounds(node, 10, 1)
        return rng.randint(math.ceil(lo), math.floor(hi))
    if kind == "number":
        lo, hi = _bounds(node, 1.0, 1e-6)
        # Rounded for readability, then clamped: rounding must not cross an (exclusive) bound.
        return min(hi, max(lo, round(rng.uniform(lo, hi), 4)))
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "null":
        return None
    return _string_value(node, field, user_words, rng)


def _string_value(node: dict, field: str, user_words: list[str], rng: random.Random) -> str:
    text = field_phrase(field, user_words, rng)
    min_length = node.get("minLength", 0)
    while len(text) < min_length:
        text = f"{text} {rng.choice(CONTENT_VOCABULARY)}".strip()
    if "maxLength" in node:
        text = text[: node["maxLength"]]
    return text


# --- images --------------------------------------------------------------------------------

PNG_PROMPT_KEY = "prompt"


def draw_png(prompt: str, *, seed: int, size: int, variant: int = 0) -> bytes:
    """A small abstract picture: colours and shapes from a hash of the prompt; the prompt rides along
    in a PNG text chunk named "prompt", which is how the simulated judge 'sees' the picture."""
    digest = hashlib.sha256(f"{seed}:{variant}:{prompt}".encode()).digest()
    rng = random.Random(digest)
    image = Image.new("RGB", (size, size), tuple(digest[:3]))
    draw = ImageDraw.Draw(image)
    for _ in range(3 + digest[3] % 4):
        colour = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        x0, y0 = rng.randrange(size), rng.randrange(size)
        x1, y1 = rng.randrange(x0, size + 1), rng.randrange(y0, size + 1)
        shape = rng.choice(("ellipse", "rectangle", "polygon"))
        if shape == "ellipse":
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        elif shape == "rectangle":
            draw.rectangle((x0, y0, x1, y1), fill=colour)
        else:
            draw.polygon([(rng.randrange(size), rng.randrange(size)) for _ in range(3)], fill=colour)
    info = PngInfo()
    info.add_text(PNG_PROMPT_KEY, prompt)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def png_prompt(data: bytes) -> str | None:
    """The prompt a simulator-drawn PNG carries; None for any other picture."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            text = getattr(image, "text", {}) or {}
            return text.get(PNG_PROMPT_KEY)
    except Exception:  # any undecodable image simply carries no prompt
        return None
