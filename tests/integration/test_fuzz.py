"""The schemathesis bridge (conformance/fuzz/) against real, wrong, broken and absent workers."""

from __future__ import annotations

import json
import re
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from conformance.fuzz import FUZZ_CHECK_IDS, FuzzVerdict
from conformance.fuzz.run import run_fuzz

pytestmark = pytest.mark.slow

_URL = re.compile(r"on (http://[0-9.]+:[0-9]+)")


SERVE = Path(__file__).resolve().parents[1] / "broken_workers" / "serve.py"


def _start_worker(*args: str, command: tuple[str, ...] = ("-m", "workers")) -> tuple[subprocess.Popen[str], str]:
    """Start ``python -m workers ARGS --port 0`` (or another ``command``) and read its URL from the banner."""
    process = subprocess.Popen(
        [sys.executable, *command, *args, "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    deadline = time.monotonic() + 30
    seen: list[str] = []
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        seen.append(line)
        match = _URL.search(line)
        if match:
            url = match.group(1)
            # The banner can come before the socket listens: wait until a connection is accepted.
            host, port = url.removeprefix("http://").rsplit(":", 1)
            while time.monotonic() < deadline:
                try:
                    socket.create_connection((host, int(port)), timeout=1).close()
                except OSError:
                    time.sleep(0.05)
                else:
                    return process, url
            break
    _stop(process)
    raise RuntimeError(f"worker {args} did not start listening:\n{''.join(seen)}")


def _stop(process: subprocess.Popen[str]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)
    if process.stdout is not None:
        process.stdout.close()


@pytest.fixture(scope="module")
def mock_url() -> Iterator[str]:
    process, url = _start_worker("mock", "--token-delay-ms", "0")
    try:
        yield url
    finally:
        _stop(process)


@pytest.fixture(scope="module")
def legacy_url() -> Iterator[str]:
    process, url = _start_worker("legacy")
    try:
        yield url
    finally:
        _stop(process)


# --- a broken worker: right shapes, but a traceback 500 for max_tokens > 10 and a bad token event ---

_FIELDS = {"prompt", "max_tokens", "temperature", "top_p", "top_k", "seed", "stop"}
_TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "worker.py", line 42, in submit\n'
    "    engine.reserve(max_tokens)\n"
    "ValueError: max_tokens over the engine limit\n"
)


def _problem(status: int, title: str, detail: str) -> bytes:
    return json.dumps({"type": "about:blank", "title": title, "status": status, "detail": detail}).encode()


class BrokenWorker:
    """A plain-ASGI worker with two planted bugs (see module section title)."""

    def __init__(self) -> None:
        self.jobs: set[str] = set()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"]
        if method == "POST" and path == "/v1/inference":
            await self._submit(receive, send)
            return
        parts = path.split("/")
        job_id = parts[3] if len(parts) >= 4 and parts[1:3] == ["v1", "inference"] else None
        if job_id is None or job_id not in self.jobs:
            await self._send(send, 404, _problem(404, "Not Found", "unknown job"), "application/problem+json")
            return
        if method == "GET" and path.endswith("/stream"):
            stream = (
                f'id: 1\nevent: started\ndata: {{"job_id":"{job_id}"}}\n\n'
                'id: 2\nevent: token\ndata: {"text":"no index"}\n\n'  # planted bug: `index` is required
                'id: 3\nevent: end\ndata: {"tokens_out":1,"stop_reason":"max_tokens"}\n\n'
                "data: [DONE]\n\n"
            )
            await self._send(send, 200, stream.encode(), "text/event-stream", [(b"cache-control", b"no-cache")])
            return
        state = {
            "job_id": job_id,
            "state": "completed",
            "tokens_out": 1,
            "created_at": "2026-01-01T00:00:00Z",
            "sse_url": f"/v1/inference/{job_id}/stream",
        }
        if method == "DELETE":
            self.jobs.discard(job_id)
            await self._send(send, 202, json.dumps(state).encode(), "application/json")
            return
        await self._send(send, 200, json.dumps(state).encode(), "application/json")

    async def _submit(self, receive: Any, send: Any) -> None:
        raw = b""
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        try:
            payload = json.loads(raw)
        except ValueError:
            await self._send(send, 400, _problem(400, "Bad Request", "malformed JSON"), "application/problem+json")
            return
        if not isinstance(payload, dict) or not isinstance(payload.get("prompt"), str) or set(payload) - _FIELDS:
            await self._send(send, 422, _problem(422, "Unprocessable", "invalid"), "application/problem+json")
            return
        max_tokens = payload.get("max_tokens", 4)
        if isinstance(max_tokens, int) and max_tokens > 10:  # planted bug
            await self._send(send, 500, _TRACEBACK.encode(), "text/plain; charset=utf-8")
            return
        job_id = secrets.token_urlsafe(16)
        self.jobs.add(job_id)
        sse_url = f"/v1/inference/{job_id}/stream"
        body = json.dumps({"job_id": job_id, "sse_url": sse_url}).encode()
        await self._send(send, 202, body, "application/json", [(b"location", sse_url.encode())])

    @staticmethod
    async def _send(
        send: Any, status: int, body: bytes, content_type: str, extra: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        headers = [(b"content-type", content_type.encode()), (b"dualcall-contract-version", b"1.0.0"), *(extra or [])]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


@pytest.fixture(scope="module")
def broken_url() -> Iterator[str]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(BrokenWorker(), log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "the broken worker did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


# --- helpers ---


def _by_id(results: list[FuzzVerdict]) -> dict[str, FuzzVerdict]:
    assert [result.id for result in results] == list(FUZZ_CHECK_IDS)
    return {result.id: result for result in results}


def _explain(results: list[FuzzVerdict]) -> str:
    lines = []
    for result in results:
        lines.append(f"{result.id} {result.outcome}: {result.message}")
        lines.extend(f"    {detail}" for detail in result.details)
        lines.extend(f"    $ {exchange.curl()}" for exchange in result.exchanges)
    return "\n".join(lines)


# --- tests ---


def test_mock_worker_is_clean(mock_url: str) -> None:
    progress: list[str] = []
    started = time.monotonic()
    results = run_fuzz(mock_url, max_examples=10, on_progress=progress.append)
    elapsed = time.monotonic() - started
    by_id = _by_id(results)
    assert all(result.outcome == "passed" for result in results), _explain(results)
    assert "no finding" in by_id["DC-FUZZ-001"].message
    assert "across 4 operations" in by_id["DC-FUZZ-002"].message
    assert "stream" in by_id["DC-FUZZ-003"].message  # a link was followed to the stream
    assert progress
    # A bound, not a speed figure (see run_fuzz): the boundary run (at most 120 s), the soft budget
    # (30 s + 2 s per example), the reads' grace (15 s plus one read) and the cleanup (5 s).
    assert elapsed < 120 + 30 + 2 * 10 + 15 + 10 + 5, f"fuzzing the mock took {elapsed:.1f} s"
    boundary = re.search(r"\((\d+) deterministic boundary cases", by_id["DC-FUZZ-001"].message)
    assert boundary and int(boundary.group(1)) >= 50, by_id["DC-FUZZ-001"].message
    read = re.match(r"(\d+) jobs accepted for valid bodies read to their end \((.*)\)", by_id["DC-FUZZ-004"].message)
    assert read and int(read.group(1)) >= 20 and "boundary" in read.group(2), by_id["DC-FUZZ-004"].message


def test_token_is_sent_and_masked() -> None:
    process, url = _start_worker("mock", "--token-delay-ms", "0", "--auth-token", "s3cret")
    try:
        results = run_fuzz(url, token="s3cret", max_examples=3)
        assert all(result.outcome == "passed" for result in results), _explain(results)
        unauthenticated = run_fuzz(url, max_examples=3)
    finally:
        _stop(process)
    # Without the token nothing is accepted, so no link can be followed: nothing observed, no failure either.
    assert _by_id(unauthenticated)["DC-FUZZ-003"].outcome == "unverified"
    shown = [
        [result.message, *result.details, *(exchange.to_dict() for exchange in result.exchanges)]
        for result in results + unauthenticated
    ]
    assert "s3cret" not in json.dumps(shown)


def test_legacy_worker_fails_with_a_curl_line(legacy_url: str) -> None:
    results = run_fuzz(legacy_url, max_examples=5)
    by_id = _by_id(results)
    failed = [by_id[i] for i in ("DC-FUZZ-001", "DC-FUZZ-002") if by_id[i].outcome == "failed"]
    assert failed, _explain(results)
    for result in failed:
        assert result.exchanges and result.details
        curls = [exchange.curl() for exchange in result.exchanges]
        assert any(curl.startswith("curl ") and legacy_url in curl for curl in curls)
        assert len(result.exchanges) <= 5


def test_unreachable_target_fails_cleanly() -> None:
    results = run_fuzz("http://127.0.0.1:9", max_examples=5, timeout_s=2.0)
    assert len(results) == len(FUZZ_CHECK_IDS)
    for result in results:
        assert result.outcome == "failed"
        assert "could not reach http://127.0.0.1:9" in result.message
        assert "refused" in result.message


def test_broken_worker_5xx_is_found(broken_url: str) -> None:
    results = run_fuzz(broken_url, max_examples=10)
    by_id = _by_id(results)
    submit = by_id["DC-FUZZ-001"]
    assert submit.outcome == "failed", _explain(results)
    assert any(detail.split(": ")[0].endswith("not_a_server_error") for detail in submit.details), submit.details
    posts = [exchange for exchange in submit.exchanges if exchange.method == "POST" and exchange.status == 500]
    assert posts, _explain(results)
    curl = posts[0].curl()
    assert curl.startswith("curl ") and "-X POST" in curl and f"{broken_url}/v1/inference" in curl
    assert "max_tokens" in curl
    assert "Traceback" in posts[0].body_excerpt
    # the deterministic boundary cases find it first, with their max_tokens unclamped (4095 is valid)
    sent = [json.loads(exchange.request_body or "{}") for exchange in posts]
    assert any(10 < body.get("max_tokens", 0) <= 4096 for body in sent if isinstance(body, dict)), sent
    assert any("boundary case: " in detail for detail in submit.details), submit.details
    # the stream's bad token event is caught by itemSchema validation while following the stream link
    stateful = by_id["DC-FUZZ-003"]
    assert stateful.outcome == "failed"
    assert any("response_schema_conformance" in detail and "/stream" in detail for detail in stateful.details), (
        stateful.details
    )


def test_worker_rejecting_max_tokens_above_its_cap_is_not_failed() -> None:
    """DC-1.1: between the advertised cap and 4096 a worker may clamp (the mock) or reject with 422 (this variant)."""
    process, url = _start_worker(
        "rejects-max-tokens-above-cap", "--token-delay-ms", "0", "--max-tokens-cap", "8", command=(str(SERVE),)
    )
    try:
        results = run_fuzz(url, max_examples=5)
    finally:
        _stop(process)
    by_id = _by_id(results)
    assert by_id["DC-FUZZ-001"].outcome == "passed", _explain(results)
    assert by_id["DC-FUZZ-004"].outcome == "passed", _explain(results)
