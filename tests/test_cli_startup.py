"""A first run with no surprises: help texts with defaults, one-line start-up errors, masked URLs."""

from __future__ import annotations

import errno
import pathlib
import re
import socket
import threading

import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from batch_pipeline.cli.main import main
from openai_simulator.serving import serve_in_thread
from tests.lock_holder import hold_lock


def help_of(capsys, *args: str) -> str:
    with pytest.raises(SystemExit):
        main([*args, "--help"])
    return capsys.readouterr().out


def test_top_level_help_lists_every_command(capsys):
    out = help_of(capsys)
    for command in ("demo", "search", "api", "simulator"):
        assert re.search(rf"^\s+{command}\s+\S", out, re.M), f"{command} missing from:\n{out}"


@pytest.mark.parametrize("command", [["demo"], ["search"], ["api"], ["simulator"]])
def test_every_option_has_a_help_text_with_its_default(capsys, command):
    assert_help_states_defaults(help_of(capsys, *command))


def assert_help_states_defaults(out: str) -> None:
    """Every option has help; each one taking a value says its default (or what unset means), once."""
    options = out.split("options:", 1)[1]
    entries = re.split(r"\n(?=  -)", options.strip("\n"))
    for entry in entries:
        if entry.lstrip().startswith("-h"):
            continue
        switch = re.match(r"\s*--?[\w-]+(, --?[\w-]+)?\s{2,}\S", entry)  # takes no value: off unless given
        assert switch or re.search(r"\(default:\s|default\s|unset", entry), f"no help/default for: {entry!r}"
        assert "(default: None)" not in entry and "(default: False)" not in entry, entry


def unauthorized_app() -> Starlette:
    async def refuse(request):
        return JSONResponse(
            status_code=401,
            content={
                "error": {
                    "message": "Incorrect API key provided: sk-bad.",
                    "type": "invalid_request_error",
                    "code": "invalid_api_key",
                }
            },
        )

    return Starlette(routes=[Route("/{path:path}", refuse, methods=["GET", "POST"])])


def test_a_401_from_the_api_is_one_line_and_credentials_in_the_url_are_masked(tmp_path, capsys, monkeypatch):
    with serve_in_thread(unauthorized_app(), name="refusing-api") as url:
        port = url.rsplit(":", 1)[1]
        monkeypatch.setenv("OPENAI_API_KEY", "sk-bad")
        monkeypatch.setenv("OPENAI_BASE_URL", f"http://alice:hunter2-secret@127.0.0.1:{port}/v1?api-key=k3y")
        monkeypatch.setenv("BATCH_API_ENABLED", "true")
        code = main(
            [
                "search",
                "a fox",
                "-N",
                "2",
                "-M",
                "1",
                "-K",
                "1",
                "-E",
                "1",
                "--tier",
                "batch",
                "--use-env",
                "--home",
                str(tmp_path / "home"),
            ]
        )
    out, err = capsys.readouterr()
    assert code == 2
    assert err.strip().splitlines()[-1].startswith("error: the API refused the key (401")
    assert "Traceback" not in err and [line for line in err.splitlines() if line.startswith("error")] == [
        err.strip().splitlines()[-1]
    ]
    assert "hunter2" not in out + err and "k3y" not in out + err and "***@127.0.0.1" in out


def test_a_read_only_home_is_one_line(tmp_path, capsys, monkeypatch):
    home = tmp_path / "home"
    real_mkdir = pathlib.Path.mkdir

    def read_only_mkdir(self, *args, **kwargs):
        if str(self).startswith(str(home)):
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "mkdir", read_only_mkdir)
    assert main(["search", "a fox", "-N", "2", "-M", "1", "-K", "1", "--home", str(home)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot write ") and "BATCH_PIPELINE_HOME" in err and "Traceback" not in err


def test_a_corrupt_ledger_is_one_line(tmp_path, capsys):
    home = tmp_path / "home"
    home.mkdir()
    (home / "ledger.duckdb").write_bytes(b"this is not a duckdb file" * 400)
    assert main(["search", "a fox", "-N", "2", "-M", "1", "-K", "1", "--home", str(home)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the ledger cannot be opened") and "Traceback" not in err


def test_a_locked_ledger_is_one_line(tmp_path, capsys):
    from batch_pipeline.ledger import Ledger

    home = tmp_path / "home"
    Ledger(home / "ledger.duckdb")
    holder = hold_lock(home / "ledger.duckdb", 120)
    try:
        assert main(["search", "a fox", "-N", "2", "-M", "1", "-K", "1", "--home", str(home)]) == 2
    finally:
        holder.kill()
        holder.wait()
    err = capsys.readouterr().err
    assert err.startswith("error: the ledger is locked by another process") and "Traceback" not in err


def test_an_unreachable_postgres_ledger_is_one_line_without_its_password(tmp_path, capsys, monkeypatch):
    with socket.socket() as s:  # a loopback port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("BATCH_LEDGER_URL", f"postgresql://batch:hunter2-secret@127.0.0.1:{port}/ledger")
    assert main(["search", "a fox", "-N", "2", "-M", "1", "-K", "1", "--home", str(tmp_path / "home")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot reach the PostgreSQL ledger") and "BATCH_LEDGER_URL" in err
    assert "Traceback" not in err and "hunter2-secret" not in err


def test_api_refuses_a_public_bind_without_a_token(capsys, monkeypatch):
    monkeypatch.delenv("BATCH_API_TOKEN", raising=False)
    assert main(["api", "--host", "0.0.0.0", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: refusing to serve on 0.0.0.0") and "BATCH_API_TOKEN" in err


def test_api_on_a_taken_port_says_so_before_starting_anything(capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["api", "--port", str(port), "--with-simulator"]) == 2
    out, err = capsys.readouterr()
    assert err.startswith(f"error: port {port} is already in use on 127.0.0.1") and "--port" in err
    assert "API on" not in out, "no URL is announced for a server that cannot start"


def test_simulator_on_a_taken_port_is_one_line(capsys):
    """Checked before the server starts: one line, and no uvicorn bind error from its thread."""
    from openai_simulator.__main__ import main as simulator_main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["simulator", "--port", str(port)]) == 2
        err = capsys.readouterr().err
        with pytest.raises(SystemExit) as exited:
            simulator_main(["--port", str(port)])
    assert err.strip().splitlines() == [str(exited.value)]
    assert str(exited.value).startswith(f"error: port {port} is already in use on 127.0.0.1")
    assert "--port N" in str(exited.value)
    assert not any(thread.name == "openai-simulator" for thread in threading.enumerate())
