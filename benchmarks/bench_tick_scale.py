"""Benchmark: one tick over S Dagster sessions, without the daemon.

Starts the in-thread simulator with zero phase durations, builds a runtime on a fresh home (batch tier,
deferred mode, flush age 0), starts S sessions (N=4, M=2, K=2, E=2, driver=dagster) through
`SessionService.start`, then repeats what the tick run does: `ReadyDriver(...).tick()` (the core
`Driver.tick` over the ready sessions) and the rendering of each moved session's changed views
(`defs/session_assets.read_view_inputs` in the ledger unit, then `view_materializations`: the metadata
the run writes to the event log), until every
session has ended or a tick moves nothing for `--stall-ticks` ticks in a row. Prints per tick: sessions
ready, moved, batches planned/ingested, seconds in the tick and in the views, and the requests by state;
at the end whether every session finished, the ledger's invariants, and any session left running with
requests queued but never sent (a stall). `--profile N` runs tick N under cProfile and prints the top
cumulative functions.

Not run by the test command. Usage:
  python benchmarks/bench_tick_scale.py --sessions 100 [--profile 2] [--max-ticks 40]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import platform
import pstats
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

from batch_pipeline.defs.batch_assets import ReadyDriver, moved
from batch_pipeline.defs.session_assets import changed_views, read_view_inputs, view_materializations
from batch_pipeline.ledger.reader import LedgerReader
from batch_pipeline.runtime import build_runtime
from batch_pipeline.search import SearchParams
from batch_pipeline.sessions import SessionConfig
from batch_pipeline.settings import load_settings
from openai_simulator import Simulator, SimulatorConfig

PARAMS = {"N": 4, "M": 2, "K": 2, "E": 2}


def one_tick(runtime, driver: ReadyDriver, reader: LedgerReader) -> dict:
    with runtime.ledger.unit():
        before = {r.session_id: r for r in reader.running_session_rounds()}
    t0 = time.perf_counter()
    tick = driver.tick()
    t_tick = time.perf_counter() - t0
    t0 = time.perf_counter()
    with runtime.ledger.unit():
        steps = [p for p in tick.progress.values() if moved(before, p)]
        viewed = [(p, changed_views(before.get(p.session_id), p)) for p in steps]
        inputs = read_view_inputs(runtime, reader, viewed)
    view_materializations(runtime, viewed, inputs)
    t_views = time.perf_counter() - t0
    return {
        "looked_at": len(tick.progress),
        "moved": len(steps),
        "planned": tick.planned,
        "ingested": tick.ingested,
        "tick_s": t_tick,
        "views_s": t_views,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--profile", type=int, default=0, help="run this tick (1-based) under cProfile")
    parser.add_argument("--max-ticks", type=int, default=60)
    parser.add_argument(
        "--stall-ticks",
        type=int,
        default=5,
        help="stop after this many ticks in a row that moved, planned and ingested nothing",
    )
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--profile-out", help="also dump the profile here (pstats format)")
    args = parser.parse_args()
    print(
        f"# {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}; S={args.sessions}, "
        f"N={PARAMS['N']} M={PARAMS['M']} K={PARAMS['K']} E={PARAMS['E']}, batch tier, deferred (flush age 0)"
    )
    with tempfile.TemporaryDirectory(prefix="bench-tick-") as tmp:
        home = Path(tmp)
        with Simulator(SimulatorConfig(data_dir=home / "sim")).serve() as url:
            settings = load_settings(
                {
                    "BATCH_API_ENABLED": "true",
                    "BATCH_API_MODE": "deferred",
                    "BATCH_FLUSH_MAX_AGE_SECONDS": "0",
                    "OPENAI_API_KEY": "sk-bench",
                    "OPENAI_BASE_URL": url,
                    "BATCH_PIPELINE_HOME": str(home / "home"),
                }
            )
            runtime = build_runtime(settings)
            t0 = time.perf_counter()
            for i in range(args.sessions):
                runtime.sessions.start(
                    SessionConfig(
                        prompt=f"a lighthouse in a storm, variation {i}",
                        params=SearchParams(**PARAMS, seed=i),
                        tier="batch",
                        driver="dagster",
                        session_id=f"bench-{i:04d}",
                    )
                )
            print(f"started {args.sessions} sessions in {time.perf_counter() - t0:.1f} s")
            driver = ReadyDriver(runtime, owner="dagster")
            reader = LedgerReader.within(runtime.ledger)
            print(
                f"{'tick':>4} {'looked':>6} {'moved':>6} {'planned':>7} {'ingested':>8} {'tick s':>8} {'views s':>8}"
                f"  requests by state"
            )
            idle = total_tick = total_views = 0.0
            idle = 0
            started = time.perf_counter()
            for n in range(1, args.max_ticks + 1):
                profiler = cProfile.Profile() if n == args.profile else None
                if profiler:
                    profiler.enable()
                row = one_tick(runtime, driver, reader)
                if profiler:
                    profiler.disable()
                total_tick += row["tick_s"]
                total_views += row["views_s"]
                with runtime.ledger.unit():
                    states = runtime.ledger.state_counts()
                    running = [r.session_id for r in runtime.ledger.sessions(status="running")]
                print(
                    f"{n:>4} {row['looked_at']:>6} {row['moved']:>6} {row['planned']:>7} {row['ingested']:>8} "
                    f"{row['tick_s']:>8.2f} {row['views_s']:>8.2f}  {dict(states)}",
                    flush=True,
                )
                if profiler:
                    out = io.StringIO()
                    pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(args.top)
                    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(args.top)
                    if args.profile_out:
                        profiler.dump_stats(args.profile_out)
                    print(out.getvalue())
                if not running:
                    break
                idle = 0 if (row["moved"] or row["planned"] or row["ingested"]) else idle + 1
                if idle >= args.stall_ticks:
                    break
            wall = time.perf_counter() - started
            with runtime.ledger.unit():
                statuses = Counter(r.status for r in runtime.ledger.sessions())
                problems = runtime.ledger.check_invariants()
                stuck = [r for r in reader.running_session_rounds()]
                queued_never_sent = runtime.ledger.state_counts()
            print(
                f"\nS={args.sessions}: {n} ticks, {wall:.1f} s wall ({total_tick:.1f} s in ticks, "
                f"{total_views:.1f} s in views), sessions by status {dict(statuses)}"
            )
            print(f"ledger invariants: {'ok' if not problems else problems[:5]}")
            if stuck:
                print(
                    f"STALL: {len(stuck)} session(s) still running; requests by state {dict(queued_never_sent)}; "
                    f"first: {stuck[:3]}"
                )


if __name__ == "__main__":
    main()
