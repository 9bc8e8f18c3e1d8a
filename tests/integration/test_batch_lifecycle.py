"""The batch core end to end: real SDK -> simulator -> ledger, including the failure paths."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from decimal import Decimal

import orjson

from batch_pipeline.batching.limits import SplitLimits
from batch_pipeline.batching.requests import ChatRequest, ImageRequest, build_request
from batch_pipeline.errors import is_transient
from batch_pipeline.ledger import Ledger
from batch_pipeline.ledger.states import BatchPhase, RequestState
from batch_pipeline.vocabulary import Outcome, Tier
from openai_simulator import FaultRule, Simulator, SimulatorConfig
from tests.conftest import ManualClock
from tests.integration.support import chat_requests, make_manager, wait_until


def settle(manager, timeout_s: float = 30) -> None:
    """The batch core's primitives in the order a driver calls them, until no batch-tier request waits."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            manager.submit_queued()
            manager.refresh()
            manager.ingest_ended()
        except Exception as exc:
            if not is_transient(exc):
                raise
        counts = manager.ledger.state_counts(tier=Tier.BATCH)
        if not counts.get("queued") and not counts.get("submitted"):
            break
        assert time.monotonic() < deadline, counts
        time.sleep(0.02)
    assert manager.ledger.check_invariants() == []


def test_submit_poll_retrieve_maps_shuffled_output_by_custom_id(manager, ledger, client, sim):
    requests = chat_requests(25)
    ledger.enqueue(requests)
    settle(manager)

    assert ledger.state_counts() == {"succeeded": 25}
    results = ledger.final_results([r.request_id for r in requests])
    for request in requests:
        # The simulator answers deterministically per body: the synchronous answer to the same
        # body is what the batch must have mapped to this custom_id.
        sync = client.chat.completions.create(**request.body)
        assert (
            results[request.request_id].response["choices"][0]["message"]["content"] == sync.choices[0].message.content
        )
    (batch,) = ledger.batches()
    remote = client.batches.retrieve(batch.openai_batch_id)
    order = [orjson.loads(line)["custom_id"] for line in client.files.content(remote.output_file_id).text.splitlines()]
    assert sorted(order) == sorted(r.request_id for r in requests)
    assert order != [r.request_id for r in requests], "the simulator shuffles output; mapping must not rely on order"


def test_batch_costs_half_of_standard_and_is_recorded_per_request(manager, ledger):
    ledger.enqueue(chat_requests(10))
    settle(manager)
    totals = ledger.cost_figures()
    assert totals.paid > 0
    assert totals.paid * 2 == totals.standard_for_calls
    assert totals.tier_saved == totals.paid


def test_expired_batch_requeues_only_unfinished_requests(manager, ledger, sim):
    sim.add_fault(FaultRule(kind="expire", nth=1, times=1, params={"complete_fraction": 0.5}))
    requests = chat_requests(10)
    ledger.enqueue(requests)
    settle(manager)

    first, second = ledger.batches()
    assert first.status == "expired" and second.status == "completed"
    assert first.completed_count == 5
    assert second.request_count == 5, "only the expired half goes again"
    assert ledger.state_counts() == {"succeeded": 10}
    with ledger.connect() as con:
        attempts = dict(con.execute("SELECT request_id, attempts FROM requests").fetchall())
    assert sorted(attempts.values()) == [1] * 5 + [2] * 5


def test_per_request_errors_permanent_fail_and_retryable_retry(manager, ledger, sim):
    requests = chat_requests(6)
    sim.add_fault(
        FaultRule(kind="request_error", custom_id=r".*q1$", params={"status_code": 400, "code": "invalid_value"})
    )
    sim.add_fault(FaultRule(kind="request_error", custom_id=r".*q2$", times=1, params={"status_code": 500}))
    sim.add_fault(FaultRule(kind="request_timeout", custom_id=r".*q3$", times=1))
    ledger.enqueue(requests)
    settle(manager)

    states = ledger.request_states()
    assert states.pop("s1-q1") == RequestState.FAILED
    assert set(states.values()) == {RequestState.SUCCEEDED}
    final = ledger.final_results(["s1-q1"])["s1-q1"]
    assert final.outcome == Outcome.FAILED_PERMANENT and final.status_code == 400
    assert len(ledger.batches()) == 2, "the retryable pair went again in one second batch"


def test_all_rows_failed_batch_has_no_output_file_and_loses_nothing(manager, ledger, sim):
    sim.add_fault(FaultRule(kind="all_fail", nth=1, times=1))
    ledger.enqueue(chat_requests(4))
    settle(manager)
    first = ledger.batches()[0]
    assert first.output_file_id is None and first.error_file_id is not None
    assert ledger.state_counts() == {"succeeded": 4}


def test_token_limit_validation_failure_requeues_then_fails_after_max_attempts(client, ledger, tmp_path):
    # The client believes the queue is larger than the server's: the server refuses the batch.
    limited = Simulator(SimulatorConfig(data_dir=tmp_path / "sim2", token_limits={"gpt-5-mini": 50}))
    with limited.serve() as url:
        import openai

        c = openai.OpenAI(api_key="sk-test", base_url=url, max_retries=0)
        manager = make_manager(c, ledger, tmp_path, max_attempts=2)
        ledger.enqueue(chat_requests(10))
        settle(manager)
    batches = ledger.batches()
    assert [b.status for b in batches] == ["failed", "failed"]
    assert batches[0].errors[0]["code"] == "token_limit_exceeded"
    assert ledger.state_counts() == {"failed": 10}


def test_client_splits_to_the_model_token_queue_so_the_server_never_refuses(client, ledger, tmp_path):
    limited = Simulator(SimulatorConfig(data_dir=tmp_path / "sim3", token_limits={"gpt-5-mini": 100}))
    with limited.serve() as url:
        import openai

        c = openai.OpenAI(api_key="sk-test", base_url=url, max_retries=0)
        manager = make_manager(c, ledger, tmp_path, limits=SplitLimits(enqueued_token_limits={"gpt-5-mini": 100}))
        ledger.enqueue(chat_requests(12))
        settle(manager)
    batches = ledger.batches()
    assert len(batches) > 1 and all(b.status == "completed" for b in batches)
    assert all(b.est_prompt_tokens <= 100 for b in batches)
    assert ledger.state_counts() == {"succeeded": 12}


def test_validation_error_naming_a_line_fails_that_request_only(manager, ledger):
    good = chat_requests(3)
    # A body whose model differs from its batch's (the builder never makes one; a hand-edited
    # ledger row could): the server rejects the whole file, naming the line.
    template = chat_requests(1, prefix="odd")[0]
    bad = template.model_copy(update={"body": {**template.body, "model": "gpt-4o-mini"}})
    ledger.enqueue(good)
    ledger.enqueue([bad])
    settle(manager)
    assert ledger.request_states()["s1-odd0"] == RequestState.FAILED
    assert ledger.state_counts() == {"failed": 1, "succeeded": 3}
    assert ledger.batches()[0].status == "failed"


def test_5xx_after_create_leaves_exactly_one_batch(manager, ledger, sim, client):
    sim.add_fault(FaultRule(kind="error_after_create", times=1))
    ledger.enqueue(chat_requests(5))
    settle(manager)
    assert len(list(client.batches.list())) == 1
    (batch,) = ledger.batches()
    assert batch.phase == BatchPhase.INGESTED
    assert ledger.state_counts() == {"succeeded": 5}


def test_a_create_that_times_out_and_lands_late_is_attached_not_sent_again(sim, client, tmp_path, image_store):
    clock = ManualClock(time.time())
    ledger = Ledger(tmp_path / "late.duckdb", clock=clock)
    manager = make_manager(client, ledger, tmp_path, image_store, clock=clock, create_timeout_s=0.3)
    # The server holds the create for 1.5 s and then creates the batch, after the client gave up.
    sim.add_fault(FaultRule(kind="slow", path=r"^/v1/batches$", method="POST", times=1, params={"seconds": 1.5}))
    ledger.enqueue(chat_requests(3))
    manager.submit_queued()
    assert ledger.batches()[0].phase == BatchPhase.UPLOADED and ledger.batches()[0].create_sent_at == clock.now
    manager.submit_queued()  # at once: the first create may still land, so no second one goes out
    wait_until(lambda: len(list(client.batches.list())) == 1, timeout=5)
    manager.submit_queued()  # it landed: found by its key and attached
    assert ledger.batches()[0].phase == BatchPhase.CREATED
    settle(manager)
    assert len(list(client.batches.list())) == 1
    assert ledger.state_counts() == {"succeeded": 3}


def test_an_unanswered_create_that_never_lands_is_sent_again_only_after_it_could_have(
    sim, client, tmp_path, image_store
):
    clock = ManualClock(time.time())
    ledger = Ledger(tmp_path / "lost.duckdb", clock=clock)
    manager = make_manager(client, ledger, tmp_path, image_store, clock=clock, create_timeout_s=5)
    working = manager.create_client
    # The network drops the create before it reaches the server (nothing listens on port 9).
    manager.create_client = working.with_options(base_url="http://127.0.0.1:9/v1")
    ledger.enqueue(chat_requests(3))
    manager.submit_queued()
    manager.create_client = working
    clock.advance(manager.create_settle_s - 1)
    manager.submit_queued()
    assert ledger.batches()[0].phase == BatchPhase.UPLOADED and list(client.batches.list()) == []
    clock.advance(1)
    manager.submit_queued()
    assert ledger.batches()[0].phase == BatchPhase.CREATED and len(list(client.batches.list())) == 1


def test_a_duplicate_that_landed_anyway_is_cancelled_and_a_stranger_left_alone(ledger, tmp_path):
    import openai

    # Everything stays in flight while we look.
    sim = Simulator(SimulatorConfig(data_dir=tmp_path / "sim-dup", phase_seconds={"validating": 3600}))
    with sim.serve() as url:
        client = openai.OpenAI(api_key="sk-test", base_url=url, max_retries=0)
        manager = make_manager(client, ledger, tmp_path)
        ledger.enqueue(chat_requests(3))
        (key,) = manager.submit_queued()
        recorded = ledger.batch(key)
        # Say its create had gone unanswered before the one recorded: until the window closes, a batch
        # carrying its key may land. Here one did; another deployment sharing the account tagged one with
        # a key this ledger does not know.
        with ledger.transaction() as con:
            con.execute("UPDATE batches SET sweep_until = ? WHERE batch_key = ?", [time.time() + 3600, key])
        duplicate, stranger = (
            client.batches.create(
                input_file_id=recorded.input_file_id,
                endpoint=recorded.endpoint,
                completion_window="24h",
                metadata={"bp_batch_key": tag},
            )
            for tag in (key, "bpb_not_ours")
        )
        manager.refresh()
        statuses = {b.id: b.status for b in client.batches.list()}
    assert statuses[duplicate.id] in ("cancelling", "cancelled")
    assert statuses[recorded.openai_batch_id] == statuses[stranger.id] == "validating"
    assert ledger.batch(key).openai_batch_id == recorded.openai_batch_id
    assert [b.openai_batch_id for b in ledger.batches() if b.duplicate_of == key] == [duplicate.id]


def test_create_failing_without_creating_is_retried_on_the_next_submit(manager, ledger, sim, client):
    sim.add_fault(FaultRule(kind="http_500", path=r"^/v1/batches$", method="POST", times=1))
    ledger.enqueue(chat_requests(3))
    manager.submit_queued()
    assert ledger.batches()[0].phase == BatchPhase.UPLOADED
    settle(manager)
    assert len(list(client.batches.list())) == 1
    assert ledger.state_counts() == {"succeeded": 3}


def test_process_killed_between_create_and_recording_id_reattaches_on_restart(ledger, base_url, client, tmp_path):
    ledger.enqueue(chat_requests(4))
    script = textwrap.dedent(f"""
        import os, openai
        from batch_pipeline.batching.lifecycle import BatchLifecycle
        from batch_pipeline.ledger import Ledger

        def die(*args, **kwargs):
            os._exit(9)  # the batch exists remotely; its id never reaches the ledger

        Ledger.mark_created = die
        client = openai.OpenAI(api_key="sk-test", base_url={base_url!r}, max_retries=0)
        files_dir = {str(tmp_path / "batch_files")!r}
        BatchLifecycle(client, Ledger({ledger.store.location!r}), files_dir=files_dir).submit_queued()
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 9, proc.stderr
    assert len(list(client.batches.list())) == 1
    assert ledger.batches()[0].phase == BatchPhase.UPLOADED

    manager = make_manager(client, ledger, tmp_path)
    settle(manager)
    assert len(list(client.batches.list())) == 1, "restart re-attached instead of creating a second batch"
    assert ledger.state_counts() == {"succeeded": 4}


def test_simulator_restart_mid_batch_loses_nothing(ledger, tmp_path):
    import openai

    data_dir = tmp_path / "sim-restart"
    config = SimulatorConfig(data_dir=data_dir, phase_seconds={"validating": 0, "in_progress": 3600, "finalizing": 0})
    first = Simulator(config)
    with first.serve() as url:
        manager = make_manager(openai.OpenAI(api_key="sk-test", base_url=url, max_retries=0), ledger, tmp_path)
        ledger.enqueue(chat_requests(6))
        manager.submit_queued()
        manager.refresh()
        assert ledger.batches()[0].status == "in_progress"

    second = Simulator(
        config.model_copy(update={"phase_seconds": {"validating": 0, "in_progress": 0, "finalizing": 0}})
    )
    with second.serve() as url:
        manager = make_manager(openai.OpenAI(api_key="sk-test", base_url=url, max_retries=0), ledger, tmp_path)
        settle(manager)
    assert len(ledger.batches()) == 1
    assert ledger.state_counts() == {"succeeded": 6}


def test_transient_poll_errors_never_end_the_wait(manager, ledger, sim):
    sim.add_fault(FaultRule(kind="http_500", path=r"^/v1/batches$", method="GET", times=3))
    ledger.enqueue(chat_requests(3))
    settle(manager)
    assert ledger.state_counts() == {"succeeded": 3}


def test_cancelled_batch_keeps_partial_output(ledger, tmp_path):
    import openai

    config = SimulatorConfig(
        data_dir=tmp_path / "sim-cancel",
        cancel_keep_fraction=0.5,
        phase_seconds={"validating": 0, "in_progress": 3600, "finalizing": 0},
    )
    sim = Simulator(config)
    with sim.serve() as url:
        manager = make_manager(openai.OpenAI(api_key="sk-test", base_url=url, max_retries=0), ledger, tmp_path)
        ledger.enqueue(chat_requests(6))
        (key,) = manager.submit_queued()
        manager.refresh()
        manager.cancel(key)
        settle(manager)
    counts = ledger.state_counts()
    assert counts == {"cancelled": 3, "succeeded": 3}


def test_image_generation_and_vision_in_batches_keep_image_bytes_out_of_the_ledger(manager, ledger, image_store):
    prompts = ["a lighthouse in a storm, chiaroscuro", "a lighthouse at dawn"]
    ledger.enqueue(
        [
            build_request(
                ImageRequest(key=f"img{i}", model="gpt-image-1-mini", prompt=p),
                namespace="s1",
                operation="image",
                session_id="s1",
            )
            for i, p in enumerate(prompts)
        ]
    )
    settle(manager)
    results = ledger.final_results(["s1-img0", "s1-img1"])
    refs = [r.response["data"][0]["image_ref"] for r in results.values()]
    assert all(image_store.path(ref).exists() for ref in refs)
    assert all(r.cost_usd == Decimal("0.0025") for r in results.values()), "low 1024x1024 at half price"
    with ledger.connect() as con:
        assert con.execute("SELECT count(*) FROM results WHERE response::VARCHAR LIKE '%b64_json%'").fetchone()[0] == 0

    vision = build_request(
        ChatRequest(
            key="cmp",
            model="gpt-5-nano",
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Which image is better?\nUser prompt: a lighthouse in a storm"},
                        {"type": "image_url", "image_url": {"url": refs[0], "detail": "low"}},
                        {"type": "image_url", "image_url": {"url": refs[1], "detail": "low"}},
                    ],
                }
            ],
            response_format={
                "type": "json_schema",
                "json_schema": {
                    "name": "cmp",
                    "strict": True,
                    "schema": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["winner"],
                        "properties": {"winner": {"type": "string", "enum": ["A", "B"]}},
                    },
                },
            },
        ),
        namespace="s1",
        operation="compare",
        session_id="s1",
        image_store=image_store,
    )
    ledger.enqueue([vision])
    assert "base64" not in orjson.dumps(ledger.request_body("s1-cmp")).decode()
    settle(manager)
    answer = ledger.final_results(["s1-cmp"])["s1-cmp"].response["choices"][0]["message"]["content"]
    assert orjson.loads(answer)["winner"] in {"A", "B"}


def test_many_requests_split_by_count_and_all_succeed(client, ledger, tmp_path):
    manager = make_manager(client, ledger, tmp_path, limits=SplitLimits(max_requests=40))
    ledger.enqueue(chat_requests(150))
    settle(manager)
    assert [b.request_count for b in ledger.batches()] == [40, 40, 40, 30]
    assert ledger.state_counts() == {"succeeded": 150}


def test_failed_downloads_are_retried_and_nothing_is_ingested_twice(manager, ledger, sim):
    sim.add_fault(FaultRule(kind="http_500", path=r"^/v1/files/[^/]+/content$", times=2))
    ledger.enqueue(chat_requests(5))
    settle(manager)
    assert ledger.state_counts() == {"succeeded": 5}
    with ledger.connect() as con:
        assert con.execute("SELECT count(*) FROM results").fetchone() == (5,)
