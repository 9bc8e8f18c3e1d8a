"""Fixtures shared by every test folder."""

from __future__ import annotations

import pytest

# postgres_server (one PostgreSQL 18 for the run), postgres_url and postgres_database (fresh databases)
pytest_plugins = ["tests.postgres"]


class ManualClock:
    """A clock the test moves by hand (epoch seconds); pass it wherever code takes `clock=`."""

    def __init__(self, start: float = 1_790_000_000.0):
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture(params=["duckdb", "postgres"])
def ledger_location(request: pytest.FixtureRequest, tmp_path) -> str:
    """Where a test's ledger lives: a DuckDB file, then (the same test again) a fresh PostgreSQL database."""
    if request.param == "duckdb":
        return str(tmp_path / "state" / "ledger.duckdb")
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def ledger_env(ledger_location: str) -> dict[str, str]:
    """The settings that put a runtime's ledger where `ledger_location` says (DuckDB: the home's file)."""
    return {"BATCH_LEDGER_URL": ledger_location} if ledger_location.startswith("postgresql://") else {}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test that names the DuckDB file (`ledger_path`: its lock, its bytes) is about that file: DuckDB only."""
    keep, drop = [], []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        duckdb_file = "ledger_path" in getattr(item, "fixturenames", ())
        (drop if duckdb_file and params.get("ledger_location") == "postgres" else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
