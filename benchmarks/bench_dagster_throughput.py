"""Benchmark: S concurrent sessions driven by the real Dagster daemon against the simulator.

Starts the simulator (batch turnaround T seconds), records S sessions (N=4, M=2, K=2, E=2, tier batch,
driver dagster) in a fresh ledger, starts `dagster-daemon` on an isolated instance with the repository's
dagster.yaml, and waits until every session has ended. Prints, per S:
  runs launched, runs per session round (a round: one dependent step of one session), orchestration
  overhead per round (wall time / rounds of one session - T), sessions per hour, peak memory of the
  daemon's process group (daemon, code server, run workers), and whether the ledger's checks hold.

Not run by the test command. Usage:
  python benchmarks/bench_dagster_throughput.py --sessions 1 10 [--turnaround 5] [--timeout 3600]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import openai

from batch_pipeline.cli.demo import (
    REPO_ROOT,
    DemoPaths,
    dagster_env,
    free_port,
    prepare_instance,
    start_daemon,
    start_simulator,
    stop,
)
from batch_pipeline.errors import LedgerBusy
from batch_pipeline.ledger import Ledger
from batch_pipeline.ledger.reader import LedgerReader
from batch_pipeline.runtime import build_runtime
from batch_pipeline.search import SearchParams
from batch_pipeline.sessions import SessionConfig
from batch_pipeline.settings import load_settings

PARAMS = {"N": 4, "M": 2, "K": 2, "E": 2}


def group_rss_mb(pgid: int) -> float:
    """Resident memory of every process in a process group (daemon, its code server, run workers)."""
    total_kb = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[2]) != pgid:  # field 5 of stat: the process group
                continue
            for line in Path(entry.path, "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kb += int(line.split()[1])
        except (OSError, ValueError):
            continue
    return total_kb / 1024


class MemorySampler(threading.Thread):
    def __init__(self, pgid: int):
        super().__init__(daemon=True)
        self.pgid, self.peak_mb, self._done = pgid, 0.0, threading.Event()

    def run(self) -> None:
        while not self._done.wait(0.5):
            self.peak_mb = max(self.peak_mb, group_rss_mb(self.pgid))

    def stop(self) -> None:
        self._done.set()
        self.join()


def record_sessions(paths: DemoPaths, env: dict[str, str], n: int) -> list[str]:
    """S sessions in the ledger, as `launch_session` records them (its run adds the partition; here the
    driver sensor adds it, as it does for a launch run that died before)."""
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        runtime = build_runtime(load_settings())
        ids = []
        for i in range(n):
            config = SessionConfig(
                prompt=f"a lighthouse in a storm, variation {i}",
                params=SearchParams(**PARAMS, seed=i),
                tier="batch",
                session_id=f"bench-{i:04d}",
            )
            ids.append(runtime.sessions.start(config))
        return ids
    finally:
        os.environ.clear()
        os.environ.update(saved)


def run_once(sessions: int, turnaround: str, sensor_interval_s: int, timeout_s: float, keep: bool) -> dict:
    root = Path(tempfile.mkdtemp(prefix=f"bench-dagster-{sessions}-"))
    paths = DemoPaths.under(REPO_ROOT, dagster_home=root / "dagster_home", pipeline_home=root / "home")
    paths.dagster_home.mkdir()
    paths.pipeline_home.mkdir()
    shutil.copy(REPO_ROOT / "dagster_home" / "dagster.yaml", paths.dagster_home / "dagster.yaml")
    logs = root / "logs"
    logs.mkdir()
    prepare_instance(paths)
    sim, base_url = start_simulator(
        root / "simulator",
        free_port(),
        phase_seconds=turnaround,
        log=(logs / "simulator.log").open("ab"),
        cwd=REPO_ROOT,
    )
    t_batch = sum(float(x) for x in turnaround.split(","))
    env = dagster_env(paths, base_url, mode="deferred", sensor_interval_s=sensor_interval_s)
    daemon = None
    try:
        ids = record_sessions(paths, env, sessions)
        reader = LedgerReader(paths.ledger_path, lock_timeout_s=2.0)
        started = time.monotonic()
        daemon = start_daemon(paths, env, log=(logs / "daemon.log").open("ab"))
        sampler = MemorySampler(daemon.pid)
        sampler.start()
        ended, last_print = {}, 0.0
        while time.monotonic() - started < timeout_s:
            try:
                with reader.connect() as con:
                    rows = con.execute("SELECT session_id, status FROM sessions").fetchall()
                ended = {sid: status for sid, status in rows if status != "running"}
            except LedgerBusy:
                pass
            if len(ended) == len(ids):
                break
            if time.monotonic() - last_print > 30:
                last_print = time.monotonic()
                print(f"  [{time.monotonic() - started:6.0f} s] {len(ended)}/{len(ids)} sessions ended", flush=True)
            time.sleep(1)
        wall = time.monotonic() - started
        sampler.stop()
        stop(daemon)
        daemon = None
        instance = dg.DagsterInstance.from_config(str(paths.dagster_home))
        try:
            runs = instance.get_runs_count()
            by_job: dict[str, int] = {}
            for run in instance.get_runs():
                by_job[run.job_name] = by_job.get(run.job_name, 0) + 1
        finally:
            instance.dispose()
        ledger = Ledger(paths.ledger_path)
        problems = ledger.check_invariants()
        with ledger.connect() as con:
            rounds = con.execute(
                "SELECT count(DISTINCT (iteration, round)) FROM requests WHERE session_id = ?", [ids[0]]
            ).fetchone()[0]
            batch_count = con.execute("SELECT count(*) FROM batches").fetchone()[0]
        remote = list(openai.OpenAI(api_key="sk-bench", base_url=base_url).batches.list(limit=100))
        keys = [r.metadata.get("bp_batch_key") for r in remote]
        statuses: dict[str, int] = {}
        for status in ended.values():
            statuses[status] = statuses.get(status, 0) + 1
        return {
            "S": sessions,
            "T": t_batch,
            "wall_s": wall,
            "finished": len(ended) == len(ids),
            "statuses": statuses,
            "rounds": rounds,
            "runs": runs,
            "runs_by_job": by_job,
            "runs_per_session_round": runs / max(1, rounds * sessions),
            "runs_per_round": runs / max(1, rounds),
            "overhead_per_round_s": wall / max(1, rounds) - t_batch,
            "sessions_per_hour": len(ended) / wall * 3600,
            "peak_rss_mb": sampler.peak_mb,
            "invariants": "ok" if not problems else f"{len(problems)} violation(s): {problems[:3]}",
            "duplicate_batches": "none"
            if len(keys) == len(set(keys)) == batch_count
            else f"remote {len(keys)} ({len(set(keys))} keys), ledger {batch_count}",
            "root": str(root),
        }
    finally:
        stop(daemon)
        stop(sim)
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 10, 100, 1000])
    parser.add_argument(
        "--turnaround",
        default="1,3,1",
        help="the simulator's batch phases (validating,in_progress,finalizing seconds), as `make demo`",
    )
    parser.add_argument("--sensor-interval", type=int, default=3, help="BATCH_SENSOR_INTERVAL_SECONDS, as `make demo`")
    parser.add_argument("--timeout", type=float, default=3600, help="per S: give up after this many seconds")
    parser.add_argument("--keep", action="store_true", help="keep the temporary instance and logs")
    args = parser.parse_args()
    print(
        f"# {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}, dagster {dg.__version__}"
    )
    print(
        f"# N={PARAMS['N']} M={PARAMS['M']} K={PARAMS['K']} E={PARAMS['E']}, tier batch, deferred, "
        f"turnaround {args.turnaround} s, sensor interval {args.sensor_interval} s"
    )
    rows = []
    for s in args.sessions:
        print(f"S={s} ...", flush=True)
        result = run_once(s, args.turnaround, args.sensor_interval, args.timeout, args.keep)
        rows.append(result)
        print(f"  {result}", flush=True)
    print(
        "\n| S | finished | wall | rounds/session | runs | runs per session round | overhead per round "
        "| sessions/hour | peak RSS | ledger checks | duplicate batches |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---|")
    for r in rows:
        print(
            f"| {r['S']} | {r['finished']} {r['statuses']} | {r['wall_s']:.0f} s | {r['rounds']} | {r['runs']} | "
            f"{r['runs_per_session_round']:.2f} | {r['overhead_per_round_s']:.1f} s | {r['sessions_per_hour']:.0f} | "
            f"{r['peak_rss_mb']:.0f} MB | {r['invariants']} | {r['duplicate_batches']} |"
        )


if __name__ == "__main__":
    main()
