"""The tick run's asset checks pass on a healthy ledger and fail as designed: a corrupt session gets no views,
broken invariants fail the run, the budget only warns."""

from __future__ import annotations

from batch_pipeline.ledger import Ledger
from tests.defs.support import checks, launch, moved, session_metadata, tick


def _answered_text_round(instance, resources, monkeypatch, session_ids=("s1",)) -> Ledger:
    """The text round queued, flushed, answered and applied (the image round then queued and sent)."""
    monkeypatch.setenv("BATCH_FLUSH_MAX_AGE_SECONDS", "0")
    assert tick(instance, resources).success
    monkeypatch.setenv("BATCH_FLUSH_MAX_AGE_SECONDS", "60")
    return Ledger(resources["ledger"].database)


def test_a_corrupt_applied_round_fails_its_check_and_skips_that_session_s_views_only(instance, resources, monkeypatch):
    for sid in ("s1", "s2"):
        assert launch(instance, resources, sid).success
    ledger = _answered_text_round(instance, resources, monkeypatch)
    # Corrupt what a step relies on: one answered request of an applied round is "submitted" again.
    with ledger.transaction() as con:
        con.execute(
            "UPDATE requests SET state = 'submitted' WHERE request_id = (SELECT min(request_id) FROM requests"
            " WHERE iteration = 0 AND round = 'text' AND session_id = 's1')"
        )
    result = tick(instance, resources)  # ingests the image round, so both sessions step
    assert checks(result)["applied_rounds_terminal"] == (False, "ERROR")
    assert "s2" in moved(result)
    assert "s1" not in moved(result), "the views of a corrupt session are not recorded"


def test_a_round_over_the_budget_is_never_sent_and_the_session_stops(instance, resources):
    assert launch(instance, resources, "s1", budget_usd=0.000001).success
    result = tick(instance, resources)
    assert result.success
    assert checks(result)["session_budgets"] == (True, "WARN"), "nothing was spent"
    meta = session_metadata(result, "queued_requests", "s1")
    assert meta["status"] == "stopped" and meta["error"].startswith("budget: round i0-text")
    assert meta["cost_paid"] == "$0" and meta["budget"] == "$0.0000010"
    ledger = Ledger(resources["ledger"].database)
    assert ledger.request_states(session_id="s1") == {} and ledger.session("s1").status == "stopped"


def test_broken_ledger_invariants_fail_the_blocking_check_and_the_run(instance, resources, monkeypatch):
    assert launch(instance, resources, "s1").success
    ledger = _answered_text_round(instance, resources, monkeypatch)
    with ledger.transaction() as con:
        # A second terminal event for one request: it would have been answered (and paid) twice.
        con.execute(
            "INSERT INTO request_events SELECT request_id, event_at + 1, from_state, to_state, batch_key, 'dup'"
            " FROM request_events WHERE to_state = 'succeeded' LIMIT 1"
        )
    result = tick(instance, resources)
    assert not result.success
    assert checks(result)["ledger_invariants"] == (False, "ERROR")
