"""Integration fixtures: the real `openai` SDK driving the in-thread simulator, a real DuckDB ledger."""
from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from batch_pipeline.batching.image_store import ImageStore
from batch_pipeline.batching.jobs import BatchJobManager
from batch_pipeline.batching.limits import SplitLimits
from batch_pipeline.batching.polling import PollPolicy
from batch_pipeline.batching.requests import ChatRequest, build_request
from batch_pipeline.ledger import Ledger
from batch_pipeline.simulator import Simulator, SimulatorConfig


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
def ledger(tmp_path: Path) -> Ledger:
    return Ledger(tmp_path / "ledger.duckdb")


@pytest.fixture
def image_store(tmp_path: Path) -> ImageStore:
    return ImageStore(tmp_path / "images")


def make_manager(client: openai.OpenAI, ledger: Ledger, tmp_path: Path, image_store: ImageStore | None = None,
                 **kwargs) -> BatchJobManager:
    kwargs.setdefault("poll_policy", PollPolicy(initial_s=0.01, max_s=0.05))
    return BatchJobManager(client, ledger, files_dir=tmp_path / "batch_files", image_store=image_store, **kwargs)


@pytest.fixture
def manager(client: openai.OpenAI, ledger: Ledger, tmp_path: Path, image_store: ImageStore) -> BatchJobManager:
    return make_manager(client, ledger, tmp_path, image_store)


def chat_requests(n: int, *, session: str = "s1", model: str = "gpt-5-mini", prefix: str = "q") -> list:
    return [
        build_request(
            ChatRequest(key=f"{prefix}{i}", model=model, temperature=0.2, max_tokens=64,
                        messages=[{"role": "system", "content": "Answer briefly."},
                                  {"role": "user", "content": f"Describe lighthouse number {i} in a storm"}]),
            namespace=session, operation="describe", session_id=session)
        for i in range(n)
    ]


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.05):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if value := predicate():
            return value
        time.sleep(interval)
    raise AssertionError("condition not met in time")
