"""End to end with real processes: the simulator and `dagster-daemon` run two deferred sessions to the end.

The daemon is SIGKILLed mid-session and started again; the sessions must still finish with nothing lost
or sent twice, sharing batches, and the cost report must show batched calls at half the standard price.
"""

from __future__ import annotations

import csv
import os
import secrets
import signal
import time
from decimal import Decimal

import dagster as dg
import pytest

from batch_pipeline.cli.demo import dagster_env, launch_job, launch_session, stop
from batch_pipeline.ledger.reader import LedgerReader
from tests.e2e.support import assert_nothing_lost_or_sent_twice, latest_materialization, wait_for

SESSIONS = ("e2e-a", "e2e-b")
# A key no file may contain afterwards: not the ledger, Dagster's storage (run config, metadata, event
# logs), compute logs, reports or process logs.
API_KEY = "sk-e2e-" + secrets.token_hex(12)


@pytest.mark.slow
def test_two_deferred_sessions_share_batches_survive_a_daemon_kill_and_report_half_price(tmp_path, processes):
    paths, logs = processes.paths, processes.logs
    sim, base_url = processes.simulator(tmp_path / "simulator")
    env = dagster_env(
        paths,
        base_url,
        mode="deferred",
        sensor_interval_s=2,
        extra={"BATCH_FLUSH_MAX_REQUESTS": "1000", "BATCH_FLUSH_MAX_AGE_SECONDS": "4", "OPENAI_API_KEY": API_KEY},
    )
    daemon = processes.daemon(env, "daemon-1")
    for sid, prompt in zip(SESSIONS, ("a lighthouse in a storm", "a koi pond in autumn"), strict=True):
        launch_session(paths, env, sid, prompt=prompt, N=4, M=2, K=2, E=2, tier="batch")

    reader = LedgerReader(paths.ledger_path, lock_timeout_s=1.0)

    def batches_in_flight():
        return reader.exists() and [b for b in reader.watched_batches() if not b.ended]

    wait_for("a batch in flight", batches_in_flight, 120, logs, interval_s=0.5)
    statuses_at_kill = [reader.session_status(sid) for sid in SESSIONS]
    os.kill(daemon.pid, signal.SIGKILL)  # the daemon alone, as a crash would; its children are left as they are
    daemon.wait(timeout=10)
    killed_at = time.time()
    assert all(s is not None and s[0] == "running" for s in statuses_at_kill), "killed mid-session"
    time.sleep(3)
    processes.daemon(env, "daemon-2")

    # One tick run per round: about 100 s for six rounds of 5 s batches on an idle 2-core machine
    # (benchmarks/bench_dagster_throughput.py, S=1 and S=10 alike); 330 s leaves 3x for a loaded one.
    wait_for(
        "both sessions to complete",
        lambda: all((reader.session_status(sid) or ("",))[0] == "completed" for sid in SESSIONS),
        330,
        logs,
    )

    instance = dg.DagsterInstance.from_config(str(paths.dagster_home))
    try:

        def ranked():
            found = {sid: latest_materialization(instance, "ranked_results", sid) for sid in SESSIONS}
            return found if all(m and "winner" in m.metadata for m in found.values()) else None

        ranked_results = wait_for("ranked_results of both sessions", ranked, 90, logs)
        report_run = launch_job(paths, env, "cost_report_job")
        wait_for(
            "the cost report run", lambda: (run := instance.get_run_by_id(report_run)) and run.is_finished, 120, logs
        )
        assert instance.get_run_by_id(report_run).status == dg.DagsterRunStatus.SUCCESS
        report = latest_materialization(instance, "cost_report")
        runs = wait_for(
            "every run to finish",
            lambda: (rs := instance.get_run_records()) and all(r.dagster_run.is_finished for r in rs) and rs,
            60,
            logs,
        )
    finally:
        instance.dispose()
    # The restarted daemon carried the sessions on, and no run was lost or failed on the way.
    assert any(r.create_timestamp.timestamp() > killed_at and r.dagster_run.job_name == "tick_job" for r in runs)
    assert {r.dagster_run.status for r in runs} == {dg.DagsterRunStatus.SUCCESS}
    for daemon in processes.started[1:]:
        stop(daemon)

    # Both finished with a ranked, illustrated result.
    for sid in SESSIONS:
        meta = ranked_results[sid].metadata
        assert meta["status"].value == "completed"
        assert meta["ranking"].value.count("](data:image/jpeg;base64,") == 6
        assert reader.session_status(sid)[3] == meta["winner"].value

    # Deferred batching made the two sessions share batches.
    batches = reader.batch_overview(limit=1000)
    assert any(set(b.sessions) == set(SESSIONS) for b in batches)

    # Nothing lost, nothing sent twice.
    assert len(assert_nothing_lost_or_sent_twice(paths.ledger_path, base_url)) == len(batches)

    # The cost report: every batched row at exactly half the standard price.
    assert report.metadata["batch_saved_share"].value == "50.0%"
    with open(report.metadata["csv"].value, newline="") as fh:
        batched = [r for r in csv.DictReader(fh) if r["tier"] == "batch"]
    # Two rounds per iteration (the default): iteration 1's candidates are written by `critique` calls.
    assert {r["operation"] for r in batched} == {"expand", "critique", "image", "compare"}
    assert all(Decimal(r["saved_share"]) == Decimal("0.5") for r in batched)
    assert all(Decimal(r["cost_usd"]) * 2 == Decimal(r["standard_cost_usd"]) for r in batched)

    # The key came from the environment and went nowhere else.
    stop(sim)
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(written) > 20
    assert [p for p in written if API_KEY.encode() in p.read_bytes()] == []
