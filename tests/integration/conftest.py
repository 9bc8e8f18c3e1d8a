"""Integration fixtures: the real `openai` SDK driving the in-thread simulator, a real DuckDB ledger."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from batch_pipeline.batching.image_store import ImageStore
from batch_pipeline.batching.lifecycle import BatchLifecycle
from batch_pipeline.ledger import Ledger
from openai_simulator import Simulator, SimulatorConfig
from tests.integration.support import make_manager


@pytest.fixture
def sim_dir(tmp_path: Path) -> Path:
    return tmp_path / "simulator"


@pytest.fixture
def sim(sim_dir: Path) -> Simulator:
    return Simulator(SimulatorConfig(data_dir=sim_dir))


@pytest.fixture
def base_url(sim: Simulator) -> Iterator[str]:
    with sim.serve() as url:
        yield url


@pytest.fixture
def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(api_key="sk-test-not-a-secret", base_url=base_url, max_retries=0, timeout=10)


@pytest.fixture
def ledger(ledger_location: str) -> Ledger:
    """On each backend: the same test runs on DuckDB and on PostgreSQL."""
    return Ledger(ledger_location)


@pytest.fixture
def image_store(tmp_path: Path) -> ImageStore:
    return ImageStore(tmp_path / "images")


@pytest.fixture
def manager(client: openai.OpenAI, ledger: Ledger, tmp_path: Path, image_store: ImageStore) -> BatchLifecycle:
    return make_manager(client, ledger, tmp_path, image_store)
