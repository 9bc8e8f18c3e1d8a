"""Asset checks pass on a healthy ledger and fail as designed: ERROR checks block, the budget only warns."""
from __future__ import annotations

from batch_pipeline.ledger import Ledger
from tests.defs.support import checks, flush, ingest, launch, step


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


def test_spend_over_the_budget_warns_without_stopping_the_session(instance, resources):
    assert launch(instance, resources, "s1", budget_usd=0.000001).success
    assert checks(step(instance, resources, "s1"))["queued_requests_budget_check"] == (True, "WARN"), "nothing spent yet"
    flush(instance, resources)
    ingest(instance, resources)
    result = step(instance, resources, "s1")
    assert result.success
    assert checks(result)["queued_requests_budget_check"] == (False, "WARN")
    (evaluation,) = [e for e in result.get_asset_check_evaluations() if e.check_name == "queued_requests_budget_check"]
    assert evaluation.description.startswith("spent $0.00") and evaluation.description.endswith("of a $0.000001 budget")
    assert {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()} >= {"ranked_results"}


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
