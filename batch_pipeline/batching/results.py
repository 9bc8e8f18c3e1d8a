"""Result mapping: output and error file lines -> one classified, costed outcome per custom_id.

Lines are matched by `custom_id` only (the API does not keep input order). Generated images are
moved into the image store as they are read, so the ledger keeps refs, not base64.
"""
from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson

from batch_pipeline.batching.image_store import ImageStore
from batch_pipeline.batching.pricing import PriceCatalog, TokenUsage, UnknownPriceError
from batch_pipeline.errors import BatchPipelineError
from batch_pipeline.records import RequestOutcome
from batch_pipeline.vocabulary import Endpoint, Outcome, Tier

# Worth another attempt: throttling, timeouts, conflicts and server errors (the SDK's own retry set).
RETRYABLE_STATUS = {408, 409, 429}
NEVER_RAN = {"batch_expired": Outcome.EXPIRED, "batch_cancelled": Outcome.CANCELLED}


class ResultFileError(BatchPipelineError, ValueError):
    """A downloaded file that is not valid JSONL: re-download rather than ingest half of it."""


def iter_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with path.open("rb") as fh:
        for n, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            try:
                yield orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise ResultFileError(f"{path.name}: line {n} is not JSON: {exc}") from exc


def classify_line(line: dict[str, Any]) -> RequestOutcome:
    """One output- or error-file line -> its outcome (cost filled in later by `price_outcome`)."""
    custom_id = line.get("custom_id")
    if not custom_id:
        raise ResultFileError(f"result line without custom_id: {str(line)[:200]}")
    response, error = line.get("response"), line.get("error")
    if response is not None:
        status = int(response.get("status_code") or 0)
        body = response.get("body") or {}
        if 200 <= status < 300:
            return RequestOutcome(request_id=custom_id, outcome=Outcome.SUCCEEDED, status_code=status, response=body)
        err = body.get("error") or {}
        retryable = status in RETRYABLE_STATUS or status >= 500
        return RequestOutcome(
            request_id=custom_id,
            outcome=Outcome.FAILED_RETRYABLE if retryable else Outcome.FAILED_PERMANENT,
            status_code=status,
            response=body,
            error_code=err.get("code") or err.get("type"),
            error_message=err.get("message"),
        )
    error = error or {}
    code = error.get("code") or "unknown_error"
    return RequestOutcome(request_id=custom_id, outcome=NEVER_RAN.get(code, Outcome.FAILED_RETRYABLE),
                          error_code=code, error_message=error.get("message"))


def store_images(outcome: RequestOutcome, image_store: ImageStore) -> RequestOutcome:
    """Replace `b64_json` payloads by image-store refs (the ledger never holds image bytes)."""
    response = outcome.response or {}
    data = response.get("data")
    if not isinstance(data, list) or not any("b64_json" in item for item in data):
        return outcome
    items = []
    for item in data:
        if "b64_json" in item:
            ref = image_store.put(base64.b64decode(item["b64_json"]))
            item = {k: v for k, v in item.items() if k != "b64_json"} | {"image_ref": ref}
        items.append(item)
    return outcome.model_copy(update={"response": {**response, "data": items}})


def usage_of(endpoint: str, response: dict[str, Any], request_body: Callable[[], dict[str, Any]]) -> TokenUsage:
    """Billable usage of one successful response."""
    if endpoint == Endpoint.IMAGES:
        images = len(response.get("data") or [])
        quality, size = response.get("quality"), response.get("size")
        if not quality or not size:  # older responses omit them: the request says what was asked for
            body = request_body()
            quality, size = quality or body.get("quality", "auto"), size or body.get("size", "1024x1024")
        return TokenUsage.from_image_request(images, quality, size)
    usage = response.get("usage")
    if not usage:  # a 200 without usage: keep the answer, bill nothing we cannot see
        return TokenUsage(input_tokens=0, output_tokens=0)
    return TokenUsage.from_chat_usage(usage)


def price_outcome(outcome: RequestOutcome, *, endpoint: str, model: str, tier: Tier, catalog: PriceCatalog,
                  request_body: Callable[[], dict[str, Any]]) -> RequestOutcome:
    """Attach tokens and cost. Only successful rows are billed (failed and expired rows are not)."""
    if outcome.outcome != Outcome.SUCCEEDED or outcome.response is None:
        return outcome
    usage = usage_of(endpoint, outcome.response, request_body)
    update: dict[str, Any] = {"input_tokens": usage.input_tokens, "cached_tokens": usage.cached_tokens,
                              "output_tokens": usage.output_tokens, "images": usage.images}
    try:
        cost = catalog.cost_breakdown(model, tier, usage)
        update |= {"cost_usd": cost.actual, "standard_cost_usd": cost.standard, "price_version": catalog.version}
    except UnknownPriceError:
        update["price_version"] = f"unpriced:{model}"  # tokens still recorded; the cost report flags it
    return outcome.model_copy(update=update)


# An answer lost in flight is billed as if it had used this many output tokens when its request sets no cap.
LOST_ANSWER_OUTPUT_TOKENS = 1000


def estimate_lost(request_id: str, *, endpoint: str, model: str, tier: Tier, body: dict[str, Any],
                  est_prompt_tokens: int, catalog: PriceCatalog, reason: str) -> RequestOutcome:
    """A call whose answer was lost (its process died while waiting): it may have been billed, so it is
    recorded as a retryable failure costed at an upper estimate from the request (prompt estimate plus
    the output cap, or the images asked for); `price_version` says `estimate:` so reports can tell."""
    if endpoint == Endpoint.IMAGES:
        usage = TokenUsage.from_image_request(int(body.get("n") or 1), body.get("quality", "auto"),
                                              body.get("size", "1024x1024"))
    else:
        cap = body.get("max_completion_tokens") or body.get("max_tokens") or LOST_ANSWER_OUTPUT_TOKENS
        usage = TokenUsage(input_tokens=est_prompt_tokens, output_tokens=int(cap))
    outcome = RequestOutcome(request_id=request_id, outcome=Outcome.FAILED_RETRYABLE, error_code="lost_in_flight",
                             error_message=reason, input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
                             images=usage.images)
    try:
        cost = catalog.cost_breakdown(model, tier, usage)
    except UnknownPriceError:
        return outcome.model_copy(update={"price_version": f"estimate:unpriced:{model}"})
    return outcome.model_copy(update={"cost_usd": cost.actual, "standard_cost_usd": cost.standard,
                                      "price_version": f"estimate:{catalog.version}"})


def read_result_files(paths: list[Path], image_store: ImageStore | None) -> dict[str, RequestOutcome]:
    """Classify every line of the output and error files, keyed by custom_id.

    Images are stored as each line is read, so memory holds one image at a time. If a custom_id
    appears twice (it should not), a success wins over a failure: the API billed it.
    """
    outcomes: dict[str, RequestOutcome] = {}
    for path in paths:
        for line in iter_jsonl(path):
            outcome = classify_line(line)
            if image_store is not None:
                outcome = store_images(outcome, image_store)
            previous = outcomes.get(outcome.request_id)
            if previous is None or (previous.outcome != Outcome.SUCCEEDED and outcome.outcome == Outcome.SUCCEEDED):
                outcomes[outcome.request_id] = outcome
    return outcomes
