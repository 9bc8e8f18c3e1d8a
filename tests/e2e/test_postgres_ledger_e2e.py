"""End to end with everything on PostgreSQL: the Dagster instance (dagster.postgres.yaml, its `ledger` pool at
2) and the ledger (BATCH_LEDGER_URL). While a tick run's worker holds a batch create on the wire, two more
sessions are launched: their launch runs write the ledger beside it (two run workers at once). Then that
worker is SIGKILLed mid-flush. Nothing is lost, no batch is created twice and no request is in two batches;
the DuckDB file is never made.
"""

from __future__ import annotations

import os
import signal
import threading
from itertools import combinations

import dagster as dg
import httpx2
import pytest

from batch_pipeline.cli.demo import dagster_env, launch_session
from batch_pipeline.ledger import Ledger
from batch_pipeline.ledger.reader import LedgerReader
from tests.e2e.support import E2E_PASSWORD, POSTGRES_INSTANCE, assert_nothing_lost_or_sent_twice, wait_for
from tests.e2e.test_run_worker_killed_e2e import run_worker_pid

pytestmark = POSTGRES_INSTANCE
SESSIONS = ("pg-a", "pg-b", "pg-c")
# The first create is held this long, within the client's timeout, so its worker waits in it: long enough to
# launch two sessions beside it, then it is killed. The create lands anyway, before the resume looks for it
# (CREATE_TIMEOUT_S + 30 s after it was sent).
CREATE_HOLD_S = 60  # `dagster job launch` alone took 30 s on a loaded 2-core machine
CREATE_TIMEOUT_S = 90
LEDGER_JOBS = ("launch_session", "tick_job")  # the runs that write the ledger (its pool)


@pytest.fixture
def ledger_url(postgres_database) -> str:
    return postgres_database("ledger_e2e")


def overlapping(records: list[dg.RunRecord]) -> list[tuple[str, str]]:
    """Pairs of runs (job names) that were running at the same time."""
    spans = [(r.dagster_run.job_name, r.start_time, r.end_time) for r in records if r.start_time and r.end_time]
    return [(a[0], b[0]) for a, b in combinations(spans, 2) if a[1] < b[2] and b[1] < a[2]]


@pytest.mark.slow
def test_two_run_workers_write_the_postgres_ledger_at_once_and_a_killed_flush_sends_nothing_twice(
    tmp_path, processes, ledger_url
):
    paths, logs = processes.paths, processes.logs
    _sim, base_url = processes.simulator(tmp_path / "simulator")
    admin = base_url.removesuffix("/v1") + "/_admin/faults"
    hold = {"kind": "slow", "path": "^/v1/batches$", "method": "POST", "times": 1, "params": {"seconds": CREATE_HOLD_S}}
    httpx2.post(admin, json=hold).raise_for_status()
    env = dagster_env(
        paths,
        base_url,
        mode="deferred",
        sensor_interval_s=2,
        extra={
            "BATCH_LEDGER_URL": ledger_url,
            "BATCH_FLUSH_MAX_AGE_SECONDS": "2",
            "BATCH_CREATE_TIMEOUT_SECONDS": str(CREATE_TIMEOUT_S),
        },
    )
    processes.daemon(env)
    first, *others = SESSIONS
    launch_session(paths, env, first, prompt=f"a lighthouse, {first}")

    reader = LedgerReader(ledger_url, lock_timeout_s=1.0)
    instance = dg.DagsterInstance.from_config(str(paths.dagster_home))
    try:

        def creating():
            held = httpx2.get(admin).raise_for_status().json()["faults"][0]["fired"]
            runs = instance.get_runs(dg.RunsFilter(job_name="tick_job", statuses=[dg.DagsterRunStatus.STARTED]))
            return held and runs and runs[0].run_id

        run_id = wait_for("a tick run creating its batch", creating, 240, logs, interval_s=0.2)
        # While that worker holds its flush open, two more sessions are launched: the pool of 2 runs a launch
        # run (which writes the ledger) beside it.
        launches = [
            threading.Thread(target=launch_session, args=(paths, env, sid), kwargs={"prompt": f"a lighthouse, {sid}"})
            for sid in others
        ]
        for thread in launches:
            thread.start()
        wait_for(
            "a launch run to start beside the held tick run",
            lambda: instance.get_runs(
                dg.RunsFilter(
                    job_name="launch_session",
                    statuses=[dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.SUCCESS],
                    created_after=instance.get_run_record_by_id(run_id).create_timestamp,
                )
            ),
            CREATE_HOLD_S - 5,
            logs,
            interval_s=0.2,
        )
        pid = wait_for("the tick run's worker pid", lambda: run_worker_pid(instance, run_id), 10, logs, 0.2)
        os.kill(pid, signal.SIGKILL)  # mid-flush: the ledger says `uploaded`, the create is still held
        for thread in launches:
            thread.join(300)
        wait_for(
            "the killed run to be reported failed",
            lambda: (run := instance.get_run_by_id(run_id)) and run.is_finished,
            60,
            logs,
        )
        # Three sessions of six rounds, 2.5 s batches, plus the wait-out of the lost create (90 + 30 s): about
        # 250 s on an idle 2-core machine; 700 s leaves room for a loaded one.
        wait_for(
            "every session to complete",
            lambda: all((reader.session_status(sid) or ("",))[0] == "completed" for sid in SESSIONS),
            700,
            logs,
        )
        # The run that completed the last session may still be recording its views.
        wait_for(
            "every run to finish",
            lambda: all(run.is_finished for run in instance.get_runs()),
            120,
            logs,
        )
        records = instance.get_run_records()
    finally:
        instance.dispose()

    ledger_runs = [r for r in records if r.dagster_run.job_name in LEDGER_JOBS]
    spans = sorted((r.start_time, r.end_time, r.dagster_run.job_name) for r in ledger_runs)
    assert overlapping(ledger_runs), f"two runs of the ledger pool were never running at the same time: {spans}"
    assert {r.dagster_run.status for r in ledger_runs if r.dagster_run.run_id != run_id} <= {
        dg.DagsterRunStatus.SUCCESS
    }
    remote = assert_nothing_lost_or_sent_twice(ledger_url, base_url)
    assert len({r.metadata["bp_batch_key"] for r in remote}) == len(remote)
    with Ledger(ledger_url).connect() as con:
        in_two = con.execute("SELECT request_id FROM batch_members GROUP BY request_id HAVING count(*) > 1").fetchall()
        sessions = con.execute("SELECT count(*) FROM sessions WHERE status = 'completed'").fetchone()[0]
    assert in_two == [], "a request was sent in two batches"
    assert sessions == len(SESSIONS)
    assert not paths.ledger_path.exists(), "the ledger lives in PostgreSQL only"
    for path in tmp_path.rglob("*"):
        if path.is_file() and path.stat().st_size < 50_000_000:
            assert E2E_PASSWORD.encode() not in path.read_bytes(), f"{path} holds the database password"
