"""The mock worker through real HTTP on loopback (subprocess workers, httpx)."""

from __future__ import annotations

import json
import re
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from helpers import DEADLINE_S, events_of, post_job, stream_url, submit, wait_until
from workerproc import WorkerProcess

import openapi
from conformance.sse import SSEEvent, SSEParser
from workers.engines.base import GenerationRequest
from workers.engines.mock import MockEngine

pytestmark = pytest.mark.slow

TIMEOUT = httpx.Timeout(10.0)
JOB_ID = re.compile(r"^[A-Za-z0-9_-]{22,128}$")
CONTRACT = "Dualcall-Contract-Version"
VERSION = openapi.contract_version()


# -- helpers ------------------------------------------------------------------------------------------


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=TIMEOUT) as http:
        yield http


@pytest.fixture(scope="module")
def slow_worker() -> Iterator[WorkerProcess]:
    """One generation slot, 100 ms per token, keep-alive every 50 ms. Tests DELETE their jobs."""
    with WorkerProcess("mock", "--concurrency", "1", "--token-delay-ms", "100", "--keepalive-s", "0.05") as worker:
        yield worker


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].split(";")[0] == "application/problem+json"
    assert response.headers.get(CONTRACT) == VERSION
    assert "Traceback" not in response.text
    assert 'File "' not in response.text
    body: dict[str, Any] = response.json()
    assert {"type", "title", "status", "detail"} <= body.keys()
    assert body["status"] == status
    assert isinstance(body["type"], str)
    assert body["type"]
    assert isinstance(body["title"], str)
    assert body["title"]
    assert isinstance(body["detail"], str)
    assert body["detail"]
    return body


def token_texts(events: list[SSEEvent]) -> list[str]:
    return [json.loads(e.data)["text"] for e in events if e.event == "token"]


def final_event(events: list[SSEEvent]) -> tuple[str, dict[str, Any]]:
    assert events[-1].data == "[DONE]"
    return events[-2].event, json.loads(events[-2].data)


# -- submit -----------------------------------------------------------------------------------------------


def test_submit_answers_202_with_location(client: httpx.Client, mock_worker: WorkerProcess) -> None:
    response = post_job(mock_worker.url, {"prompt": "hi", "max_tokens": 3}, client=client)
    assert response.status_code == 202
    assert response.headers["content-type"].split(";")[0] == "application/json"
    assert response.headers[CONTRACT] == VERSION
    body = response.json()
    assert JOB_ID.match(body["job_id"])
    assert response.headers["location"] == body["sse_url"]
    assert body["sse_url"] == f"/v1/inference/{body['job_id']}/stream"
    assert body["status_url"] == f"/v1/inference/{body['job_id']}"
    other = submit(mock_worker.url, {"prompt": "hi", "max_tokens": 3}, client=client)
    assert other["job_id"] != body["job_id"]


def test_submit_accepts_integral_numbers_for_integer_fields(client: httpx.Client, mock_worker: WorkerProcess) -> None:
    """JSON Schema `integer` includes 5.0; the documented schema must be what the worker accepts."""
    response = client.post(
        mock_worker.url + "/v1/inference",
        content=b'{"prompt": "x", "max_tokens": 3.0, "seed": 20862613.0, "top_k": 0.0}',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 202, response.text
    status = client.get(mock_worker.url + response.json()["status_url"]).json()
    assert status["max_tokens"] == 3


def test_stream_headers_and_event_grammar(client: httpx.Client, mock_worker: WorkerProcess) -> None:
    submitted = submit(mock_worker.url, {"prompt": "grammar", "max_tokens": 10}, client=client)
    response = client.get(stream_url(mock_worker.url, submitted))
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers[CONTRACT] == VERSION
    events = events_of(response.content)
    assert [e.event for e in events] == ["started"] + ["token"] * 10 + ["end", "message"]
    assert [e.id for e in events[:-1]] == [str(i) for i in range(1, 13)]
    assert [e.has_id_field for e in events] == [True] * 12 + [False]
    assert all(e.data_lines == 1 for e in events)
    assert json.loads(events[0].data) == {"job_id": submitted["job_id"]}
    assert [json.loads(e.data)["index"] for e in events if e.event == "token"] == list(range(10))
    assert final_event(events) == ("end", {"tokens_out": 10, "stop_reason": "max_tokens"})
    assert response.content.endswith(b"data: [DONE]\n\n")


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_tricky_tokens_round_trip_exactly(client: httpx.Client, mock_worker: WorkerProcess, seed: int) -> None:
    prompt = "Round-trip 日本語 🚀\r\n"
    submitted = submit(mock_worker.url, {"prompt": prompt, "max_tokens": 64, "seed": seed}, client=client)
    events = events_of(client.get(stream_url(mock_worker.url, submitted)).content)
    expected = MockEngine().tokens(GenerationRequest(prompt=prompt, max_tokens=64, seed=seed))
    assert token_texts(events) == expected
    assert "".join(token_texts(events)) == "".join(expected)


def test_tricky_tokens_do_occur_over_the_wire(client: httpx.Client, mock_worker: WorkerProcess) -> None:
    seen: set[str] = set()
    for seed in range(10):
        submitted = submit(mock_worker.url, {"prompt": "tricky", "max_tokens": 64, "seed": seed}, client=client)
        seen.update(token_texts(events_of(client.get(stream_url(mock_worker.url, submitted)).content)))
    assert {"\n", "\r", "[DONE]", "data: [DONE]"} <= seen


def test_stop_and_max_tokens_over_http(client: httpx.Client, mock_worker: WorkerProcess) -> None:
    expected = MockEngine().tokens(GenerationRequest(prompt="stop", max_tokens=30, seed=9))
    stop = expected[12]
    full = "".join(expected)
    submitted = submit(mock_worker.url, {"prompt": "stop", "max_tokens": 30, "seed": 9, "stop": [stop]}, client=client)
    events = events_of(client.get(stream_url(mock_worker.url, submitted)).content)
    assert "".join(token_texts(events)) == full[: full.find(stop)]
    event, data = final_event(events)
    assert event == "end"
    assert data["stop_reason"] == "stop"
    assert data["tokens_out"] <= 30
    assert data["tokens_out"] >= len(token_texts(events))


def test_default_max_tokens_is_64(client: httpx.Client, mock_worker: WorkerProcess) -> None:
    submitted = submit(mock_worker.url, {"prompt": "default"}, client=client)
    events = events_of(client.get(stream_url(mock_worker.url, submitted)).content)
    assert final_event(events) == ("end", {"tokens_out": 64, "stop_reason": "max_tokens"})


# -- error paths ------------------------------------------------------------------------------------------


def test_400_malformed_json(client: httpx.Client, mock_worker: WorkerProcess) -> None:
    response = client.post(
        mock_worker.url + "/v1/inference", content=b'{"prompt": "x",', headers={"content-type": "application/json"}
    )
    assert_problem(response, 400)


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_415_wrong_content_type(client: httpx.Client, mock_worker: WorkerProcess, content_type: str | None) -> None:
    headers = {} if content_type is None else {"content-type": content_type}
    response = client.post(mock_worker.url + "/v1/inference", content=b'{"prompt": "x"}', headers=headers)
    assert_problem(response, 415)


def test_413_body_too_large(client: httpx.Client, start_worker: Any) -> None:
    worker = start_worker("mock", "--max-body-bytes", "1000")
    assert_problem(post_job(worker.url, {"prompt": "x" * 2000}, client=client), 413)
    assert post_job(worker.url, {"prompt": "x" * 100}, client=client).status_code == 202


def test_422_client_job_id(client: httpx.Client, mock_worker: WorkerProcess) -> None:
    body = assert_problem(
        post_job(mock_worker.url, {"job_id": "test-job-001", "prompt": "x", "max_tokens": 5}, client=client), 422
    )
    assert "server assigns job ids" in body["detail"].lower()


def test_422_unknown_field(client: httpx.Client, mock_worker: WorkerProcess) -> None:
    body = assert_problem(post_job(mock_worker.url, {"prompt": "x", "temprature": 0.5}, client=client), 422)
    assert "temprature" in body["detail"]


@pytest.mark.parametrize(
    "body",
    [
        {"prompt": "x", "max_tokens": 0},
        {"prompt": "x", "max_tokens": 4097},
        {"prompt": "x", "max_tokens": 1.5},
        {"prompt": "x", "max_tokens": "5"},
        {"prompt": "x", "max_tokens": None},
        {"prompt": "x", "temperature": -1},
        {"prompt": "x", "top_p": 0},
        {"prompt": "x", "top_p": 1.01},
        {"prompt": "x", "top_k": -1},
        {"prompt": "x", "seed": -1},
        {"prompt": "x", "stop": ["a", "b", "c", "d", "e"]},
        {"prompt": "x", "stop": [""]},
        {"prompt": "x", "stop": "a"},
        {"prompt": ""},
        {"prompt": 5},
        {},
    ],
    ids=lambda body: json.dumps(body)[:40],
)
def test_422_invalid_values(client: httpx.Client, mock_worker: WorkerProcess, body: dict[str, Any]) -> None:
    assert_problem(post_job(mock_worker.url, body, client=client), 422)


def test_422_body_not_an_object(client: httpx.Client, mock_worker: WorkerProcess) -> None:
    assert_problem(post_job(mock_worker.url, ["prompt"], client=client), 422)


@pytest.mark.parametrize("method,suffix", [("GET", "/stream"), ("GET", ""), ("DELETE", "")])
def test_404_unknown_job(client: httpx.Client, mock_worker: WorkerProcess, method: str, suffix: str) -> None:
    response = client.request(method, f"{mock_worker.url}/v1/inference/NoSuchJobNoSuchJobNoSuch{suffix}")
    assert_problem(response, 404)


@pytest.mark.parametrize(
    "method,path,allowed",
    [
        ("GET", "/v1/inference", {"POST"}),
        ("PUT", "/v1/inference", {"POST"}),
        ("PUT", "/v1/inference/abc", {"GET", "DELETE"}),
        ("POST", "/v1/inference/abc", {"GET", "DELETE"}),
        ("POST", "/v1/inference/abc/stream", {"GET"}),
        ("DELETE", "/v1/inference/abc/stream", {"GET"}),
        ("POST", "/health", {"GET"}),
    ],
)
def test_405_with_allow(
    client: httpx.Client, mock_worker: WorkerProcess, method: str, path: str, allowed: set[str]
) -> None:
    response = client.request(method, mock_worker.url + path)
    assert_problem(response, 405)
    allow = {m.strip() for m in response.headers["allow"].split(",")}
    assert allowed <= allow
    assert method not in allow
    # OPTIONS lists the same methods as the 405's Allow header
    options = client.options(mock_worker.url + path)
    assert options.status_code == 204
    assert {m.strip() for m in options.headers["allow"].split(",")} == allow


def test_401_when_auth_is_on(client: httpx.Client, start_worker: Any) -> None:
    worker = start_worker("mock", "--auth-token", "secret")
    good = {"Authorization": "Bearer secret"}
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Basic secret"},
        {"Authorization": "secret"},
    ):
        response = post_job(worker.url, {"prompt": "x"}, headers=headers, client=client)
        assert_problem(response, 401)
        assert response.headers["www-authenticate"].startswith("Bearer")
    submitted = submit(worker.url, {"prompt": "x", "max_tokens": 3}, headers=good, client=client)
    job = submitted["job_id"]
    for method, path in (
        ("GET", f"/v1/inference/{job}/stream"),
        ("GET", f"/v1/inference/{job}"),
        ("DELETE", f"/v1/inference/{job}"),
    ):
        response = client.request(method, worker.url + path)
        assert_problem(response, 401)
        assert response.headers["www-authenticate"].startswith("Bearer")
    health = client.get(worker.url + "/health")
    assert health.status_code == 200
    events = events_of(client.get(stream_url(worker.url, submitted), headers=good).content)
    assert final_event(events)[0] == "end"
    assert client.get(worker.url + submitted["status_url"], headers=good).status_code == 200
    assert client.delete(worker.url + submitted["status_url"], headers=good).status_code == 202


def test_503_retry_after_when_queue_full(client: httpx.Client, start_worker: Any) -> None:
    worker = start_worker("mock", "--concurrency", "1", "--queue-limit", "0", "--token-delay-ms", "200")
    first = submit(worker.url, {"prompt": "x", "max_tokens": 50}, client=client)
    response = post_job(worker.url, {"prompt": "y", "max_tokens": 1}, client=client)
    assert_problem(response, 503)
    assert response.headers["retry-after"].isdigit()
    assert client.delete(worker.url + first["status_url"]).status_code == 202
    wait_until(
        lambda: post_job(worker.url, {"prompt": "z", "max_tokens": 1}, client=client).status_code == 202,
        "a free queue slot once the first job completed",
    )


# -- replay and resume --------------------------------------------------------------------------------------


def test_second_reader_gets_identical_replay(client: httpx.Client, mock_worker: WorkerProcess) -> None:
    submitted = submit(mock_worker.url, {"prompt": "replay", "max_tokens": 20}, client=client)
    url = stream_url(mock_worker.url, submitted)
    first = client.get(url).content
    second = client.get(url).content
    assert first == second
    assert len(events_of(first)) == 23  # started, 20 tokens, end, DONE


def test_concurrent_readers_of_a_live_job_get_identical_streams(
    client: httpx.Client, slow_worker: WorkerProcess
) -> None:
    submitted = submit(slow_worker.url, {"prompt": "live", "max_tokens": 8}, client=client)
    url = stream_url(slow_worker.url, submitted)
    results: dict[str, bytes] = {}
    first_token = threading.Event()

    def read(name: str) -> None:
        raw = bytearray()
        parser = SSEParser(strict=True)
        with httpx.Client(timeout=TIMEOUT) as own, own.stream("GET", url) as response:
            for chunk in response.iter_bytes():
                raw += chunk
                if any(e.event == "token" for e in parser.feed(chunk)):
                    first_token.set()
        results[name] = bytes(raw)

    # the second reader attaches once the first one has seen a token: mid-stream, not at the start
    first = threading.Thread(target=read, args=("a",))
    first.start()
    assert first_token.wait(DEADLINE_S), "no token reached the first reader"
    second = threading.Thread(target=read, args=("b",))
    second.start()
    for thread in (first, second):
        thread.join(DEADLINE_S)
    events_a = [e for e in events_of(results["a"])]
    events_b = [e for e in events_of(results["b"])]
    assert [(e.id, e.event, e.data) for e in events_a] == [(e.id, e.event, e.data) for e in events_b]
    assert final_event(events_a) == ("end", {"tokens_out": 8, "stop_reason": "max_tokens"})


@pytest.mark.parametrize("k", [1, 3, 7])
def test_last_event_id_resumes_after_k(client: httpx.Client, mock_worker: WorkerProcess, k: int) -> None:
    submitted = submit(mock_worker.url, {"prompt": "resume", "max_tokens": 10}, client=client)
    url = stream_url(mock_worker.url, submitted)
    full = events_of(client.get(url).content)
    response = client.get(url, headers={"Last-Event-ID": str(k)})
    assert response.status_code == 200
    resumed = events_of(response.content)
    assert [(e.event, e.data, e.id) for e in resumed] == [(e.event, e.data, e.id) for e in full[k:]]
    assert resumed[0].id == str(k + 1)


def test_204_after_the_final_event(client: httpx.Client, mock_worker: WorkerProcess) -> None:
    submitted = submit(mock_worker.url, {"prompt": "final", "max_tokens": 4}, client=client)
    url = stream_url(mock_worker.url, submitted)
    events = events_of(client.get(url).content)
    final_id = int(events[-2].id or 0)
    assert final_id == 6
    for last in (final_id, final_id + 1, 10**6):
        response = client.get(url, headers={"Last-Event-ID": str(last)})
        assert response.status_code == 204
        assert response.content == b""
        assert response.headers[CONTRACT] == VERSION
    before = client.get(url, headers={"Last-Event-ID": str(final_id - 1)})
    assert [e.event for e in events_of(before.content)] == ["end", "message"]


@pytest.mark.parametrize("value", ["abc", "-1", "1.5", "", "+3", "0x1", "1e3"])
def test_400_on_bad_last_event_id(client: httpx.Client, mock_worker: WorkerProcess, value: str) -> None:
    submitted = submit(mock_worker.url, {"prompt": "bad id", "max_tokens": 2}, client=client)
    response = client.get(stream_url(mock_worker.url, submitted), headers={"Last-Event-ID": value})
    assert_problem(response, 400)


# -- job resource -----------------------------------------------------------------------------------------------


def test_status_states_queued_running_completed(client: httpx.Client, slow_worker: WorkerProcess) -> None:
    running = submit(slow_worker.url, {"prompt": "long", "max_tokens": 1000}, client=client)
    queued = submit(slow_worker.url, {"prompt": "short", "max_tokens": 2}, client=client)
    try:
        wait_until(
            lambda: client.get(slow_worker.url + running["status_url"]).json()["state"] == "running",
            "the first job to run",
        )
        status = client.get(slow_worker.url + queued["status_url"])
        assert status.status_code == 200
        assert status.headers[CONTRACT] == VERSION
        body = status.json()
        assert body["state"] == "queued"
        assert body["job_id"] == queued["job_id"]
        assert body["tokens_out"] == 0
        assert body["sse_url"] == queued["sse_url"]
        assert body["max_tokens"] == 2
        assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$", body["created_at"])
        assert body["started_at"] is None
        cancelled = client.delete(slow_worker.url + running["status_url"])
        assert cancelled.json()["state"] == "cancelled"
        wait_until(
            lambda: client.get(slow_worker.url + queued["status_url"]).json()["state"] == "completed",
            "the queued job to complete",
        )
        done = client.get(slow_worker.url + queued["status_url"]).json()
        assert done["tokens_out"] == 2
        assert done["stop_reason"] == "max_tokens"
        assert done["finished_at"] is not None
        assert done["error"] is None
    finally:
        for job in (running, queued):
            client.delete(slow_worker.url + job["status_url"])


def test_delete_running_job_ends_attached_reader(client: httpx.Client, slow_worker: WorkerProcess) -> None:
    submitted = submit(slow_worker.url, {"prompt": "cancel me", "max_tokens": 1000}, client=client)
    url = stream_url(slow_worker.url, submitted)
    raw = bytearray()
    parser = SSEParser(strict=True)
    seen: list[SSEEvent] = []
    with client.stream("GET", url) as response:
        assert response.status_code == 200
        chunks = response.iter_bytes()
        while not any(e.event == "token" for e in seen):
            chunk = next(chunks)
            raw += chunk
            seen += parser.feed(chunk)
        deleted = client.delete(slow_worker.url + submitted["status_url"])
        assert deleted.status_code == 202
        assert deleted.headers[CONTRACT] == VERSION
        assert deleted.json()["state"] == "cancelled"
        assert deleted.json()["job_id"] == submitted["job_id"]
        # the job had 1000 tokens at 100 ms each to go: a stream the DELETE did not end outlives the deadline
        deadline = time.monotonic() + DEADLINE_S
        for chunk in chunks:
            raw += chunk
            assert time.monotonic() < deadline, "the attached stream went on after the DELETE"
    events = events_of(bytes(raw))
    event, data = final_event(events)
    assert (event, data["stop_reason"]) == ("end", "cancelled")
    assert data["tokens_out"] < 1000
    # gone afterwards
    assert_problem(client.get(slow_worker.url + submitted["status_url"]), 404)
    assert_problem(client.get(url), 404)
    assert_problem(client.delete(slow_worker.url + submitted["status_url"]), 404)


def test_delete_finished_job(client: httpx.Client, mock_worker: WorkerProcess) -> None:
    submitted = submit(mock_worker.url, {"prompt": "done", "max_tokens": 3}, client=client)
    client.get(stream_url(mock_worker.url, submitted))
    response = client.delete(mock_worker.url + submitted["status_url"])
    assert response.status_code == 202
    assert response.json()["state"] == "completed"
    assert_problem(client.get(mock_worker.url + submitted["status_url"]), 404)
    assert_problem(client.get(stream_url(mock_worker.url, submitted)), 404)


def test_ttl_reclaims_jobs(client: httpx.Client, start_worker: Any) -> None:
    worker = start_worker("mock", "--ttl-s", "0.5")
    assert client.get(worker.url + "/health").json()["job_ttl_s"] == 0.5
    unattached = submit(worker.url, {"prompt": "nobody reads me", "max_tokens": 3}, client=client)
    finished = submit(worker.url, {"prompt": "read me", "max_tokens": 3}, client=client)
    client.get(stream_url(worker.url, finished))
    assert client.get(worker.url + finished["status_url"]).status_code == 200
    # polling the status URL neither attaches a reader nor refreshes the TTL
    for job in (unattached, finished):
        wait_until(lambda job=job: client.get(worker.url + job["status_url"]).status_code == 404, "the TTL sweep")
        assert_problem(client.get(worker.url + job["status_url"]), 404)
        assert_problem(client.get(stream_url(worker.url, job)), 404)


def test_fail_after_gives_error_event(client: httpx.Client, start_worker: Any) -> None:
    worker = start_worker("mock", "--fail-after", "3")
    submitted = submit(worker.url, {"prompt": "fail", "max_tokens": 10}, client=client)
    events = events_of(client.get(stream_url(worker.url, submitted)).content)
    assert [e.event for e in events] == ["started", "token", "token", "token", "error", "message"]
    event, data = final_event(events)
    assert event == "error"
    assert data["code"] == "simulated_failure"
    assert data["message"]
    status = client.get(worker.url + submitted["status_url"]).json()
    assert status["state"] == "failed"
    assert status["error"]["code"] == "simulated_failure"
    assert client.get(worker.url + "/health").status_code == 200


# -- service endpoints ----------------------------------------------------------------------------------------


def test_health(client: httpx.Client, mock_worker: WorkerProcess) -> None:
    response = client.get(mock_worker.url + "/health")
    assert response.status_code == 200
    assert response.headers[CONTRACT] == VERSION
    body = response.json()
    assert body["status"] == "ok"
    assert body["engine"] == "mock"
    assert body["model"] == "mock-tricky-v1"
    assert body["contract_version"] == VERSION
    assert body["deterministic"] is True
    assert body["job_ttl_s"] == 60
    assert body["max_tokens_cap"] == 4096
    assert body["keepalive_s"] == 15
    assert body["queue"]["limit"] == 64
    assert {"active", "queued"} <= body["queue"].keys()


def test_metrics(client: httpx.Client, mock_worker: WorkerProcess) -> None:
    submit(mock_worker.url, {"prompt": "metrics", "max_tokens": 1}, client=client)
    response = client.get(mock_worker.url + "/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert response.headers[CONTRACT] == VERSION
    values = dict(line.split(" ", 1) for line in response.text.splitlines() if line and not line.startswith("#"))
    assert float(values["dualcall_jobs_submitted_total"]) >= 1
    assert float(values["dualcall_engine_up"]) == 1
    for name in ("dualcall_jobs_active", "dualcall_jobs_queued", "dualcall_jobs_retained"):
        assert name in values


def test_openapi_document_served(client: httpx.Client, mock_worker: WorkerProcess) -> None:
    as_json = client.get(mock_worker.url + "/openapi.json")
    assert as_json.status_code == 200
    assert as_json.json() == openapi.load_document()
    as_yaml = client.get(mock_worker.url + "/openapi.yaml")
    assert as_yaml.status_code == 200
    assert as_yaml.content == openapi.DOCUMENT_PATH.read_bytes()
    docs = client.get(mock_worker.url + "/docs")
    assert docs.status_code == 200
    assert "/openapi.json" in docs.text


def test_contract_version_header_everywhere(client: httpx.Client, mock_worker: WorkerProcess) -> None:
    submitted = submit(mock_worker.url, {"prompt": "v", "max_tokens": 1}, client=client)
    responses = [
        post_job(mock_worker.url, {"prompt": "v", "max_tokens": 1}, client=client),
        client.get(mock_worker.url + submitted["status_url"]),
        client.get(stream_url(mock_worker.url, submitted)),
        client.get(mock_worker.url + "/health"),
        client.get(mock_worker.url + "/metrics"),
        client.get(mock_worker.url + "/openapi.json"),
        client.get(mock_worker.url + "/nowhere"),
        client.put(mock_worker.url + "/v1/inference"),
        post_job(mock_worker.url, {"prompt": ""}, client=client),
        client.post(mock_worker.url + "/v1/inference", content=b"{", headers={"content-type": "application/json"}),
        client.get(mock_worker.url + "/v1/inference/unknown-unknown-unknown"),
    ]
    for response in responses:
        assert response.headers.get(CONTRACT) == VERSION, (response.request.method, response.request.url)


def test_unknown_path_is_problem_404(client: httpx.Client, mock_worker: WorkerProcess) -> None:
    assert_problem(client.get(mock_worker.url + "/nowhere"), 404)


# -- keep-alive, shutdown, disconnects ---------------------------------------------------------------------------


def test_keepalive_comments_while_slow(client: httpx.Client, start_worker: Any) -> None:
    worker = start_worker("mock", "--keepalive-s", "0.2", "--token-delay-ms", "500")
    assert client.get(worker.url + "/health").json()["keepalive_s"] == 0.2
    submitted = submit(worker.url, {"prompt": "slow", "max_tokens": 2}, client=client)
    response = client.get(stream_url(worker.url, submitted))
    assert b"\n: keep-alive\n\n" in response.content
    parser = SSEParser(strict=True)
    events = parser.feed(response.content) + parser.close()
    assert parser.ok, parser.issues
    assert "keep-alive" in {c.strip() for c in parser.comments}
    assert [e.event for e in events] == ["started", "token", "token", "end", "message"]


def test_sigterm_ends_open_stream_cleanly(start_worker: Any) -> None:
    worker = start_worker("mock", "--token-delay-ms", "100")
    raw = bytearray()
    parser = SSEParser(strict=True)
    seen: list[SSEEvent] = []
    with httpx.Client(timeout=TIMEOUT) as http:
        submitted = submit(worker.url, {"prompt": "shutdown", "max_tokens": 1000}, client=http)
        with http.stream("GET", stream_url(worker.url, submitted)) as response:
            chunks = response.iter_bytes()
            while not any(e.event == "token" for e in seen):
                chunk = next(chunks)
                raw += chunk
                seen += parser.feed(chunk)
            assert worker.proc is not None
            worker.proc.send_signal(signal.SIGTERM)
            for chunk in chunks:
                raw += chunk
    events = events_of(bytes(raw))
    event, data = final_event(events)
    assert event == "error"
    assert data["code"] == "shutdown"
    assert worker.proc.wait(DEADLINE_S) == 0
    worker.stop()
    assert "Traceback" not in worker.stderr, worker.output()
    assert "dualcall worker stopped" in worker.stderr, worker.output()


def test_reader_disconnect_does_not_disturb_others(client: httpx.Client, slow_worker: WorkerProcess) -> None:
    submitted = submit(slow_worker.url, {"prompt": "disconnect", "max_tokens": 6}, client=client)
    url = stream_url(slow_worker.url, submitted)
    result: dict[str, bytes] = {}

    def full_reader() -> None:
        with httpx.Client(timeout=TIMEOUT) as own:
            result["full"] = own.get(url).content

    thread = threading.Thread(target=full_reader)
    thread.start()
    with httpx.Client(timeout=TIMEOUT) as quitter, quitter.stream("GET", url) as response:
        parser = SSEParser()
        for chunk in response.iter_bytes():
            if any(e.event == "token" for e in parser.feed(chunk)):
                break  # leave mid-stream: the connection is closed with the client
    thread.join(15)
    events = events_of(result["full"])
    assert final_event(events) == ("end", {"tokens_out": 6, "stop_reason": "max_tokens"})
    expected = MockEngine().tokens(GenerationRequest(prompt="disconnect", max_tokens=6))
    assert token_texts(events) == expected
    # the worker keeps serving: a later job runs to completion and health is ok
    later = submit(slow_worker.url, {"prompt": "later", "max_tokens": 2}, client=client)
    later_events = events_of(client.get(stream_url(slow_worker.url, later)).content)
    assert final_event(later_events) == ("end", {"tokens_out": 2, "stop_reason": "max_tokens"})
    assert client.get(slow_worker.url + "/health").json()["status"] == "ok"
