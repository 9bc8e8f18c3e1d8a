"""Serve an ASGI app with uvicorn on a background thread (the simulator, the HTTP API in tests).

Binds 127.0.0.1 unless told otherwise; port 0 picks a free port, reported back to the caller.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import uvicorn
from starlette.types import ASGIApp

STARTUP_TIMEOUT_SECONDS = 10.0


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something already listens on (or holds) host:port: checked before a server starts, so a taken
    port is one clear line rather than uvicorn's bind error from its thread."""
    with socket.socket() as s:
        s.settimeout(1)
        if s.connect_ex((host, port)) == 0:
            return True
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a TIME_WAIT leftover is not "in use"
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def port_taken_message(port: int, host: str, option: str = "--port", name: str | None = None) -> str:
    """The one line every command prints for a taken port (`name` says whose port, when a command binds several)."""
    port_name = f"{port} ({name})" if name else str(port)
    return (
        f"error: port {port_name} is already in use on {host}; stop what listens there "
        f"or pass {option} N (0 picks a free one)"
    )


@contextmanager
def serve_in_thread(
    app: ASGIApp,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    name: str = "asgi-server",
    lifespan: Literal["auto", "on", "off"] = "off",
    log_level: str = "warning",
    access_log: bool = False,
) -> Iterator[str]:
    """Yield "http://HOST:PORT" once the server accepts connections; stop it on exit."""
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level=log_level,
            access_log=access_log,
            lifespan=lifespan,
            # Open keep-alive connections from SDK clients must not hold up a stop for long.
            timeout_graceful_shutdown=1,
        )
    )
    thread = threading.Thread(target=server.run, name=name, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"{name} failed to start on {host}:{port}")
            time.sleep(0.01)
        bound_port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://{host}:{bound_port}"
    finally:
        server.should_exit = True
        thread.join(timeout=STARTUP_TIMEOUT_SECONDS)
