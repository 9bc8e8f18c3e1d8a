"""The tick run against the simulator and a DuckDB ledger: one run steps every ready session, flushes, ingests,
and records each moved session's views on its own partition."""

from __future__ import annotations

import dagster as dg
import pytest

from batch_pipeline.ledger import Ledger
from batch_pipeline.ledger.reader import LedgerReader
from tests.defs.support import checks, launch, metadata, moved, run_session_to_end, session_metadata, tick


def test_one_tick_run_moves_two_deferred_sessions_which_share_batches_and_end_with_ranked_images(
    instance, resources, monkeypatch
):
    for sid in ("sa", "sb"):
        assert launch(instance, resources, sid).success

    first = tick(instance, resources)
    assert first.success and moved(first) == {"sa", "sb"}, "one run steps every ready session"
    queued = session_metadata(first, "queued_requests", "sa")
    assert (queued["status"], queued["iteration"], queued["round"], queued["pending_requests"]) == (
        "waiting",
        0,
        "text",
        4,
    )
    assert queued["requests_by_state"] == {"queued": 4}, "deferred mode, queue not due yet: the step only queues"
    assert "session tier: batch" in queued["round_tiers"]
    assert "_Not ranked yet" in session_metadata(first, "ranked_results", "sb")["ranking"]
    assert all(passed for passed, _ in checks(first).values())
    assert metadata(first, "session_steps")["sessions_moved"] == 2

    monkeypatch.setenv("BATCH_FLUSH_MAX_AGE_SECONDS", "0")  # the queue is due: the next tick flushes it
    second = tick(instance, resources)
    flushed = metadata(second, "submitted_batches")
    # The text round's batch (both sessions) went out, ended at once and was applied; the image round it
    # queued was due at once too, so the same run sent it rather than leaving it to the next run.
    assert (flushed["batches_planned"], flushed["requests_planned"], flushed["shared_by_sessions"]) == (2, 16, 2)
    assert metadata(second, "batch_results")["batches_ingested"] == 1, "the simulator ends batches at once"
    after = session_metadata(second, "queued_requests", "sa")
    assert (after["iteration"], after["round"], after["requests_by_state"]) == (
        0,
        "image",
        {"succeeded": 4, "submitted": 4},
    )

    last = run_session_to_end(instance, resources, ["sa", "sb"])
    for sid, result in last.items():
        ranked = session_metadata(result, "ranked_results", sid)
        assert ranked["status"] == "completed" and ranked["winner"].startswith("i1c")
        assert ranked["ranking"].startswith(f"### Winner: {ranked['winner']}")
        assert ranked["ranking"].count("](data:image/jpeg;base64,") == 6, "N + M candidates ranked, each with its image"
        prompts = session_metadata(result, "generated_prompts", sid)
        assert prompts["candidates"] == 8 and "| WHAT | HOW |" in prompts["prompts"]
        thumbs = session_metadata(result, "image_candidates", sid)
        assert thumbs["iteration"] == 1 and thumbs["thumbnails"].count("data:image/jpeg;base64,") == 4
        assert all(passed for passed, _ in checks(result).values())

    reader = LedgerReader(resources["ledger"].database)
    shared = [b for b in reader.batch_overview() if set(b.sessions) == {"sa", "sb"}]
    assert len(shared) == len(reader.batch_overview()) == 5, "every round of both sessions went out in one batch"
    assert Ledger(resources["ledger"].database).check_invariants() == []
    # The instance holds each session's history on its own partition.
    for sid in ("sa", "sb"):
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("ranked_results"), asset_partitions=[sid]), limit=100
        ).records
        # The first step, the ranking of iteration 0, the end: a view is recorded when its round changed it.
        assert len(records) == 3 and "winner" in records[0].asset_materialization.metadata


@pytest.mark.parametrize("batch_mode", ["immediate"])
def test_immediate_mode_submits_a_step_s_requests_in_the_tick(instance, resources):
    assert launch(instance, resources, "s1").success
    queued = session_metadata(tick(instance, resources), "queued_requests", "s1")
    # Sent within the step; the simulator ended it at once, so the same tick applied it and sent the next round.
    assert (queued["round"], queued["requests_by_state"]) == ("image", {"succeeded": 4, "submitted": 4})
    batches = LedgerReader(resources["ledger"].database).batch_overview()
    assert sorted(b.phase for b in batches) == ["created", "ingested"] and {b.sessions for b in batches} == {("s1",)}


def test_a_failing_session_is_ended_failed_and_the_others_go_on(instance, resources):
    for sid in ("ok", "broken"):
        assert launch(instance, resources, sid).success
    assert tick(instance, resources).success
    ledger = Ledger(resources["ledger"].database)
    with ledger.transaction() as con:
        # The broken session's queued round no longer matches what its state asks for, and looks back from a
        # failed batch (so it is stepped): re-queueing it raises.
        con.execute("UPDATE requests SET body_hash = 'tampered', attempts = 1 WHERE session_id = 'broken'")

    result = tick(instance, resources)
    assert result.success, "one broken session does not fail the run"
    broken = ledger.session("broken")
    assert broken.status == "failed" and "different body" in broken.error
    assert ledger.session("ok").status == "running"
    assert metadata(result, "session_steps")["failed_sessions"] == "broken"
    assert session_metadata(result, "queued_requests", "broken")["status"] == "failed"


def test_a_step_records_the_views_its_rounds_changed():
    from batch_pipeline.defs.session_assets import changed_views
    from batch_pipeline.ledger.reader import SessionRound
    from batch_pipeline.sessions import SessionProgress

    def views(was: tuple[int, str, int], now: tuple[int, str | None, str]) -> list[str]:
        before = SessionRound("s", was[0], was[1], was[2], 0, 0)
        step = SessionProgress(session_id="s", iteration=now[0], next_round=now[1], status=now[2])
        return [v.key.path[-1] for v in changed_views(before, step)]

    every = ["queued_requests", "generated_prompts", "image_candidates", "ranked_results"]
    assert views((0, "text", 0), (0, "text", "waiting")) == every, "the first step shows every view"
    assert views((0, "text", 4), (0, "image", "waiting")) == ["queued_requests", "generated_prompts"]
    assert views((0, "image", 4), (0, "vision", "waiting")) == ["queued_requests", "image_candidates"]
    assert views((0, "vision", 16), (1, "text", "waiting")) == ["queued_requests", "ranked_results"]
    assert views((1, "text", 0), (1, "text", "waiting")) == ["queued_requests"], "a queue step changes the queue only"
    assert views((1, "vision", 16), (1, None, "completed")) == every, "the end shows every view"
