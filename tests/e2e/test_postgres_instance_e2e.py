"""End to end on the PostgreSQL instance: the real daemon, code servers and run workers of a session all
open the instance from dagster.postgres.yaml and DAGSTER_PG_URL, and its history is in PostgreSQL."""

from __future__ import annotations

import psycopg
import pytest

from batch_pipeline.cli.demo import dagster_env, launch_session
from batch_pipeline.ledger.reader import LedgerReader
from tests.e2e.support import E2E_PASSWORD, POSTGRES_INSTANCE, wait_for

pytestmark = POSTGRES_INSTANCE


@pytest.mark.slow
def test_the_daemon_runs_a_session_to_the_end_on_the_postgres_instance(tmp_path, processes, dagster_db):
    paths, logs = processes.paths, processes.logs
    _, base_url = processes.simulator(tmp_path / "simulator")
    env = dagster_env(paths, base_url, sensor_interval_s=2, extra={"BATCH_FLUSH_MAX_AGE_SECONDS": "2"})
    processes.daemon(env)
    launch_session(paths, env, "pg-e2e", prompt="a lighthouse in a storm", N=4, M=2, K=2, E=2, tier="batch")

    reader = LedgerReader(paths.ledger_path, lock_timeout_s=1.0)
    # Six rounds of 2.5 s batches, one tick run each: about 100 s idle; 400 s for a loaded 2-core machine.
    wait_for(
        "the session to complete",
        lambda: reader.exists() and (reader.session_status("pg-e2e") or ("",))[0] == "completed",
        400,
        logs,
    )

    def runs_finished():
        with psycopg.connect(dagster_db) as conn:
            rows = conn.execute("SELECT pipeline_name, status FROM runs").fetchall()
        return rows if rows and all(s in ("SUCCESS", "FAILURE", "CANCELED") for _, s in rows) else None

    runs = wait_for("every run to finish", runs_finished, 120, logs)
    # Launched by `dagster job launch`, dequeued by the daemon, run by workers of the code server: all
    # through PostgreSQL, and all succeeded.
    assert {status for _, status in runs} == {"SUCCESS"}
    jobs = [job for job, _ in runs]
    assert jobs.count("launch_session") == 1 and jobs.count("tick_job") >= 6
    with psycopg.connect(dagster_db) as conn:
        # The sensor's ticks that requested a run, in the schedule storage's tables.
        (ticks,) = conn.execute(
            "SELECT count(*) FROM job_ticks WHERE type = 'SENSOR' AND status = 'SUCCESS'"
            " AND tick_body LIKE '%pipeline_sensor%'"
        ).fetchone()
        (partitions,) = conn.execute("SELECT array_agg(partition) FROM dynamic_partitions").fetchone()
    assert ticks >= 6 and partitions == ["pg-e2e"]

    # Nothing on disk holds the database password: process logs, compute logs, the ledger, the home.
    processes.stop_all()
    holding = [p for p in tmp_path.rglob("*") if p.is_file() and E2E_PASSWORD.encode() in p.read_bytes()]
    assert holding == []
