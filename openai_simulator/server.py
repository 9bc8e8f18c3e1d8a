"""The `Simulator`: config + state + faults + the Starlette app, served by uvicorn on a background thread.

Tests and the CLI build one and call `serve()`; the SDK then talks to the base URL it yields.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from openai_simulator.serving import serve_in_thread

from .app import build_app
from .batches import BatchEngine
from .config import Clock, SimulatorConfig
from .faults import FaultBook, FaultRule
from .store import Store


class Simulator:
    """An offline OpenAI API. State lives in `config.data_dir`: a new Simulator there resumes it.

    Run at most one Simulator per data_dir at a time; faults are in memory and do not survive a restart.
    """

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        self.config = config or SimulatorConfig()
        self.faults = FaultBook()
        self.store = Store(self.config.data_dir)
        self.batches = BatchEngine(self.config, self.store, self.faults)
        self.app = build_app(self)

    @property
    def clock(self) -> Clock:
        return self.config.clock

    def add_fault(self, rule: FaultRule) -> None:
        self.faults.add(rule)

    def clear_faults(self) -> None:
        self.faults.clear()

    def batch_count(self) -> int:
        return self.batches.count()

    @contextmanager
    def serve(self, *, log_level: str = "warning", access_log: bool = False) -> Iterator[str]:
        """Serve on config.host:config.port (0 = any free port) and yield "http://HOST:PORT/v1"."""
        with serve_in_thread(
            self.app,
            host=self.config.host,
            port=self.config.port,
            name="openai-simulator",
            log_level=log_level,
            access_log=access_log,
        ) as url:
            yield f"{url}/v1"
