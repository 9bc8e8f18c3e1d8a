"""Helpers shared by the integration tests (fixtures live in conftest.py)."""

from __future__ import annotations

import time
from pathlib import Path

import openai

from batch_pipeline.batching.image_store import ImageStore
from batch_pipeline.batching.lifecycle import BatchLifecycle
from batch_pipeline.batching.polling import PollPolicy
from batch_pipeline.batching.requests import ChatRequest, build_request
from batch_pipeline.ledger import Ledger


def make_manager(
    client: openai.OpenAI, ledger: Ledger, tmp_path: Path, image_store: ImageStore | None = None, **kwargs
) -> BatchLifecycle:
    kwargs.setdefault("poll_policy", PollPolicy(initial_s=0.01, max_s=0.05))
    return BatchLifecycle(client, ledger, files_dir=tmp_path / "batch_files", image_store=image_store, **kwargs)


def chat_requests(n: int, *, session: str = "s1", model: str = "gpt-5-mini", prefix: str = "q") -> list:
    return [
        build_request(
            ChatRequest(
                key=f"{prefix}{i}",
                model=model,
                temperature=0.2,
                max_tokens=64,
                messages=[
                    {"role": "system", "content": "Answer briefly."},
                    {"role": "user", "content": f"Describe lighthouse number {i} in a storm"},
                ],
            ),
            namespace=session,
            operation="describe",
            session_id=session,
        )
        for i in range(n)
    ]


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.05):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if value := predicate():
            return value
        time.sleep(interval)
    raise AssertionError("condition not met in time")


def runtime_for(base_url: str, home: Path, *, ledger: Ledger | None = None, **env: str):
    """A full Runtime (factory-built, as the CLI and Dagster build it) against a simulator."""
    from batch_pipeline.runtime import build_runtime
    from batch_pipeline.settings import load_settings

    settings = load_settings(
        {
            "BATCH_API_ENABLED": "true",
            "BATCH_API_MODE": "immediate",
            "OPENAI_API_KEY": "sk-test",
            "OPENAI_BASE_URL": base_url,
            "BATCH_PIPELINE_HOME": str(home),
            **env,
        }
    )
    return build_runtime(
        settings,
        ledger=ledger,
        poll_policy=PollPolicy(initial_s=0.01, max_s=0.05),
        sleep=lambda s: time.sleep(min(s, 0.05)),
    )


def drive(runtime, session_id: str, *, timeout_s: float = 120):
    """Drive one session to its end with the one session driver (as the CLI does)."""
    from batch_pipeline.driver import Driver

    return Driver(runtime, owner="cli", session_ids=[session_id]).run_session(session_id, timeout_s=timeout_s)
