"""What every ledger module shares: the bulk insert, and what `Ledger`'s mixins use of it."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

import duckdb

from batch_pipeline.errors import LedgerError


class LedgerCore(Protocol):
    """What the mixins (`SessionRecords`, `SpendingRecords`) use of the `Ledger` they are mixed into."""

    clock: Callable[[], float]

    def connect(self, *, read_only: bool = False) -> AbstractContextManager[duckdb.DuckDBPyConnection]: ...

    def transaction(self) -> AbstractContextManager[duckdb.DuckDBPyConnection]: ...

    def _cancel_queued(self, con: duckdb.DuckDBPyConnection, session_id: str, reason: str) -> list[str]: ...


def one_row(cursor: duckdb.DuckDBPyConnection) -> tuple[Any, ...]:
    """The row of a query that always has one (an aggregate, or a row the caller's transaction holds)."""
    row = cursor.fetchone()
    if row is None:
        raise LedgerError("a query that always returns a row returned none")
    return row


def insert_rows(con: duckdb.DuckDBPyConnection, table: str, columns: Sequence[str], rows: Sequence[tuple]) -> None:
    """Bulk insert: one statement with a list per column (executemany costs a round trip per row,
    about 40x slower at 50,000 rows; see docs/PERFORMANCE.md)."""
    if not rows:
        return
    column_lists = [list(values) for values in zip(*rows, strict=True)]
    selects = ", ".join(f"unnest(${i + 1})" for i in range(len(columns)))
    con.execute(f"INSERT INTO {table} ({', '.join(columns)}) SELECT {selects}", column_lists)
