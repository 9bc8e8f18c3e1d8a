"""The end-to-end fixture: an isolated Dagster instance and ledger, and processes stopped whatever happens."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.support import E2E_PASSWORD, Processes, isolated_paths
from tests.postgres import dagster_pg_url


@pytest.fixture
def dagster_db(postgres_database) -> str:
    """A fresh PostgreSQL database for the instance's runs and events."""
    return postgres_database("dagster_e2e")


@pytest.fixture
def instance_storage(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Where the isolated instance stores runs and events: "sqlite" (dagster.yaml), or "postgres" for a module
    that says `pytestmark = POSTGRES_INSTANCE` (dagster.postgres.yaml; DAGSTER_PG_URL, with `E2E_PASSWORD` in
    it, points at `dagster_db` in this process and, through `dagster_env`, in every process it starts)."""
    storage = getattr(request, "param", "sqlite")
    if storage == "postgres":
        monkeypatch.setenv("DAGSTER_PG_URL", dagster_pg_url(request.getfixturevalue("dagster_db"), E2E_PASSWORD))
    return storage


@pytest.fixture
def processes(tmp_path: Path, instance_storage: str) -> Iterator[Processes]:
    started = Processes(isolated_paths(tmp_path, instance_storage), tmp_path / "logs")
    try:
        yield started
    finally:
        started.stop_all()
