"""Ledger fixtures: a real DuckDB file in tmp_path driven by a manual clock, and request factories."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from batch_pipeline.batching.requests import ChatRequest, QueuedRequest, build_request
from batch_pipeline.ledger import Ledger
from batch_pipeline.ledger.ledger import QueuedRow, RemoteStatus
from batch_pipeline.records import RequestOutcome
from batch_pipeline.vocabulary import Outcome
from tests.conftest import ManualClock


@pytest.fixture
def ledger_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "ledger.duckdb"


@pytest.fixture
def ledger(ledger_location: str, clock: ManualClock) -> Ledger:
    """On each backend: the same test runs on DuckDB and on PostgreSQL."""
    return Ledger(ledger_location, clock=clock)


@pytest.fixture
def make_request() -> Callable[..., QueuedRequest]:
    def make(
        key: str, *, text: str | None = None, model: str = "gpt-5-mini", session_id: str | None = "s1", **params: Any
    ) -> QueuedRequest:
        request = ChatRequest(
            key=key, model=model, messages=[{"role": "user", "content": text or f"Question {key}?"}], **params
        )
        return build_request(request, namespace="t", operation="expand", session_id=session_id)

    return make


@pytest.fixture
def queue(ledger: Ledger, make_request) -> Callable[..., list[str]]:
    """Enqueue requests by key; returns their request ids."""

    def enqueue(*keys: str, **kw: Any) -> list[str]:
        requests = [make_request(k, **kw) for k in keys]
        ledger.enqueue(requests)
        return [r.request_id for r in requests]

    return enqueue


@pytest.fixture
def submit(ledger: Ledger) -> Callable[..., list[str]]:
    """Put queued ids into a created batch (intent -> uploaded -> created), optionally with a remote status."""

    def make(batch_key: str, request_ids: Sequence[str], *, status: str | None = None) -> list[str]:
        rows = {r.request_id: r for r in ledger.queued_rows()}
        members: list[QueuedRow] = [rows[rid] for rid in request_ids]
        ledger.create_batch_intent(batch_key, members[0].endpoint, members[0].model, members)
        ledger.mark_uploaded(batch_key, f"file-{batch_key}")
        ledger.mark_created(batch_key, f"batch_{batch_key}")
        if status is not None:
            ledger.record_remote_status([RemoteStatus(batch_key=batch_key, status=status)])
        return list(request_ids)

    return make


def ok(rid: str, cost: str = "0.001", standard: str = "0.002", **kw: Any) -> RequestOutcome:
    return RequestOutcome(
        request_id=rid,
        outcome=Outcome.SUCCEEDED,
        status_code=200,
        response={"choices": [{"message": {"role": "assistant", "content": f"answer to {rid}"}}]},
        input_tokens=100,
        output_tokens=50,
        cost_usd=Decimal(cost),
        standard_cost_usd=Decimal(standard),
        price_version="2026-11-01",
        **kw,
    )


def bad(rid: str, outcome: Outcome, code: str = "x", status: int | None = None) -> RequestOutcome:
    return RequestOutcome(
        request_id=rid, outcome=outcome, error_code=code, error_message=f"{code} happened", status_code=status
    )


@pytest.fixture
def outcomes() -> SimpleNamespace:
    """Outcome builders: outcomes.ok(rid), outcomes.bad(rid, Outcome.EXPIRED, "batch_expired")."""
    return SimpleNamespace(ok=ok, bad=bad)
