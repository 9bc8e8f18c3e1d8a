"""Dagster-layer fixtures: the in-thread simulator, a temporary BATCH_PIPELINE_HOME and a test Dagster instance."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from batch_pipeline.defs.resources import resources_from
from batch_pipeline.settings import load_settings
from openai_simulator import ManualClock, Simulator, SimulatorConfig


@pytest.fixture
def sim_clock() -> ManualClock:
    """The simulator's time: batches move through their phases only when a test advances it.

    Starts at the real time, as a real server's clock would be, since the ledger records real times."""
    return ManualClock(start=time.time())


@pytest.fixture
def phase_seconds() -> dict[str, float]:
    # Zero: a batch has completed by the first time anyone looks at it. Tests of polling override this.
    return {}


@pytest.fixture
def sim(tmp_path: Path, sim_clock: ManualClock, phase_seconds: dict[str, float]) -> Simulator:
    return Simulator(SimulatorConfig(data_dir=tmp_path / "simulator", clock=sim_clock, phase_seconds=phase_seconds))


@pytest.fixture
def base_url(sim: Simulator) -> Iterator[str]:
    with sim.serve() as url:
        yield url


@pytest.fixture
def batch_mode() -> str:
    return "deferred"


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, base_url: str, batch_mode: str) -> dict[str, str]:
    """The environment the resources, runtime and sensors read (as the daemon's processes would)."""
    values = {
        "BATCH_PIPELINE_HOME": str(tmp_path / "home"),
        "BATCH_API_ENABLED": "true",
        "BATCH_API_MODE": batch_mode,
        "BATCH_POLL_INTERVAL_MS": "100",
        "BATCH_FLUSH_MAX_REQUESTS": "1000",
        "BATCH_FLUSH_MAX_AGE_SECONDS": "60",
        "OPENAI_API_KEY": "sk-test-not-a-secret",
        "OPENAI_BASE_URL": base_url,
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


@pytest.fixture
def resources(env: dict[str, str]) -> dict:
    return resources_from(load_settings())


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as inst:
        yield inst
