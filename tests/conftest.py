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
