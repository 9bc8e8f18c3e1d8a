"""Input-file validation: a bad file makes the batch read `validating`, then `failed` with `errors.data`.

Also the per-model enqueued-token queue (`token_limit_exceeded`).
"""

from __future__ import annotations

import json

import pytest
from openai.types import Batch

from .support import Api, chat_line, configured

VALIDATING_FOR_10S = {"phase_seconds": {"validating": 10}}


def failed_errors(api: Api, batch_id: str) -> list[dict]:
    batch = Batch.model_validate(api.raw_json(api.client.batches.with_raw_response.retrieve(batch_id)))
    assert batch.status == "failed" and batch.failed_at is not None
    assert batch.output_file_id is None and batch.error_file_id is None
    return [error.model_dump() for error in batch.errors.data]


def jsonl(*lines: dict | str) -> bytes:
    return "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines).encode()


def without(line: dict, key: str) -> dict:
    return {k: v for k, v in line.items() if k != key}


CASES = {
    "invalid_json_line": (jsonl(chat_line("a"), "{not json"), 2, None),
    "missing_custom_id": (jsonl(chat_line("a"), without(chat_line("b"), "custom_id")), 2, "custom_id"),
    "duplicate_custom_id": (jsonl(chat_line("a"), chat_line("b"), chat_line("a")), 3, "custom_id"),
    "mismatched_endpoint": (jsonl({**chat_line("a"), "url": "/v1/embeddings"}), 1, "url"),
    "mismatched_model": (jsonl(chat_line("a"), chat_line("b", model="gpt-4o-mini")), 2, "body.model"),
    "empty_file": (b"\n", None, None),
}
CODES = {"missing_custom_id": "missing_required_parameter"}


@configured(**VALIDATING_FOR_10S)
@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_input_file_reads_validating_then_failed_naming_the_line(api: Api, case: str) -> None:
    content, line, param = CASES[case]
    batch_id = api.submit(content).id
    assert api.client.batches.retrieve(batch_id).status == "validating"
    api.clock.advance(10)
    (error,) = failed_errors(api, batch_id)
    assert (error["code"], error["line"], error["param"]) == (CODES.get(case, case), line, param)
    assert error["message"]


@configured(max_file_bytes=1_000)
def test_an_input_file_over_the_byte_limit_fails_as_file_too_large(api: Api) -> None:
    batch_id = api.submit([chat_line(f"r{i}", text="x" * 200) for i in range(10)]).id
    assert [e["code"] for e in failed_errors(api, batch_id)] == ["file_too_large"]


@configured(max_lines=2)
def test_an_input_file_over_the_line_limit_fails_as_too_many_requests(api: Api) -> None:
    batch_id = api.submit([chat_line(f"r{i}") for i in range(3)]).id
    assert [e["code"] for e in failed_errors(api, batch_id)] == ["too_many_requests"]


@configured(phase_seconds={"in_progress": 100}, token_limits={"gpt-5-mini": 100})
def test_enqueued_prompt_tokens_per_model_are_capped_until_earlier_batches_finish(api: Api) -> None:
    # Each line is ~40 estimated prompt tokens (160 characters): two fit the 100-token queue, three do not.
    two = [chat_line(f"r{i}", text="y" * 160) for i in range(2)]
    first = api.submit(two).id
    assert api.client.batches.retrieve(first).status == "in_progress"

    refused = api.submit([chat_line("extra", text="y" * 160)]).id
    (error,) = failed_errors(api, refused)
    assert error["code"] == "token_limit_exceeded" and error["line"] is None
    assert error["message"].startswith("Enqueued token limit reached for gpt-5-mini")

    other_model = api.submit([chat_line("o", text="y" * 160, model="gpt-4o-mini")]).id
    assert api.client.batches.retrieve(other_model).status == "in_progress", "queues are per model"

    api.clock.advance(100)
    assert api.client.batches.retrieve(first).status == "completed"
    accepted = api.submit([chat_line("extra", text="y" * 160)]).id
    assert api.client.batches.retrieve(accepted).status == "in_progress", "a finished batch frees its queue"
