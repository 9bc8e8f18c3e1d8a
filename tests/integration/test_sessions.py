"""Beam-search sessions end to end on every tier: real SDK -> simulator -> ledger."""

from __future__ import annotations

from decimal import Decimal

import pytest

from batch_pipeline.search import SearchParams
from batch_pipeline.sessions import SessionConfig
from openai_simulator import FaultRule
from tests.integration.support import drive, runtime_for

PROMPT = "a lighthouse in a storm"
# The seeded expectations below (rising scores, flex on text, three rounds) were recorded with these
# models and the 3-round iteration; the models are deprecated but still priced, so a session may name them.
OLD_MODELS = {"text_model": "gpt-5-mini", "vision_model": "gpt-5-nano", "rounds_per_iteration": 3}
PARAMS = SearchParams(N=9, M=3, K=3, E=3, seed=7, **OLD_MODELS)
SMALL = SearchParams(N=4, M=2, K=2, E=2, seed=3, **OLD_MODELS)


def run_session(runtime, tier: str, session_id: str, params: SearchParams = PARAMS, **config):
    sid = runtime.sessions.start(
        SessionConfig(prompt=PROMPT, params=params, tier=tier, session_id=session_id, **config)
    )
    progress = drive(runtime, sid, timeout_s=120)
    assert progress.status == "completed", progress
    assert runtime.ledger.check_invariants() == []
    return runtime.sessions.state(sid)


@pytest.fixture(scope="module", params=["duckdb", "postgres"])
def tier_runs(request, tmp_path_factory):
    """One N=9, M=3, K=3, E=3 session per tier, each in its own ledger, same seed; on each backend."""
    from openai_simulator import Simulator, SimulatorConfig

    runs = {}
    for tier in ("standard", "flex", "batch"):
        home = tmp_path_factory.mktemp(tier)
        env = {}
        if request.param == "postgres":
            server = request.getfixturevalue("postgres_server")  # (the run's server deletes it at the end)
            env["BATCH_LEDGER_URL"] = server.url(server.create_database(f"tiers_{tier}"))
        with Simulator(SimulatorConfig(data_dir=home / "sim")).serve() as url:
            runtime = runtime_for(url, home, **env)
            runs[tier] = (run_session(runtime, tier, "s" + tier[:3]), runtime)
    return runs


def test_same_seed_gives_the_same_winner_on_every_tier(tier_runs):
    winners = {tier: state.candidate(state.winner_id).combined for tier, (state, _) in tier_runs.items()}
    assert len(set(winners.values())) == 1, winners


def test_three_rounds_per_iteration_on_every_tier(tier_runs):
    for state, _ in tier_runs.values():
        assert [(r.iteration, r.round) for r in state.rounds] == [
            (k, name) for k in range(3) for name in ("text", "image", "vision")
        ]
        assert [r.calls for r in state.rounds] == [9, 9, 108, 9, 9, 189, 9, 9, 189]


def test_best_score_rises_across_iterations_in_the_simulator(tier_runs):
    state, _ = tier_runs["batch"]
    scores = state.final_best_scores
    assert scores[0] < scores[1] < scores[2], scores


def test_batch_tier_costs_half_of_standard_for_the_same_tokens(tier_runs):
    standard = tier_runs["standard"][1].ledger.session_costs("ssta")["standard"]
    batch = tier_runs["batch"][1].ledger.session_costs("sbat")["batch"]
    assert batch["input_tokens"] == standard["input_tokens"] and batch["output_tokens"] == standard["output_tokens"]
    assert batch["cost_usd"] * 2 == standard["cost_usd"]
    assert batch["standard_cost_usd"] == standard["cost_usd"]


def test_flex_session_runs_text_on_flex_and_images_on_standard(tier_runs):
    costs = tier_runs["flex"][1].ledger.session_costs("sfle")
    assert costs["flex"]["images"] == 0 and costs["standard"]["images"] == 27
    with tier_runs["flex"][1].ledger.connect() as con:
        reasons = dict(con.execute("SELECT operation, any_value(tier_reason) FROM requests GROUP BY 1").fetchall())
    assert "gpt-image-1-mini has no flex tier" in reasons["image"]


def test_session_records_every_candidate_round_and_cost(tier_runs):
    state, runtime = tier_runs["batch"]
    candidates = runtime.ledger.session_candidates("sbat")
    assert len(candidates) == 27
    winner = next(c for c in candidates if c.candidate_id == state.winner_id)
    assert winner.rank == 1 and winner.survived and winner.image_path
    rounds = runtime.ledger.session_rounds("sbat")
    assert len(rounds) == 9 and all(r["cost_usd"] * 2 == r["standard_cost_usd"] for r in rounds)
    assert sum(r["cost_usd"] for r in rounds) == runtime.ledger.session_costs("sbat")["batch"]["cost_usd"]


def test_repeated_session_is_served_from_the_cache_at_zero_cost(base_url, tmp_path, ledger_env):
    runtime = runtime_for(base_url, tmp_path, **ledger_env)
    first = run_session(runtime, "standard", "first", SMALL)
    again = run_session(runtime, "standard", "again", SMALL)
    assert again.candidate(again.winner_id).combined == first.candidate(first.winner_id).combined
    costs = runtime.ledger.session_costs("again")
    assert set(costs) == {"cache"}
    assert costs["cache"]["cost_usd"] == 0
    assert costs["cache"]["standard_cost_usd"] == runtime.ledger.session_costs("first")["standard"]["cost_usd"]


def test_ensemble_votes_and_siblings_stay_independent_samples(base_url, tmp_path, ledger_env):
    runtime = runtime_for(base_url, tmp_path, **ledger_env)
    state = run_session(runtime, "standard", "indep", SMALL)
    with runtime.ledger.connect() as con:
        (duplicates,) = con.execute("SELECT count(*) - count(DISTINCT body_hash) FROM requests").fetchone()
    assert duplicates == 0, "every vote and sibling differs from the others, so none was answered from the cache"
    assert len(state.votes) > 0


def test_resuming_in_a_fresh_process_after_every_step_gives_the_same_winner(base_url, tmp_path, ledger_env):
    uninterrupted = run_session(runtime_for(base_url, tmp_path / "a"), "batch", "whole", SMALL)  # (DuckDB)

    home = tmp_path / "b"
    sid = runtime_for(base_url, home, **ledger_env).sessions.start(
        SessionConfig(prompt=PROMPT, params=SMALL, tier="batch", session_id="parts")
    )
    for _ in range(200):
        runtime = runtime_for(base_url, home, **ledger_env)  # nothing survives between steps but files
        progress = runtime.sessions.advance(sid)
        if progress.finished:
            break
        fresh = runtime_for(base_url, home, **ledger_env)
        fresh.manager.refresh()
        fresh.manager.ingest_ended()
    resumed = runtime_for(base_url, home, **ledger_env).sessions.state(sid)
    assert progress.status == "completed"
    assert resumed.candidate(resumed.winner_id).combined == uninterrupted.candidate(uninterrupted.winner_id).combined
    assert resumed.final_best_scores == uninterrupted.final_best_scores


def test_expired_batch_falls_back_to_standard_when_the_deadline_is_near(base_url, sim, tmp_path, ledger_env):
    sim.add_fault(FaultRule(kind="expire", nth=1, times=1, params={"complete_fraction": 0.25}))
    # Deadline 30 min: too short for another batch (expected turnaround 1 h).
    runtime = runtime_for(base_url, tmp_path, **ledger_env)
    run_session(runtime, "batch", "fallbk", SMALL, deadline_hours=0.5)
    with runtime.ledger.connect() as con:
        rows = con.execute(
            "SELECT tier, tier_reason, attempts FROM requests WHERE tier_reason LIKE 'fallback%'"
        ).fetchall()
    assert rows, "the expired rows went to standard"
    assert all(tier == "standard" and attempts == 2 for tier, _reason, attempts in rows)
    assert runtime.ledger.batches()[0].status == "expired"


def test_expired_batch_is_resubmitted_as_a_batch_when_there_is_time(base_url, sim, tmp_path, ledger_env):
    sim.add_fault(FaultRule(kind="expire", nth=1, times=1, params={"complete_fraction": 0.25}))
    runtime = runtime_for(base_url, tmp_path, **ledger_env)
    run_session(runtime, "batch", "rebatch", SMALL, deadline_hours=24)
    with runtime.ledger.connect() as con:
        tiers = dict(con.execute("SELECT tier, count(*) FROM requests GROUP BY 1").fetchall())
    assert tiers == {"batch": sum(tiers.values())}
    assert [b.status for b in runtime.ledger.batches()][:2] == ["expired", "completed"]


def test_flex_429_is_backed_off_then_falls_back_to_standard(base_url, sim, tmp_path, ledger_env):
    sim.add_fault(FaultRule(kind="http_429", service_tier="flex", params={"message": "Resource Unavailable"}))
    runtime = runtime_for(base_url, tmp_path, **ledger_env)
    run_session(runtime, "flex", "flex429", SearchParams(N=2, M=1, K=1, E=1, **OLD_MODELS))
    with runtime.ledger.connect() as con:
        rows = con.execute("SELECT DISTINCT tier, tier_reason FROM requests WHERE operation != 'image'").fetchall()
    assert rows == [("standard", "flex unavailable (429 after retries); fell back to standard")]


def test_flex_429_once_is_retried_on_flex(base_url, sim, tmp_path, ledger_env):
    sim.add_fault(FaultRule(kind="http_429", service_tier="flex", times=1))
    runtime = runtime_for(base_url, tmp_path, **ledger_env)
    run_session(runtime, "flex", "flexok", SearchParams(N=2, M=1, K=1, E=1, **OLD_MODELS))
    assert set(runtime.ledger.session_costs("flexok")) == {"flex", "standard"}  # images have no flex
    with runtime.ledger.connect() as con:
        assert con.execute("SELECT count(*) FROM requests WHERE tier_reason LIKE 'flex unavailable%'").fetchone() == (
            0,
        )


def test_hybrid_mode_picks_a_tier_per_round_and_records_why(base_url, tmp_path, ledger_env):
    runtime = runtime_for(base_url, tmp_path, **ledger_env, BATCH_HYBRID_MODE="true")
    run_session(runtime, "hybrid", "hyb", SMALL)
    with runtime.ledger.connect() as con:
        rows = dict(
            con.execute(
                "SELECT 'i' || iteration || '-' || round, any_value(tier || ': ' || tier_reason) FROM requests"
                " GROUP BY 1"
            ).fetchall()
        )
    # 4 expansions are not worth a batch; the 12 votes of iteration 0 (C(4,2) x 2) are.
    assert rows["i0-text"].startswith("flex: hybrid: a round of 4")
    assert rows["i0-vision"].startswith("batch: hybrid: 12 compare requests")


def test_hybrid_mode_avoids_batch_when_the_deadline_is_close(base_url, tmp_path, ledger_env):
    runtime = runtime_for(base_url, tmp_path, **ledger_env)
    run_session(runtime, "hybrid", "hybsoon", SMALL, deadline_hours=0.25)
    with runtime.ledger.connect() as con:
        tiers = {t for (t,) in con.execute("SELECT DISTINCT tier FROM requests").fetchall()}
    assert "batch" not in tiers


def test_batch_disabled_runs_on_standard_and_says_why(base_url, tmp_path, ledger_env):
    runtime = runtime_for(base_url, tmp_path, **ledger_env, BATCH_API_ENABLED="false")
    run_session(runtime, "batch", "nobatch", SearchParams(N=2, M=1, K=1, E=1, **OLD_MODELS))
    with runtime.ledger.connect() as con:
        reasons = {r for (r,) in con.execute("SELECT DISTINCT tier_reason FROM requests").fetchall()}
    assert reasons == {"batch requested but BATCH_API_ENABLED is off"}


def test_vision_switch_off_keeps_votes_on_standard(base_url, tmp_path, ledger_env):
    runtime = runtime_for(base_url, tmp_path, **ledger_env, BATCH_VISION_ENABLED="false")
    run_session(runtime, "batch", "novis", SearchParams(N=2, M=1, K=1, E=1, **OLD_MODELS))
    with runtime.ledger.connect() as con:
        tiers = dict(con.execute("SELECT operation, any_value(tier) FROM requests GROUP BY 1").fetchall())
    assert tiers == {"expand": "batch", "image": "batch", "compare": "standard"}


def test_refused_image_is_rephrased_and_retried_once(base_url, sim, tmp_path, ledger_env):
    sim.add_fault(FaultRule(kind="content_policy", path=r"/v1/images/generations", times=1))
    runtime = runtime_for(base_url, tmp_path, **ledger_env)
    state = run_session(runtime, "standard", "policy", SearchParams(N=2, M=1, K=1, E=1, **OLD_MODELS))
    assert not any(c.failed for c in state.candidates)
    with runtime.ledger.connect() as con:
        ops = dict(con.execute("SELECT operation, count(*) FROM requests GROUP BY 1").fetchall())
    assert ops["rephrase"] == 1 and ops["image"] == 3  # two images, one of them asked again


def test_more_than_half_failed_images_fail_the_session(base_url, sim, tmp_path, ledger_env):
    sim.add_fault(FaultRule(kind="http_500", path=r"/v1/images/generations"))
    runtime = runtime_for(base_url, tmp_path, **ledger_env)
    sid = runtime.sessions.start(
        SessionConfig(
            prompt=PROMPT, params=SearchParams(N=2, M=1, K=1, E=1, **OLD_MODELS), tier="standard", session_id="fails"
        )
    )
    progress = drive(runtime, sid, timeout_s=60)
    assert progress.status == "failed" and "image" in (progress.error or "")
    assert runtime.ledger.session("fails").status == "failed"


def test_sessions_stepped_together_stand_where_advance_would_leave_them(tmp_path, ledger_env):
    """`advance_many` takes the common step of many sessions at once; after it, `advance` of each finds
    nothing to change, and what it leaves to `advance` (here: a session with a budget) `advance` steps."""
    import time

    from openai_simulator import Simulator, SimulatorConfig

    with Simulator(SimulatorConfig(data_dir=tmp_path / "sim")).serve() as url:
        runtime = runtime_for(url, tmp_path, **ledger_env, BATCH_API_MODE="deferred", BATCH_FLUSH_MAX_AGE_SECONDS="0")
        ids = [
            runtime.sessions.start(
                SessionConfig(
                    prompt=PROMPT,
                    params=SMALL.model_copy(update={"seed": i}),
                    tier="batch",
                    driver="api",
                    session_id=f"t{i}",
                )
            )
            for i in range(3)
        ]
        budgeted = runtime.sessions.start(
            SessionConfig(
                prompt=PROMPT, params=SMALL, tier="batch", driver="api", budget_usd=Decimal("100"), session_id="tb"
            )
        )
        together, deadline = 0, time.monotonic() + 120
        while time.monotonic() < deadline:
            with runtime.ledger.unit():
                progress, rest = runtime.sessions.advance_many([*ids, budgeted])
                assert budgeted not in progress
                for sid, step in progress.items():
                    state = runtime.ledger.session_state_json(sid)
                    assert runtime.sessions.advance(sid) == step
                    assert runtime.ledger.session_state_json(sid) == state
                together += len(progress)
                for sid in rest:
                    runtime.sessions.advance(sid)
                runtime.manager.submit_queued()
                runtime.manager.refresh()
                runtime.manager.ingest_ended()
                if all(runtime.ledger.session(sid).status == "completed" for sid in [*ids, budgeted]):
                    break
            time.sleep(0.05)
        assert all(runtime.ledger.session(sid).status == "completed" for sid in [*ids, budgeted])
        rounds = len(runtime.sessions.state(ids[0]).rounds)
        assert together >= 3 * rounds, "every round of the sessions without a budget was queued or applied together"
        assert runtime.ledger.check_invariants() == []
