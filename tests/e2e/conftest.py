"""The end-to-end fixture: an isolated Dagster instance and ledger, and processes stopped whatever happens."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.support import Processes, isolated_paths


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    started = Processes(isolated_paths(tmp_path), tmp_path / "logs")
    try:
        yield started
    finally:
        started.stop_all()
