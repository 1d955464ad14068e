"""The async reference client reuses one kept-alive connection job after job.

Leaving the stream at ``[DONE]`` before the response's end closed the connection, so every job
opened a new one (a TCP handshake and a new server-side connection per job). The trace extension
(httpcore's documented request tracing) counts the TCP connections the client opens.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from conformance.client import AsyncDualCallClient, End
from workers.testing import WorkerProcess

pytestmark = pytest.mark.slow


def _counting_client(connects: list[str]) -> httpx.AsyncClient:
    async def trace(name: str, info: dict[str, Any]) -> None:
        if name == "connection.connect_tcp.complete":
            connects.append(name)

    async def on_request(request: httpx.Request) -> None:
        request.extensions["trace"] = trace

    return httpx.AsyncClient(event_hooks={"request": [on_request]}, timeout=30)


def test_jobs_share_one_connection(mock_worker: WorkerProcess) -> None:
    connects: list[str] = []

    async def run() -> list[Any]:
        async with _counting_client(connects) as http, AsyncDualCallClient(mock_worker.url, http=http) as client:
            return [await client.generate("reuse", max_tokens=4, temperature=0) for _ in range(4)]

    completions = asyncio.run(run())
    assert [completion.stop_reason for completion in completions] == ["max_tokens"] * 4
    assert all(isinstance(completion.events[-1], End) for completion in completions)
    assert len(connects) == 1, f"{len(connects)} TCP connections for 4 jobs (8 requests)"
