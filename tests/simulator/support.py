"""Helpers shared by the simulator tests (fixtures live in conftest.py).

Builders for request lines and an `Api` wrapper around the SDK client for the steps every batch test repeats.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest

from openai_simulator import ManualClock, Simulator, SimulatorConfig

START = 1_700_000_000.0
CHAT = "/v1/chat/completions"
IMAGES = "/v1/images/generations"


def chat_line(custom_id: str, text: str = "a red fox in the snow", model: str = "gpt-5-mini", **extra: Any) -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": text}], **extra}
    return {"custom_id": custom_id, "method": "POST", "url": CHAT, "body": body}


@dataclass
class Api:
    """The SDK client plus the few steps every batch test repeats."""

    sim: Simulator
    client: openai.OpenAI
    base_url: str
    clock: ManualClock

    def upload(self, lines: list[dict] | bytes, name: str = "input.jsonl") -> str:
        data = lines if isinstance(lines, bytes) else "\n".join(json.dumps(line) for line in lines).encode() + b"\n"
        return self.client.files.create(file=(name, data), purpose="batch").id

    def submit(self, lines: list[dict] | bytes, endpoint: str = CHAT, **kwargs: Any) -> openai.types.Batch:
        return self.client.batches.create(
            input_file_id=self.upload(lines), endpoint=endpoint, completion_window="24h", **kwargs
        )

    def read(self, file_id: str | None) -> list[dict]:
        if file_id is None:
            return []
        return [json.loads(line) for line in self.client.files.content(file_id).text.splitlines()]

    def raw_json(self, raw_response: Any) -> Any:
        return json.loads(raw_response.http_response.text)


@contextmanager
def serving(sim: Simulator, clock: ManualClock) -> Iterator[Api]:
    """Serve `sim` and yield an Api whose SDK client has retries off: a test sees each answer once."""
    with sim.serve() as base_url, openai.OpenAI(api_key="sk-sim", base_url=base_url, max_retries=0) as client:
        yield Api(sim=sim, client=client, base_url=base_url, clock=clock)


def make_simulator(data_dir: Path, clock: ManualClock, **config: Any) -> Simulator:
    return Simulator(SimulatorConfig(data_dir=data_dir, clock=clock, **config))


def configured(**config: Any) -> pytest.MarkDecorator:
    """Serve this test's simulator with these SimulatorConfig fields (overrides the `sim_config` fixture)."""
    return pytest.mark.parametrize("sim_config", [config], ids=["config"])


def image_line(custom_id: str, prompt: str, model: str = "gpt-image-1-mini", **extra: Any) -> dict:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": IMAGES,
        "body": {"model": model, "prompt": prompt, "quality": "low", **extra},
    }
