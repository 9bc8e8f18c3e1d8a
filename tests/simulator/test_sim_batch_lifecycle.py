"""Batch lifecycle through the real SDK: phases on a ManualClock, listing, shuffled output, cancel, restart.

Every Batch the server sends is validated with `openai.types.Batch`.
"""

from __future__ import annotations

import re

import openai
import pytest
from openai.types import Batch
from openai.types.chat import ChatCompletion

from .support import START, Api, chat_line, configured, make_simulator, serving

PHASED = {"phase_seconds": {"validating": 10, "in_progress": 100, "finalizing": 5}}


def retrieve(api: Api, batch_id: str) -> Batch:
    return Batch.model_validate(api.raw_json(api.client.batches.with_raw_response.retrieve(batch_id)))


def test_with_zero_durations_a_batch_is_validating_at_create_and_completed_at_first_read(api: Api) -> None:
    raw = api.client.batches.with_raw_response.create(
        input_file_id=api.upload([chat_line(f"r{i}") for i in range(3)]),
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"run": "42"},
    )
    created = Batch.model_validate(api.raw_json(raw))
    assert re.fullmatch(r"batch_[0-9a-f]{32}", created.id)
    assert created.status == "validating" and created.expires_at == created.created_at + 86400

    batch = retrieve(api, created.id)
    assert batch.status == "completed" and batch.model == "gpt-5-mini" and batch.metadata == {"run": "42"}
    assert batch.request_counts.model_dump() == {"total": 3, "completed": 3, "failed": 0}
    assert batch.error_file_id is None and batch.errors is None
    output = api.read(batch.output_file_id)
    assert api.client.files.retrieve(batch.output_file_id).purpose == "batch_output"
    for line in output:
        assert re.fullmatch(r"batch_req_\w+", line["id"]) and line["error"] is None
        assert line["response"]["status_code"] == 200
        ChatCompletion.model_validate(line["response"]["body"])
    usage = batch.usage
    assert usage.input_tokens == sum(line["response"]["body"]["usage"]["prompt_tokens"] for line in output)
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens > 0


@configured(**PHASED)
def test_phases_follow_the_clock_and_stamp_each_transition(api: Api) -> None:
    batch_id = api.submit([chat_line(f"r{i}") for i in range(4)]).id
    seen = [retrieve(api, batch_id)]
    for step in (10, 100, 5):
        api.clock.advance(step)
        seen.append(retrieve(api, batch_id))
    assert [b.status for b in seen] == ["validating", "in_progress", "finalizing", "completed"]

    in_progress, finalizing, completed = seen[1:]
    assert in_progress.request_counts.model_dump() == {"total": 4, "completed": 0, "failed": 0}
    assert finalizing.request_counts.completed == 4 and finalizing.output_file_id is None, (
        "counts reach 100% while finalizing; files appear at completion"
    )
    assert completed.output_file_id is not None
    assert (completed.in_progress_at, completed.finalizing_at, completed.completed_at) == (
        START + 10,
        START + 110,
        START + 115,
    )


@configured(**PHASED)
def test_late_read_replays_every_missed_transition_at_its_due_time(api: Api) -> None:
    batch_id = api.submit([chat_line("only")]).id
    api.clock.advance(10_000)
    batch = retrieve(api, batch_id)
    assert batch.status == "completed" and batch.completed_at == START + 115


def test_list_is_newest_first_and_auto_paginates_with_after_and_has_more(api: Api) -> None:
    ids = [api.submit([chat_line("r")]).id for _ in range(5)]
    page = api.raw_json(api.client.batches.with_raw_response.list(limit=2))
    assert [Batch.model_validate(b).id for b in page["data"]] == ids[::-1][:2]
    assert page["object"] == "list" and page["has_more"] is True
    assert (page["first_id"], page["last_id"]) == (ids[4], ids[3])

    assert [b.id for b in api.client.batches.list(limit=2)] == ids[::-1], "SDK follows after= across pages"
    last = api.client.batches.list(after=ids[1], limit=2)
    assert [b.id for b in last.data] == [ids[0]] and last.has_more is False
    with pytest.raises(openai.BadRequestError):
        api.client.batches.list(limit=101)


def test_output_is_shuffled_and_each_line_matches_the_synchronous_answer(api: Api) -> None:
    lines = [chat_line(f"r{i}", text=f"describe lighthouse number {i}") for i in range(12)]
    batch = retrieve(api, api.submit(lines).id)
    output = api.read(batch.output_file_id)
    order = [line["custom_id"] for line in output]
    assert sorted(order) == sorted(line["custom_id"] for line in lines)
    assert order != [line["custom_id"] for line in lines], "output never comes back in input order"
    by_id = {line["custom_id"]: line["response"]["body"] for line in output}
    for line in lines[:3]:
        sync = api.client.chat.completions.create(**line["body"])
        assert by_id[line["custom_id"]]["choices"][0]["message"]["content"] == sync.choices[0].message.content


@configured(phase_seconds={"in_progress": 100, "cancelling": 30}, cancel_keep_fraction=0.5)
def test_cancel_in_progress_keeps_output_for_a_share_of_lines(api: Api) -> None:
    batch_id = api.submit([chat_line(f"r{i}") for i in range(6)]).id
    assert retrieve(api, batch_id).status == "in_progress"
    cancelling = Batch.model_validate(api.raw_json(api.client.batches.with_raw_response.cancel(batch_id)))
    assert cancelling.status == "cancelling" and cancelling.cancelling_at == START
    api.clock.advance(30)
    batch = retrieve(api, batch_id)
    assert batch.status == "cancelled" and batch.cancelled_at == START + 30
    assert batch.request_counts.model_dump() == {"total": 6, "completed": 3, "failed": 3}
    assert len(api.read(batch.output_file_id)) == 3
    never_ran = api.read(batch.error_file_id)
    assert [(line["response"], line["error"]["code"]) for line in never_ran] == [(None, "batch_cancelled")] * 3


@configured(phase_seconds={"validating": 100})
def test_cancel_while_validating_runs_nothing(api: Api) -> None:
    batch_id = api.submit([chat_line("r")]).id
    api.client.batches.cancel(batch_id)
    batch = retrieve(api, batch_id)
    assert batch.status == "cancelled" and batch.output_file_id is None and batch.error_file_id is None


def test_cancelling_a_completed_batch_is_a_conflict(api: Api) -> None:
    batch_id = api.submit([chat_line("r")]).id
    assert retrieve(api, batch_id).status == "completed"
    with pytest.raises(openai.ConflictError) as conflict:
        api.client.batches.cancel(batch_id)
    assert conflict.value.body["message"] == "Cannot cancel a batch with status 'completed'."


@configured(phase_seconds={"in_progress": 100_000})
def test_a_batch_still_running_when_its_24h_window_ends_expires_with_partial_output(api: Api) -> None:
    batch_id = api.submit([chat_line(f"r{i}") for i in range(10)]).id
    api.clock.advance(86_400)
    batch = retrieve(api, batch_id)
    assert batch.status == "expired" and batch.expired_at == batch.expires_at
    # 86,400 of the planned 100,000 seconds ran: that share of the lines got done.
    assert batch.request_counts.completed == 9
    assert [line["error"]["code"] for line in api.read(batch.error_file_id)] == ["batch_expired"]


def test_a_new_simulator_on_the_same_dir_resumes_a_batch_mid_flight(tmp_path, clock) -> None:
    phased = {"validating": 0, "in_progress": 100, "finalizing": 0}
    with serving(make_simulator(tmp_path / "sim", clock, phase_seconds=phased), clock) as api:
        file_id = api.upload([chat_line("r1"), chat_line("r2")])
        batch_id = api.client.batches.create(
            input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
        ).id
        assert api.client.batches.retrieve(batch_id).status == "in_progress"

    clock.advance(100)
    second = make_simulator(tmp_path / "sim", clock, phase_seconds=phased)
    assert second.batch_count() == 1
    with serving(second, clock) as api:
        batch = retrieve(api, batch_id)
        assert batch.status == "completed" and batch.request_counts.completed == 2
        assert api.client.files.retrieve(file_id).filename == "input.jsonl"
        assert len(api.read(batch.output_file_id)) == 2


@pytest.mark.parametrize(
    "kwargs, param",
    [
        ({"completion_window": "48h"}, "completion_window"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
        ({"metadata": {"k" * 65: "v"}}, "metadata"),
        ({"metadata": {"k": "v" * 513}}, "metadata.k"),
        ({"endpoint": "/v1/embeddings"}, "endpoint"),
    ],
    ids=["window", "17-pairs", "long-key", "long-value", "unimplemented-endpoint"],
)
def test_create_rejects_bad_parameters_with_400(api: Api, kwargs: dict, param: str) -> None:
    arguments = {
        "input_file_id": api.upload([chat_line("r")]),
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
        **kwargs,
    }
    with pytest.raises(openai.BadRequestError) as refused:
        api.client.batches.create(**arguments)
    assert refused.value.param == param
    assert api.sim.batch_count() == 0


def test_create_with_an_unknown_input_file_is_404(api: Api) -> None:
    with pytest.raises(openai.NotFoundError):
        api.client.batches.create(
            input_file_id="file-" + "x" * 22, endpoint="/v1/chat/completions", completion_window="24h"
        )
