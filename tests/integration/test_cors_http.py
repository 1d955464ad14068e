"""CORS through real HTTP: off by default; `--cors-origin` lets exactly the named origins in."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest
from helpers import post_job
from workerproc import WorkerProcess

pytestmark = pytest.mark.slow

ALLOWED = "http://app.example:3000"
ALSO_ALLOWED = "http://localhost:5173"
STRANGER = "http://evil.example"
TOKEN = "cors-test-token"


def preflight(url: str, origin: str, method: str, headers: str = "") -> httpx.Response:
    request_headers = {"Origin": origin, "Access-Control-Request-Method": method}
    if headers:
        request_headers["Access-Control-Request-Headers"] = headers
    return httpx.options(url, headers=request_headers, timeout=10)


def cors_headers(response: httpx.Response) -> dict[str, str]:
    return {name: value for name, value in response.headers.items() if name.lower().startswith("access-control-")}


def listed(value: str) -> set[str]:
    return {item.strip().lower() for item in value.split(",") if item.strip()}


@pytest.fixture(scope="module")
def cors_worker() -> Iterator[WorkerProcess]:
    with WorkerProcess(
        "mock", "--cors-origin", ALLOWED, "--cors-origin", ALSO_ALLOWED, "--auth-token", TOKEN
    ) as worker:
        yield worker


def post_from(worker: WorkerProcess, origin: str) -> httpx.Response:
    """An authorised submit, as a page served from ``origin`` sends it."""
    return post_job(
        worker.url, {"prompt": "cors", "max_tokens": 2}, headers={"Origin": origin, "Authorization": f"Bearer {TOKEN}"}
    )


def test_off_by_default(mock_worker: WorkerProcess) -> None:
    answer = preflight(mock_worker.url + "/v1/inference", ALLOWED, "POST", "content-type")
    assert not cors_headers(answer), answer.headers
    posted = httpx.post(
        mock_worker.url + "/v1/inference", json={"prompt": "x", "max_tokens": 1}, headers={"Origin": ALLOWED}
    )
    assert posted.status_code == 202
    assert not cors_headers(posted), posted.headers


@pytest.mark.parametrize("origin", [ALLOWED, ALSO_ALLOWED])
def test_preflight_for_submit_allows_named_origins(cors_worker: WorkerProcess, origin: str) -> None:
    # no Authorization on a preflight: browsers never send it, so the guard must not see this request
    answer = preflight(cors_worker.url + "/v1/inference", origin, "POST", "content-type, authorization")
    assert answer.status_code == 204, answer.text
    assert answer.headers["access-control-allow-origin"] == origin
    assert listed(answer.headers["access-control-allow-methods"]) == {"get", "post", "delete"}
    assert {"content-type", "authorization", "last-event-id"} <= listed(answer.headers["access-control-allow-headers"])
    assert int(answer.headers["access-control-max-age"]) > 0
    assert "access-control-allow-credentials" not in answer.headers


def test_preflight_for_stream_resume_and_cancel(cors_worker: WorkerProcess) -> None:
    job_url = cors_worker.url + "/v1/inference/some-job-id-some-job-id"
    resume = preflight(job_url + "/stream", ALLOWED, "GET", "last-event-id")
    assert resume.status_code == 204
    assert resume.headers["access-control-allow-origin"] == ALLOWED
    cancel = preflight(job_url, ALLOWED, "DELETE", "authorization")
    assert cancel.status_code == 204
    assert cancel.headers["access-control-allow-origin"] == ALLOWED


def test_preflight_from_other_origin_gets_nothing(cors_worker: WorkerProcess) -> None:
    answer = preflight(cors_worker.url + "/v1/inference", STRANGER, "POST", "content-type")
    assert answer.status_code >= 400
    assert not cors_headers(answer), answer.headers


def test_preflight_for_unlisted_method_or_header_is_refused(cors_worker: WorkerProcess) -> None:
    for answer in (
        preflight(cors_worker.url + "/v1/inference", ALLOWED, "PUT"),
        preflight(cors_worker.url + "/v1/inference", ALLOWED, "POST", "x-custom"),
    ):
        assert answer.status_code >= 400
        assert "access-control-allow-origin" not in answer.headers


def test_responses_expose_contract_headers_to_allowed_origin(cors_worker: WorkerProcess) -> None:
    posted = post_from(cors_worker, ALLOWED)
    assert posted.status_code == 202, posted.text
    assert posted.headers["access-control-allow-origin"] == ALLOWED
    assert "origin" in listed(posted.headers["vary"])
    exposed = listed(posted.headers["access-control-expose-headers"])
    assert {"location", "dualcall-contract-version", "retry-after"} <= exposed
    stream = httpx.get(
        cors_worker.url + posted.json()["sse_url"],
        headers={"Origin": ALLOWED, "Authorization": f"Bearer {TOKEN}"},
        timeout=10,
    )
    assert stream.status_code == 200
    assert stream.headers["access-control-allow-origin"] == ALLOWED
    assert b"data: [DONE]" in stream.content


def test_responses_to_other_origin_are_not_shared(cors_worker: WorkerProcess) -> None:
    posted = post_from(cors_worker, STRANGER)
    assert posted.status_code == 202  # CORS is the browser's business: the server still serves
    assert "access-control-allow-origin" not in posted.headers
    # auth still applies to cross-origin requests
    unauthenticated = httpx.post(
        cors_worker.url + "/v1/inference", json={"prompt": "x"}, headers={"Origin": ALLOWED}, timeout=10
    )
    assert unauthenticated.status_code == 401
    assert unauthenticated.headers["access-control-allow-origin"] == ALLOWED  # the page can read why


@pytest.mark.parametrize("origin", ["http://app.example:3000/", "app.example", "http://a.example/path", ""])
def test_malformed_origin_is_a_usage_error(origin: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "workers", "mock", "--port", "0", "--cors-origin", origin],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "--cors-origin" in done.stderr
    assert "Traceback" not in done.stderr
