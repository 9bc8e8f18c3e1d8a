"""The `Simulator`: config + state + faults + the Starlette app, served by uvicorn on a background thread.

Tests and the CLI build one and call `serve()`; the SDK then talks to the base URL it yields.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn

from .app import build_app
from .batches import BatchEngine
from .config import Clock, SimulatorConfig
from .faults import FaultBook, FaultRule
from .store import Store

_STARTUP_TIMEOUT_SECONDS = 10.0


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
        server = uvicorn.Server(uvicorn.Config(
            self.app,
            host=self.config.host,
            port=self.config.port,
            log_level=log_level,
            access_log=access_log,
            lifespan="off",
            # Open keep-alive connections from SDK clients must not hold up a stop for long.
            timeout_graceful_shutdown=1,
        ))
        thread = threading.Thread(target=server.run, name="openai-simulator", daemon=True)
        thread.start()
        try:
            deadline = time.monotonic() + _STARTUP_TIMEOUT_SECONDS
            while not server.started:
                if not thread.is_alive() or time.monotonic() > deadline:
                    raise RuntimeError(f"simulator failed to start on {self.config.host}:{self.config.port}")
                time.sleep(0.01)
            port = server.servers[0].sockets[0].getsockname()[1]
            yield f"http://{self.config.host}:{port}/v1"
        finally:
            server.should_exit = True
            thread.join(timeout=_STARTUP_TIMEOUT_SECONDS)
