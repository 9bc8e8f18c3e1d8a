"""Result mapping: output and error file lines -> one classified, costed outcome per custom_id.

Lines are matched by `custom_id` only (the API does not keep input order). Generated images are
moved into the image store as they are read, so the ledger keeps refs, not base64.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import msgspec
import orjson

from batch_pipeline.batching.image_store import ImageStore
from batch_pipeline.batching.pricing import PriceCatalog, TokenUsage, UnknownPriceError
from batch_pipeline.errors import BatchPipelineError
from batch_pipeline.records import RequestOutcome, ResultTable, to_units
from batch_pipeline.vocabulary import Endpoint, Outcome, Tier

# Worth another attempt: throttling, timeouts, conflicts and server errors (the SDK's own retry set).
RETRYABLE_STATUS = {408, 409, 429}
NEVER_RAN = {"batch_expired": Outcome.EXPIRED, "batch_cancelled": Outcome.CANCELLED}
# Read once: an enum member read from its class costs ~0.15 us, and these are read for every line.
_SUCCEEDED, _RETRYABLE, _PERMANENT = Outcome.SUCCEEDED, Outcome.FAILED_RETRYABLE, Outcome.FAILED_PERMANENT


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


def _rule(
    custom_id: Any, status_code: Any, body_error: Any, line_error: Any, line: object
) -> tuple[Outcome, int | None, str | None, str | None]:
    """The one classification rule, over what it reads of a line: (outcome, status, error code, error message).

    `status_code` is the response's, or `_NO_RESPONSE` for a line without a response; `body_error` is the
    response body's `error`, `line_error` the line's own (a request that never ran). `line` only names the
    line in an error."""
    if not custom_id:
        raise ResultFileError(f"result line without custom_id: {str(line)[:200]}")
    if status_code is not _NO_RESPONSE:
        status = int(status_code or 0)
        if 200 <= status < 300:
            return _SUCCEEDED, status, None, None
        err = body_error or {}
        retryable = status in RETRYABLE_STATUS or status >= 500
        return _RETRYABLE if retryable else _PERMANENT, status, err.get("code") or err.get("type"), err.get("message")
    error = line_error or {}
    code = error.get("code") or "unknown_error"
    return NEVER_RAN.get(code, _RETRYABLE), None, code, error.get("message")


_NO_RESPONSE = object()


def _classify(line: dict[str, Any]) -> tuple[str, Outcome, int | None, dict[str, Any] | None, str | None, str | None]:
    """`_rule` for a parsed line: (custom_id, outcome, status, response body, error code, error message)."""
    response = line.get("response")
    if response is None:
        body, status_code, body_error = None, _NO_RESPONSE, None
    else:
        body, status_code = response.get("body") or {}, response.get("status_code")
        body_error = body.get("error")
    outcome, status, code, message = _rule(line.get("custom_id"), status_code, body_error, line.get("error"), line)
    return line["custom_id"], outcome, status, body, code, message


def classify_line(line: dict[str, Any]) -> RequestOutcome:
    """One output- or error-file line -> its outcome (cost filled in later by `price_outcome`)."""
    custom_id, outcome, status, body, code, message = _classify(line)
    return RequestOutcome(
        request_id=custom_id, outcome=outcome, status_code=status, response=body, error_code=code, error_message=message
    )


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


def price_outcome(
    outcome: RequestOutcome,
    *,
    endpoint: str,
    model: str,
    tier: Tier,
    catalog: PriceCatalog,
    request_body: Callable[[], dict[str, Any]],
) -> RequestOutcome:
    """Attach tokens and cost. Only successful rows are billed (failed and expired rows are not)."""
    if outcome.outcome != Outcome.SUCCEEDED or outcome.response is None:
        return outcome
    usage = usage_of(endpoint, outcome.response, request_body)
    update: dict[str, Any] = {
        "input_tokens": usage.input_tokens,
        "cached_tokens": usage.cached_tokens,
        "output_tokens": usage.output_tokens,
        "images": usage.images,
    }
    try:
        cost = catalog.cost_breakdown(model, tier, usage)
        update |= {"cost_usd": cost.actual, "standard_cost_usd": cost.standard, "price_version": catalog.version}
    except UnknownPriceError:
        update["price_version"] = f"unpriced:{model}"  # tokens still recorded; the cost report flags it
    return outcome.model_copy(update=update)


# An answer lost in flight is billed as if it had used this many output tokens when its request sets no cap.
LOST_ANSWER_OUTPUT_TOKENS = 1000


def estimate_lost(
    request_id: str,
    *,
    endpoint: str,
    model: str,
    tier: Tier,
    body: dict[str, Any],
    est_prompt_tokens: int,
    catalog: PriceCatalog,
    reason: str,
) -> RequestOutcome:
    """A call whose answer was lost (its process died while waiting): it may have been billed, so it is
    recorded as a retryable failure costed at an upper estimate from the request (prompt estimate plus
    the output cap, or the images asked for); `price_version` says `estimate:` so reports can tell."""
    if endpoint == Endpoint.IMAGES:
        usage = TokenUsage.from_image_request(
            int(body.get("n") or 1), body.get("quality", "auto"), body.get("size", "1024x1024")
        )
    else:
        cap = body.get("max_completion_tokens") or body.get("max_tokens") or LOST_ANSWER_OUTPUT_TOKENS
        usage = TokenUsage(input_tokens=est_prompt_tokens, output_tokens=int(cap))
    outcome = RequestOutcome(
        request_id=request_id,
        outcome=Outcome.FAILED_RETRYABLE,
        error_code="lost_in_flight",
        error_message=reason,
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        images=usage.images,
    )
    try:
        cost = catalog.cost_breakdown(model, tier, usage)
    except UnknownPriceError:
        return outcome.model_copy(update={"price_version": f"estimate:unpriced:{model}"})
    return outcome.model_copy(
        update={
            "cost_usd": cost.actual,
            "standard_cost_usd": cost.standard,
            "price_version": f"estimate:{catalog.version}",
        }
    )


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


# -- the bulk path: one decode a line into the fields read, the body kept raw, priced as read ---------


class LinePricing(NamedTuple):
    """A text model's prices on one tier and on the standard tier, per token (input, cached input, output) in
    units of 1e-12 USD, and the catalog version: what `read_result_table` needs to price a line as it reads it."""

    actual: tuple[int, int, int]
    standard: tuple[int, int, int]
    version: str


def line_pricing(catalog: PriceCatalog, *, endpoint: str, model: str, tier: Tier) -> LinePricing | None:
    """The integer prices that cost a chat line in one expression, or None when rows must be priced one by one
    (images, an unpriced model or tier, a price finer than the 1e-12 USD unit)."""
    if endpoint == Endpoint.IMAGES:
        return None
    try:
        actual, standard = catalog.unit_prices(model, tier), catalog.unit_prices(model, Tier.STANDARD)
    except UnknownPriceError:
        return None
    if actual is None or standard is None or actual.text is None or standard.text is None:
        return None
    return LinePricing(actual.text, standard.text, catalog.version)


class _Response(msgspec.Struct):
    status_code: Any = None
    body: msgspec.Raw = msgspec.Raw(b"null")  # the body's own bytes, not parsed into objects


class _ResultLine(msgspec.Struct):
    """What `read_result_table` decodes of an output- or error-file line: what the rule reads, and the body raw."""

    custom_id: Any = None
    response: _Response | None = None
    error: Any = None


class _BodyFields(msgspec.Struct):
    """What classification and pricing read of a response body; msgspec skips the rest without building it."""

    usage: Any = None
    error: Any = None
    data: Any = None  # generated images
    quality: Any = None
    size: Any = msgspec.UNSET  # UNSET: absent (a null size is still an image response)


_decode_line = msgspec.json.Decoder(_ResultLine).decode
_decode_body = msgspec.json.Decoder(_BodyFields).decode
_EMPTY_BODY = _BodyFields()


def read_result_table(
    paths: list[Path], image_store: ImageStore | None, *, pricing: LinePricing | None = None
) -> ResultTable:
    """`read_result_files` as one tuple per line (a `ResultTable`): each line decoded once into just what the
    rule and pricing read (msgspec skips the rest), classified by the same rule; the body kept as the line's
    own bytes for it (a body whose images went to the store is serialised again), the usage as integers.
    No object outlives its line. With `pricing`, a success whose usage is plain integers is costed as it is
    read; `price_results` prices the rest.

    Images are moved to the store line by line, as in `read_result_files`.
    """
    table = ResultTable()
    rows, index, add = table.rows, table._index, table.add
    decode_line, decode_body, rule = _decode_line, _decode_body, _rule
    (pi, pc, po), (si, sc, so), version = pricing or ((0, 0, 0), (0, 0, 0), None)
    for path in paths:
        with path.open("rb", buffering=_READ_BUFFER) as fh:
            for n, raw in enumerate(fh, 1):
                try:
                    line = decode_line(raw)
                except msgspec.DecodeError as exc:
                    if not raw.strip():
                        continue
                    raise ResultFileError(f"{path.name}: line {n} is not a result line (a JSON object): {exc}") from exc
                custom_id, response = line.custom_id, line.response
                inp = cached = out = cost = standard = 0
                usage = spec = text = priced = None
                if response is None:
                    outcome, status, code, message = rule(custom_id, _NO_RESPONSE, None, line.error, raw)
                else:
                    text = str(response.body, "utf-8")  # the ledger stores text: a str is its exact size
                    if text == "null":  # no body: stored as the per-outcome path stores it
                        body, text = _EMPTY_BODY, "{}"
                    else:
                        try:
                            body = decode_body(text)
                        except msgspec.DecodeError as exc:
                            raise ResultFileError(f"{path.name}: line {n}: the response body is not an object") from exc
                    outcome, status, code, message = rule(custom_id, response.status_code, body.error, line.error, raw)
                    data = body.data
                    if (
                        data is not None
                        and image_store is not None
                        and type(data) is list
                        and any("b64_json" in item for item in data)
                    ):
                        stored = store_images(
                            RequestOutcome(request_id=custom_id, outcome=outcome, response=orjson.loads(text)),
                            image_store,
                        ).response
                        text = orjson.dumps(stored).decode()
                        data = (stored or {}).get("data")
                    if outcome is _SUCCEEDED:
                        usage = _token_counts(body.usage)
                        if type(usage) is tuple:
                            (inp, cached, out), usage = usage, None
                        if data is not None or body.size is not msgspec.UNSET:
                            size = body.size if body.size is not msgspec.UNSET else None
                            spec = (len(data or ()), body.quality, size)
                        elif usage is None and version is not None:  # plain tokens (or none): costed here
                            cost = (inp - cached) * pi + cached * pc + out * po
                            standard = (inp - cached) * si + cached * sc + out * so
                            priced = version
                # in `ResultTable.COLUMNS` order
                row = (
                    custom_id,
                    outcome,
                    status,
                    text,
                    code,
                    message,
                    inp,
                    cached,
                    out,
                    0,
                    cost,
                    standard,
                    priced,
                    usage,
                    spec,
                )
                if custom_id in index:
                    add(row)
                else:
                    index[custom_id] = len(rows)
                    rows.append(row)
    return table


# Result files are read line by line through a 1 MB buffer (the default 8 KB costs a third of a microsecond a line).
_READ_BUFFER = 1 << 20


def _token_counts(usage: Any) -> tuple[int, int, int] | dict[str, Any] | None:
    """(input, cached, output) from a response's `usage` when it is plain, valid integers (the common case);
    otherwise the object itself, for `TokenUsage.from_chat_usage` to read (or refuse) as the per-row path does."""
    if not usage:
        return None
    try:
        if "prompt_tokens" in usage:
            inp, out, details = usage["prompt_tokens"], usage["completion_tokens"], usage.get("prompt_tokens_details")
        else:
            inp, out, details = usage["input_tokens"], usage["output_tokens"], usage.get("input_tokens_details")
        cached = (details or {}).get("cached_tokens") or 0
    except (KeyError, TypeError, AttributeError):
        return usage
    if type(inp) is int and type(out) is int and type(cached) is int and 0 <= cached <= inp and out >= 0:
        return inp, cached, out
    return usage


def price_results(
    table: ResultTable,
    *,
    endpoint: str,
    model: str,
    tier: Tier,
    catalog: PriceCatalog,
    request_bodies: Callable[[list[str]], dict[str, dict[str, Any]]],
) -> ResultTable:
    """Attach tokens and cost to every successful row `read_result_table` did not price as it read it (image
    rows, usage that is not plain integers, prices finer than the unit, or a table read without `pricing`),
    by the per-row rule: the same amounts as `price_outcome` (a test holds this). `request_bodies` is asked
    once, for the image rows whose response omits quality or size.
    """
    rows = table.rows
    todo = [at for at, row in enumerate(rows) if row[12] is None and row[1] == _SUCCEEDED and row[3] is not None]
    if not todo:
        return table
    usages: dict[int, TokenUsage] = {}
    if endpoint == Endpoint.IMAGES:
        need = [rows[at][0] for at in todo if not all((rows[at][14] or (0, None, None))[1:])]
        bodies = request_bodies(need) if need else {}
        for at in todo:
            images, quality, size = rows[at][14] or (0, None, None)
            if not quality or not size:  # older responses omit them: the request says what was asked for
                body = bodies.get(rows[at][0], {})
                quality, size = quality or body.get("quality", "auto"), size or body.get("size", "1024x1024")
            usages[at] = TokenUsage.from_image_request(images, quality, size)
    else:
        for at in todo:
            usage = rows[at][13]
            if usage is not None:  # not plain integers: validated (or refused) as the per-row path does
                usages[at] = TokenUsage.from_chat_usage(usage)
    version = catalog.version
    for at in todo:
        row = rows[at]
        usage = usages.get(at)
        if usage is None:
            usage = TokenUsage(input_tokens=row[6], cached_tokens=row[7], output_tokens=row[8])
        try:
            cost = catalog.cost_breakdown(model, tier, usage)
        except UnknownPriceError:
            priced: tuple = (0, 0, f"unpriced:{model}")  # tokens still recorded; the cost report flags it
        else:
            priced = (to_units(cost.actual), to_units(cost.standard), version)
        rows[at] = (
            *row[:6],
            usage.input_tokens,
            usage.cached_tokens,
            usage.output_tokens,
            usage.images,
            *priced,
            row[13],
            row[14],
        )
    return table
