"""Where the ledger lives and what every ledger module shares: the connection, the bulk insert, and what
`Ledger`'s mixins use of it.

The ledger runs on DuckDB (one file, the default) or PostgreSQL (`BATCH_LEDGER_URL=postgresql://...`). Its SQL
is one text for both: the subset the two engines share, with `?` parameters and typed arrays
(`unnest(?::VARCHAR[])`). What differs lives here and nowhere else: how a connection is opened and what it
locks (`DuckDBStore`, `PostgresStore`), and the bulk paths (`insert_rows`, `insert_columns`, `arrow_view`:
Arrow scans on DuckDB, `COPY` into PostgreSQL).
"""

from __future__ import annotations

import array
import functools
import itertools
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any, Literal, Protocol

import duckdb
import pyarrow as pa  # type: ignore[import-untyped]

from batch_pipeline.errors import LedgerError
from batch_pipeline.settings import mask_url

Dialect = Literal["duckdb", "postgres"]


class Connection(Protocol):
    """What the ledger uses of a connection: a DuckDB connection has it; `PostgresConnection` adapts psycopg."""

    def execute(self, query: str, parameters: Any = ...) -> Any: ...

    def begin(self) -> Any: ...

    def commit(self) -> Any: ...

    def rollback(self) -> Any: ...

    def close(self) -> None: ...


class Store(Protocol):
    """Where a ledger lives: how to open it, what a process must serialise itself, how to show it."""

    dialect: Dialect
    location: str  # what `open_store` was given

    def open(self, read_only: bool) -> Connection: ...

    def exists(self) -> bool: ...

    def writer_lock(self) -> AbstractContextManager[Any]: ...

    def identity(self) -> tuple[str, int, int] | None: ...

    def __str__(self) -> str: ...


def open_store(location: str | Path) -> Store:
    """The store a ledger setting names: a `postgresql://` URL, or a DuckDB file path."""
    text = str(location)
    if text.startswith(("postgresql://", "postgres://")):
        return PostgresStore(text)
    return DuckDBStore(Path(location))


class DuckDBStore:
    """One DuckDB file: one writing process at a time (DuckDB's file lock); the threads of a process take turns
    through `writer_lock` (two connections updating one row would fail with "Conflict on update")."""

    dialect: Dialect = "duckdb"

    def __init__(self, path: Path):
        self.path = Path(path)
        self.location = str(self.path)

    def open(self, read_only: bool) -> Connection:
        if not read_only:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        return duckdb.connect(str(self.path), read_only=read_only)

    def exists(self) -> bool:
        return self.path.exists()

    def writer_lock(self) -> threading.RLock:
        key = str(self.path.resolve())
        with _WRITER_LOCKS_GUARD:
            return _WRITER_LOCKS.setdefault(key, threading.RLock())

    def identity(self) -> tuple[str, int, int] | None:
        """The file's identity (None before it exists): a file deleted and made again at the same path is
        another ledger."""
        if not self.path.exists():
            return None
        st = self.path.stat()
        return str(self.path.resolve()), st.st_dev, st.st_ino

    def __str__(self) -> str:
        return str(self.path)


class PostgresStore:
    """A PostgreSQL database: many writers at once. Each write transaction is SERIALIZABLE, so every
    interleaving the engine admits equals some one-at-a-time order (what the DuckDB ledger gets from its
    single writer); the loser of a conflict is told to try again (`errors.is_transient`)."""

    dialect: Dialect = "postgres"

    def __init__(self, url: str):
        self.url = self.location = url

    def open(self, read_only: bool) -> Connection:
        return PostgresConnection(self.url, read_only=read_only)

    def exists(self) -> bool:
        """The ledger's tables are there (the first `Ledger` makes them; readers before it find nothing)."""
        con = self.open(read_only=True)
        try:
            return con.execute("SELECT to_regclass('sessions') IS NOT NULL").fetchone()[0]
        finally:
            con.close()

    def writer_lock(self) -> AbstractContextManager[Any]:
        return nullcontext()

    def identity(self) -> tuple[str, int, int] | None:
        return self.url, 0, 0

    def __str__(self) -> str:
        return mask_url(self.url) or ""  # never its password


class PostgresConnection:
    """A psycopg connection that speaks the ledger's SQL: `?` parameters (sent as server-side `$n`), JSON
    read back as its text (as DuckDB gives it), times in UTC, explicit transactions."""

    def __init__(self, url: str, *, read_only: bool = False):
        import psycopg
        from psycopg.types.string import TextLoader

        self._con = psycopg.connect(url, autocommit=True, cursor_factory=psycopg.RawCursor)
        for json_type in ("json", "jsonb"):
            self._con.adapters.register_loader(json_type, TextLoader)
        self._con.execute("SET TIME ZONE 'UTC'")
        if read_only:
            self._con.execute("SET default_transaction_read_only = on")

    def execute(self, query: str, parameters: Any = None) -> Any:
        return self._con.execute(_positional(query), parameters)

    def begin(self, isolation: Literal["SERIALIZABLE", "READ COMMITTED"] = "SERIALIZABLE") -> None:
        self._con.execute(f"BEGIN ISOLATION LEVEL {isolation}")

    def commit(self) -> None:
        self._con.execute("COMMIT")

    def rollback(self) -> None:
        self._con.execute("ROLLBACK")

    def close(self) -> None:
        self._con.close()

    def stream(self, query: str, parameters: Any, size: int) -> Iterator[Any]:
        """The rows of a query as the server sends them, `size` at a time (memory flat in the result's size)."""
        yield from self._con.cursor().stream(_positional(query), parameters, size=size)

    def column_types(self, table: str) -> dict[str, str]:
        """Column name -> SQL type of one of the ledger's tables (fixed by schema.sql: read once per process)."""
        if table not in _COLUMN_TYPES:
            rows = self.execute(
                "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute"
                " WHERE attrelid = to_regclass(?) AND attnum > 0 AND NOT attisdropped",
                [table],
            ).fetchall()
            _COLUMN_TYPES[table] = dict(rows)
        return _COLUMN_TYPES[table]

    def copy_rows(self, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        with self._con.cursor().copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)


@functools.lru_cache(maxsize=1024)
def _positional(query: str) -> str:
    """`?` -> `$1, $2, ...` (PostgreSQL's own placeholders; psycopg's raw cursor sends them as they are).
    The ledger's SQL has no `?` inside string literals."""
    counter = itertools.count(1)
    return re.sub(r"\?", lambda _m: f"${next(counter)}", query)


_COLUMN_TYPES: dict[str, dict[str, str]] = {}
_WRITER_LOCKS: dict[str, threading.RLock] = {}
_WRITER_LOCKS_GUARD = threading.Lock()


class LedgerCore(Protocol):
    """What the mixins (`SessionRecords`, `SpendingRecords`) use of the `Ledger` they are mixed into."""

    clock: Callable[[], float]

    def connect(self, *, read_only: bool = False) -> AbstractContextManager[Connection]: ...

    def transaction(self) -> AbstractContextManager[Connection]: ...

    def _cancel_queued(self, con: Connection, session_id: str, reason: str) -> list[str]: ...


def one_row(cursor: Any) -> tuple[Any, ...]:
    """The row of a query that always has one (an aggregate, or a row the caller's transaction holds)."""
    row = cursor.fetchone()
    if row is None:
        raise LedgerError("a query that always returns a row returned none")
    return row


def insert_rows(con: Connection, table: str, columns: Sequence[str], rows: Sequence[tuple]) -> None:
    """Bulk insert: on DuckDB one statement with a list per column (executemany costs a round trip per row,
    about 40x slower at 50,000 rows; see docs/PERFORMANCE.md); on PostgreSQL one `COPY`."""
    if not rows:
        return
    if isinstance(con, PostgresConnection):
        con.copy_rows(table, columns, rows)
        return
    column_lists = [list(values) for values in zip(*rows, strict=True)]
    selects = ", ".join(f"unnest(${i + 1})" for i in range(len(columns)))
    con.execute(f"INSERT INTO {table} ({', '.join(columns)}) SELECT {selects}", column_lists)


def insert_columns(
    con: Connection,
    table: str,
    columns: Mapping[str, pa.Array | list],
    select: Mapping[str, str] | None = None,
) -> None:
    """Bulk insert of columns through Arrow: DuckDB scans the table in place, with no per-row round trip.

    `executemany` costs a round trip per row (about 40x slower at 50,000 rows) and a list per column
    unnested in SQL is about 4x slower than an Arrow scan; see docs/PERFORMANCE.md. `select` gives
    an SQL expression for a target column (over the Arrow columns) where the value needs converting.
    Columns named with a leading `_` are only read by those expressions.
    """
    data = _arrow_table(columns, None)
    if not data.num_rows:
        return
    select = select or {}
    targets = [name for name in columns if not name.startswith("_")] + [name for name in select if name not in columns]
    expressions = ", ".join(select.get(name, f'"{name}"') for name in targets)
    with _scan(con, data, like=table) as view:
        con.execute(f"INSERT INTO {table} ({', '.join(targets)}) SELECT {expressions} FROM {view}")


@contextmanager
def arrow_view(con: Connection, columns: Mapping[str, pa.Array | list]) -> Iterator[str]:
    """Columns as a view DuckDB scans in place (Arrow), for the statement(s) inside the block; yields its name.

    A list of 50,000 ids passed as a parameter (`IN (SELECT unnest(?::VARCHAR[]))`) is converted value by value;
    the same ids as an Arrow column are read as they are, several times faster. On PostgreSQL the columns
    are copied into a temporary table of the same name."""
    with _scan(con, _arrow_table(columns, pa.string())) as view:
        yield view


def string_column(values: Sequence[str | None]) -> pa.Array:
    """Long text (None for null) as an Arrow string column, its bytes joined in one piece and its offsets
    counted from the lengths. `pa.array` appends value by value into a buffer it keeps growing: for 50,000
    responses of 800 bytes it took 58 ms, this 18 ms; for short text (ids, codes) `pa.array` is the faster,
    this costs about a microsecond a value (docs/PERFORMANCE.md)."""
    nulls = None in values
    texts: Sequence[str] = [text or "" for text in values] if nulls else values  # type: ignore[assignment]
    if all(map(str.isascii, texts)):  # (a flag CPython keeps: one character is one byte)
        data, lengths = "".join(texts).encode(), map(len, texts)
    else:
        encoded = [text.encode() for text in texts]
        data, lengths = b"".join(encoded), map(len, encoded)
    if len(data) >= 2**31:  # past a 32-bit offset: Arrow's own conversion splits it into chunks
        return pa.array(values, pa.string())
    offsets = array.array("i", itertools.accumulate(lengths, initial=0))
    validity = pa.array([text is not None for text in values], pa.bool_()).buffers()[1] if nulls else None
    return pa.Array.from_buffers(pa.string(), len(values), [validity, pa.py_buffer(offsets), pa.py_buffer(data)])


_VIEWS = itertools.count()


def _arrow_table(columns: Mapping[str, pa.Array | list], list_type: pa.DataType | None) -> pa.Table:
    return pa.table(
        {
            name: values if isinstance(values, (pa.Array, pa.ChunkedArray)) else pa.array(values, list_type)
            for name, values in columns.items()
        }
    )


@contextmanager
def _scan(con: Connection, data: pa.Table, like: str | None = None) -> Iterator[str]:
    """A name the statements in the block read `data` under. On PostgreSQL a temporary table, whose columns
    take the type of the same-named column of table `like` (a JSON column is filled from text as it is)."""
    name = f"_view_{next(_VIEWS)}"
    if isinstance(con, PostgresConnection):
        known = con.column_types(like) if like else {}
        columns = ", ".join(
            f'"{field.name}" {known.get(field.name) or _postgres_type(field.type)}' for field in data.schema
        )
        con.execute(f"CREATE TEMPORARY TABLE {name} ({columns})")
        rows = zip(*(column.to_pylist() for column in data.columns), strict=True)
        con.copy_rows(name, [f'"{n}"' for n in data.column_names], rows)
        yield name
        con.execute(f"DROP TABLE {name}")  # (after an error, the rollback or the connection's end drops it)
        return
    con.complete()  # type: ignore[attr-defined]  # a statement read with fetchone() is still open, and register() refuses to run beside it
    con.register(name, data)  # type: ignore[attr-defined]
    try:
        yield name
    finally:
        con.unregister(name)  # type: ignore[attr-defined]


def _postgres_type(kind: pa.DataType) -> str:
    if pa.types.is_integer(kind):
        return "BIGINT"
    if pa.types.is_floating(kind):
        return "DOUBLE PRECISION"
    if pa.types.is_boolean(kind):
        return "BOOLEAN"
    return "VARCHAR"
