"""Assembler: plan batches by endpoint+model within count, byte and token limits; stream exact files."""

from __future__ import annotations

import base64

import orjson
import pytest

from batch_pipeline.batching.assembly import plan_batches, write_batch_file
from batch_pipeline.batching.limits import SplitLimits
from batch_pipeline.ledger.ledger import QueuedRow

CHAT, IMAGES, RESPONSES = "/v1/chat/completions", "/v1/images/generations", "/v1/responses"


def row(
    rid: str, *, model: str = "gpt-5-mini", endpoint: str = CHAT, line_bytes: int = 99, tokens: int = 10
) -> QueuedRow:
    return QueuedRow(request_id=rid, endpoint=endpoint, model=model, line_bytes=line_bytes, est_prompt_tokens=tokens)


def ids(batch) -> list[str]:
    return [m.request_id for m in batch.members]


# -- planning -----------------------------------------------------------------------------------


def test_one_batch_per_endpoint_and_model_keeping_queue_order():
    rows = [
        row("a1"),
        row("b1", model="gpt-5"),
        row("a2"),
        row("i1", model="gpt-image-1-mini", endpoint=IMAGES),
        row("a3"),
    ]
    plan = plan_batches(rows, SplitLimits())
    assert {(b.endpoint, b.model): ids(b) for b in plan.batches} == {
        (CHAT, "gpt-5-mini"): ["a1", "a2", "a3"],
        (CHAT, "gpt-5"): ["b1"],
        (IMAGES, "gpt-image-1-mini"): ["i1"],
    }
    assert plan.held_back == [] and plan.oversized == []


def test_split_respects_request_count():
    plan = plan_batches([row(f"r{i}") for i in range(7)], SplitLimits(max_requests=3))
    assert [ids(b) for b in plan.batches] == [["r0", "r1", "r2"], ["r3", "r4", "r5"], ["r6"]]


def test_split_respects_byte_limit_including_newlines():
    # each line is 299 bytes + newline = 300; 1024 bytes hold three of them
    plan = plan_batches([row(f"r{i}", line_bytes=299) for i in range(7)], SplitLimits(max_bytes=1024))
    assert [len(b.members) for b in plan.batches] == [3, 3, 1]
    assert all(b.input_bytes <= 1024 for b in plan.batches)
    assert plan.batches[0].input_bytes == 900
    # a line exactly at the limit fits a batch of its own; one byte more can never fit
    plan = plan_batches([row("fits", line_bytes=1023), row("too_big", line_bytes=1024)], SplitLimits(max_bytes=1024))
    assert [ids(b) for b in plan.batches] == [["fits"]]
    assert [r.request_id for r in plan.oversized] == ["too_big"]


def test_request_larger_than_the_model_token_queue_is_oversized_not_held_back():
    limits = SplitLimits(enqueued_token_limits={"gpt-5": 1000})
    plan = plan_batches([row("huge", model="gpt-5", tokens=1001), row("ok", model="gpt-5", tokens=1000)], limits)
    assert [r.request_id for r in plan.oversized] == ["huge"]
    assert [ids(b) for b in plan.batches] == [["ok"]]


def test_held_back_when_model_token_queue_is_full():
    limits = SplitLimits(enqueued_token_limits={"gpt-5": 1000, "gpt-5-mini": 1000})
    rows = [row("g1", model="gpt-5", tokens=300), row("g2", model="gpt-5", tokens=300), row("m1", tokens=900)]
    plan = plan_batches(rows, limits, inflight_tokens={"gpt-5": 500})
    assert [r.request_id for r in plan.held_back] == ["g2"]  # 500 in flight + 300 fits, + 300 more does not
    assert {b.model: ids(b) for b in plan.batches} == {"gpt-5": ["g1"], "gpt-5-mini": ["m1"]}  # other models unaffected


def test_token_budget_is_shared_by_all_batches_of_a_model_in_one_plan():
    limits = SplitLimits(max_requests=2, enqueued_token_limits={"gpt-5": 1000})
    plan = plan_batches([row(f"r{i}", model="gpt-5", tokens=300) for i in range(5)], limits)
    assert [ids(b) for b in plan.batches] == [["r0", "r1"], ["r2"]]
    assert [r.request_id for r in plan.held_back] == ["r3", "r4"]
    assert sum(b.est_prompt_tokens for b in plan.batches) <= 1000


def test_token_budget_is_shared_across_endpoints_for_the_same_model():
    # The enqueued-token queue is per model; two endpoints must not each get the whole queue.
    limits = SplitLimits(enqueued_token_limits={"gpt-5": 1000})
    rows = [
        row("c1", model="gpt-5", endpoint=CHAT, tokens=700),
        row("r1", model="gpt-5", endpoint=RESPONSES, tokens=700),
    ]
    plan = plan_batches(rows, limits)
    assert sum(b.est_prompt_tokens for b in plan.batches if b.model == "gpt-5") <= 1000
    assert [r.request_id for r in plan.held_back] == ["r1"]


# -- writing ------------------------------------------------------------------------------------


def _plan_and_intend(ledger, limits=None):
    plan = plan_batches(ledger.queued_rows(), limits or SplitLimits())
    for n, batch in enumerate(plan.batches):
        ledger.create_batch_intent(f"bpb_{n}", batch.endpoint, batch.model, batch.members)
    return plan


def test_written_file_size_equals_planned_bytes(ledger, chat, tmp_path):
    queued = [
        chat("plain"),
        chat("unicode", text='Grüße — 東京 🙂 "quoted" \\n'),
        chat("params", model="gpt-5-mini", max_tokens=50, response_format={"type": "json_object"}),
    ]
    ledger.enqueue(queued)
    plan = _plan_and_intend(ledger)
    assert len(plan.batches) == 2
    for n, planned in enumerate(plan.batches):
        path, size, lines = write_batch_file(ledger, f"bpb_{n}", tmp_path / "files", None)
        assert size == path.stat().st_size == planned.input_bytes == ledger.batch(f"bpb_{n}").input_bytes
        assert lines == len(planned.members)


def test_written_lines_are_api_requests_in_line_order(ledger, chat, tmp_path):
    queued = [chat(f"k{i}", text=f"question {i}") for i in range(5)]
    ledger.enqueue(queued)
    _plan_and_intend(ledger)
    path, _, _ = write_batch_file(ledger, "bpb_0", tmp_path, None)
    lines = [orjson.loads(raw) for raw in path.read_bytes().splitlines()]
    members = ledger.batch_members("bpb_0")
    assert [ln["custom_id"] for ln in lines] == [members[i] for i in sorted(members)] == [q.request_id for q in queued]
    assert all(ln["method"] == "POST" and ln["url"] == CHAT for ln in lines)
    assert [ln["body"] for ln in lines] == [q.body for q in queued]


def _vision_request(chat, image_store, png, key):
    ref = image_store.put(png)
    msg = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Describe the image."},
                {"type": "image_url", "image_url": {"url": ref, "detail": "low"}},
            ],
        }
    ]
    return chat(key, model="gpt-4o", messages=msg, image_store=image_store), ref


def test_split_respects_byte_limit_counting_inlined_images(ledger, chat, image_store, png_bytes, tmp_path):
    queued = [_vision_request(chat, image_store, png_bytes(i, size=(24, 24)), f"v{i}")[0] for i in range(5)]
    ref_only_bytes = sum(len(orjson.dumps(q.body)) for q in queued)
    limit = 2 * queued[0].line_bytes + 500  # room for two inlined lines, while all five fit by ref size
    assert ref_only_bytes < limit
    ledger.enqueue(queued)
    plan = _plan_and_intend(ledger, SplitLimits(max_bytes=limit))
    assert [len(b.members) for b in plan.batches] == [2, 2, 1]
    for n, planned in enumerate(plan.batches):
        path, size, _ = write_batch_file(ledger, f"bpb_{n}", tmp_path, image_store)
        assert size == path.stat().st_size == planned.input_bytes <= limit


def test_written_file_inlines_image_refs_as_data_urls(ledger, chat, image_store, png_bytes, tmp_path):
    png = png_bytes(11, size=(20, 10))
    queued, ref = _vision_request(chat, image_store, png, "v1")
    ledger.enqueue([queued])
    _plan_and_intend(ledger)
    path, size, _ = write_batch_file(ledger, "bpb_0", tmp_path, image_store)
    assert b"bp-image:" not in path.read_bytes()
    url = orjson.loads(path.read_bytes())["body"]["messages"][0]["content"][1]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,") and base64.b64decode(url.split(",", 1)[1]) == png
    assert size == queued.line_bytes + 1
    assert ledger.request_body(queued.request_id)["messages"][0]["content"][1]["image_url"]["url"] == ref


def test_image_from_a_file_with_an_uppercase_suffix_is_inlined_too(ledger, chat, image_store, png_bytes, tmp_path):
    src = tmp_path / "CAMERA_0001.PNG"
    src.write_bytes(png_bytes(12))
    ref = image_store.put_file(src)
    msg = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": ref}}]}]
    queued = chat("cam", model="gpt-4o", messages=msg, image_store=image_store)
    ledger.enqueue([queued])
    _plan_and_intend(ledger)
    path, size, _ = write_batch_file(ledger, "bpb_0", tmp_path / "files", image_store)
    assert b"bp-image:" not in path.read_bytes(), "the API would receive the internal ref instead of the image"
    assert size == queued.line_bytes + 1


def test_image_refs_without_a_store_fail_and_leave_no_partial_file(ledger, chat, image_store, png_bytes, tmp_path):
    ledger.enqueue([chat("plain"), _vision_request(chat, image_store, png_bytes(13), "v1")[0]])
    plan = _plan_and_intend(ledger)
    key = next(f"bpb_{n}" for n, b in enumerate(plan.batches) if b.model == "gpt-4o")
    out = tmp_path / "files"
    with pytest.raises(ValueError, match="no image store"):
        write_batch_file(ledger, key, out, None)
    assert list(out.iterdir()) == []
