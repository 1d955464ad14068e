"""Readers that never read: bounded memory and connections at the worker, and nobody else slowed.

A stalled reader opens the stream of a long finished job with a tiny receive window and reads
nothing. Speed is not asserted (a loaded CI machine), only what must hold; the runs print figures.

* 200 stalled readers, one stream each: the kernel's buffers take a whole stream (at most
  4096 tokens), so the worker finishes each response and lets go of the connection (its keep-alive
  timeout); its RSS and open descriptors come back, and 16 readers that read get every token.
* Readers that pipeline many stream requests on one connection back the worker's own buffer up:
  its send timeout resets those connections (the client sees the reset; it could resume).
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from pathlib import Path

import httpx
import pytest
from rollout import expected_tokens
from workerproc import WorkerProcess

from conformance.client import AsyncDualCallClient, Token

STALLED = 200
OTHERS = 16
SEND_TIMEOUT_S = 2.0
#: generous on purpose: the point is "bounded", not a tight figure (the run prints the real one)
RSS_GROWTH_BOUND_MB = 150.0
#: descriptors the worker may still hold for its own use after the stalled readers are let go
FD_SLACK = 8
#: how long the test waits for the worker to let every stalled connection go (an event, bounded)
RELEASE_WAIT_S = 120.0
#: Linux TCP states (include/net/tcp_states.h), the first byte of TCP_INFO
TCP_ESTABLISHED = 1
TCP_CLOSE = 7


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS line")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def tcp_state(sock: socket.socket) -> int:
    """The connection's TCP state, read without reading data (the reader stays stalled)."""
    state: int = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]
    return state


def stalled_reader(host: str, port: int, path: str, *, requests: int = 1) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a tiny window
    sock.connect((host, port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode() * requests)
    return sock


async def other_streams(url: str) -> list[bool]:
    async def one(number: int) -> bool:
        prompt = f"a reader that reads, number {number}"
        async with AsyncDualCallClient(url, max_resumes=10) as client:
            job = await client.submit(prompt, max_tokens=64, temperature=0)
            texts = [event.text async for event in client.events(job) if isinstance(event, Token)]
        return texts == expected_tokens(prompt, 64)

    return list(await asyncio.gather(*(one(number) for number in range(OTHERS))))


def long_finished_job(worker: WorkerProcess) -> tuple[str, int]:
    """The stream URL of a 4096-token job that has ended, and its size in bytes."""
    with httpx.Client(base_url=worker.url, timeout=30) as http:
        submitted = http.post("/v1/inference", json={"prompt": "long", "max_tokens": 4096, "temperature": 0})
        sse_url: str = submitted.json()["sse_url"]
        with http.stream("GET", sse_url) as full:
            return sse_url, sum(len(chunk) for chunk in full.iter_bytes())


def address(worker: WorkerProcess) -> tuple[str, int]:
    host, port = worker.url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


@pytest.mark.slow
def test_200_stalled_readers_neither_grow_memory_nor_hold_connections_nor_slow_others() -> None:
    args = ("--send-timeout-s", str(SEND_TIMEOUT_S), "--ttl-s", "300", "--no-access-log")
    with WorkerProcess("mock", *args, start_timeout_s=60.0) as worker:
        assert worker.proc is not None
        pid = worker.proc.pid
        sse_url, size = long_finished_job(worker)
        rss_before, fds_before = rss_mb(pid), open_fds(pid)
        sockets = [stalled_reader(*address(worker), sse_url) for _ in range(STALLED)]
        try:
            results = asyncio.run(other_streams(worker.url))
            peak, fds_peak = rss_mb(pid), open_fds(pid)
            deadline = time.monotonic() + RELEASE_WAIT_S
            while open_fds(pid) > fds_before + FD_SLACK and time.monotonic() < deadline:
                peak = max(peak, rss_mb(pid))
                time.sleep(0.2)
            fds_after, rss_after = open_fds(pid), rss_mb(pid)
        finally:
            for sock in sockets:
                sock.close()
        print(
            f"{STALLED} stalled readers of a {size}-byte stream: worker RSS {rss_before:.1f} MB before, "
            f"peak {peak:.1f} MB, {rss_after:.1f} MB after; descriptors {fds_before} before, {fds_peak} "
            f"with the readers, {fds_after} after; {sum(results)}/{OTHERS} other streams complete and exact"
        )
        assert all(results), "a reader that reads did not get its whole text"
        assert fds_after <= fds_before + FD_SLACK, "the worker still holds the stalled readers' connections"
        assert peak - rss_before < RSS_GROWTH_BOUND_MB


@pytest.mark.slow
def test_send_timeout_resets_a_reader_that_backs_up_the_worker() -> None:
    args = ("--send-timeout-s", str(SEND_TIMEOUT_S), "--ttl-s", "300")
    with WorkerProcess("mock", *args, start_timeout_s=60.0) as worker:
        sse_url, _ = long_finished_job(worker)
        # 16 streams back to back on one connection: more than the kernel buffers, so the worker's writes wait
        readers = [stalled_reader(*address(worker), sse_url, requests=16) for _ in range(4)]
        try:
            deadline = time.monotonic() + RELEASE_WAIT_S
            while any(tcp_state(sock) == TCP_ESTABLISHED for sock in readers) and time.monotonic() < deadline:
                time.sleep(0.2)
            states = [tcp_state(sock) for sock in readers]
        finally:
            for sock in readers:
                sock.close()
        assert states == [TCP_CLOSE] * len(readers), f"TCP states {states}: not reset by the worker"
        assert worker.stderr.count("(send timeout)") >= len(readers), worker.output()


def readers_open(http: httpx.Client) -> float:
    for line in http.get("/metrics").text.splitlines():
        if line.startswith("dualcall_stream_readers_open "):
            return float(line.split()[1])
    raise AssertionError("no dualcall_stream_readers_open gauge")


@pytest.mark.slow
def test_open_stream_limit_answers_503_with_retry_after_and_frees_up() -> None:
    args = ("--max-open-streams", "2", "--token-delay-ms", "50", "--keepalive-s", "1")
    with (
        WorkerProcess("mock", *args, start_timeout_s=60.0) as worker,
        httpx.Client(base_url=worker.url, timeout=30) as http,
    ):
        sse_url = http.post("/v1/inference", json={"prompt": "slow", "max_tokens": 400}).json()["sse_url"]
        with http.stream("GET", sse_url) as first, http.stream("GET", sse_url) as second:
            assert first.status_code == second.status_code == 200
            deadline = time.monotonic() + RELEASE_WAIT_S
            while readers_open(http) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            third = http.get(sse_url)
            assert third.status_code == 503, third.text
            assert third.headers["content-type"].startswith("application/problem+json")
            assert third.headers["retry-after"].isdigit()
        deadline = time.monotonic() + RELEASE_WAIT_S
        while readers_open(http) > 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        with http.stream("GET", sse_url) as again:
            assert again.status_code == 200
