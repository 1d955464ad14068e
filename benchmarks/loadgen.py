"""Load routines (asyncio, one process each) and the runner that spreads them over client processes.

Every routine returns plain data: per-request timings and the process's own CPU use, so a report
can say whether the client, not the server, was the limit (CPU busy near 100 % of the wall time).
"""

from __future__ import annotations

import asyncio
import importlib
import itertools
import json
import multiprocessing
import os
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from benchmarks.client import Connection, Result, split_url

PROMPT = "benchmark"
_job_numbers = itertools.count()


def _submit_body(tokens: int) -> bytes:
    return json.dumps({"prompt": PROMPT, "max_tokens": tokens, "temperature": 0}).encode()


def _legacy_body(tokens: int) -> bytes:
    job_id = f"bench-{os.getpid()}-{next(_job_numbers)}"
    return json.dumps({"job_id": job_id, "prompt": PROMPT, "max_tokens": tokens, "temperature": 0}).encode()


def _sse_url(result: Result) -> str:
    if result.status != 202:
        raise RuntimeError(f"submit answered {result.status}: {result.body[:200]!r}")
    url: str = json.loads(result.body)["sse_url"]
    return url


async def _open(url: str, count: int) -> list[Connection]:
    """``count`` connections; ``url`` may name several servers, comma-separated, taken in turn."""
    targets = [split_url(one) for one in url.split(",")]
    return list(await asyncio.gather(*(Connection(*targets[index % len(targets)]).open() for index in range(count))))


def _measured(
    body: Callable[[], Coroutine[Any, Any, dict[str, Any]]],
) -> Callable[[], Coroutine[Any, Any, dict[str, Any]]]:
    async def run() -> dict[str, Any]:
        cpu = time.process_time()
        started = time.perf_counter()
        result = await body()
        result["wall_s"] = time.perf_counter() - started
        result["client_cpu_s"] = time.process_time() - cpu
        return result

    return run


async def handoff(url: str, flavor: str, users: int, jobs_per_user: int, tokens: int) -> dict[str, Any]:
    """``users`` clients each run ``jobs_per_user`` jobs back to back, each on its own kept-alive connection.

    dual-call: POST (202) then GET sse_url on the same connection; legacy: one POST that streams.
    TTFT is from sending the POST to the first byte of the first token event.
    """
    connections = await _open(url, users)
    ttft: list[float] = []
    latency: list[float] = []

    async def user(connection: Connection) -> None:
        for _ in range(jobs_per_user):
            started = time.perf_counter()
            if flavor == "dual":
                submitted = await connection.request("POST", "/v1/inference", _submit_body(tokens))
                result = await connection.request("GET", _sse_url(submitted))
            else:
                result = await connection.request("POST", "/v1/inference", _legacy_body(tokens))
            if not result.first_token_at:
                raise RuntimeError(f"{flavor}: no token event in the response ({result.status})")
            ttft.append(result.first_token_at - started)
            latency.append(result.ended - started)

    async def body() -> dict[str, Any]:
        first = time.perf_counter()
        await asyncio.gather(*(user(connection) for connection in connections))
        return {"ttft_s": ttft, "latency_s": latency, "start": first, "end": time.perf_counter()}

    try:
        return await _measured(body)()
    finally:
        for connection in connections:
            connection.close()


async def streams(url: str, flavor: str, count: int, tokens: int, path: str = "") -> dict[str, Any]:
    """``count`` concurrent streams; events counted at the client.

    flavor ``dual``: POST a job of ``tokens`` tokens, then GET its stream (live); ``bare``: GET
    /stream?tokens= on the baseline (live); ``get``: GET ``path`` (a finished job's replay, or the
    baseline's /replay).
    """
    connections = await _open(url, count)
    results: list[Result] = []

    async def one(connection: Connection) -> None:
        if flavor == "dual":
            submitted = await connection.request("POST", "/v1/inference", _submit_body(tokens))
            target = _sse_url(submitted)
        elif flavor == "bare":
            target = f"/stream?tokens={tokens}"
        else:
            target = path
        results.append(await connection.request("GET", target))

    async def body() -> dict[str, Any]:
        await asyncio.gather(*(one(connection) for connection in connections))
        return {
            "events": sum(result.events for result in results),
            "start": min(result.started for result in results),
            "end": max(result.ended for result in results),
        }

    try:
        return await _measured(body)()
    finally:
        for connection in connections:
            connection.close()


async def hold_idle_streams(url: str, paths: list[str], measure: Callable[[], int], settle_s: float) -> int:
    """Open one stream per path, wait for every response head, settle, return ``measure()``; then close."""
    connections = await _open(url, len(paths))
    try:
        heads = [connection.start("GET", path)[0] for connection, path in zip(connections, paths, strict=True)]
        results = await asyncio.gather(*heads)
        bad = [result.status for result in results if result.status != 200]
        if bad:
            raise RuntimeError(f"{len(bad)} idle streams were refused: statuses {sorted(set(bad))}")
        await asyncio.sleep(settle_s)
        return measure()
    finally:
        for connection in connections:
            connection.close()


async def finished_job(url: str, tokens: int) -> str:
    """Submit a job and read it to the end; returns its stream path (a replay from now on)."""
    (connection,) = await _open(url, 1)
    try:
        path = _sse_url(await connection.request("POST", "/v1/inference", _submit_body(tokens)))
        await connection.request("GET", path)
        return path
    finally:
        connection.close()


async def submit_jobs(url: str, count: int, tokens: int) -> list[str]:
    """Submit ``count`` jobs over a few connections; returns their stream paths."""
    connections = await _open(url, min(count, 16))
    paths: list[str] = []

    async def submitter(connection: Connection, share: int) -> None:
        for _ in range(share):
            paths.append(_sse_url(await connection.request("POST", "/v1/inference", _submit_body(tokens))))

    shares = [count // len(connections) + (index < count % len(connections)) for index in range(len(connections))]
    try:
        await asyncio.gather(*(submitter(c, share) for c, share in zip(connections, shares, strict=True)))
    finally:
        for connection in connections:
            connection.close()
    return paths


# -- client processes ---------------------------------------------------------------------------------------


def _run_routine(name: str, args: tuple[Any, ...]) -> dict[str, Any]:
    """``name`` is a routine of this module, or ``module:function`` for one defined elsewhere."""
    if ":" in name:
        module, _, function = name.partition(":")
        routine = getattr(importlib.import_module(module), function)
    else:
        routine = globals()[name]
    result: dict[str, Any] = asyncio.run(routine(*args))
    return result


class ClientPool:
    """``processes`` forked client processes; a routine's load is split evenly across them."""

    def __init__(self, processes: int) -> None:
        self.processes = processes
        self._pool = ProcessPoolExecutor(max_workers=processes, mp_context=multiprocessing.get_context("fork"))
        # fork them now, not inside the first measurement
        list(self._pool.map(abs, range(processes)))

    def run(self, routine: str, url: str, flavor: str, total: int, *rest: Any) -> list[dict[str, Any]]:
        """Run ``routine(url, flavor, share, *rest)`` in each process, ``total`` split between them."""
        processes = min(self.processes, total)
        shares = [total // processes + (index < total % processes) for index in range(processes)]
        futures = [self._pool.submit(_run_routine, routine, (url, flavor, share, *rest)) for share in shares]
        return [future.result() for future in futures]

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def client_busy(parts: list[dict[str, Any]]) -> float:
    """The busiest client process's CPU time over its wall time (near 1.0: the client was the limit)."""
    return max(part["client_cpu_s"] / part["wall_s"] for part in parts if part["wall_s"] > 0)
