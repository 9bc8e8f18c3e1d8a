"""Benchmark: the file and ledger hot paths next to their yardsticks and the `openai-batch` peer, in one run.

Every row is timed `--repeats` times (median printed) on the same 50,000 chat requests, the project, its
yardstick and the peer taking turns, so a shared machine's load weighs on them alike:

  build    the caller's `ChatRequest`, the project's `build_request` + the JSONL line, written to a file
           yardsticks: orjson.dumps of the same envelopes (kept in a list, as issue 14 measured it) and the
           same written to a file (the project's sink); peer: openai-batch `Batch.add_to_batch` -> file;
           bound: the least any Python builder does (body dict, sorted dumps, SHA-256, line), to show
           how near a yardstick a builder can get at all
  parse    parse + classify the output file; yardstick: orjson.loads of every line
  price    parse + classify + price (the Python part of ingesting a batch); same yardstick
  ingest   recording the 50,000 outcomes in the ledger (one transaction);
           yardstick: a pyarrow table of the same result rows inserted into the same `results` table.
           The ledger's connection is open before the clock starts, as the yardstick's is: the driver ingests
           inside its tick's unit of work (`Driver.tick` -> `Ledger.unit`; `BatchLifecycle.ingest` has the
           connection back from `Ledger.released` before it parses the files), so opening it is not ingest
           work. Its close (after the clock) has nothing left to write: the commit is durable, and the
           checkpoint DuckDB makes of this transaction runs inside the commit.

The peer is installed by this script into a throwaway venv (pip's cache makes that quick) and run in
a subprocess (timed inside it, start-up excluded); with --no-peer, or when the install fails, its row says
why it was skipped. Also prints the peak RSS (VmHWM) of a fresh process that parses, prices and ingests
one 50,000-line batch, and its peak before the ingest began.
Usage: python benchmarks/bench_side_by_side.py [--lines 50000] [--repeats 5] [--no-peer]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import duckdb
import orjson
import pyarrow as pa

from batch_pipeline.batching import results as results_mod
from batch_pipeline.batching.pricing import PriceCatalog
from batch_pipeline.batching.requests import ChatRequest, build_request, request_line
from batch_pipeline.ledger import Ledger
from batch_pipeline.records import from_units
from batch_pipeline.vocabulary import Endpoint, Tier

PEER = "openai-batch==0.3.4"
MODEL = "gpt-5-mini"
CHAT = str(Endpoint.CHAT)


def messages(i: int) -> list[dict[str, str]]:
    """Request i's messages (the peer's script spells the same two)."""
    return [
        {"role": "system", "content": "You write image prompts. Return JSON."},
        {"role": "user", "content": f"User prompt: a lighthouse in a storm, variant {i}"},
    ]


def chat_request(i: int) -> ChatRequest:
    return ChatRequest(key=f"r{i}", model=MODEL, max_tokens=300, temperature=0.7, messages=messages(i))


def output_line(i: int) -> bytes:
    """A success line of an output file, keys in the order the Batch API (and the simulator) writes them."""
    return (
        orjson.dumps(
            {
                "id": f"batch_req_{i}",
                "custom_id": f"bench-r{i}",
                "response": {
                    "status_code": 200,
                    "request_id": f"req_{i}",
                    "body": {
                        "id": f"chatcmpl-{i}",
                        "object": "chat.completion",
                        "created": 0,
                        "model": MODEL,
                        "choices": [
                            {
                                "index": 0,
                                "finish_reason": "stop",
                                "message": {"role": "assistant", "content": "x" * 400},
                            }
                        ],
                        "usage": {
                            "prompt_tokens": 40 + i % 7,
                            "completion_tokens": 100 + i % 13,
                            "total_tokens": 140 + i % 20,
                            "prompt_tokens_details": {"cached_tokens": 16 if i % 3 == 0 else 0},
                        },
                    },
                },
                "error": None,
            }
        )
        + b"\n"
    )


# -- the project's paths -------------------------------------------------------------------------


def project_build(n: int, path: Path) -> None:
    with path.open("wb", buffering=1 << 20) as fh:
        for i in range(n):
            queued = build_request(chat_request(i), namespace="bench", operation="expand")
            fh.write(request_line(queued) + b"\n")


def project_parse(path: Path) -> results_mod.ResultTable:
    return results_mod.read_result_table([path], None)


def project_parse_price(path: Path, catalog: PriceCatalog) -> results_mod.ResultTable:
    pricing = results_mod.line_pricing(catalog, endpoint=CHAT, model=MODEL, tier=Tier.BATCH)
    table = results_mod.read_result_table([path], None, pricing=pricing)
    return results_mod.price_results(
        table, endpoint=CHAT, model=MODEL, tier=Tier.BATCH, catalog=catalog, request_bodies=lambda ids: {}
    )


def fresh_ledger(directory: Path, n: int) -> Ledger:
    """A ledger whose batch `bench` holds the n requests and is waiting to be ingested."""
    for f in directory.glob("ingest*.duckdb*"):
        f.unlink()
    ledger = Ledger(directory / "ingest.duckdb")
    ledger.enqueue([build_request(chat_request(i), namespace="bench", operation="expand") for i in range(n)])
    ledger.create_batch_intent("bench", CHAT, MODEL, ledger.queued_rows())
    ledger.mark_uploaded("bench", "file-bench")
    ledger.mark_created("bench", "batch_bench")
    return ledger


def table_copy(table: results_mod.ResultTable) -> results_mod.ResultTable:
    copy = results_mod.ResultTable()
    copy.rows, copy._index = list(table.rows), dict(table._index)
    return copy


def project_ingest(ledger: Ledger, table: results_mod.ResultTable) -> None:
    assert ledger.record_batch_results("bench", table, max_attempts=3)


def project_ingest_in_unit(ledger: Ledger, table: results_mod.ResultTable) -> float:
    """Seconds `project_ingest` takes inside a unit of work opened before the clock (the driver's path)."""
    with ledger.unit():
        start = time.perf_counter()
        project_ingest(ledger, table)
        return time.perf_counter() - start


# -- yardsticks ----------------------------------------------------------------------------------


def yardstick_envelopes(n: int) -> list[dict]:
    """The envelopes the project writes (the same custom_ids and bodies), for orjson.dumps one per line."""
    return [
        {"custom_id": q.request_id, "method": "POST", "url": CHAT, "body": q.body}
        for q in (build_request(chat_request(i), namespace="bench", operation="expand") for i in range(n))
    ]


def yardstick_dumps_to_file(envelopes: list[dict], path: Path) -> None:
    """orjson.dumps of each envelope written to a file as the project writes its lines: the yardstick with the
    project's sink (the list above keeps 50,000 lines in memory, and allocating them is most of its time)."""
    with path.open("wb", buffering=1 << 20) as fh:
        for envelope in envelopes:
            fh.write(orjson.dumps(envelope) + b"\n")


def floor_build(n: int, path: Path) -> None:
    """The least any Python builder does per request, as a lower bound: the caller's body as a dict, one sorted
    serialisation, its SHA-256 (the cache identity), the line written. No validation, no per-model rules, no
    custom_id rule, no record for the ledger."""
    with path.open("wb", buffering=1 << 20) as fh:
        for i in range(n):
            body = {"model": MODEL, "max_tokens": 300, "temperature": 0.7, "messages": messages(i)}
            text = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
            hashlib.sha256(text).hexdigest()
            fh.write(b'{"custom_id":"bench-r%d","method":"POST","url":"%s","body":%s}\n' % (i, CHAT.encode(), text))


def yardstick_insert(directory: Path, rows: dict[str, list]) -> Callable[[], None]:
    """The same result rows as a pyarrow table, inserted into the ledger's `results` table.

    Its commit only writes the WAL: DuckDB estimates the transaction's size (a string counts 16 bytes) under
    `checkpoint_threshold`, so the checkpoint that writes the rows into the database file waits for a later
    commit or the close. The ingest's transaction (results, events, state updates) is estimated over it, and
    its commit makes that checkpoint. `run.checkpoint` times the yardstick's checkpoint (after its clock), so
    the figures can also be compared with it."""
    schema = (Path(results_mod.__file__).parent.parent / "ledger" / "schema.sql").read_text()
    path = directory / "yardstick.duckdb"

    def run() -> None:
        path.unlink(missing_ok=True)
        con = duckdb.connect(str(path))
        try:
            con.execute(schema)
            con.register("arrow_rows", pa.table(rows))  # made before the clock: the yardstick is DuckDB's insert
            start = time.perf_counter()
            con.begin()
            con.execute(f"INSERT INTO results ({', '.join(rows)}) SELECT * FROM arrow_rows")
            con.commit()
            run.elapsed = time.perf_counter() - start
            start = time.perf_counter()
            con.execute("CHECKPOINT")
            run.checkpoint = time.perf_counter() - start
        finally:
            con.close()

    return run


def yardstick_rows(table: results_mod.ResultTable) -> dict[str, list]:
    """The rows ingest writes into `results`, as plain columns (responses as the same JSON text)."""
    n = len(table)
    col = table.column
    return {
        "request_id": col("request_id"),
        "attempt": [1] * n,
        "batch_key": ["bench"] * n,
        "tier": ["batch"] * n,
        "outcome": col("outcome"),
        "status_code": col("status_code"),
        "response": col("response"),
        "error_code": col("error_code"),
        "error_message": col("error_message"),
        "input_tokens": col("input_tokens"),
        "cached_tokens": col("cached_tokens"),
        "output_tokens": col("output_tokens"),
        "images": col("images"),
        "cost_usd": [from_units(u) for u in col("cost_units")],
        "standard_cost_usd": [from_units(u) for u in col("standard_cost_units")],
        "price_version": col("price_version"),
        "recorded_at": [0.0] * n,
    }


# -- the peer ------------------------------------------------------------------------------------

PEER_SCRIPT = textwrap.dedent("""
    import statistics, sys, time
    from openai_batch import Batch
    from openai_batch.providers import openai_provider
    n, repeats, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    messages = lambda i: [{"role": "system", "content": "You write image prompts. Return JSON."},
                          {"role": "user", "content": f"User prompt: a lighthouse in a storm, variant {i}"}]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        with Batch(submission_input_file=path, provider=openai_provider) as batch:
            for i in range(n):
                batch.add_to_batch(model="gpt-5-mini", messages=messages(i), max_tokens=300, temperature=0.7)
        times.append(time.perf_counter() - start)
    print(statistics.median(times))
""")


def peer_install(directory: Path) -> tuple[list[str] | None, str]:
    """The command that times openai-batch writing lines once (installed into a throwaway venv), or None and
    why it was skipped."""
    venv = directory / "peer-venv"
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=120)
        py = venv / "bin" / "python"
        # openai pinned to the project's version (pip's cache has the wheel); the peer imports httpx itself
        subprocess.run(
            [
                str(py),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                PEER,
                "openai==3.57.0",
                "httpx",
            ],
            check=True,
            capture_output=True,
            timeout=600,
        )
        script = directory / "peer.py"
        script.write_text(PEER_SCRIPT)
        return [str(py), str(script)], ""
    except (subprocess.SubprocessError, OSError) as exc:
        return None, f"{PEER} not installed: {_last_line(exc)}"


def peer_once(command: list[str], n: int, directory: Path) -> float:
    """Seconds openai-batch takes to write n lines (timed inside its process, start-up excluded)."""
    done = subprocess.run(
        [*command, str(n), "1", str(directory / "peer.jsonl")], check=True, capture_output=True, text=True, timeout=600
    )
    return float(done.stdout.strip().splitlines()[-1])


def _last_line(exc: BaseException) -> str:
    detail = getattr(exc, "stderr", None) or str(exc)
    detail = detail.decode() if isinstance(detail, bytes) else detail
    return detail.strip().splitlines()[-1] if detail.strip() else repr(exc)


def interleaved(runs: dict[str, Callable[[], float]], repeats: int) -> dict[str, float]:
    """Median seconds of each run, the runs taking turns (a, b, c, a, b, c, ...): a shared machine's load
    then weighs on all of them alike, which timing each in its own phase does not."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            times[name].append(run())
    return {name: statistics.median(values) for name, values in times.items()}


def timed(fn: Callable[[], object]) -> Callable[[], float]:
    def run() -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    return run


# -- peak memory of one ingest -------------------------------------------------------------------

MEMORY_SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[4])
    from pathlib import Path
    from bench_side_by_side import fresh_ledger, peak_rss_mb, project_ingest_in_unit, project_parse_price
    from batch_pipeline.batching.pricing import PriceCatalog
    from batch_pipeline.ledger import Ledger
    mode, directory, n = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    if mode == "setup":
        fresh_ledger(directory, n)
    else:
        ledger = Ledger(directory / "ingest.duckdb")
        catalog = PriceCatalog.load()
        before = peak_rss_mb()
        project_ingest_in_unit(ledger, project_parse_price(directory / "output.jsonl", catalog))
        print(before, peak_rss_mb())  # after the unit's close: a checkpoint made at the close counts
""")


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM). Not ru_maxrss: Linux carries that over an exec from the
    forking parent, so a child of a large benchmark process would report the parent's size."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def ingest_peak_mb(directory: Path, n: int) -> tuple[float, float]:
    """Peak RSS of a fresh process that parses, prices and ingests one n-line output file, and its peak
    before (imports, an open ledger, the catalog); the ledger is prepared by another process."""
    here = str(Path(__file__).parent)
    subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, "setup", str(directory), str(n), here], check=True)
    done = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, "ingest", str(directory), str(n), here],
        check=True,
        capture_output=True,
        text=True,
    )
    before, peak = done.stdout.split()[-2:]
    return float(before), float(peak)


def build_phase(n: int, repeats: int, home: Path, peer_command: list[str] | None) -> dict[str, float]:
    envelopes = yardstick_envelopes(n)
    runs = {
        "build": timed(lambda: project_build(n, home / "input.jsonl")),
        "dumps": timed(lambda: [orjson.dumps(e) for e in envelopes]),
        "dumps_file": timed(lambda: yardstick_dumps_to_file(envelopes, home / "dumps.jsonl")),
        "floor": timed(lambda: floor_build(n, home / "floor.jsonl")),
    }
    if peer_command is not None:
        runs["peer"] = lambda: peer_once(peer_command, n, home)
    return interleaved(runs, repeats)


def ingest_phase(n: int, repeats: int, home: Path, table: results_mod.ResultTable) -> dict[str, float]:
    yardstick = yardstick_insert(home, yardstick_rows(table))

    def ingest_once() -> float:
        # ingest consumes its table: each turn gets a copy, made outside the timing like the ledger
        return project_ingest_in_unit(fresh_ledger(home, n), table_copy(table))

    checkpoints: list[float] = []

    def yardstick_once() -> float:
        yardstick()
        checkpoints.append(yardstick.checkpoint)  # type: ignore[attr-defined]
        return yardstick.elapsed  # type: ignore[attr-defined]

    medians = interleaved({"ingest": ingest_once, "insert": yardstick_once}, repeats)
    return medians | {"checkpoint": statistics.median(checkpoints)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-peer", action="store_true")
    args = parser.parse_args()
    n, repeats = args.lines, args.repeats
    print(
        f"machine: {os.cpu_count()} cores, {platform.processor() or platform.machine()}, "
        f"{platform.python_implementation()} {platform.python_version()}; {n:,} chat requests, medians of {repeats}"
    )
    catalog = PriceCatalog.load()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        rows: list[tuple[str, float, str, float | None]] = []  # label, seconds, yardstick label, yardstick seconds

        if args.no_peer:
            peer_command, why = None, "--no-peer given"
        else:
            peer_command, why = peer_install(home)
        try:
            medians = build_phase(n, repeats, home, peer_command)
        except (subprocess.SubprocessError, OSError, ValueError) as exc:
            why = f"{PEER} failed: {_last_line(exc)}"
            medians = build_phase(n, repeats, home, None)
        build_s, peer_s = medians["build"], medians.get("peer")
        rows.append(("build + validate + JSONL line", build_s, "orjson.dumps of the same envelopes", medians["dumps"]))
        to_file = "orjson.dumps of each envelope, written to a file"
        rows.append(("build + validate + JSONL line", build_s, to_file, medians["dumps_file"]))
        floor = "(bound) body dict, sorted dumps, SHA-256, line written; nothing else"
        rows.append((floor, medians["floor"], "orjson.dumps of the same envelopes", medians["dumps"]))
        rows.append((floor, medians["floor"], to_file, medians["dumps_file"]))
        rows.append((f"(peer) {PEER} add_to_batch -> file", peer_s or 0.0, "", None))

        output = home / "output.jsonl"
        output.write_bytes(b"".join(output_line(i) for i in range(n)))

        def loads_lines() -> None:
            with output.open("rb") as fh:
                for raw in fh:
                    orjson.loads(raw)

        table = parsed = None

        # Both keep their table until their next turn, so each turn frees the previous one alike (freeing 50,000
        # rows inside one timing and outside the other made parse look slower than parse + price).
        def parse() -> None:
            nonlocal parsed
            parsed = project_parse(output)

        def parse_price() -> None:
            nonlocal table
            table = project_parse_price(output, catalog)

        runs = {"loads": timed(loads_lines), "parse": timed(parse), "price": timed(parse_price)}
        medians = interleaved(runs, repeats)
        parsed = None
        rows.append(("parse + classify the output file", medians["parse"], "orjson.loads per line", medians["loads"]))
        rows.append(("parse + classify + price", medians["price"], "orjson.loads per line", medians["loads"]))

        assert table is not None
        medians = ingest_phase(n, repeats, home, table)
        rows.append(
            (
                "ingest outcomes into the ledger",
                medians["ingest"],
                "pyarrow table insert of the same rows",
                medians["insert"],
            )
        )

        print()
        print("| path | project lines/s | yardstick | yardstick lines/s | project / yardstick |")
        print("|---|---:|---|---:|---:|")
        for label, seconds, yard_label, yard_s in rows:
            if label.startswith("(peer)"):
                if peer_s is None:
                    print(f"| {label} | skipped | {why} | | |")
                else:
                    print(f"| {label} | {n / peer_s:,.0f} | | | project build is {peer_s / build_s:.2f}x the peer's |")
                continue
            print(f"| {label} | {n / seconds:,.0f} | {yard_label} | {n / yard_s:,.0f} | {yard_s / seconds:.2f} |")

        insert_s, checkpoint_s = medians["insert"], medians["checkpoint"]
        print(
            f"\ningest vs the insert with its checkpoint (which the yardstick's commit leaves for later, the ingest's "
            f"commit makes): checkpoint {checkpoint_s * 1000:.0f} ms, {n / (insert_s + checkpoint_s):,.0f} lines/s, "
            f"project / that = {(insert_s + checkpoint_s) / medians['ingest']:.2f}"
        )

        before, peak = ingest_peak_mb(home, n)
        print(
            f"\npeak RSS (VmHWM) of a fresh process that parses, prices and ingests the {n:,}-line output file "
            f"({output.stat().st_size / 1e6:.0f} MB): {peak:.0f} MB; {before:.0f} MB before it started "
            f"(imports, open ledger), so the ingest itself added {peak - before:.0f} MB"
        )
    print(f"peak RSS of this benchmark process: {peak_rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
