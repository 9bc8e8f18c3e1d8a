"""DuckDB allows one writer process: the ledger waits (bounded) for another process's lock."""

from __future__ import annotations

import time

import duckdb
import pytest

from batch_pipeline.ledger import Ledger, RequestState
from tests.lock_holder import hold_lock


def test_second_process_waits_for_the_lock_then_proceeds(ledger_path, ledger, make_request):
    holder = hold_lock(ledger_path, 1.0)
    try:
        started = time.monotonic()
        assert ledger.enqueue([make_request("a")]) == ["t-a"]
        waited = time.monotonic() - started
    finally:
        holder.wait(timeout=10)
    assert holder.returncode == 0
    assert waited >= 0.5
    assert ledger.request_states() == {"t-a": RequestState.QUEUED}


def test_lock_wait_gives_up_after_the_lock_timeout(ledger_path, ledger, clock):
    impatient = Ledger(ledger_path, clock=clock, lock_timeout_s=0.3)
    holder = hold_lock(ledger_path, 2.0)
    try:
        started = time.monotonic()
        with pytest.raises(duckdb.IOException, match="lock"):
            impatient.state_counts()
        assert time.monotonic() - started < 1.9  # gave up long before the holder let go
    finally:
        holder.wait(timeout=10)
    assert impatient.state_counts() == {}  # and works again once the other process is gone
