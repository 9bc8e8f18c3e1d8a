"""Session steps, flushes and ingestion as real materialisations against the simulator and a DuckDB ledger."""
from __future__ import annotations

import pytest

from batch_pipeline.ledger import Ledger
from batch_pipeline.ledger.reports import LedgerReader
from tests.defs.support import checks, flush, ingest, launch, metadata, run_session_to_end, step


def test_two_deferred_sessions_share_batches_and_end_with_ranked_images(instance, resources):
    for sid in ("sa", "sb"):
        assert launch(instance, resources, sid).success

    first = step(instance, resources, "sa")
    queued = metadata(first, "queued_requests")
    assert (queued["status"], queued["iteration"], queued["round"], queued["pending_requests"]) == ("waiting", 0, "text", 4)
    assert queued["requests_by_state"] == {"queued": 4}, "deferred mode: the step only queues"
    assert "session tier: batch" in queued["round_tiers"]
    assert all(passed for passed, _ in checks(first).values())
    assert "_Not ranked yet" in metadata(first, "ranked_results")["ranking"]

    assert step(instance, resources, "sb").success
    flushed = metadata(flush(instance, resources), "submitted_batches")
    assert (flushed["batches_planned"], flushed["requests_planned"], flushed["shared_by_sessions"]) == (1, 8, 2)
    assert "| created | validating |" in flushed["batches"] and "| 0% |" in flushed["batches"]

    ingested = metadata(ingest(instance, resources), "batch_results")
    assert ingested["batches_ingested"] == 1 and ingested["outcomes"]["completed lines"] == 8

    last = run_session_to_end(instance, resources, ["sa", "sb"])
    for sid, result in last.items():
        ranked = metadata(result, "ranked_results")
        assert ranked["status"] == "completed" and ranked["winner"].startswith("i1c")
        assert ranked["ranking"].startswith(f"### Winner: {ranked['winner']}")
        assert ranked["ranking"].count("](data:image/png;base64,") == 6, "N + M candidates ranked, each with its image"
        prompts = metadata(result, "generated_prompts")
        assert prompts["candidates"] == 8 and "| WHAT | HOW |" in prompts["prompts"]
        thumbs = metadata(result, "image_candidates")
        assert thumbs["iteration"] == 1 and thumbs["thumbnails"].count("data:image/png;base64,") == 4
        assert all(passed for passed, _ in checks(result).values())

    reader = LedgerReader(resources["ledger"].database)
    shared = [b for b in reader.batch_overview() if set(b.sessions) == {"sa", "sb"}]
    assert len(shared) == len(reader.batch_overview()) == 5, "every round of both sessions went out in one batch"
    assert Ledger(resources["ledger"].database).check_invariants() == []


@pytest.mark.parametrize("batch_mode", ["immediate"])
def test_immediate_mode_submits_a_step_s_requests_in_the_step(instance, resources):
    assert launch(instance, resources, "s1").success
    queued = metadata(step(instance, resources, "s1"), "queued_requests")
    assert queued["requests_by_state"] == {"submitted": 4}
    (batch,) = LedgerReader(resources["ledger"].database).batch_overview()
    assert batch.phase == "created" and batch.sessions == ("s1",)


def test_a_step_after_results_applies_the_round_and_queues_the_next(instance, resources):
    assert launch(instance, resources, "s1").success
    step(instance, resources, "s1")
    assert metadata(step(instance, resources, "s1"), "queued_requests")["round"] == "text", "nothing new: still waiting"
    flush(instance, resources)
    ingest(instance, resources)
    after = metadata(step(instance, resources, "s1"), "queued_requests")
    assert (after["round"], after["pending_requests"]) == ("image", 4)
    assert after["requests_by_state"] == {"queued": 4, "succeeded": 4}
