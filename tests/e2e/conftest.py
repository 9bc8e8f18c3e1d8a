"""The end-to-end fixture: an isolated Dagster instance and ledger, and processes stopped whatever happens."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.support import Processes, isolated_paths


@pytest.fixture
def instance_storage() -> str:
    """Where the isolated instance stores runs and events: "sqlite" (dagster.yaml) or "postgres"
    (dagster.postgres.yaml; a module overriding this fixture sets DAGSTER_PG_URL before returning it)."""
    return "sqlite"


@pytest.fixture
def processes(tmp_path: Path, instance_storage: str) -> Iterator[Processes]:
    started = Processes(isolated_paths(tmp_path, instance_storage), tmp_path / "logs")
    try:
        yield started
    finally:
        started.stop_all()
