"""`find_batches`: many remote batches for a few calls (one list walk, stragglers retrieved one by one)."""

from __future__ import annotations

import time

import httpx2
import openai
import pytest

from batch_pipeline.batching.lifecycle import find_batches
from batch_pipeline.batching.requests import jsonl_line
from tests.integration.support import chat_requests


@pytest.fixture
def calls() -> list[tuple[str, str]]:
    return []


@pytest.fixture
def counting_client(base_url: str, calls: list[tuple[str, str]]) -> openai.OpenAI:
    hook = lambda request: calls.append((request.method, request.url.path))  # noqa: E731 - a one-line event hook
    return openai.OpenAI(
        api_key="sk-test-not-a-secret",
        base_url=base_url,
        max_retries=0,
        http_client=httpx2.Client(event_hooks={"request": [hook]}),
    )


@pytest.fixture
def batch_ids(client: openai.OpenAI) -> list[str]:
    """Five one-line batches, oldest first."""
    ids = []
    for request in chat_requests(5):
        uploaded = client.files.create(
            file=("in.jsonl", jsonl_line(request.request_id, request.endpoint, request.body)), purpose="batch"
        )
        ids.append(
            client.batches.create(input_file_id=uploaded.id, endpoint=request.endpoint, completion_window="24h").id
        )
    return ids


def retrieves(calls: list[tuple[str, str]]) -> list[str]:
    return [path.rsplit("/", 1)[1] for method, path in calls if method == "GET" and path.count("/") == 3]


def test_one_list_call_finds_every_wanted_batch(counting_client, calls, batch_ids):
    found = find_batches(counting_client, batch_ids, created_after=0)
    assert sorted(found) == sorted(batch_ids) and all(found[i].id == i for i in batch_ids)
    assert calls == [("GET", "/v1/batches")]


def test_batches_passed_on_the_way_are_kept_only_when_asked_for(counting_client, calls, batch_ids):
    oldest, others = batch_ids[0], batch_ids[1:]
    assert sorted(find_batches(counting_client, [oldest], created_after=0)) == [oldest]
    assert sorted(find_batches(counting_client, [oldest], also=others, created_after=0)) == sorted(batch_ids)
    assert retrieves(calls) == []


def test_batches_the_walk_misses_are_retrieved_up_to_the_limit(counting_client, calls, batch_ids):
    # Everything was created before `created_after`: the walk stops on its first row.
    later = time.time() + 60
    assert len(find_batches(counting_client, batch_ids, created_after=later)) == 5
    assert sorted(retrieves(calls)) == sorted(batch_ids[:-1]), "the newest was seen by the walk itself"
    calls.clear()
    limited = find_batches(counting_client, batch_ids, created_after=later, max_retrieves=2)
    assert sorted(retrieves(calls)) == sorted(batch_ids[:-1])[:2]
    assert len(limited) == 3
