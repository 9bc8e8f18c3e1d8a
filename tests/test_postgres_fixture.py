"""The PostgreSQL fixtures are real: a PostgreSQL 18 server, separate databases, and nothing left running."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import psycopg
import pytest

REPO = Path(__file__).resolve().parents[1]


def test_the_server_is_postgresql_18_on_a_unix_socket(postgres_server, postgres_url):
    assert postgres_server.version() // 10000 == 18
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT current_setting('server_version_num')::int / 10000").fetchone() == (18,)
        assert conn.info.host.startswith("/")  # a socket directory, not a TCP host
        assert conn.execute("SELECT current_setting('listen_addresses')").fetchone() == ("",)


def test_a_table_in_one_database_is_not_visible_in_another(postgres_url, postgres_database):
    other_url = postgres_database("other")
    assert other_url != postgres_url
    with psycopg.connect(postgres_url) as conn:
        conn.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
        conn.execute("INSERT INTO notes VALUES (1, 'only here')")
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT body FROM notes").fetchall() == [("only here",)]
    with psycopg.connect(other_url) as conn:
        assert conn.execute("SELECT to_regclass('notes')").fetchone() == (None,)


def test_each_test_gets_an_empty_database_dropped_afterwards(postgres_server, postgres_database):
    url = postgres_database("dropme")
    name = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
    with psycopg.connect(url) as conn:
        tables = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()
    assert tables == (0,)
    held = psycopg.connect(url)  # a connection left open does not stop the drop (WITH (FORCE))
    try:
        postgres_server.drop_database(name)
        with psycopg.connect(postgres_server.admin_url) as admin:
            assert admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None
    finally:
        held.close()


def _postmasters_of(data_dir: str) -> list[str]:
    """Running (not zombie) processes whose command line names `data_dir`."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if data_dir in cmdline and state != "Z":
            found.append(f"{proc.name}: {cmdline}")
    return found


@pytest.mark.slow
def test_a_pytest_run_starts_one_server_and_stops_it_at_the_end(tmp_path):
    """A separate pytest run: its tests share one server; once it exits nothing of the server is left."""
    report = tmp_path / "report.txt"
    (tmp_path / "test_inner.py").write_text(
        textwrap.dedent(
            f"""
            from pathlib import Path

            def test_one(postgres_server, postgres_url):
                Path({str(report)!r}).write_text(f"{{postgres_server.pid}} {{postgres_server.data_dir}}\\n")

            def test_two(postgres_server, postgres_url):
                assert Path({str(report)!r}).read_text().split()[0] == str(postgres_server.pid)
            """
        )
    )
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "tests.postgres", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    _pid, data_dir = report.read_text().split()
    assert not Path(data_dir).exists()
    assert not Path(data_dir).parent.exists()
    assert _postmasters_of(data_dir) == []
