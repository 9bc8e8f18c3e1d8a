"""Benchmark: memory while writing image-heavy batch files does not grow with the file.

Queues vision requests that refer to stored images (refs, not bytes), writes batch files of
growing size and prints the Python heap peak (tracemalloc) during each write next to the file size.
Usage: python benchmarks/bench_stream_memory.py
"""

from __future__ import annotations

import os
import tempfile
import time
import tracemalloc
from pathlib import Path

from batch_pipeline.batching.assembly import write_batch_file
from batch_pipeline.batching.image_store import ImageStore
from batch_pipeline.batching.requests import ChatRequest, build_request
from batch_pipeline.ledger import Ledger

IMAGE_BYTES = 300_000


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        store = ImageStore(home / "images")
        refs = [store.put(os.urandom(IMAGE_BYTES)) for _ in range(20)]  # stands in for 20 generated images
        ledger = Ledger(home / "ledger.duckdb")
        print(f"{'requests':>8} {'file MB':>8} {'heap peak MB':>13} {'write s':>8}")
        for n in (50, 200, 800):
            requests = [
                build_request(
                    ChatRequest(
                        key=f"n{n}-cmp{i}",
                        model="gpt-5-nano",
                        max_completion_tokens=200,
                        messages=[
                            {
                                "role": "user",
                                "content": [
                                    {"type": "text", "text": f"Which is better? Vote {i}"},
                                    {"type": "image_url", "image_url": {"url": refs[i % 20], "detail": "low"}},
                                    {"type": "image_url", "image_url": {"url": refs[(i + 1) % 20], "detail": "low"}},
                                ],
                            }
                        ],
                    ),
                    namespace="bench",
                    operation="compare",
                    image_store=store,
                )
                for i in range(n)
            ]
            ledger.enqueue(requests)
            rows = [r for r in ledger.queued_rows() if r.request_id.startswith(f"bench-n{n}-")]
            ledger.create_batch_intent(f"b{n}", rows[0].endpoint, rows[0].model, rows)
            tracemalloc.start()
            start = time.perf_counter()
            _path, size, _lines = write_batch_file(ledger, f"b{n}", home / "files", store)
            elapsed = time.perf_counter() - start
            _current, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            print(f"{n:>8} {size / 1e6:>8.1f} {peak / 1e6:>13.1f} {elapsed:>8.2f}")


if __name__ == "__main__":
    main()
