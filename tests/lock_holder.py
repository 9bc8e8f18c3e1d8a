"""Another process holding the DuckDB ledger's single-writer lock, for tests of the bounded waits."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HOLDER = """
import sys, time, duckdb
con = duckdb.connect(sys.argv[1])
con.execute("SELECT count(*) FROM requests").fetchone()
print("held", flush=True)
time.sleep(float(sys.argv[2]))
con.close()
"""


def hold_lock(path: Path | str, seconds: float) -> subprocess.Popen:
    """A process with a write connection open on the ledger file for `seconds` (returns once it holds it)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc
