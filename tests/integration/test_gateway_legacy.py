"""The gateway in front of the project's legacy direct-SSE worker: real processes on loopback.

The legacy worker fails the gate on its own (tests/integration/test_legacy_worker.py); behind
``dualcall-worker gateway --upstream-api legacy`` the same server passes it, with auth on and a
short TTL and a legacy server slow enough (1 ms a token) for a DELETE to land while a job runs,
so that no MUST rule stays unverified.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import pytest
from workerproc import WorkerProcess

from conformance.client import DualCallClient, End, ErrorEvent, Token

pytestmark = pytest.mark.slow

TOKEN = "gateway-test-token"
#: a loaded CI machine can take many seconds to start a worker
START_S = 60.0
WAIT_S = 30.0


def gateway(upstream: str, *args: str) -> WorkerProcess:
    return WorkerProcess("gateway", "--upstream", upstream, "--upstream-api", "legacy", *args, start_timeout_s=START_S)


def wait_health(client: httpx.Client, url: str, status: int) -> httpx.Response:
    """Poll /health until it answers ``status`` (bounded)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        response = client.get(url + "/health")
        if response.status_code == status or time.monotonic() > deadline:
            return response
        time.sleep(0.1)


def test_gateway_to_legacy_passes_the_whole_suite() -> None:
    with (
        # 1 ms a token: a 4096-token job outlasts the round trip of DC-JOB-002's DELETE (MUST, --require-all)
        WorkerProcess("legacy", "--token-delay-ms", "1", start_timeout_s=START_S) as legacy,
        gateway(legacy.url, "--ttl-s", "2", "--keepalive-s", "1", "--auth-token", TOKEN) as worker,
    ):
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "conformance",
                worker.url,
                "--require-all",
                "--token",
                TOKEN,
                "--max-examples",
                "10",
            ],
            check=False,
            capture_output=True,
            text=True,
            timeout=600,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "COLUMNS": "160"},
        )
        # --require-all: exit 0 also means no MUST rule went unverified
        assert done.returncode == 0, f"{done.stdout[-6000:]}\n{done.stderr[-3000:]}\n{worker.output()[-3000:]}"


def test_upstream_killed_mid_stream_fails_the_job_refuses_submits_and_recovers() -> None:
    with (
        WorkerProcess("legacy", "--token-delay-ms", "50", start_timeout_s=START_S) as legacy,
        gateway(legacy.url) as worker,
        DualCallClient(worker.url) as dual,
        httpx.Client(timeout=10.0) as client,
    ):
        job = dual.submit("a long story", max_tokens=2000)
        events = dual.events(job)
        tokens = 0
        for event in events:
            tokens += isinstance(event, Token)
            if tokens == 3:
                assert legacy.proc is not None
                legacy.proc.kill()
                break
        rest = list(events)  # the client stops at [DONE]: reaching the end of the list proves it came
        assert rest, "the stream ended without an error event"
        final = rest[-1]
        assert isinstance(final, ErrorEvent), rest
        assert final.code == "upstream_error" and "mid-stream" in final.message
        assert not any(isinstance(event, End) for event in rest)
        assert dual.status(job)["state"] == "failed"

        health = wait_health(client, worker.url, 503)
        assert health.status_code == 503 and health.json()["status"] == "unavailable"
        assert legacy.url.removeprefix("http://") in health.json()["detail"]
        assert health.json()["gateway"]["upstream_up"] is False
        refused = client.post(worker.url + "/v1/inference", json={"prompt": "hi", "max_tokens": 4})
        assert refused.status_code == 503, refused.text
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert int(refused.headers["retry-after"]) >= 1
        assert "upstream" in refused.json()["detail"]

        port = legacy.url.rsplit(":", 1)[1]
        with WorkerProcess("legacy", "--port", port, start_timeout_s=START_S):
            assert wait_health(client, worker.url, 200).status_code == 200
            completion = dual.generate("hello there", max_tokens=6)
            assert completion.error is None and completion.tokens_out >= 1


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--upstream", "ftp://x"], "--upstream"),
        (["--upstream", "http://127.0.0.1:1", "--upstream-api", "grpc"], "--upstream-api"),
        (["--upstream", "http://127.0.0.1:1", "--upstream-timeout-s", "0"], "--upstream-timeout-s"),
        (["--upstream", "http://127.0.0.1:1", "--upstream-concurrency", "0"], "--upstream-concurrency"),
        ([], "--upstream"),
    ],
)
def test_bad_gateway_options_are_a_one_line_usage_error(args: list[str], needle: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "workers", "gateway", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert needle in done.stderr.splitlines()[-1]
