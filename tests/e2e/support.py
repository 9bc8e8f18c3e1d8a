"""What the end-to-end tests share: an isolated instance with real processes, waiting, and reading results."""

from __future__ import annotations

import secrets
import subprocess
import time
from pathlib import Path

import dagster as dg
import openai
import pytest

from batch_pipeline.cli.demo import (
    DemoPaths,
    free_port,
    install_instance,
    prepare_instance,
    start_daemon,
    start_simulator,
    stop,
)
from batch_pipeline.errors import LedgerBusy
from batch_pipeline.ledger import Ledger

REPO = Path(__file__).resolve().parents[2]
# Stands for a deployment's database password in the PostgreSQL-instance tests (the test server accepts any):
# no file a test writes may hold it.
E2E_PASSWORD = "pg-e2e-" + secrets.token_hex(8)
# `pytestmark = POSTGRES_INSTANCE`: the module's tests run on dagster.postgres.yaml (conftest's instance_storage).
POSTGRES_INSTANCE = pytest.mark.parametrize("instance_storage", ["postgres"], indirect=True)


def isolated_paths(tmp_path: Path, storage: str = "sqlite") -> DemoPaths:
    """DAGSTER_HOME and BATCH_PIPELINE_HOME under `tmp_path`, with the repository's real instance file for
    `storage` ("postgres": DAGSTER_PG_URL must be set, here and in the processes' environment)."""
    paths = DemoPaths.under(REPO, dagster_home=tmp_path / "dagster_home", pipeline_home=tmp_path / "home")
    install_instance(paths.dagster_home, storage)
    paths.pipeline_home.mkdir()
    (tmp_path / "logs").mkdir()
    prepare_instance(paths)
    return paths


class Processes:
    """The real processes of one test (simulator, daemons), logging under `logs`; `stop_all` ends them."""

    def __init__(self, paths: DemoPaths, logs: Path):
        self.paths, self.logs = paths, logs
        self.started: list[subprocess.Popen] = []

    def simulator(self, data_dir: Path) -> tuple[subprocess.Popen, str]:
        """A simulator whose batches take 2.5 s (validating 0.5, in progress 1.5, finalizing 0.5)."""
        proc, base_url = start_simulator(
            data_dir, free_port(), phase_seconds="0.5,1.5,0.5", log=(self.logs / "simulator.log").open("ab"), cwd=REPO
        )
        self.started.append(proc)
        return proc, base_url

    def daemon(self, env: dict[str, str], name: str = "daemon") -> subprocess.Popen:
        proc = start_daemon(self.paths, env, log=(self.logs / f"{name}.log").open("ab"))
        self.started.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            stop(proc)


def wait_for(what: str, predicate, timeout_s: float, logs: Path, interval_s: float = 1.0):
    """The first truthy value of `predicate()`, or a failure that shows the tail of every process log."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if value := predicate():
                return value
        except LedgerBusy:
            pass
        time.sleep(interval_s)
    tails = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(logs.glob("*.log")))
    raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}\n{tails}")


def latest_materialization(instance: dg.DagsterInstance, asset: str, partition: str | None = None):
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[partition] if partition else None),
        limit=1,
    ).records
    return records[0].asset_materialization if records else None


def assert_nothing_lost_or_sent_twice(ledger_location: Path | str, base_url: str) -> list:
    """Every request ended succeeded, the ledger's invariants hold, and the simulator holds exactly the
    batches the ledger recorded, each batch key once. Returns the remote batches."""
    ledger = Ledger(ledger_location)
    assert ledger.check_invariants() == []
    assert set(ledger.state_counts()) == {"succeeded"}
    remote = list(openai.OpenAI(api_key="sk-test", base_url=base_url).batches.list(limit=100))
    recorded = [b for b in ledger.batches() if b.openai_batch_id]
    assert len(remote) == len(recorded) == len(ledger.batches())
    assert sorted(r.metadata["bp_batch_key"] for r in remote) == sorted(b.batch_key for b in recorded)
    assert sorted(r.id for r in remote) == sorted(b.openai_batch_id for b in recorded)
    return remote
