"""A unit of work opens the ledger once (issue 11): the schema once per process and file, a driver tick one
connection in its thread, and a batch's first create no remote list walk."""

from __future__ import annotations

import subprocess
import sys
import threading

import duckdb
import pytest

from batch_pipeline.driver import Driver
from batch_pipeline.ledger import Ledger
from batch_pipeline.search import SearchParams
from batch_pipeline.sessions import SessionConfig
from openai_simulator import FaultRule, Simulator, SimulatorConfig
from tests.integration.support import runtime_for


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The name of the thread of every DuckDB connection opened from now on."""
    calls: list[str] = []
    real = duckdb.connect

    def counting(*args, **kwargs):
        calls.append(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(duckdb, "connect", counting)
    return calls


def test_the_schema_is_migrated_once_per_process_and_file(tmp_path, opened):
    path = tmp_path / "ledger.duckdb"
    Ledger(path)
    assert len(opened) == 1, "a new file is created and migrated"
    Ledger(path)
    Ledger(path, lock_timeout_s=1)
    assert len(opened) == 1, "the same file in the same process: no connection, no DDL"
    path.unlink()
    Ledger(path).sessions()
    assert len(opened) == 3, "a file created anew at the same path is migrated again"


def test_a_driver_tick_opens_the_ledger_once_and_lets_go_of_it_while_waiting_on_the_api(tmp_path, opened):
    with Simulator(SimulatorConfig(data_dir=tmp_path / "sim")).serve() as url:
        runtime = runtime_for(url, tmp_path)
        session_id = runtime.sessions.start(
            SessionConfig(prompt="a lighthouse", tier="batch", driver="cli", params=SearchParams(N=4, M=2, K=2, E=2))
        )
        held_during: list[str] = []
        runtime.client._client.event_hooks["request"].append(
            lambda request: held_during.append(f"{request.method} {request.url.path}")
            if getattr(runtime.ledger._local, "con", None)
            else None
        )
        api_calls: list[str] = []
        runtime.client._client.event_hooks["request"].append(lambda request: api_calls.append(request.url.path))
        driver = Driver(runtime, owner="cli", session_ids=[session_id])
        for _ in range(3):  # queue and send, then ingest and apply: dozens of ledger calls each
            opened.clear()
            api_calls.clear()
            driver.tick()
            assert api_calls, "each of these ticks talks to the API (upload and create, or poll and download)"
            # One connection for the tick's ledger work, and one again after each wait on the API.
            assert 1 < opened.count(threading.current_thread().name) <= 1 + len(api_calls)
        assert held_during == [], "no API call is made while this thread holds the ledger file"


def test_a_new_batch_is_created_without_walking_the_remote_list(tmp_path):
    requests_seen: list[tuple[str, str]] = []
    with Simulator(SimulatorConfig(data_dir=tmp_path / "sim")).serve() as url:
        runtime = runtime_for(url, tmp_path, BATCH_API_MODE="deferred")
        session_id = runtime.sessions.start(
            SessionConfig(prompt="a lighthouse", tier="batch", driver="cli", params=SearchParams(N=4, M=2, K=2, E=2))
        )
        runtime.client._client.event_hooks["request"].append(
            lambda request: requests_seen.append((request.method, request.url.path))
        )
        runtime.sessions.advance(session_id)  # queues the first round
        assert runtime.manager.submit_queued(session_ids=[session_id])
    assert ("GET", "/v1/batches") not in requests_seen, "a batch never sent cannot exist remotely: no lookup"
    assert requests_seen.count(("POST", "/v1/batches")) == 1


def test_a_standard_round_lets_go_of_the_ledger_while_its_calls_are_out(tmp_path):
    """Another process reads the ledger while a tick waits on slow synchronous calls (issue 11)."""
    sim = Simulator(SimulatorConfig(data_dir=tmp_path / "sim"))
    with sim.serve() as url:
        runtime = runtime_for(url, tmp_path)
        session_id = runtime.sessions.start(
            SessionConfig(prompt="a lighthouse", tier="standard", driver="cli", params=SearchParams(N=4, M=2, K=2, E=2))
        )
        sim.add_fault(FaultRule(kind="slow", path="/v1/chat/completions", params={"seconds": 12}))
        calls_out = threading.Event()
        runtime.client._client.event_hooks["request"].append(lambda request: calls_out.set())
        tick = threading.Thread(target=Driver(runtime, owner="cli", session_ids=[session_id]).tick, daemon=True)
        tick.start()
        assert calls_out.wait(60), "the tick sent its first round"
        reader = subprocess.run(
            [
                sys.executable,
                "-c",
                "import duckdb, sys; con = duckdb.connect(sys.argv[1], read_only=True);"
                " print(con.execute('SELECT count(*) FROM requests').fetchone()[0])",
                str(runtime.ledger.path),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        still_waiting = tick.is_alive()
        tick.join(180)
    assert reader.returncode == 0, reader.stderr
    assert int(reader.stdout) == 4, "the reader sees the round's four requests"
    assert still_waiting, "it read while the tick was still waiting on its calls"
