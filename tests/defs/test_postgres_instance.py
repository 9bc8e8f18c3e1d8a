"""The Dagster instance on PostgreSQL (dagster_home/dagster.postgres.yaml) on a real PostgreSQL 18 server:
the project's own jobs record their runs, events and partitions there, read back with plain SQL."""

from __future__ import annotations

import logging
from pathlib import Path

import dagster as dg
import psycopg
import pytest
import yaml
from dagster._serdes import serialize_value

from batch_pipeline.cli.demo import INSTANCE_FILES, install_instance
from tests.defs.support import launch, tick
from tests.postgres import dagster_pg_url

REPO = Path(__file__).resolve().parents[2]
# The embedded server trusts local connections, so any password connects: this one stands for a real
# deployment's, which must reach no row, record or log.
PASSWORD = "pg-secret-never-logged-7f3a"


def instance_config(storage: str) -> dict:
    return yaml.safe_load((REPO / "dagster_home" / INSTANCE_FILES[storage]).read_text())


@pytest.fixture
def pg_home(tmp_path: Path, postgres_database, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, str]:
    """A DAGSTER_HOME whose dagster.yaml is dagster.postgres.yaml, DAGSTER_PG_URL a fresh database (on the
    unix socket, with a password); returns the home and the database's libpq URL, for reading it back."""
    url = postgres_database("dagster")
    monkeypatch.setenv("DAGSTER_PG_URL", dagster_pg_url(url, PASSWORD))
    install_instance(tmp_path / "dagster_home", "postgres")
    return tmp_path / "dagster_home", url


def test_the_postgres_instance_file_differs_from_dagster_yaml_only_in_storage_and_pool_limit():
    sqlite, postgres = instance_config("sqlite"), instance_config("postgres")
    assert postgres.pop("storage") == {"postgres": {"postgres_url": {"env": "DAGSTER_PG_URL"}}}
    assert "storage" not in sqlite  # SQLite under DAGSTER_HOME, Dagster's default
    assert postgres["concurrency"]["pools"].pop("default_limit") == 2
    assert sqlite["concurrency"]["pools"].pop("default_limit") == 1
    assert postgres == sqlite


def test_the_instance_uses_postgres_storage_with_the_ledger_pool_at_two(pg_home):
    home, _ = pg_home
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        assert type(instance.schedule_storage).__name__ == "PostgresScheduleStorage"
        assert instance.get_concurrency_config().pool_config.default_pool_limit == 2
        assert instance.get_concurrency_config().run_queue_config.max_concurrent_runs == 2
        # What run workers and code servers are handed: the variable's name, never its value.
        assert PASSWORD not in serialize_value(instance.get_ref())
        assert PASSWORD not in instance.info_str()


def test_runs_events_and_partitions_of_the_project_jobs_are_stored_in_postgres(pg_home, resources, caplog, capsys):
    home, url = pg_home
    caplog.set_level(logging.DEBUG)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        launched = launch(instance, resources, "s1")
        ticked = tick(instance, resources)
        assert launched.success and ticked.success

    with psycopg.connect(url) as conn:
        runs = dict(conn.execute("SELECT run_id, pipeline_name || ' ' || status FROM runs").fetchall())
        assert runs == {launched.run_id: "launch_session SUCCESS", ticked.run_id: "__ephemeral_asset_job__ SUCCESS"}
        kinds = conn.execute("SELECT run_id, array_agg(DISTINCT dagster_event_type) FROM event_logs GROUP BY 1")
        kinds = dict(kinds.fetchall())
        assert set(kinds) == set(runs)
        started, succeeded = dg.DagsterEventType.RUN_START.value, dg.DagsterEventType.RUN_SUCCESS.value
        assert {started, succeeded} <= set(kinds[launched.run_id])
        assert {started, "ASSET_MATERIALIZATION", succeeded} <= set(kinds[ticked.run_id])
        assert conn.execute(
            "SELECT partition FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION' AND asset_key = %s",
            (dg.AssetKey("queued_requests").to_string(),),
        ).fetchall() == [("s1",)]
        assert conn.execute("SELECT partitions_def_name, partition FROM dynamic_partitions").fetchall() == [
            ("sessions", "s1")
        ]
        # The password is in no column of any row Dagster wrote.
        tables = [t for (t,) in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
        assert {"runs", "event_logs", "dynamic_partitions", "kvs"} <= set(tables)
        for table in tables:
            leaked = conn.execute(f"SELECT count(*) FROM {table} t WHERE t::text LIKE %s", (f"%{PASSWORD}%",))
            assert leaked.fetchone() == (0,), table

    # A second instance from the same file (another process, in a deployment) reads the same history.
    with dg.DagsterInstance.from_config(str(home)) as again:
        assert again.get_run_by_id(ticked.run_id).status == dg.DagsterRunStatus.SUCCESS
        assert again.get_dynamic_partitions("sessions") == ["s1"]
        materialized = again.fetch_materializations(dg.AssetKey("queued_requests"), limit=1).records
        assert [r.asset_materialization.partition for r in materialized] == ["s1"]

    captured = capsys.readouterr()
    assert PASSWORD not in caplog.text + captured.out + captured.err


def test_the_deployment_examples_carry_the_tested_instance_settings():
    """docs/deploy/ (not run here) repeats what dagster.postgres.yaml sets: the limits and the driver."""
    tested = instance_config("postgres")
    helm = yaml.safe_load((REPO / "docs" / "deploy" / "helm-values.yaml").read_text())
    queued = helm["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
    assert queued["maxConcurrentRuns"] == tested["concurrency"]["runs"]["max_concurrent_runs"]
    assert queued["dequeueIntervalSeconds"] == tested["run_queue"]["dequeue_interval_seconds"]
    assert helm["concurrency"]["pools"] == {
        "defaultLimit": tested["concurrency"]["pools"]["default_limit"],
        "granularity": tested["concurrency"]["pools"]["granularity"],
    }
    assert helm["postgresql"]["postgresqlScheme"] == "postgresql+psycopg2"
    assert helm["runLauncher"]["type"] == "K8sRunLauncher"
    compose = yaml.safe_load((REPO / "docs" / "deploy" / "docker-compose.yaml").read_text())
    for service in ("user_code", "webserver", "daemon"):
        assert compose["services"][service]["environment"]["DAGSTER_PG_URL"].startswith("postgresql+psycopg2://")
    assert "COPY dagster_home/dagster.postgres.yaml" in (REPO / "docs" / "deploy" / "Dockerfile").read_text()
