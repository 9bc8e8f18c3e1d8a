"""The seed's HTTP API over a real server thread, the real SDK and the simulator."""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from decimal import Decimal

import pytest

from batch_pipeline.api.app import ApiConfigError, check_bind, create_app, openapi_document
from openai_simulator import Simulator, SimulatorConfig
from openai_simulator.serving import serve_in_thread
from tests.integration.support import runtime_for, wait_until
from tests.lock_holder import hold_lock

TOKEN = "t0ken-for-tests-0123456789"


@pytest.fixture
def simulator(tmp_path):
    with Simulator(SimulatorConfig(data_dir=tmp_path / "sim")).serve() as sim_url:
        yield sim_url


@pytest.fixture
def serve_api(simulator, tmp_path):
    """Start the API with the given create_app options; yields (url, runtime)."""
    from contextlib import ExitStack

    with ExitStack() as stack:

        def start(**options):
            runtime = runtime_for(simulator, tmp_path / "home")
            options.setdefault("worker_interval_s", 0.05)
            url = stack.enter_context(serve_in_thread(create_app(runtime, **options), lifespan="on", name="api"))
            return url, runtime

        yield start


@pytest.fixture
def api(serve_api):
    return serve_api(events_interval_s=0.1)


def call(
    url: str,
    method: str = "GET",
    body: dict | bytes | None = None,
    *,
    headers: dict | None = None,
    content_type: str | None = "application/json",
) -> tuple[int, dict | bytes, dict]:
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    all_headers = {"Content-Type": content_type} if content_type else {}
    all_headers |= headers or {}
    request = urllib.request.Request(url, data=data, method=method, headers=all_headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            raw = response.read()
            kind = response.headers.get("content-type", "")
            return response.status, json.loads(raw) if "json" in kind else raw, dict(response.headers)
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        assert "application/json" in exc.headers.get("content-type", ""), f"{exc.code} answered {raw[:200]!r}"
        return exc.code, json.loads(raw), dict(exc.headers)


def raw_request(
    url: str,
    method: str,
    path: str,
    *,
    body: bytes = b"",
    headers: dict | None = None,
    chunks: list[bytes] | None = None,
) -> tuple[int, dict, dict]:
    """http.client, to send what urllib will not (any Host header, chunked bodies)."""
    parts = urllib.parse.urlsplit(url)
    con = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        if chunks is not None:
            con.putrequest(method, path)
            for k, v in (headers or {}).items():
                con.putheader(k, v)
            con.putheader("Transfer-Encoding", "chunked")
            con.endheaders()
            for chunk in chunks:
                con.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            con.send(b"0\r\n\r\n")
        else:
            con.request(method, path, body=body, headers=headers or {})
        response = con.getresponse()
        raw = response.read()
        assert "application/json" in response.getheader("content-type", ""), raw[:200]
        return response.status, json.loads(raw), dict(response.getheaders())
    finally:
        con.close()


def wait_for_status(url: str, job_id: str, wanted: str, timeout: float = 120) -> dict:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        _, job, _ = call(f"{url}/api/job/{job_id}")
        if job["status"] == wanted:
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} is {job['status']}, not {wanted}")


def read_events(url: str, job_id: str, timeout: float = 120) -> list[tuple[str, dict]]:
    """Every server-sent event of a job's stream until it ends."""
    events, name = [], None
    with urllib.request.urlopen(f"{url}/api/job/{job_id}/events", timeout=timeout) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        for line in stream:
            line = line.decode().rstrip("\n")
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                events.append((name, json.loads(line[6:])))
                if name == "end":
                    return events
    raise AssertionError(f"stream closed before its end event: {events}")


SMALL = {"prompt": "a fox in the snow", "n": 4, "m": 2, "iterations": 2, "ensembleSize": 1}


def test_start_a_batch_session_and_follow_it_to_a_winner(api):
    url, _ = api
    status, started, _ = call(f"{url}/api/beam-search", "POST", SMALL)
    assert status == 202 and started["status"] == "running" and started["tier"] == "batch"
    assert started["batchWaitMode"] == "deferred" and started["eventsUrl"] == f"/api/job/{started['jobId']}/events"
    # Priced before spending, on every tier; no batch observed yet, so the wait is the API's window, capped
    # by the deadline (BATCH_MAX_WAIT_HOURS), and the basis says so.
    estimate = started["estimate"]
    assert set(estimate["costUsd"]) == {"standard", "flex", "batch"}
    assert Decimal(estimate["costUsd"]["batch"]) * 2 == Decimal(estimate["costUsd"]["standard"]) > 0
    # C(4,2) votes and 4 critiques (the children of iteration 1 are written in its vision round), then C(6,2) - C(2,2)
    assert estimate["calls"] == {"text": 4, "image": 8, "vision": 6 + 4 + 14}
    assert started["estimatedWaitHours"] == pytest.approx(24, abs=0.01) and "24 h window" in started["estimateBasis"]
    assert started["batchId"] is None and started["batchIds"] == []  # no batch exists yet when POST answers
    first = wait_until(lambda: (j := call(f"{url}/api/job/{started['jobId']}")[1])["batchId"] and j)
    assert first["batchIds"] and first["batchId"] in first["batchIds"] and first["batchId"].startswith("batch_")
    job = wait_for_status(url, started["jobId"], "completed")
    assert job["progress"] == 1.0 and job["winner"]["prompt"]
    assert len(job["batchIds"]) == 5, "one batch per round: text, image, vision, then image, vision"
    cost = job["cost"]
    assert Decimal(cost["paidUsd"]) > 0 and Decimal(cost["tierSavedUsd"]) == Decimal(cost["paidUsd"])
    assert Decimal(cost["cacheAvoidedUsd"]) == 0 and cost["paid"].startswith("$0.0")
    assert job["estimatedCompletionTime"] is None and job["estimateBasis"] == "finished"

    # With batches observed, the next job's wait estimate rests on their median turnaround, not the window.
    _, second, _ = call(f"{url}/api/beam-search", "POST", SMALL | {"seed": 9})
    assert "observed median" in second["estimateBasis"] and second["estimatedWaitHours"] < 1
    wait_for_status(url, second["jobId"], "completed")

    status, image, _ = call(url + job["winner"]["imageUrl"])
    assert status == 200 and image[:8] == b"\x89PNG\r\n\x1a\n"

    status, batch, _ = call(f"{url}/api/batch/{job['batchIds'][0]}/results")
    assert status == 200 and batch["status"] == "completed" and batch["progress"] == 1.0
    assert {r["outcome"] for r in batch["results"]} == {"succeeded"} and len(batch["results"]) == 4
    assert "answer" not in batch["results"][0]

    _, listing, _ = call(f"{url}/api/jobs")
    assert [j["jobId"] for j in listing["jobs"]] == [second["jobId"], started["jobId"]]

    _, ranked, _ = call(f"{url}/api/job/{started['jobId']}/candidates")
    assert ranked["candidates"][0]["rank"] == 1 and ranked["candidates"][0]["imageUrl"]


def test_models_size_and_quality_are_settable_and_an_unpriced_model_is_refused(api):
    url, _ = api
    status, refused, _ = call(f"{url}/api/beam-search", "POST", SMALL | {"textModel": "gpt-9-turbo"})
    assert status == 400 and refused["errors"][0]["field"] == "textModel" and "price catalog" in refused["error"]
    status, refused, _ = call(f"{url}/api/beam-search", "POST", SMALL | {"imageSize": "512x512"})
    assert status == 400 and refused["errors"][0]["field"] == "imageSize"
    chosen = {
        "textModel": "gpt-5",
        "visionModel": "gpt-4.1-mini",
        "imageQuality": "medium",
        "imageSize": "1536x1024",
        "budgetUsd": 0.5,
        "deadlineHours": 2,
    }
    status, started, _ = call(f"{url}/api/beam-search", "POST", SMALL | chosen | {"tier": "standard"})
    assert status == 202
    params = started["params"]
    assert (params["text_model"], params["vision_model"], params["image_quality"], params["image_size"]) == (
        "gpt-5",
        "gpt-4.1-mini",
        "medium",
        "1536x1024",
    )
    # Two hours from now, give or take the request's own time.
    assert abs(time.time() + 2 * 3600 - _epoch(started["deadline"])) < 120
    call(f"{url}/api/job/{started['jobId']}/cancel", "POST", {})


def _epoch(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def test_event_stream_shows_each_step_to_the_winner_and_results_carry_answers(api):
    url, _ = api
    _, started, _ = call(f"{url}/api/beam-search", "POST", SMALL)
    events = read_events(url, started["jobId"])
    names = [name for name, _ in events]
    assert names[0] == "snapshot" and names[-1] == "end" and events[-1][1]["status"] == "completed"
    for step in ("round_queued", "batch_created", "batch_progress", "round_applied", "cost", "winner"):
        assert step in names, f"no {step} event in {names}"
    applied = [(d["iteration"], d["round"]) for n, d in events if n == "round_applied"]
    assert applied == [(0, "text"), (0, "image"), (0, "vision"), (1, "image"), (1, "vision")]
    assert names.index("winner") > names.index("round_applied")
    costs = [float(d["paidUsd"]) for n, d in events if n == "cost"]
    assert costs == sorted(costs) and costs[-1] > 0, "cost so far only grows"
    finished = [d for n, d in events if n == "batch_progress" and d["status"] == "completed"]
    assert len({d["batchId"] for d in finished}) == 5

    # A late subscriber gets the whole history, then the end.
    again = [n for n, _ in read_events(url, started["jobId"])]
    assert again.count("round_applied") == 5 and again[-1] == "end"

    # Each request's answer: text for the text round, an image URL for the image round.
    _, job, _ = call(f"{url}/api/job/{started['jobId']}")
    text_batch, image_batch = job["batchIds"][0], job["batchIds"][1]
    _, texts, _ = call(f"{url}/api/batch/{text_batch}/results?answers=true")
    assert all(r["answer"]["type"] == "text" and r["answer"]["text"] for r in texts["results"])
    _, images, _ = call(f"{url}/api/batch/{image_batch}/results?answers=true")
    answer = images["results"][0]["answer"]
    assert answer["type"] == "image"
    status, png, _ = call(url + answer["imageUrl"])
    assert status == 200 and png[:4] == b"\x89PNG"
    assert call(f"{url}/api/batch/{text_batch}/results?answers=maybe")[0] == 400


def test_invalid_input_is_refused_naming_the_requests_own_field(api):
    url, _ = api
    cases = [
        ({"prompt": "x", "n": 4, "m": 3}, "m", "must be at most n/2 (n=4, m=3)"),
        ({"n": 4}, "prompt", "Field required"),
        ({"prompt": "x", "N": 4}, "N", "unknown field"),  # was silently dropped: a default 540-call job
        ({"prompt": "x", "n": 99}, "n", "less than or equal to 16"),
        ({"prompt": "x", "iterations": 0}, "iterations", "greater than or equal to 1"),
        ({"prompt": "x", "ensembleSize": 9}, "ensembleSize", "less than or equal to 5"),
        ({"prompt": "x", "deadlineHours": 48}, "deadlineHours", "less than or equal to 24"),
        ({"prompt": "x", "seed": 10**30}, "seed", ""),  # was a plain-text 500
        ({"prompt": "x", "n": "4"}, "n", "valid integer"),
        ({"prompt": "   "}, "prompt", "must not be blank"),
        ({"prompt": "x", "batchWaitMode": "block"}, "batchWaitMode", "'deferred' or 'poll'"),
    ]
    for body, field, words in cases:
        status, answer, _ = call(f"{url}/api/beam-search", "POST", body)
        assert status == 400, (body, answer)
        assert answer["errors"][0]["field"] == field, (body, answer)
        assert words in answer["errors"][0]["message"] and answer["error"].startswith(f"{field}: "), answer
    status, answer, _ = call(f"{url}/api/beam-search", "POST", b"{not json")
    assert status == 400 and answer["errors"][0] == {"field": "body", "message": "not valid JSON"}
    status, answer, _ = call(f"{url}/api/beam-search", "POST", b"[1, 2]")
    assert status == 400 and answer["error"] == "body: must be a JSON object"
    _, listing, _ = call(f"{url}/api/jobs")
    assert listing["jobs"] == [], "no refused request started a job"


def test_batch_wait_mode_poll_answers_at_once_with_where_to_poll(api):
    url, _ = api
    status, started, headers = call(f"{url}/api/beam-search", "POST", SMALL | {"batchWaitMode": "poll"})
    assert status == 202 and started["batchWaitMode"] == "poll" and started["pollIntervalSeconds"] > 0
    assert headers["location"] == started["statusUrl"] == f"/api/job/{started['jobId']}"
    assert call(url + started["statusUrl"])[1]["status"] in ("running", "completed")


def test_a_cross_site_simple_request_cannot_start_or_cancel_a_job(api):
    url, _ = api
    body = json.dumps(SMALL).encode()
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None):
        status, answer, _ = call(f"{url}/api/beam-search", "POST", body, content_type=content_type)
        assert status == 415 and "application/json" in answer["error"]
    assert call(f"{url}/api/jobs")[1]["jobs"] == []
    status, started, _ = call(f"{url}/api/beam-search", "POST", SMALL, content_type="application/json; charset=utf-8")
    assert status == 202
    assert call(f"{url}/api/job/{started['jobId']}/cancel", "POST", content_type="text/plain")[0] == 415


def test_only_allowed_host_names_are_answered(api):
    url, _ = api
    status, answer, _ = raw_request(url, "GET", "/api/jobs", headers={"Host": "rebind.attacker.example:8700"})
    assert status == 400 and "not allowed" in answer["error"]
    assert raw_request(url, "GET", "/api/jobs", headers={"Host": "localhost:8700"})[0] == 200
    assert raw_request(url, "GET", "/api/health", headers={"Host": "[::1]:8700"})[0] == 200


def test_cors_is_closed_unless_origins_are_configured(serve_api):
    url, _ = serve_api()
    preflight = {
        "Origin": "https://evil.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type",
    }
    status, _, headers = raw_request(url, "OPTIONS", "/api/beam-search", headers=preflight)
    assert status >= 400 and "access-control-allow-origin" not in {k.lower() for k in headers}
    _, _, headers = raw_request(url, "GET", "/api/jobs", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in {k.lower() for k in headers}

    url, _ = serve_api(cors_origins=("https://app.example",))
    request = urllib.request.Request(
        f"{url}/api/beam-search", method="OPTIONS", headers=preflight | {"Origin": "https://app.example"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.headers["access-control-allow-origin"] == "https://app.example"
    status, _, headers = raw_request(url, "OPTIONS", "/api/beam-search", headers=preflight)
    assert "access-control-allow-origin" not in {k.lower() for k in headers}


def test_bearer_token_when_configured(serve_api):
    url, _ = serve_api(token=TOKEN)
    status, answer, headers = call(f"{url}/api/jobs")
    assert status == 401 and headers["www-authenticate"] == "Bearer" and "token" in answer["error"]
    assert call(f"{url}/api/jobs", headers={"Authorization": "Bearer wrong-token-000000000"})[0] == 401
    assert call(f"{url}/api/beam-search", "POST", SMALL)[0] == 401
    assert call(f"{url}/api/jobs", headers={"Authorization": f"Bearer {TOKEN}"})[0] == 200
    for public in ("/api/health", "/api/openapi.json", "/"):
        assert call(url + public)[0] == 200


def test_bodies_over_the_limit_are_refused(api):
    url, runtime = api
    big = json.dumps({"prompt": "x" * 200_000}).encode()
    status, answer, _ = call(f"{url}/api/beam-search", "POST", big)
    assert status == 413 and "larger than" in answer["error"]
    # No Content-Length: counted as it arrives.
    status, answer, _ = raw_request(
        url,
        "POST",
        "/api/beam-search",
        headers={"Content-Type": "application/json"},
        chunks=[b'{"prompt": "' + b"x" * 30_000] * 4 + [b'"}'],
    )
    assert status == 413
    assert runtime.ledger.sessions() == []


def test_a_public_bind_without_a_token_is_refused():
    with pytest.raises(ApiConfigError, match="BATCH_API_TOKEN"):
        check_bind("0.0.0.0", token_set=False)
    check_bind("0.0.0.0", token_set=True)
    check_bind("127.0.0.1", token_set=False)
    check_bind("localhost", token_set=False)


def test_every_answer_is_json_even_404_405_and_500(api, monkeypatch):
    url, runtime = api
    assert call(f"{url}/api/job/nope")[0] == 404
    assert call(f"{url}/api/batch/batch_nope/results")[0] == 404
    assert call(f"{url}/api/job/nope/events")[0] == 404
    status, answer, _ = call(f"{url}/api/no-such-route")
    assert status == 404 and answer["error"]
    status, answer, _ = call(f"{url}/api/jobs", "POST", {})
    assert status == 405 and answer["error"]

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(runtime.ledger, "sessions", broken)
    status, answer, _ = call(f"{url}/api/jobs")
    assert status == 500 and "RuntimeError" in answer["error"] and "boom" not in answer["error"]


def test_a_ledger_held_by_another_process_answers_503_with_retry_after(serve_api, tmp_path):
    url, runtime = serve_api(run_worker=False)
    runtime.ledger.lock_timeout_s = 0.5  # the API's own reads wait this long for the lock
    holder = hold_lock(runtime.ledger.path, 60)
    try:
        status, answer, headers = call(f"{url}/api/jobs")
        assert status == 503 and int(headers["retry-after"]) > 0 and "busy" in answer["error"]
        # The event loop is not blocked while a request waits for the lock.
        assert call(f"{url}/api/health")[0] == 200
    finally:
        holder.kill()
        holder.wait()
    assert call(f"{url}/api/jobs")[0] == 200


def test_openapi_document_matches_the_routes(api):
    url, _ = api
    status, document, _ = call(f"{url}/api/openapi.json")
    assert status == 200 and document == json.loads(json.dumps(openapi_document()))
    app = create_app(api[1], run_worker=False)
    routes = {(route.path, method.lower()) for route in app.routes for method in route.methods if method != "HEAD"}
    documented = {(path, method) for path, item in document["paths"].items() for method in item}
    assert documented == routes
    request = document["components"]["schemas"]["BeamSearchRequest"]
    assert request["additionalProperties"] is False and request["required"] == ["prompt"]
    from batch_pipeline.api.app import BeamSearchRequest

    assert set(request["properties"]) == set(BeamSearchRequest.model_fields)


def test_cancel_stops_a_session_and_its_queued_requests(api, tmp_path):
    url, runtime = api
    started = call(
        f"{url}/api/beam-search",
        "POST",
        {"prompt": "a fox", "n": 2, "m": 1, "iterations": 1, "ensembleSize": 1, "useBatch": True},
    )[1]
    status, job, _ = call(f"{url}/api/job/{started['jobId']}/cancel", "POST")
    assert status == 200 and job["status"] == "cancelled"
    counts = runtime.ledger.state_counts(session_id=started["jobId"])
    assert not counts.get("queued") and not counts.get("running")
    assert runtime.ledger.check_invariants() == []


def test_health_and_page(api):
    url, _ = api
    assert call(f"{url}/api/health")[:2] == (200, {"status": "ok", "worker": True})
    status, html, headers = call(url + "/")
    assert status == 200 and b"<title>" in html and "frame-ancestors 'none'" in headers["content-security-policy"]


def test_security_settings_come_from_the_environment(simulator, tmp_path):
    runtime = runtime_for(
        simulator,
        tmp_path / "home",
        BATCH_API_TOKEN=TOKEN,
        BATCH_API_ALLOWED_HOSTS="api.internal",
        BATCH_API_MAX_BODY_BYTES="2048",
    )
    with serve_in_thread(create_app(runtime, run_worker=False), lifespan="on", name="api") as url:
        assert raw_request(url, "GET", "/api/health")[0] == 400, "127.0.0.1 is not in the configured list"
        auth = {"Host": "api.internal", "Authorization": f"Bearer {TOKEN}"}
        assert raw_request(url, "GET", "/api/jobs", headers={"Host": "api.internal"})[0] == 401
        assert raw_request(url, "GET", "/api/jobs", headers=auth)[0] == 200
        status, _, _ = raw_request(
            url, "POST", "/api/beam-search", body=b" " * 4096, headers=auth | {"Content-Type": "application/json"}
        )
        assert status == 413


def test_invalid_security_settings_name_the_variable():
    from batch_pipeline.settings import SettingsError, load_settings

    with pytest.raises(SettingsError, match="BATCH_API_TOKEN: must be at least 16 characters"):
        load_settings({"BATCH_API_TOKEN": "short"})
    with pytest.raises(SettingsError, match="BATCH_API_MAX_BODY_BYTES"):
        load_settings({"BATCH_API_MAX_BODY_BYTES": "10"})


def test_the_same_session_id_never_starts_a_second_job(api):
    url, runtime = api
    body = SMALL | {"sessionId": "job-1"}
    first = call(f"{url}/api/beam-search", "POST", body)
    again = call(f"{url}/api/beam-search", "POST", body)
    assert first[0] == again[0] == 202 and first[1]["jobId"] == again[1]["jobId"] == "job-1"
    assert [row.session_id for row in runtime.ledger.sessions()] == ["job-1"]
    status, error, _ = call(f"{url}/api/beam-search", "POST", body | {"n": 6, "m": 3})
    assert status == 409 and "sessionId" in error["error"]


def test_a_cancel_of_a_running_standard_job_sticks_and_answers_200_every_time(serve_api):
    url, runtime = serve_api(events_interval_s=0.1)
    started = call(f"{url}/api/beam-search", "POST", SMALL | {"tier": "standard", "n": 8, "m": 4})[1]
    job_id = started["jobId"]
    wait_until(lambda: runtime.ledger.state_counts(session_id=job_id).get("succeeded", 0) >= 1, timeout=120)
    answers = [call(f"{url}/api/job/{job_id}/cancel", "POST") for _ in range(3)]
    assert [status for status, _, _ in answers] == [200, 200, 200]
    assert all(job["status"] == "cancelled" for _, job, _ in answers)
    total = sum(runtime.ledger.state_counts(session_id=job_id).values())
    time.sleep(1.0)  # the worker keeps ticking (every 0.05 s): nothing more may happen to this job
    assert call(f"{url}/api/job/{job_id}")[1]["status"] == "cancelled"
    counts = runtime.ledger.state_counts(session_id=job_id)
    assert sum(counts.values()) == total and not counts.get("queued") and not counts.get("running"), counts
    assert runtime.ledger.check_invariants() == []


def test_a_job_the_api_refuses_to_authenticate_ends_failed_with_the_reason(tmp_path):
    from tests.test_cli_startup import unauthorized_app

    with serve_in_thread(unauthorized_app(), name="refusing-api") as openai_url:  # answers 401 to everything
        runtime = runtime_for(openai_url, tmp_path / "home")
        with serve_in_thread(create_app(runtime, worker_interval_s=0.05), lifespan="on", name="api") as url:
            job_id = call(f"{url}/api/beam-search", "POST", SMALL | {"tier": "standard"})[1]["jobId"]
            job = wait_for_status(url, job_id, "failed")
    assert "refused our credentials" in job["error"], job["error"]
    counts = runtime.ledger.state_counts(session_id=job_id)
    assert not counts.get("queued") and not counts.get("running"), counts
    assert runtime.ledger.check_invariants() == []
