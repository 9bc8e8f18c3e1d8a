"""What every ledger module shares: the bulk insert, and what `Ledger`'s mixins use of it."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Protocol

import duckdb
import pyarrow as pa  # type: ignore[import-untyped]

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


def insert_columns(
    con: duckdb.DuckDBPyConnection,
    table: str,
    columns: Mapping[str, pa.Array | list],
    select: Mapping[str, str] | None = None,
) -> None:
    """Bulk insert of columns through Arrow: DuckDB scans the table in place, with no per-row round trip.

    `executemany` costs a round trip per row (about 40x slower at 50,000 rows) and a list per column
    unnested in SQL is about 4x slower than an Arrow scan; see docs/PERFORMANCE.md. `select` gives
    an SQL expression for a target column (over the Arrow columns) where the value needs converting.
    """
    data = pa.table(
        {
            name: values if isinstance(values, (pa.Array, pa.ChunkedArray)) else pa.array(values)
            for name, values in columns.items()
        }
    )
    if not data.num_rows:
        return
    select = select or {}
    targets = [name for name in columns if not name.startswith("_")] + [name for name in select if name not in columns]
    expressions = ", ".join(select.get(name, f'"{name}"') for name in targets)
    view = f"_insert_{table}"
    con.complete()  # a statement read with fetchone() is still open, and register() refuses to run beside it
    con.register(view, data)
    try:
        con.execute(f"INSERT INTO {table} ({', '.join(targets)}) SELECT {expressions} FROM {view}")
    finally:
        con.unregister(view)


_VIEWS = itertools.count()


@contextmanager
def arrow_view(con: duckdb.DuckDBPyConnection, columns: Mapping[str, pa.Array | list]) -> Iterator[str]:
    """Columns as a view DuckDB scans in place (Arrow), for the statement(s) inside the block; yields its name.

    A list of 50,000 ids passed as a parameter (`IN (SELECT unnest(?))`) is converted value by value;
    the same ids as an Arrow column are read as they are, several times faster."""
    data = pa.table(
        {
            name: values if isinstance(values, (pa.Array, pa.ChunkedArray)) else pa.array(values, pa.string())
            for name, values in columns.items()
        }
    )
    name = f"_view_{next(_VIEWS)}"
    con.complete()  # a statement read with fetchone() is still open, and register() refuses to run beside it
    con.register(name, data)
    try:
        yield name
    finally:
        con.unregister(name)
