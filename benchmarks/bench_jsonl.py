"""Benchmark: file handling of the batch core at the API's limit (50,000 lines).

Prints lines/s for building requests, queueing them in the ledger, writing the input file, and
parsing + classifying an output file, plus peak RSS. Not run by the test command.
Usage: python benchmarks/bench_jsonl.py [--lines 50000]
"""

from __future__ import annotations

import argparse
import platform
import resource
import tempfile
import time
from pathlib import Path

from bench_side_by_side import output_line  # a script beside this one (benchmarks/ is on sys.path)

from batch_pipeline.batching.assembly import plan_batches, write_batch_file
from batch_pipeline.batching.limits import SplitLimits
from batch_pipeline.batching.requests import ChatRequest, build_request
from batch_pipeline.batching.results import read_result_files
from batch_pipeline.ledger import Ledger


def timed(label: str, n: int, fn):
    start = time.perf_counter()
    result = fn()
    elapsed = time.perf_counter() - start
    print(f"{label:<34} {n:>7} lines  {elapsed:7.2f} s  {n / elapsed:>10,.0f} lines/s")
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=50_000)
    n = parser.parse_args().lines
    print(
        f"machine: {platform.processor() or platform.machine()}, "
        f"{platform.python_implementation()} {platform.python_version()}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        ledger = Ledger(home / "ledger.duckdb")
        requests = timed(
            "build + validate requests",
            n,
            lambda: [
                build_request(
                    ChatRequest(
                        key=f"r{i}",
                        model="gpt-5-mini",
                        max_tokens=300,
                        temperature=0.7,
                        messages=[
                            {"role": "system", "content": "You write image prompts. Return JSON."},
                            {"role": "user", "content": f"User prompt: a lighthouse in a storm, variant {i}"},
                        ],
                    ),
                    namespace="bench",
                    operation="expand",
                )
                for i in range(n)
            ],
        )
        timed("enqueue in the DuckDB ledger", n, lambda: ledger.enqueue(requests))
        plan = timed("plan batches", n, lambda: plan_batches(ledger.queued_rows(), SplitLimits()))
        (batch,) = plan.batches
        ledger.create_batch_intent("bench", batch.endpoint, batch.model, batch.members)
        _, size, _ = timed("stream the input file", n, lambda: write_batch_file(ledger, "bench", home, None))
        print(f"{'':<34} input file {size / 1e6:.1f} MB")

        output = home / "output.jsonl"
        with output.open("wb") as fh:
            for i in range(n):
                fh.write(output_line(i))  # the same lines the side-by-side benchmark parses
        outcomes = timed("parse + classify the output file", n, lambda: read_result_files([output], None))
        ledger.mark_uploaded("bench", "file-bench")
        ledger.mark_created("bench", "batch_bench")
        timed(
            "ingest outcomes into the ledger",
            n,
            lambda: ledger.record_batch_outcome("bench", list(outcomes.values()), max_attempts=3),
        )
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {peak_mb:.0f} MB")


if __name__ == "__main__":
    main()
