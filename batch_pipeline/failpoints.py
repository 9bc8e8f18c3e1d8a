"""Named points where a test can have this process killed, to prove a crash there loses nothing.

`BATCH_PIPELINE_FAILPOINTS="name[:n],..."` makes the n-th time (default the first) the process passes
`failpoint(name)` a SIGKILL of itself: no cleanup, no `finally`, exactly like a power cut. Unset (always,
outside the crash tests) a failpoint is a dictionary lookup.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

_passed: Counter[str] = Counter()


def _armed() -> dict[str, int]:
    armed = {}
    for item in filter(None, os.environ.get("BATCH_PIPELINE_FAILPOINTS", "").split(",")):
        name, _, nth = item.partition(":")
        armed[name.strip()] = int(nth or 1)
    return armed


def failpoint(name: str) -> None:
    armed = _armed()
    if name not in armed:
        return
    _passed[name] += 1
    if _passed[name] == armed[name]:
        os.kill(os.getpid(), signal.SIGKILL)
