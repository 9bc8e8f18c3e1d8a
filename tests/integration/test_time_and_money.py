"""Deadlines, budgets and prices on the simulator's clock: real SDK -> simulator -> ledger, time moved by hand."""

from __future__ import annotations

import json
import time
from decimal import Decimal

import pytest

from batch_pipeline.batching.polling import PollPolicy
from batch_pipeline.batching.pricing import UnpricedModelError
from batch_pipeline.driver import Driver
from batch_pipeline.ledger.reader import LedgerReader
from batch_pipeline.runtime import build_runtime
from batch_pipeline.search import SearchParams, expected_call_counts
from batch_pipeline.sessions import SessionConfig
from batch_pipeline.settings import load_settings
from openai_simulator import ManualClock, Simulator, SimulatorConfig
from tests.integration.support import drive, runtime_for

PROMPT = "a lighthouse in a storm"


class SharedClock(ManualClock):
    """One clock for the simulator (`now()`) and the pipeline (called): both see the same time."""

    def __call__(self) -> float:
        return self.now()


def clocked_runtime(url: str, home, clock: SharedClock, **env: str):
    settings = load_settings(
        {
            "BATCH_API_ENABLED": "true",
            "BATCH_API_MODE": "immediate",
            "OPENAI_API_KEY": "sk-test",
            "OPENAI_BASE_URL": url,
            "BATCH_PIPELINE_HOME": str(home),
            **env,
        }
    )
    return build_runtime(
        settings,
        clock=clock,
        poll_policy=PollPolicy(initial_s=0.01, max_s=0.05),
        sleep=lambda s: time.sleep(min(s, 0.01)),
    )


def test_batch_past_its_round_deadline_is_cancelled_and_finished_on_standard_before_the_session_deadline(tmp_path):
    clock = SharedClock(start=1_800_000_000.0)
    # Every batch would take two hours; the session has one.
    config = SimulatorConfig(
        data_dir=tmp_path / "sim", clock=clock, phase_seconds={"in_progress": 7200, "cancelling": 30}
    )
    with Simulator(config).serve() as url:
        runtime = clocked_runtime(url, tmp_path, clock)
        sid = runtime.sessions.start(
            SessionConfig(
                prompt=PROMPT,
                tier="batch",
                deadline_hours=1,
                session_id="late",
                params=SearchParams(N=4, M=2, K=1, E=1, seed=5),
            )
        )
        deadline_at = runtime.ledger.session(sid).deadline_at
        driver = Driver(runtime, owner="cli", session_ids=[sid], clock=clock)
        driver.tick()
        # The round's due time is in the ledger, so Dagster's read-only sensor knows when to tick again.
        (first,) = LedgerReader(runtime.ledger.path).running_session_rounds()
        assert clock.now() < first.round_due_at < deadline_at
        actions = []
        for _ in range(200):
            tick = driver.tick()
            actions += tick.deadline_actions
            if runtime.ledger.session(sid).status != "running":
                break
            clock.advance(60)
        row = runtime.ledger.session(sid)
        assert row.status == "completed", row
        assert clock.now() <= deadline_at, "the session finished before its deadline"
        assert {str(a.round_id) for a in actions} == {"i0-text", "i0-image", "i0-vision"}
        batches = runtime.ledger.batches()
        assert batches and all(b.status == "cancelled" for b in batches)
        with runtime.ledger.connect() as con:
            moved = con.execute(
                "SELECT tier, tier_reason, state FROM requests WHERE tier_reason LIKE 'deadline:%'"
            ).fetchall()
            kept = con.execute(
                "SELECT count(*) FROM results WHERE tier = 'batch' AND outcome = 'succeeded'"
            ).fetchone()[0]
        assert moved and all(tier == "standard" and state == "succeeded" for tier, _reason, state in moved)
        assert all("was due by" in reason and "runs on standard" in reason for _tier, reason, _state in moved)
        assert kept > 0, "the lines the batch finished before its cancel are kept and used"
        assert runtime.ledger.check_invariants() == []


def test_deadline_fallback_goes_to_flex_when_fallback_to_standard_is_off(tmp_path):
    clock = SharedClock(start=1_800_000_000.0)
    config = SimulatorConfig(data_dir=tmp_path / "sim", clock=clock, phase_seconds={"in_progress": 7200})
    with Simulator(config).serve() as url:
        runtime = clocked_runtime(url, tmp_path, clock, BATCH_FALLBACK_TO_STANDARD="false")
        sid = runtime.sessions.start(
            SessionConfig(
                prompt=PROMPT,
                tier="batch",
                deadline_hours=1,
                session_id="flexfb",
                params=SearchParams(N=2, M=1, K=1, E=1, text_model="gpt-5"),
            )
        )
        driver = Driver(runtime, owner="cli", session_ids=[sid], clock=clock)
        while not driver.tick().deadline_actions:
            clock.advance(60)
        for _ in range(5):
            driver.tick()
        with runtime.ledger.connect() as con:
            tiers = {
                t
                for (t,) in con.execute(
                    "SELECT DISTINCT tier FROM requests WHERE iteration = 0 AND round = 'text'"
                    " AND tier_reason LIKE 'deadline:%'"
                ).fetchall()
            }
        assert tiers == {"flex"}


def test_round_that_would_exceed_the_budget_is_never_submitted(base_url, tmp_path):
    runtime = runtime_for(base_url, tmp_path)
    # Four expansions fit in one cent; four images (0.5 cent each on standard) do not.
    sid = runtime.sessions.start(
        SessionConfig(
            prompt=PROMPT,
            tier="standard",
            budget_usd=Decimal("0.01"),
            session_id="budget",
            params=SearchParams(N=4, M=2, K=2, E=2),
        )
    )
    progress = drive(runtime, sid)
    assert progress.status == "stopped" and progress.error.startswith("budget: round i0-image")
    with runtime.ledger.connect() as con:
        rounds = {tuple(r) for r in con.execute("SELECT DISTINCT iteration, round FROM requests").fetchall()}
    assert rounds == {(0, "text")}, "the image round was never queued, let alone sent"
    assert runtime.ledger.cost_figures(session_id=sid).paid <= Decimal("0.01")


def test_a_budget_too_small_for_the_first_round_sends_nothing(base_url, tmp_path):
    runtime = runtime_for(base_url, tmp_path)
    sid = runtime.sessions.start(
        SessionConfig(
            prompt=PROMPT,
            tier="batch",
            budget_usd=Decimal("0.0001"),
            session_id="tiny",
            params=SearchParams(N=4, M=2, K=1, E=1),
        )
    )
    progress = drive(runtime, sid)
    assert progress.status == "stopped" and "budget" in progress.error
    assert runtime.ledger.request_states(session_id=sid) == {} and runtime.ledger.batches() == []


def test_unpriced_model_is_refused_at_launch_unless_its_prices_are_passed(base_url, tmp_path):
    runtime = runtime_for(base_url, tmp_path)
    config = SessionConfig(
        prompt=PROMPT,
        tier="standard",
        session_id="newmodel",
        params=SearchParams(N=2, M=1, K=1, E=1, text_model="gpt-9-mini"),
    )
    with pytest.raises(UnpricedModelError) as refused:
        runtime.sessions.start(config)
    assert refused.value.field == "text_model" and "BATCH_PRICES_FILE" in str(refused.value)
    assert runtime.ledger.sessions() == []

    prices = tmp_path / "prices.json"
    rate = {"input": 0.2, "cached_input": 0.02, "output": 0.8}
    prices.write_text(
        json.dumps({"version": "mine", "models": {"gpt-9-mini": {"standard": rate, "batch": rate, "flex": None}}})
    )
    priced = runtime_for(base_url, tmp_path / "priced", BATCH_PRICES_FILE=str(prices))
    sid = priced.sessions.start(config)
    assert drive(priced, sid).status == "completed"
    figures = priced.ledger.cost_figures(session_id=sid)
    assert figures.paid > 0 and figures.unpriced_calls == 0
    with priced.ledger.connect() as con:
        versions = {v for (v,) in con.execute("SELECT DISTINCT price_version FROM results").fetchall()}
    assert versions == {"2026-11-01+mine"}


def test_cache_savings_are_reported_apart_from_batch_savings(base_url, tmp_path):
    runtime = runtime_for(base_url, tmp_path)
    params = SearchParams(N=2, M=1, K=1, E=1, seed=4)
    first = runtime.sessions.start(SessionConfig(prompt=PROMPT, tier="batch", session_id="first", params=params))
    drive(runtime, first)
    again = runtime.sessions.start(SessionConfig(prompt=PROMPT, tier="batch", session_id="again", params=params))
    drive(runtime, again)
    paid_first, paid_again = (
        runtime.ledger.cost_figures(session_id=first),
        runtime.ledger.cost_figures(session_id=again),
    )
    assert paid_first.paid * 2 == paid_first.standard_for_calls and paid_first.cache_avoided == 0
    assert paid_again.paid == 0 and paid_again.standard_for_calls == 0 and paid_again.tier_saved == 0
    assert paid_again.cache_avoided == paid_first.standard_for_calls and paid_again.cache_hits == paid_first.calls


def test_two_rounds_per_iteration_write_children_in_the_vision_round(base_url, tmp_path):
    runtime = runtime_for(base_url, tmp_path)
    params = SearchParams(N=4, M=2, K=2, E=1, seed=2, rounds_per_iteration=2)
    sid = runtime.sessions.start(SessionConfig(prompt=PROMPT, tier="batch", session_id="tworound", params=params))
    assert drive(runtime, sid).status == "completed"
    state = runtime.sessions.state(sid)
    assert [(r.iteration, r.round) for r in state.rounds] == [
        (0, "text"),
        (0, "image"),
        (0, "vision"),
        (1, "image"),
        (1, "vision"),
    ]
    assert [r.calls for r in state.rounds] == [4, 4, 6 + 4, 4, 14]  # the first vision round critiques 4 images
    assert [c.text + c.image + c.vision for c in expected_call_counts(params)] == [4 + 4 + 10, 4 + 14]
    children = state.candidates_of(1)
    survivors = set(state.iterations[0].survivors)
    assert len(children) == 4 and {c.parent_id for c in children} == survivors
    assert all(c.critique and c.combined and not c.failed for c in children)
    with runtime.ledger.connect() as con:
        ops = dict(con.execute("SELECT operation, count(*) FROM requests GROUP BY 1").fetchall())
    assert ops == {"expand": 4, "image": 8, "compare": 6 + 14, "critique": 4}
