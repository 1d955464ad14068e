"""``dualcall-worker gateway`` in front of a real `transformers serve`: the gate, resume and replay,
cancellation reaching the upstream, an upstream that dies and comes back, concurrent streams."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from tserve import TransformersServe
from upstreamtools import GatewayFactory, wait_health

from conformance.client import DualCallClient, End, ErrorEvent, GenerationFailed, Started, Token

TOKEN = "upstream-test-token"
#: seconds of each CPU-time measurement
WINDOW_S = 2.0


def test_gateway_to_transformers_serve_passes_the_whole_suite(start_gateway: GatewayFactory) -> None:
    # a small max_tokens cap keeps the fuzzer's jobs short on a CPU model; TTL and keep-alive short
    # enough, and few slots and queue places so the suite can fill the queue: every MUST rule is
    # verified (--require-all)
    worker = start_gateway(
        "--ttl-s", "2", "--keepalive-s", "1", "--auth-token", TOKEN, "--max-tokens-cap", "64",
        "--upstream-concurrency", "4", "--queue-limit", "8",
    )  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "conformance", worker.url, "--require-all", "--token", TOKEN, "--timeout", "30"],
        check=False,
        capture_output=True,
        text=True,
        timeout=900,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "COLUMNS": "160"},
    )
    assert done.returncode == 0, f"{done.stdout[-8000:]}\n{done.stderr[-3000:]}\n{worker.output()[-3000:]}"


def test_resume_and_replay_to_many_readers(start_gateway: GatewayFactory) -> None:
    worker = start_gateway()
    with DualCallClient(worker.url) as client:
        job = client.submit("Once upon a time", max_tokens=24, temperature=0)
        first = list(client.events(job))
        assert isinstance(first[0], Started) and isinstance(first[-1], End)
        replays = [list(client.events(job)) for _ in range(3)]
        assert all(replay == first for replay in replays)  # every reader gets the same events and ids
        middle = first[len(first) // 2]
        resumed = list(client.events(job, last_event_id=middle.id))
        assert resumed == first[first.index(middle) + 1 :]
        text = "".join(event.text for event in first if isinstance(event, Token))
        status = client.status(job)
        assert status["state"] == "completed" and status["tokens_out"] == first[-1].tokens_out
        assert text and first[-1].stop_reason in ("max_tokens", "eos")


def test_delete_stops_the_upstream_generating(start_gateway: GatewayFactory, tserve: TransformersServe) -> None:
    """The upstream's CPU time: well above idle while the job streams, back near idle after DELETE.

    Compared with the same server's idle rate measured alongside, so a loaded machine (which gives
    the server less CPU in every window) scales all three figures alike.
    """
    worker = start_gateway("--max-tokens-cap", "4096")
    with DualCallClient(worker.url) as client:
        idle = _cpu_rate(tserve, WINDOW_S)
        job = client.submit("Tell me everything", max_tokens=1500)  # prompt + 1500 fit the 2048 context
        tokens = 0
        for event in client.events(job):
            tokens += isinstance(event, Token)
            if tokens >= 5:
                break
        busy = _cpu_rate(tserve, WINDOW_S)
        assert client.status(job)["state"] == "running"
        cancelled = client.cancel(job)
        assert cancelled is not None and cancelled["state"] == "cancelled"
        time.sleep(0.5)  # the upstream notices the closed connection at its next token
        after = _cpu_rate(tserve, WINDOW_S)
    figures = f"cpu s/s: idle {idle:.3f}, generating {busy:.3f}, after DELETE {after:.3f}"
    assert busy > 2 * idle + 0.02, f"the upstream was not generating: {figures}"
    assert after < idle + (busy - idle) / 4, f"the upstream kept generating after DELETE: {figures}"


def _cpu_rate(server: TransformersServe, window_s: float) -> float:
    """CPU seconds the server used per second over ``window_s``."""
    before = server.cpu_seconds()
    time.sleep(window_s)
    return (server.cpu_seconds() - before) / window_s


def test_upstream_killed_mid_stream_then_back(start_gateway: GatewayFactory, tserve: TransformersServe) -> None:
    worker = start_gateway()
    try:
        with DualCallClient(worker.url) as client, httpx.Client(timeout=10.0) as http:
            job = client.submit("Tell me everything", max_tokens=4000)
            events = client.events(job)
            tokens = 0
            for event in events:
                tokens += isinstance(event, Token)
                if tokens >= 3:
                    tserve.kill()
                    break
            rest = list(events)  # ends at [DONE]
            assert rest and isinstance(rest[-1], ErrorEvent), rest
            assert rest[-1].code == "upstream_error"
            assert client.status(job)["state"] == "failed"
            health = wait_health(http, worker.url, 503)
            assert health.status_code == 503 and health.json()["gateway"]["upstream_up"] is False
            refused = http.post(worker.url + "/v1/inference", json={"prompt": "hi"})
            assert refused.status_code == 503 and "retry-after" in refused.headers

            tserve.start(port=tserve.port)
            assert wait_health(http, worker.url, 200).status_code == 200
            completion = client.generate("hello", max_tokens=4)
            assert completion.error is None and completion.tokens_out == 4
    finally:
        if tserve.proc is None or tserve.proc.poll() is not None:
            tserve.start(port=tserve.port)  # the session's other tests need it


def test_sixteen_concurrent_jobs_stream_at_once(start_gateway: GatewayFactory) -> None:
    worker = start_gateway("--upstream-concurrency", "16", "--queue-limit", "0")
    with DualCallClient(worker.url) as client:
        jobs = [client.submit(f"story number {n}", max_tokens=32, temperature=0.7, seed=n) for n in range(16)]
        with ThreadPoolExecutor(16) as pool:
            streams = list(pool.map(lambda job: list(client.events(job)), jobs))
        statuses = [client.status(job) for job in jobs]
    for events in streams:
        assert isinstance(events[-1], End), events[-3:]
        assert events[-1].tokens_out >= sum(isinstance(event, Token) for event in events)
    # all 16 were generating at once: each started before any finished (--queue-limit 0 leaves no queue)
    assert max(status["started_at"] for status in statuses) < min(status["finished_at"] for status in statuses)


def test_a_prompt_over_the_context_is_context_length_exceeded(start_gateway: GatewayFactory) -> None:
    worker = start_gateway()
    with DualCallClient(worker.url) as client, pytest.raises(GenerationFailed) as failed:
        client.generate("word " * 3000, max_tokens=8)  # the tiny model takes 2048 tokens
    assert failed.value.code == "context_length_exceeded" and "2048" in failed.value.message
