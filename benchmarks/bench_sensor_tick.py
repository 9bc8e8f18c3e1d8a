"""Benchmark: one `pipeline_sensor` tick with 1,000 batches in flight (Dagster's tick limit is 60 s).

Creates the batches in the in-thread simulator and records them in a real ledger, then times ticks:
all 1,000 due (one paginated list walk) and none due (no API call).
Not run by the test command. Usage: python benchmarks/bench_sensor_tick.py [--batches 1000]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import dagster as dg
import openai

from batch_pipeline.batching.requests import ChatRequest, build_request, jsonl_line
from batch_pipeline.ledger import Ledger
from openai_simulator import Simulator, SimulatorConfig


def create_batches(client: openai.OpenAI, ledger: Ledger, n: int) -> None:
    """n one-line batches, created remotely with their key in metadata and recorded in the ledger."""
    requests = [
        build_request(
            ChatRequest(
                key=f"q{i}",
                model="gpt-5-nano",
                max_completion_tokens=16,
                messages=[{"role": "user", "content": f"Describe lighthouse {i}"}],
            ),
            namespace="bench",
            operation="describe",
            session_id="bench",
        )
        for i in range(n)
    ]
    ledger.enqueue(requests)
    rows = {r.request_id: r for r in ledger.queued_rows()}
    for i, request in enumerate(requests):
        key = f"bpb_bench_{i:05d}"
        ledger.create_batch_intent(key, request.endpoint, request.model, [rows[request.request_id]])
        uploaded = client.files.create(
            file=(f"{key}.jsonl", jsonl_line(request.request_id, request.endpoint, request.body)), purpose="batch"
        )
        ledger.mark_uploaded(key, uploaded.id)
        remote = client.batches.create(
            input_file_id=uploaded.id,
            endpoint=request.endpoint,
            completion_window="24h",
            metadata={"bp_batch_key": key},
        )
        ledger.mark_created(key, remote.id)


def timed_tick(sensor, instance, resources, cursor):
    context = dg.build_sensor_context(instance=instance, resources=resources, cursor=cursor, sensor_name=sensor.name)
    started = time.perf_counter()
    result = sensor(context)
    return time.perf_counter() - started, result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores, {platform.python_implementation()} {platform.python_version()}")
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        # Batches stay in `validating` for an hour: all of them are in flight for every tick.
        sim = Simulator(SimulatorConfig(data_dir=home / "simulator", phase_seconds={"validating": 3600}))
        with sim.serve() as base_url:
            os.environ.update(
                {
                    "BATCH_PIPELINE_HOME": str(home / "home"),
                    "OPENAI_API_KEY": "sk-bench",
                    "OPENAI_BASE_URL": base_url,
                    "BATCH_API_MODE": "deferred",
                    "BATCH_POLL_INTERVAL_MS": "100",
                }
            )
            from batch_pipeline.defs.resources import resources_from
            from batch_pipeline.defs.sensors import pipeline_sensor
            from batch_pipeline.settings import load_settings

            resources = resources_from(load_settings())
            ledger = resources["ledger"].ledger()
            client = openai.OpenAI(api_key="sk-bench", base_url=base_url)
            started = time.perf_counter()
            create_batches(client, ledger, args.batches)
            print(f"setup: {args.batches} batches created and recorded in {time.perf_counter() - started:.1f} s")

            with dg.instance_for_test() as instance:
                all_due = []
                for _ in range(args.repeats):
                    time.sleep(0.2)  # past the 100 ms first-poll delay: every batch is due
                    elapsed, result = timed_tick(pipeline_sensor, instance, resources, None)
                    all_due.append(elapsed)
                cursor = result.cursor
                print(
                    f"pipeline_sensor, {args.batches} due (one paginated list walk): "
                    f"median {statistics.median(all_due):.2f} s, max {max(all_due):.2f} s; "
                    f"cursor {len(cursor) / 1024:.0f} KiB"
                )
                os.environ["BATCH_POLL_INTERVAL_MS"] = "600000"
                none_due = [timed_tick(pipeline_sensor, instance, resources, cursor)[0] for _ in range(args.repeats)]
                print(f"pipeline_sensor, none due (no API call): median {statistics.median(none_due) * 1000:.0f} ms")


if __name__ == "__main__":
    main()
