"""End to end: a run worker SIGKILLed while its batch create is on the wire costs time, not a second batch.

The simulator holds the first `POST /v1/batches` for a few seconds and then creates the batch anyway,
as the real API may after a client has gone. The tick run's worker is killed in that window, so the
ledger says `uploaded` (create sent, no answer) while the batch is about to exist remotely. The code
server reports the run failed; the pipeline sensor asks for a tick that resumes the half-sent batch only
once the lost create could no longer land (its timeout plus a margin), and the resumed flush finds the
batch by its key in the remote list instead of creating another. (Resuming at once created a second
batch: this test found it.)
"""

from __future__ import annotations

import os
import re
import signal

import dagster as dg
import httpx2
import pytest

from batch_pipeline.cli.demo import dagster_env, launch_session
from batch_pipeline.ledger.reader import LedgerReader
from tests.e2e.support import assert_nothing_lost_or_sent_twice, latest_materialization, wait_for

CREATE_HOLD_S = 8


def run_worker_pid(instance: dg.DagsterInstance, run_id: str) -> int | None:
    """The run worker's pid, from the engine event Dagster writes when it starts the process."""
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
        if match := re.search(r"Started process for run \(pid: (\d+)\)", entry.message or ""):
            return int(match.group(1))
    return None


@pytest.mark.slow
def test_a_run_worker_killed_during_batch_create_leads_to_one_batch_and_a_finished_session(tmp_path, processes):
    paths, logs = processes.paths, processes.logs
    _sim, base_url = processes.simulator(tmp_path / "simulator")
    admin = base_url.removesuffix("/v1") + "/_admin/faults"
    httpx2.post(
        admin,
        json={
            "kind": "slow",
            "path": "^/v1/batches$",
            "method": "POST",
            "times": 1,
            "params": {"seconds": CREATE_HOLD_S},
        },
    ).raise_for_status()
    env = dagster_env(
        paths,
        base_url,
        mode="deferred",
        sensor_interval_s=2,
        # The resumed flush may create the batch again 5 + 30 s after the lost create.
        extra={"BATCH_FLUSH_MAX_AGE_SECONDS": "2", "BATCH_CREATE_TIMEOUT_SECONDS": "5"},
    )
    processes.daemon(env)
    launch_session(paths, env, "killed-worker", prompt="a lighthouse in a storm", N=4, M=2, K=2, E=2, tier="batch")

    reader = LedgerReader(paths.ledger_path, lock_timeout_s=1.0)
    instance = dg.DagsterInstance.from_config(str(paths.dagster_home))
    try:

        def creating():
            """The tick run id once its batch create is on the wire: the simulator, holding it, says so directly
            (the ledger's `uploaded` phase is written before the create goes out, not when it arrives)."""
            held = httpx2.get(admin).raise_for_status().json()["faults"][0]["fired"]
            runs = instance.get_runs(dg.RunsFilter(job_name="tick_job", statuses=[dg.DagsterRunStatus.STARTED]))
            return held and runs and runs[0].run_id

        run_id = wait_for("a tick run creating its batch", creating, 120, logs, interval_s=0.2)
        pid = wait_for("the tick run's worker pid", lambda: run_worker_pid(instance, run_id), 10, logs, 0.2)
        os.kill(pid, signal.SIGKILL)

        killed = wait_for(
            "the killed run to be reported failed",
            lambda: (run := instance.get_run_by_id(run_id)) and run.is_finished and run,
            60,
            logs,
        )
        assert killed.status == dg.DagsterRunStatus.FAILURE
        (half_sent,) = reader.batch_overview()
        assert half_sent.phase == "uploaded", "the worker died before recording the batch id"
        batch_key = half_sent.batch_key

        # The resume waits out the lost create (5 + 30 s); the session's rounds then take about 100 s on an idle
        # 2-core machine (the throughput benchmark): 300 s leaves 2x for a loaded one.
        wait_for(
            "the session to complete",
            lambda: (reader.session_status("killed-worker") or ("",))[0] == "completed",
            300,
            logs,
        )
        wait_for(
            "its ranked result",
            lambda: (m := latest_materialization(instance, "ranked_results", "killed-worker"))
            and "winner" in m.metadata,
            90,
            logs,
        )
        resumed = [
            r
            for r in instance.get_runs(dg.RunsFilter(job_name="tick_job"))
            if "half-sent batch(es) to resume" in r.tags.get("batch_pipeline/tick_reason", "") and r.run_id != run_id
        ]
        assert resumed and all(r.status == dg.DagsterRunStatus.SUCCESS for r in resumed)
    finally:
        instance.dispose()

    remote = assert_nothing_lost_or_sent_twice(paths.ledger_path, base_url)
    assert [r.metadata["bp_batch_key"] for r in remote].count(batch_key) == 1
