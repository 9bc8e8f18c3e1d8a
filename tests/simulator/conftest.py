"""Fixtures for the simulator tests: a served Simulator on a temp dir with a ManualClock, and the real SDK.

Every test talks HTTP through `openai.OpenAI`, exactly as the pipeline will; helpers live in support.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from openai_simulator import ManualClock

from .support import START, Api, make_simulator, serving


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(start=START)


@pytest.fixture
def sim_config() -> dict[str, Any]:
    """Override in a test module to change the served simulator's config."""
    return {}


@pytest.fixture
def api(tmp_path: Path, clock: ManualClock, sim_config: dict[str, Any]) -> Iterator[Api]:
    with serving(make_simulator(tmp_path / "sim", clock, **sim_config), clock) as api:
        yield api
