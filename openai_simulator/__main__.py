"""Command line: run the simulator standalone, e.g. for the Dagster UI or manual pipeline runs.

`python -m openai_simulator --port 8800 --data-dir var/simulator` prints the base URL, serves until stopped.
"""

from __future__ import annotations

import argparse
import signal
import threading
from contextlib import ExitStack
from pathlib import Path

from .config import PHASES, SimulatorConfig
from .server import Simulator
from .serving import port_in_use, port_taken_message


def _phase_seconds(text: str) -> dict[str, float]:
    values = [float(part) for part in text.split(",")]
    if not 1 <= len(values) <= len(PHASES):
        raise argparse.ArgumentTypeError(f"expected 1-{len(PHASES)} comma-separated numbers for {', '.join(PHASES)}")
    return dict(zip(PHASES, values, strict=False))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m openai_simulator", description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind")
    parser.add_argument("--port", type=int, default=8800, help="port to bind")
    parser.add_argument("--data-dir", type=Path, default=Path("var/simulator"), help="where files and batches live")
    parser.add_argument(
        "--phase-seconds",
        type=_phase_seconds,
        default="2,5,2",
        help="seconds in validating,in_progress,finalizing[,cancelling]",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the simulated content")
    parser.add_argument("--image-size", type=int, default=64, help="edge of the drawn PNGs in pixels")
    args = parser.parse_args(argv)
    if args.port and port_in_use(args.port, args.host):
        raise SystemExit(port_taken_message(args.port, args.host))

    simulator = Simulator(
        SimulatorConfig(
            data_dir=args.data_dir,
            host=args.host,
            port=args.port,
            phase_seconds=args.phase_seconds,
            seed=args.seed,
            image_size=args.image_size,
        )
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    # Access lines name method and path only; request headers (the API key) are never logged.
    with ExitStack() as stack:
        try:
            base_url = stack.enter_context(simulator.serve(log_level="info", access_log=True))
        except RuntimeError as exc:  # uvicorn could not bind: said in one line, not a traceback
            raise SystemExit(f"error: {exc}; is the port taken? Pass --port N (0 picks a free one)") from None
        print(base_url, flush=True)
        try:
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
