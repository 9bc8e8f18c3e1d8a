"""Asset checks pass on a healthy ledger and fail as designed: ERROR checks block, the budget only warns."""
from __future__ import annotations

from batch_pipeline.ledger import Ledger
from tests.defs.support import checks, flush, ingest, launch, metadata, step


def test_a_corrupt_applied_round_fails_the_blocking_check_and_skips_the_views(instance, resources):
    assert launch(instance, resources, "s1").success
    step(instance, resources, "s1")
    flush(instance, resources)
    ingest(instance, resources)
    assert step(instance, resources, "s1").success  # applies the text round
    ledger = Ledger(resources["ledger"].database)
    # Corrupt what a step relies on: one answered request of the applied round is "submitted" again.
    with ledger.transaction() as con:
        con.execute("UPDATE requests SET state = 'submitted' WHERE request_id = (SELECT min(request_id) FROM requests"
                    " WHERE round_key = 'i0-text')")

    result = step(instance, resources, "s1", raise_on_error=False)
    assert not result.success
    verdicts = checks(result)
    assert verdicts["queued_requests_rounds_terminal_check"] == (False, "ERROR")
    materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert materialized == {"queued_requests"}, "the views downstream of a blocking failure are not rendered"


def test_a_round_over_the_budget_is_never_sent_and_the_session_stops(instance, resources):
    assert launch(instance, resources, "s1", budget_usd=0.000001).success
    result = step(instance, resources, "s1")
    assert result.success
    assert checks(result)["queued_requests_budget_check"] == (True, "WARN"), "nothing was spent"
    meta = metadata(result, "queued_requests")
    assert meta["status"] == "stopped" and meta["error"].startswith("budget: round i0-text")
    assert meta["cost_paid"] == "$0" and meta["budget"] == "$0.0000010"
    ledger = Ledger(resources["ledger"].database)
    assert ledger.request_states(session_id="s1") == {} and ledger.session("s1").status == "stopped"


def test_broken_ledger_invariants_fail_both_invariant_checks(instance, resources):
    assert launch(instance, resources, "s1").success
    step(instance, resources, "s1")
    flush(instance, resources)
    assert ingest(instance, resources).success
    ledger = Ledger(resources["ledger"].database)
    with ledger.transaction() as con:
        # A second terminal event for one request: it would have been answered (and paid) twice.
        con.execute("INSERT INTO request_events SELECT request_id, event_at + 1, from_state, to_state, batch_key, 'dup'"
                    " FROM request_events WHERE to_state = 'succeeded' LIMIT 1")

    ingested = ingest(instance, resources)
    assert not ingested.success
    assert checks(ingested)["batch_results_invariants_check"] == (False, "ERROR")
    stepped = step(instance, resources, "s1", raise_on_error=False)
    assert checks(stepped)["queued_requests_ledger_invariants_check"] == (False, "ERROR")
