"""Result mapping: output/error lines -> classified outcomes keyed by custom_id, images stored, costs attached."""

from __future__ import annotations

import base64
from decimal import Decimal

import orjson
import pytest

from batch_pipeline.batching.pricing import PriceCatalog
from batch_pipeline.batching.results import (
    ResultFileError,
    classify_line,
    price_outcome,
    read_result_files,
    store_images,
)
from batch_pipeline.records import RequestOutcome
from batch_pipeline.vocabulary import Outcome, Tier

CHAT, IMAGES = "/v1/chat/completions", "/v1/images/generations"


@pytest.fixture(scope="module")
def catalog() -> PriceCatalog:
    return PriceCatalog.load()


def write_jsonl(path, lines) -> object:
    path.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
    return path


def no_body():
    raise AssertionError("the request body should not be needed here")


def read_and_price(paths, *, model, tier, catalog, inline, image_store=None, request_bodies=lambda ids: {}):
    """The bulk path as the lifecycle runs it: lines priced as they are read (`inline`), the rest after; or
    every row priced after the read."""
    from batch_pipeline.batching.results import line_pricing, price_results, read_result_table

    endpoint = IMAGES if model.startswith("gpt-image") else CHAT
    pricing = line_pricing(catalog, endpoint=endpoint, model=model, tier=tier) if inline else None
    return price_results(
        read_result_table(paths, image_store, pricing=pricing),
        endpoint=endpoint,
        model=model,
        tier=tier,
        catalog=catalog,
        request_bodies=request_bodies,
    )


# -- classification -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (429, Outcome.FAILED_RETRYABLE),
        (500, Outcome.FAILED_RETRYABLE),
        (503, Outcome.FAILED_RETRYABLE),
        (408, Outcome.FAILED_RETRYABLE),
        (400, Outcome.FAILED_PERMANENT),
        (404, Outcome.FAILED_PERMANENT),
    ],
)
def test_429_and_5xx_are_retryable_400_is_permanent(failed_line, status, expected):
    outcome = classify_line(
        failed_line(
            "t-k1",
            status=status,
            code=None if status != 400 else "unsupported_parameter",
            err_type="server_error" if status >= 500 else "invalid_request_error",
        )
    )
    assert outcome.outcome == expected
    assert outcome.status_code == status
    assert outcome.error_code == (
        "unsupported_parameter" if status == 400 else "server_error" if status >= 500 else "invalid_request_error"
    )  # code, else type
    assert outcome.error_message


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("batch_expired", Outcome.EXPIRED),
        ("batch_cancelled", Outcome.CANCELLED),
        ("request_timeout", Outcome.FAILED_RETRYABLE),
    ],
)
def test_lines_of_requests_that_never_ran_say_why(never_ran_line, code, expected):
    outcome = classify_line(never_ran_line("t-k1", code))
    assert (outcome.outcome, outcome.error_code, outcome.status_code) == (expected, code, None)


# -- reading files ------------------------------------------------------------------------------


def test_success_line_wins_over_duplicate_error_line(tmp_path, output_line, failed_line, never_ran_line):
    out = write_jsonl(tmp_path / "out.jsonl", [output_line("t-a"), output_line("t-b")])
    err = write_jsonl(
        tmp_path / "err.jsonl", [failed_line("t-a", status=500), never_ran_line("t-b"), failed_line("t-c")]
    )
    for order in ([out, err], [err, out]):
        outcomes = read_result_files(order, None)
        assert {k: v.outcome for k, v in outcomes.items()} == {
            "t-a": Outcome.SUCCEEDED,
            "t-b": Outcome.SUCCEEDED,
            "t-c": Outcome.FAILED_PERMANENT,
        }


def test_success_lines_are_matched_by_custom_id_not_by_order(tmp_path, output_line):
    out = write_jsonl(tmp_path / "out.jsonl", [output_line(f"t-k{i}", content=f"answer {i}") for i in (3, 1, 2)])
    outcomes = read_result_files([out], None)
    assert {k: v.response["choices"][0]["message"]["content"] for k, v in outcomes.items()} == {
        "t-k1": "answer 1",
        "t-k2": "answer 2",
        "t-k3": "answer 3",
    }
    assert all(
        o.outcome == Outcome.SUCCEEDED and o.status_code == 200 and o.error_code is None for o in outcomes.values()
    )


def test_all_failed_batch_is_read_from_the_error_file_alone(tmp_path, failed_line):
    # output_file_id is null when every row failed: the caller passes only the error file
    err = write_jsonl(
        tmp_path / "err.jsonl", [failed_line("t-a"), failed_line("t-b", status=429, code="rate_limit_exceeded")]
    )
    outcomes = read_result_files([err], None)
    assert {k: v.outcome for k, v in outcomes.items()} == {
        "t-a": Outcome.FAILED_PERMANENT,
        "t-b": Outcome.FAILED_RETRYABLE,
    }


def test_truncated_download_or_line_without_custom_id_raises_result_file_error(tmp_path, output_line):
    good = orjson.dumps(output_line("t-a")) + b"\n\n"  # a blank line is skipped, not an error
    path = tmp_path / "out.jsonl"
    path.write_bytes(good + orjson.dumps(output_line("t-b"))[:57])
    with pytest.raises(ResultFileError, match="line 3"):
        read_result_files([path], None)
    line = output_line("t-c")
    del line["custom_id"]
    with pytest.raises(ResultFileError):
        classify_line(line)


@pytest.mark.parametrize(
    "bad",
    [b"[1, 2]", b'{"custom_id": "t-a", "response": "ok"}', b'{"custom_id": "t-a", "response": {"body": [1]}}', b"{"],
    ids=["not-an-object", "response-not-an-object", "body-not-an-object", "truncated"],
)
def test_the_bulk_reader_refuses_a_malformed_line_naming_it(tmp_path, output_line, bad):
    from batch_pipeline.batching.results import read_result_table

    path = tmp_path / "out.jsonl"
    path.write_bytes(orjson.dumps(output_line("t-b")) + b"\n" + bad + b"\n")
    with pytest.raises(ResultFileError, match=r"out\.jsonl: line 2"):
        read_result_table([path], None)
    line = {"custom_id": "", "response": {"status_code": 200, "body": {}}}
    path.write_bytes(orjson.dumps(line) + b"\n")
    with pytest.raises(ResultFileError, match="without custom_id"):
        read_result_table([path], None)


def test_the_bulk_reader_keeps_the_body_as_the_provider_wrote_it(tmp_path, catalog, output_line):
    """The ledger stores a body as the line's own bytes for it (no second serialisation): the same JSON as the
    per-outcome path's, whatever spacing the provider used; a null or absent body is stored as {}."""
    import json

    spaced = output_line("t-a", content='é 🙂 "q" 1e-05')
    spaced["response"]["body"]["x"] = 1e-05
    null_body = {"custom_id": "t-b", "response": {"status_code": 200, "request_id": "r", "body": None}, "error": None}
    path = tmp_path / "out.jsonl"
    path.write_text(json.dumps(spaced) + "\n" + json.dumps(null_body) + "\n", encoding="utf-8")
    table = read_and_price([path], model="gpt-5-mini", tier=Tier.BATCH, catalog=catalog, inline=True)
    texts = {row[0]: row[3] for row in table.rows}
    assert texts["t-a"] == json.dumps(spaced["response"]["body"])  # byte for byte what the line holds
    assert texts["t-b"] == "{}"
    expected = {
        o.request_id: price_outcome(
            o, endpoint=CHAT, model="gpt-5-mini", tier=Tier.BATCH, catalog=catalog, request_body=no_body
        )
        for o in read_result_files([path], None).values()
    }
    assert {o.request_id: o for o in table.outcomes()} == expected


def test_generated_images_are_moved_into_the_store(tmp_path, image_store, png_bytes, output_line):
    pngs = [png_bytes(21), png_bytes(22)]
    line = {
        "id": "batch_req_1",
        "custom_id": "img-cat",
        "error": None,
        "response": {
            "status_code": 200,
            "request_id": "req_1",
            "body": {
                "created": 1790000000,
                "data": [{"b64_json": base64.b64encode(p).decode()} for p in pngs],
                "quality": "low",
                "size": "1024x1024",
                "output_format": "png",
            },
        },
    }
    outcomes = read_result_files([write_jsonl(tmp_path / "out.jsonl", [line])], image_store)
    data = outcomes["img-cat"].response["data"]
    assert all("b64_json" not in item for item in data)
    assert [image_store.read(item["image_ref"]) for item in data] == pngs
    assert outcomes["img-cat"].response["quality"] == "low"
    text = classify_line(output_line("t-a"))
    assert store_images(text, image_store) is text  # text responses are left untouched


# -- pricing ------------------------------------------------------------------------------------


def test_chat_success_is_priced_at_batch_rates_next_to_the_standard_price(catalog, output_line):
    outcome = classify_line(output_line("t-a", prompt_tokens=1000, cached_tokens=200, completion_tokens=500))
    priced = price_outcome(
        outcome, endpoint=CHAT, model="gpt-5-mini", tier=Tier.BATCH, catalog=catalog, request_body=no_body
    )
    assert (priced.input_tokens, priced.cached_tokens, priced.output_tokens) == (1000, 200, 500)
    # batch: 800 x 0.125 + 200 x 0.0125 + 500 x 1.00 per 1M; standard is twice that
    assert priced.cost_usd == Decimal("0.0006025")
    assert priced.standard_cost_usd == Decimal("0.001205")
    assert priced.price_version == catalog.version


def test_failed_and_expired_rows_are_not_billed(catalog, failed_line, never_ran_line):
    for line in (failed_line("t-a"), never_ran_line("t-b")):
        outcome = price_outcome(
            classify_line(line), endpoint=CHAT, model="gpt-5", tier=Tier.BATCH, catalog=catalog, request_body=no_body
        )
        assert (outcome.cost_usd, outcome.input_tokens, outcome.price_version) == (Decimal(0), 0, None)


def test_images_are_priced_per_image_from_the_request_when_the_response_omits_size(catalog):
    outcome = RequestOutcome(
        request_id="img-a",
        outcome=Outcome.SUCCEEDED,
        status_code=200,
        response={"created": 1, "data": [{"image_ref": "x"}, {"image_ref": "y"}]},
    )
    priced = price_outcome(
        outcome,
        endpoint=IMAGES,
        model="gpt-image-1-mini",
        tier=Tier.BATCH,
        catalog=catalog,
        request_body=lambda: {"prompt": "p", "n": 2, "size": "1536x1024", "quality": "medium"},
    )
    assert priced.images == 2
    assert priced.cost_usd == Decimal("0.015")  # 2 x 0.0075 batch
    assert priced.standard_cost_usd == Decimal("0.030")


def test_unknown_model_keeps_its_tokens_and_is_flagged_unpriced(catalog, output_line):
    priced = price_outcome(
        classify_line(output_line("t-a")),
        endpoint=CHAT,
        model="gpt-9-preview",
        tier=Tier.BATCH,
        catalog=catalog,
        request_body=no_body,
    )
    assert priced.input_tokens == 1000
    assert priced.cost_usd == Decimal(0)
    assert priced.price_version == "unpriced:gpt-9-preview"


def test_success_line_without_usage_is_kept_as_succeeded_not_a_crash(catalog, output_line):
    line = output_line("t-a")
    del line["response"]["body"]["usage"]
    priced = price_outcome(
        classify_line(line), endpoint=CHAT, model="gpt-5-mini", tier=Tier.BATCH, catalog=catalog, request_body=no_body
    )
    assert priced.outcome == Outcome.SUCCEEDED
    assert (priced.input_tokens, priced.output_tokens) == (0, 0)


# -- the bulk path gives what the per-outcome path gives ------------------------------------------


def test_lines_are_priced_as_read_only_with_whole_unit_token_prices(catalog):
    from batch_pipeline.batching.results import line_pricing

    pricing = line_pricing(catalog, endpoint=CHAT, model="gpt-5-mini", tier=Tier.BATCH)
    assert pricing is not None and pricing.version == catalog.version
    # gpt-5-mini on batch: $0.125 / $0.0125 / $1.00 per 1M tokens, in 1e-12 USD per token
    assert pricing.actual == (125_000, 12_500, 1_000_000) and pricing.standard == (250_000, 25_000, 2_000_000)
    assert line_pricing(catalog, endpoint=IMAGES, model="gpt-image-1-mini", tier=Tier.BATCH) is None
    assert line_pricing(catalog, endpoint=CHAT, model="gpt-9-preview", tier=Tier.BATCH) is None


@pytest.mark.parametrize("inline", [True, False], ids=["priced-as-read", "priced-after"])
def test_bulk_read_and_price_equal_the_per_outcome_path(
    tmp_path, catalog, output_line, failed_line, never_ran_line, inline
):
    no_usage = output_line("t-e")
    del no_usage["response"]["body"]["usage"]
    out = write_jsonl(
        tmp_path / "out.jsonl",
        [output_line("t-a", content='é 🙂 "q"'), output_line("t-b", cached_tokens=0), no_usage, output_line("t-c")],
    )
    err = write_jsonl(
        tmp_path / "err.jsonl", [failed_line("t-c", status=500), failed_line("t-d", status=429), never_ran_line("t-f")]
    )
    for model in ("gpt-5-mini", "gpt-9-preview"):
        table = read_and_price([out, err], model=model, tier=Tier.BATCH, catalog=catalog, inline=inline)
        expected = {
            o.request_id: price_outcome(
                o, endpoint=CHAT, model=model, tier=Tier.BATCH, catalog=catalog, request_body=no_body
            )
            for o in read_result_files([out, err], None).values()
        }
        assert {o.request_id: o for o in table.outcomes()} == expected


def test_bulk_images_are_stored_and_priced_from_the_request_when_the_response_omits_size(
    tmp_path, catalog, image_store, png_bytes
):
    line = {
        "custom_id": "img-a",
        "error": None,
        "response": {
            "status_code": 200,
            "body": {"created": 1, "data": [{"b64_json": base64.b64encode(png_bytes(3)).decode()}] * 2},
        },
    }
    asked = []
    table = read_and_price(
        [write_jsonl(tmp_path / "out.jsonl", [line])],
        model="gpt-image-1-mini",
        tier=Tier.BATCH,
        catalog=catalog,
        inline=True,  # an image model has no per-token prices: priced after the read, by the per-row rule
        image_store=image_store,
        request_bodies=lambda ids: asked.extend(ids) or {"img-a": {"size": "1536x1024", "quality": "medium"}},
    )
    (outcome,) = table.outcomes()
    assert asked == ["img-a"]  # one bulk look-up, only for the rows that need it
    assert [image_store.read(item["image_ref"]) for item in outcome.response["data"]] == [png_bytes(3)] * 2
    assert (outcome.images, outcome.cost_usd, outcome.standard_cost_usd) == (2, Decimal("0.015"), Decimal("0.030"))


@pytest.mark.parametrize("inline", [True, False], ids=["priced-as-read", "priced-after"])
def test_bulk_path_equals_the_per_outcome_path_for_duplicates_odd_usage_and_bodiless_lines(
    tmp_path, catalog, output_line, failed_line, inline
):
    spelled = output_line("t-g")  # the Responses API's spelling, null details, integral floats
    spelled["response"]["body"]["usage"] = {"input_tokens": 30.0, "output_tokens": 4, "input_tokens_details": None}
    bodiless = {"custom_id": "t-h", "response": {"status_code": 200}, "error": None}
    lines = [
        failed_line("t-a", status=500),
        output_line("t-a", prompt_tokens=7, cached_tokens=7),  # success wins
        output_line("t-b"),
        failed_line("t-b", status=429),
        spelled,
        bodiless,
        output_line("t-c", content="x" * 5000),
    ]
    path = write_jsonl(tmp_path / "out.jsonl", lines)
    for tier in (Tier.BATCH, Tier.FLEX, Tier.STANDARD):
        table = read_and_price([path], model="gpt-5-mini", tier=tier, catalog=catalog, inline=inline)
        expected = {
            o.request_id: price_outcome(
                o, endpoint=CHAT, model="gpt-5-mini", tier=tier, catalog=catalog, request_body=no_body
            )
            for o in read_result_files([path], None).values()
        }
        assert {o.request_id: o for o in table.outcomes()} == expected
        assert [row[3] for row in table.rows] == [orjson.dumps(o.response).decode() for o in expected.values()]


@pytest.mark.parametrize("inline", [True, False], ids=["priced-as-read", "priced-after"])
def test_bulk_pricing_refuses_a_malformed_usage_like_the_per_outcome_path(tmp_path, catalog, output_line, inline):
    from pydantic import ValidationError

    line = output_line("t-a")
    line["response"]["body"]["usage"] = {"prompt_tokens": 5, "completion_tokens": -1}
    path = write_jsonl(tmp_path / "out.jsonl", [line])
    with pytest.raises(ValidationError):
        price_outcome(
            classify_line(line),
            endpoint=CHAT,
            model="gpt-5-mini",
            tier=Tier.BATCH,
            catalog=catalog,
            request_body=no_body,
        )
    with pytest.raises(ValidationError):
        read_and_price([path], model="gpt-5-mini", tier=Tier.BATCH, catalog=catalog, inline=inline)
