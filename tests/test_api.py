"""The seed's HTTP API over a real server thread, the real SDK and the simulator."""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest

from batch_pipeline.api import create_app
from batch_pipeline.serving import serve_in_thread
from batch_pipeline.simulator import Simulator, SimulatorConfig
from tests.integration.support import runtime_for


@pytest.fixture
def api(tmp_path):
    with Simulator(SimulatorConfig(data_dir=tmp_path / "sim")).serve() as sim_url:
        runtime = runtime_for(sim_url, tmp_path / "home")
        with serve_in_thread(create_app(runtime, worker_interval_s=0.05), lifespan="on", name="api") as url:
            yield url, runtime


def call(url: str, method: str = "GET", body: dict | None = None) -> tuple[int, dict | bytes]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            raw = response.read()
            kind = response.headers.get("content-type", "")
            return response.status, json.loads(raw) if "json" in kind else raw
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def wait_for_status(url: str, job_id: str, wanted: str, timeout: float = 60) -> dict:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        _, job = call(f"{url}/api/job/{job_id}")
        if job["status"] == wanted:
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} is {job['status']}, not {wanted}")


def test_start_a_batch_session_and_follow_it_to_a_winner(api):
    url, runtime = api
    status, started = call(f"{url}/api/beam-search", "POST",
                           {"prompt": "a fox in the snow", "n": 4, "m": 2, "iterations": 2, "ensembleSize": 1})
    assert status == 202 and started["status"] == "running" and started["tier"] == "batch"
    job = wait_for_status(url, started["jobId"], "completed")
    assert job["progress"] == 1.0 and job["winner"]["prompt"]
    assert len(job["batchIds"]) == 6, "one batch per round: 2 iterations x (text, image, vision)"
    assert job["cost"]["actualUsd"] != "0" and float(job["cost"]["savedUsd"]) == float(job["cost"]["actualUsd"])

    status, image = call(url + job["winner"]["imageUrl"])
    assert status == 200 and image[:8] == b"\x89PNG\r\n\x1a\n"

    status, batch = call(f"{url}/api/batch/{job['batchIds'][0]}/results")
    assert status == 200 and batch["status"] == "completed" and batch["progress"] == 1.0
    assert {r["outcome"] for r in batch["results"]} == {"succeeded"} and len(batch["results"]) == 4

    _, listing = call(f"{url}/api/jobs")
    assert [j["jobId"] for j in listing["jobs"]] == [started["jobId"]]


def test_invalid_session_is_refused_naming_the_field(api):
    url, _ = api
    status, body = call(f"{url}/api/beam-search", "POST", {"prompt": "x", "n": 4, "m": 3})
    assert status == 400 and body["error"] == "M: M must be at most N/2 (N=4, M=3)"
    status, body = call(f"{url}/api/beam-search", "POST", {"n": 4})
    assert status == 400 and "prompt" in body["error"]


def test_unknown_job_and_batch_are_404(api):
    url, _ = api
    assert call(f"{url}/api/job/nope")[0] == 404
    assert call(f"{url}/api/batch/batch_nope/results")[0] == 404


def test_cancel_stops_a_session_and_its_queued_requests(api, tmp_path):
    url, runtime = api
    runtime_worker_paused = call(f"{url}/api/beam-search", "POST",
                                 {"prompt": "a fox", "n": 2, "m": 1, "iterations": 1, "ensembleSize": 1,
                                  "useBatch": True})[1]
    status, job = call(f"{url}/api/job/{runtime_worker_paused['jobId']}/cancel", "POST")
    assert status == 200 and job["status"] == "cancelled"
    counts = runtime.ledger.state_counts(session_id=runtime_worker_paused["jobId"])
    assert not counts.get("queued") and not counts.get("running")
    assert runtime.ledger.check_invariants() == []


def test_health(api):
    url, _ = api
    assert call(f"{url}/api/health") == (200, {"status": "ok", "worker": True})
