"""Leases on synchronous calls: which process runs a `running` request, and when that claim is void.

A standard or flex call is recorded `running` before it goes out and its answer as soon as it returns.
If the process dies in between, the answer is lost; the lease says when another driver may take the
request back: at once when its owner is known dead (same host, process gone), else when it expires.
"""

from __future__ import annotations

import os
import socket
from functools import cache

# A running call's lease; renewed while the call is still being waited for, so only a dead owner lets
# it lapse. Longer than any single call's timeout is not needed: the heartbeat renews it.
DEFAULT_LEASE_S = 120.0


@cache
def this_process() -> str:
    """host:pid:start-time, unique across pid reuse."""
    return f"{socket.gethostname()}:{os.getpid()}:{_start_time(os.getpid())}"


def owner_is_dead(owner: str | None) -> bool:
    """True only when we can tell: the owner ran on this host and that process is gone (or the pid was reused)."""
    if not owner:
        return True  # rows made before leases existed: nobody holds them
    try:
        host, pid_text, started = owner.rsplit(":", 2)
        pid = int(pid_text)
    except ValueError:
        return False
    if host != socket.gethostname():
        return False
    return _start_time(pid) != started


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat), or '' if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read().decode(errors="replace")
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]
