"""The main command: simulator + Dagster (webserver and daemon) + one demo session to watch in the UI.

`python -m batch_pipeline.cli.demo` starts every process, launches a session through the
`launch_session` job and runs until Ctrl-C; `--exit-when-done` waits for the winner and exits. The
process helpers here are also what the end-to-end test uses to start and kill the real daemon.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import dagster as dg

from batch_pipeline.batching.pricing import cost_lines
from batch_pipeline.cli.main import HelpWithDefaults
from batch_pipeline.defs.run_history import runs_in_progress
from batch_pipeline.errors import LedgerBusy
from batch_pipeline.ledger.reader import LedgerReader
from batch_pipeline.settings import PipelineHome
from openai_simulator.serving import port_in_use, port_taken_message

REPO_ROOT = Path(__file__).resolve().parents[2]  # batch_pipeline/cli/demo.py -> the repository
BIN = Path(sys.executable).parent  # dagster, dagster-daemon, dagster-webserver live beside this Python


@dataclass(frozen=True)
class DemoPaths:
    root: Path  # holds workspace.yaml
    dagster_home: Path
    pipeline_home: Path

    @classmethod
    def under(cls, root: Path, *, dagster_home: Path | None = None, pipeline_home: Path | None = None) -> DemoPaths:
        # Absolute: the daemon, the webserver, code servers and run workers must all find the same files.
        return cls(
            root=root.resolve(),
            dagster_home=(dagster_home or root / "dagster_home").resolve(),
            pipeline_home=(pipeline_home or root / "var" / "dagster-demo").resolve(),
        )

    @property
    def ledger_path(self) -> Path:
        return PipelineHome(self.pipeline_home).ledger


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def choose_ports(wanted: Mapping[str, tuple[int, str]]) -> dict[str, int]:
    """Each wanted port (0: pick a free one); SystemExit with one clear line when one is taken.

    Checked before anything starts, so the demo never talks to whatever else listens there."""
    chosen = {}
    for name, (port, option) in wanted.items():
        if port == 0:
            chosen[name] = free_port()
        elif port_in_use(port):
            raise SystemExit(port_taken_message(port, "127.0.0.1", option, name))
        else:
            chosen[name] = port
    return chosen


# The repository's instance files (dagster_home/), by where the instance stores runs and events.
INSTANCE_FILES = {"sqlite": "dagster.yaml", "postgres": "dagster.postgres.yaml"}


def install_instance(dagster_home: Path, storage: str = "sqlite") -> None:
    """Make `dagster_home` a DAGSTER_HOME whose dagster.yaml is the repository's instance file for `storage`.

    Every Dagster process (daemon, webserver, `dagster job launch`, code servers, run workers) reads
    $DAGSTER_HOME/dagster.yaml and no other name, so a variant is a directory of its own. "postgres"
    reads its database URL from DAGSTER_PG_URL, in each process that opens the instance.
    """
    dagster_home.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO_ROOT / "dagster_home" / INSTANCE_FILES[storage], dagster_home / "dagster.yaml")


def prepare_instance(paths: DemoPaths) -> None:
    """Create the instance's storage (SQLite files or PostgreSQL tables) once, before any Dagster process starts.

    On a fresh DAGSTER_HOME the daemon, the webserver and `dagster job launch` would each create (and
    migrate) the same SQLite files or tables at the same moment, and one of them fails.
    """
    dg.DagsterInstance.from_config(str(paths.dagster_home)).dispose()


def dagster_env(
    paths: DemoPaths,
    base_url: str,
    *,
    mode: str = "deferred",
    sensor_interval_s: int = 3,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment every Dagster process of the demo shares."""
    env = dict(os.environ)
    env.update(
        {
            "DAGSTER_HOME": str(paths.dagster_home),
            "BATCH_PIPELINE_HOME": str(paths.pipeline_home),
            "OPENAI_BASE_URL": base_url,
            # A user's own key is kept (it only ever goes to the local simulator here).
            "OPENAI_API_KEY": os.environ.get("OPENAI_API_KEY") or "sk-simulator",
            "BATCH_API_ENABLED": "true",
            "BATCH_API_MODE": mode,
            "BATCH_SENSOR_INTERVAL_SECONDS": str(sensor_interval_s),
            "BATCH_POLL_INTERVAL_MS": "1000",
            "BATCH_FLUSH_MAX_AGE_SECONDS": "3",
        }
    )
    env.update(extra or {})
    return env


def _spawn(args: list[str], *, env: Mapping[str, str], cwd: Path, log: IO[bytes]) -> subprocess.Popen:
    # A process group of its own: stopping it also stops its code servers and run workers.
    return subprocess.Popen(
        args,
        env=dict(env),
        cwd=cwd,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )


def start_simulator(
    data_dir: Path, port: int, *, phase_seconds: str = "1,3,1", log: IO[bytes], cwd: Path
) -> tuple[subprocess.Popen, str]:
    proc = _spawn(
        [
            sys.executable,
            "-m",
            "openai_simulator",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--data-dir",
            str(data_dir),
            "--phase-seconds",
            phase_seconds,
        ],
        env=os.environ,
        cwd=cwd,
        log=log,
    )
    wait_for_port(port, proc, timeout_s=30)
    return proc, f"http://127.0.0.1:{port}/v1"


def start_daemon(paths: DemoPaths, env: Mapping[str, str], *, log: IO[bytes]) -> subprocess.Popen:
    return _spawn([str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"], env=env, cwd=paths.root, log=log)


def start_webserver(paths: DemoPaths, env: Mapping[str, str], port: int, *, log: IO[bytes]) -> subprocess.Popen:
    proc = _spawn(
        [str(BIN / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(port), "-w", "workspace.yaml"],
        env=env,
        cwd=paths.root,
        log=log,
    )
    wait_for_port(port, proc, timeout_s=120)
    return proc


def wait_for_port(port: int, proc: subprocess.Popen, *, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            program = proc.args[0] if isinstance(proc.args, list) else proc.args  # _spawn passes a list
            raise RuntimeError(f"{program!s} exited with {proc.returncode} before listening on port {port}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout_s:g} s")


def launch_job(paths: DemoPaths, env: Mapping[str, str], job: str, run_config: Mapping | None = None) -> str:
    """Submit a run of `job` to the instance (the daemon's queue picks it up); returns its run id."""
    run_id = secrets.token_hex(16)
    args = [str(BIN / "dagster"), "job", "launch", "-w", "workspace.yaml", "-j", job, "--run-id", run_id]
    if run_config:
        args += ["--config-json", json.dumps(run_config)]
    done = subprocess.run(args, env=dict(env), cwd=paths.root, capture_output=True, text=True, timeout=180)
    if done.returncode != 0:
        raise RuntimeError(f"dagster job launch {job} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return run_id


def launch_session(
    paths: DemoPaths,
    env: Mapping[str, str],
    session_id: str,
    *,
    prompt: str,
    N: int = 4,
    M: int = 2,
    K: int = 2,
    E: int = 2,
    tier: str = "batch",
) -> str:
    config = {"prompt": prompt, "N": N, "M": M, "K": K, "E": E, "tier": tier, "session_id": session_id}
    # launch_session's config mapping takes the launchpad fields at the top level (checked before the run).
    return launch_job(paths, env, "launch_session", config)


def session_status(reader: LedgerReader, session_id: str) -> tuple[str, int, str | None, str | None] | None:
    """(status, iteration, next round, winner) read-only, or None while unknown or the ledger is busy."""
    if not reader.exists():
        return None
    try:
        return reader.session_status(session_id)
    except LedgerBusy:
        return None


def wait_for_runs_to_finish(paths: DemoPaths, *, timeout_s: float) -> bool:
    """True once no run of the instance is queued or in progress (False after `timeout_s`)."""
    instance = dg.DagsterInstance.from_config(str(paths.dagster_home))
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not runs_in_progress(instance, limit=1):
                return True
            time.sleep(1)
        return False
    finally:
        instance.dispose()


def stop(proc: subprocess.Popen | None, *, timeout_s: float = 15) -> None:
    """Stop a child and its process group: SIGTERM, then SIGKILL if it lingers."""
    if proc is None or (proc.poll() is not None and not _group_alive(proc.pid)):
        return
    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            continue
        if not _group_alive(proc.pid):
            return
        time.sleep(0.5)
        if not _group_alive(proc.pid):
            return


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m batch_pipeline.cli.demo", description=__doc__, formatter_class=HelpWithDefaults
    )
    parser.add_argument("--port", type=int, default=3000, help="Dagster UI port (0 picks a free one)")
    parser.add_argument("--simulator-port", type=int, default=8800, help="simulator port (0 picks a free one)")
    parser.add_argument("--prompt", default="a lighthouse in a storm", help="the demo session's prompt")
    parser.add_argument(
        "--exit-when-done", action="store_true", help="wait for the demo session, print its winner, exit"
    )
    parser.add_argument(
        "--timeout", type=float, default=900, help="with --exit-when-done: give up after this many seconds"
    )
    parser.add_argument("--no-webserver", action="store_true", help="daemon only (CI-like runs)")
    args = parser.parse_args(argv)
    wanted = {"simulator": (args.simulator_port, "--simulator-port")}
    if not args.no_webserver:
        wanted["Dagster UI"] = (args.port, "--port")
    try:
        ports = choose_ports(wanted)
    except SystemExit as exc:
        print(exc, file=sys.stderr)
        return 2
    args.simulator_port = ports["simulator"]
    args.port = ports.get("Dagster UI", args.port)

    # Ctrl-C and `kill` both end in `finally`, which stops every child. SIGINT is set explicitly
    # because a shell starting us in the background (e.g. `make demo &`) leaves it ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    paths = DemoPaths.under(REPO_ROOT)
    paths.dagster_home.mkdir(parents=True, exist_ok=True)
    paths.pipeline_home.mkdir(parents=True, exist_ok=True)
    logs = paths.pipeline_home / "logs"
    logs.mkdir(exist_ok=True)
    procs: list[subprocess.Popen] = []
    session_id = f"demo-{secrets.token_hex(3)}"
    print(f"logs in {logs}")
    try:
        sim, base_url = start_simulator(
            paths.pipeline_home / "simulator",
            args.simulator_port,
            log=(logs / "simulator.log").open("ab"),
            cwd=paths.root,
        )
        procs.append(sim)
        print(f"simulator (OpenAI-compatible, offline) at {base_url}")
        # One session: the queue is flushed a second after its round is queued (within the tick run that
        # queued it) and the sensor looks every 2 s, so a round costs about one run start plus its batch.
        env = dagster_env(paths, base_url, sensor_interval_s=2, extra={"BATCH_FLUSH_MAX_AGE_SECONDS": "1"})
        prepare_instance(paths)
        procs.append(start_daemon(paths, env, log=(logs / "daemon.log").open("ab")))
        if not args.no_webserver:
            procs.append(start_webserver(paths, env, args.port, log=(logs / "webserver.log").open("ab")))
        launch_session(paths, env, session_id, prompt=args.prompt)
        ui = f"http://127.0.0.1:{args.port}"
        print(f"\nDemo session {session_id} launched (N=4, M=2, K=2, E=2, tier batch, deferred batching).")
        if not args.no_webserver:
            print(
                f"Open {ui}/assets to see the asset graph, {ui}/runs for the tick runs the sensor launches,\n"
                f"{ui}/assets/submitted_batches for batches and their progress, and\n"
                f"{ui}/assets/ranked_results?partition={session_id} for the ranked images once it finishes."
            )
        return watch(paths, session_id, exit_when_done=args.exit_when_done, timeout_s=args.timeout)
    except KeyboardInterrupt:
        print("\nstopping")
        return 0
    finally:
        for proc in reversed(procs):
            stop(proc)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def watch(paths: DemoPaths, session_id: str, *, exit_when_done: bool, timeout_s: float) -> int:
    reader = LedgerReader(paths.ledger_path, lock_timeout_s=1.0)
    started, last = time.monotonic(), None
    while True:
        status = session_status(reader, session_id)
        if status and status != last:
            state, iteration, next_round, winner = status
            elapsed = time.monotonic() - started
            print(
                f"[{elapsed:5.0f} s] {session_id}: {state}, iteration {iteration}, next round {next_round or '-'}",
                flush=True,
            )
            last = status
            if state == "completed":
                prompt = reader.candidate_prompt(session_id, winner) if winner is not None else None
                print(f"winner: {winner}: {prompt}")
                print(
                    "cost: "
                    + "; ".join(cost_lines(reader.cost_figures(session_id=session_id)))
                    + ". Full report: materialise cost_report."
                )
                if exit_when_done:
                    # The step that completed the session still renders its views: let it finish.
                    wait_for_runs_to_finish(paths, timeout_s=120)
                    return 0
            if state == "failed":
                print("the session failed; see the runs in the UI", file=sys.stderr)
                if exit_when_done:
                    return 1
        if exit_when_done and time.monotonic() - started > timeout_s:
            print(f"the session did not finish within {timeout_s:g} s", file=sys.stderr)
            return 1
        time.sleep(2)


if __name__ == "__main__":
    sys.exit(main())
