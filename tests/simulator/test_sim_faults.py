"""Fault injection: every FaultRule kind, its matchers and counters, from Python and over /_admin.

HTTP faults are seen as SDK exceptions; batch and line faults in the Batch object and its files.
"""

from __future__ import annotations

import json
import time
import urllib.request

import openai
import pytest
from openai.types import Batch

from openai_simulator import FaultRule

from .support import Api, chat_line, image_line

HELLO = {"model": "gpt-5-mini", "messages": [{"role": "user", "content": "hello"}]}


def finished(api: Api, batch_id: str) -> Batch:
    return Batch.model_validate(api.raw_json(api.client.batches.with_raw_response.retrieve(batch_id)))


def test_http_429_sends_retry_after_ms_and_the_flex_resource_message(api: Api) -> None:
    api.sim.add_fault(
        FaultRule(
            kind="http_429", service_tier="flex", params={"message": "Resource Unavailable", "retry_after_ms": 25}
        )
    )
    api.client.chat.completions.create(**HELLO)  # not flex: untouched
    with pytest.raises(openai.RateLimitError) as limited:
        api.client.chat.completions.create(**HELLO, service_tier="flex")
    assert limited.value.response.headers["retry-after-ms"] == "25"
    assert limited.value.body["message"] == "Resource Unavailable"
    assert limited.value.code == "rate_limit_exceeded"


def test_http_500_fires_on_the_nth_match_only(api: Api) -> None:
    api.sim.add_fault(FaultRule(kind="http_500", path=r"^/v1/models$", nth=2))
    api.client.models.list()
    with pytest.raises(openai.InternalServerError):
        api.client.models.list()
    api.client.models.list()


def test_times_caps_how_often_a_rule_fires_and_clear_faults_removes_it(api: Api) -> None:
    api.sim.add_fault(FaultRule(kind="http_500", method="GET", times=1))
    with pytest.raises(openai.InternalServerError):
        api.client.models.list()
    api.client.models.list()
    api.sim.add_fault(FaultRule(kind="http_500", model="gpt-5"))
    api.sim.clear_faults()
    api.client.chat.completions.create(**HELLO)


def test_slow_delays_the_answer_past_a_client_timeout(api: Api) -> None:
    api.sim.add_fault(FaultRule(kind="slow", body_contains="sleepy", params={"seconds": 0.3}))
    started = time.monotonic()
    api.client.chat.completions.create(**HELLO)
    assert time.monotonic() - started < 0.3
    with pytest.raises(openai.APITimeoutError):
        api.client.chat.completions.create(
            model="gpt-5-mini", messages=[{"role": "user", "content": "sleepy"}], timeout=0.1
        )


def test_error_after_create_makes_the_batch_yet_answers_500_so_a_retry_duplicates_it(api: Api) -> None:
    file_id = api.upload([chat_line("r")])
    api.sim.add_fault(FaultRule(kind="error_after_create", times=1))
    with pytest.raises(openai.InternalServerError):
        api.client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")
    assert api.sim.batch_count() == 1, "the batch exists although the create call failed"

    api.sim.add_fault(FaultRule(kind="error_after_create", times=1, params={"retry_after_ms": 1}))
    retrying = api.client.with_options(max_retries=1)
    retrying.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")
    assert api.sim.batch_count() == 3, "the SDK's automatic retry created a duplicate"


def test_content_policy_refuses_images_synchronously_and_per_line_in_a_batch(api: Api) -> None:
    api.sim.add_fault(FaultRule(kind="content_policy", body_contains="forbidden"))
    with pytest.raises(openai.BadRequestError) as refused:
        api.client.images.generate(model="gpt-image-1-mini", prompt="a forbidden picture")
    assert (refused.value.code, refused.value.type) == ("content_policy_violation", "image_generation_user_error")

    batch = finished(
        api,
        api.submit(
            [image_line("ok", "a harbor"), image_line("bad", "forbidden harbor")], endpoint="/v1/images/generations"
        ).id,
    )
    assert batch.status == "completed" and batch.request_counts.failed == 1
    (error_line,) = api.read(batch.error_file_id)
    assert error_line["custom_id"] == "bad" and error_line["response"]["status_code"] == 400
    assert error_line["response"]["body"]["error"]["code"] == "content_policy_violation"


def test_expire_completes_and_bills_a_fraction_and_marks_the_rest_batch_expired(api: Api) -> None:
    api.sim.add_fault(FaultRule(kind="expire", model="gpt-5", params={"complete_fraction": 0.25}))
    batch = finished(api, api.submit([chat_line(f"r{i}") for i in range(8)]).id)
    assert batch.status == "expired" and batch.expired_at is not None
    assert batch.request_counts.model_dump() == {"total": 8, "completed": 2, "failed": 6}
    output, errors = api.read(batch.output_file_id), api.read(batch.error_file_id)
    assert batch.usage.input_tokens == sum(line["response"]["body"]["usage"]["prompt_tokens"] for line in output)
    assert {(line["response"], line["error"]["code"]) for line in errors} == {(None, "batch_expired")}


def test_request_error_and_request_timeout_hit_only_matching_lines(api: Api) -> None:
    api.sim.add_fault(
        FaultRule(
            kind="request_error",
            custom_id=r"^bad$",
            params={"status_code": 400, "code": "invalid_value", "message": "nope"},
        )
    )
    api.sim.add_fault(FaultRule(kind="request_timeout", custom_id=r"^slow$"))
    batch = finished(api, api.submit([chat_line("good"), chat_line("bad"), chat_line("slow")]).id)
    assert batch.status == "completed" and batch.request_counts.model_dump() == {
        "total": 3,
        "completed": 1,
        "failed": 2,
    }
    errors = {line["custom_id"]: line for line in api.read(batch.error_file_id)}
    assert errors["bad"]["error"] is None
    assert errors["bad"]["response"]["status_code"] == 400
    assert errors["bad"]["response"]["body"]["error"] == {
        "message": "nope",
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_value",
    }
    assert errors["slow"]["response"] is None and errors["slow"]["error"]["code"] == "request_timeout"


def test_all_fail_ends_completed_without_an_output_file(api: Api) -> None:
    api.sim.add_fault(FaultRule(kind="all_fail", nth=1))
    batch = finished(api, api.submit([chat_line("a"), chat_line("b")]).id)
    assert batch.status == "completed" and batch.output_file_id is None and batch.error_file_id is not None
    assert {line["response"]["status_code"] for line in api.read(batch.error_file_id)} == {500}
    assert batch.usage.total_tokens == 0, "failed rows are not billed"
    second = finished(api, api.submit([chat_line("a")]).id)
    assert second.output_file_id is not None, "nth=1: only the first processed batch fails"


def admin(api: Api, method: str, path: str, payload: dict | None = None) -> dict:
    root = api.base_url.removesuffix("/v1")
    data = json.dumps(payload).encode() if payload is not None else None
    request = urllib.request.Request(
        root + path, data=data, method=method, headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


def test_admin_routes_set_and_clear_faults_advance_the_clock_and_report_health(api: Api) -> None:
    admin(api, "POST", "/_admin/faults", {"kind": "http_500", "path": "^/v1/models$"})
    with pytest.raises(openai.InternalServerError):
        api.client.models.list()
    admin(api, "DELETE", "/_admin/faults")
    api.client.models.list()

    before = api.clock.now()
    assert admin(api, "POST", "/_admin/clock/advance", {"seconds": 90})["now"] == before + 90
    assert admin(api, "GET", "/_admin/health")["status"] == "ok"
