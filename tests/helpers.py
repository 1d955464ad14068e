"""Helpers shared by the test modules: ports, jobs, streams, and waiting for events.

`tests/` is on ``sys.path`` (see tests/conftest.py), so test modules import ``from helpers import ...``.
Waits never assert a duration: they poll for the event and give up only after `DEADLINE_S`, a bound
far above any honest duration on a loaded machine, so a hang fails instead of blocking the run.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import httpx

from conformance.sse import SSEEvent, parse_stream
from workers.engines.base import GenerationRequest
from workers.testing import free_port

__all__ = [
    "DEADLINE_S",
    "events_of",
    "free_port",
    "gen",
    "post_job",
    "read_all",
    "stream_url",
    "submit",
    "wait_until",
    "wait_until_async",
]

#: how long a wait polls before it calls the missing event a hang
DEADLINE_S = 30.0
#: the read timeout of the HTTP clients made here
HTTP_TIMEOUT_S = 10.0


def post_job(base_url: str, body: object, *, client: httpx.Client | None = None, **kwargs: Any) -> httpx.Response:
    """POST ``body`` (any JSON document) to ``base_url``/v1/inference; the response, whatever its status."""
    url = base_url + "/v1/inference"
    if client is None:
        return httpx.post(url, json=body, timeout=kwargs.pop("timeout", HTTP_TIMEOUT_S), **kwargs)
    return client.post(url, json=body, **kwargs)


def submit(
    base_url: str, body: Mapping[str, Any], *, client: httpx.Client | None = None, **kwargs: Any
) -> dict[str, Any]:
    """Submit a job that must be accepted (202); return the submit body (job_id, sse_url, status_url)."""
    response = post_job(base_url, body, client=client, **kwargs)
    assert response.status_code == 202, response.text
    submitted: dict[str, Any] = response.json()
    return submitted


def stream_url(base_url: str, submitted: Mapping[str, Any]) -> str:
    """The job's stream URL: ``sse_url`` as given, resolved against the POST URL (DC-1.7)."""
    return str(httpx.URL(base_url + "/v1/inference").join(submitted["sse_url"]))


def events_of(raw: bytes) -> list[SSEEvent]:
    """The events of a complete stream, parsed strictly: any framing issue fails the test."""
    events, issues = parse_stream(raw, strict=True)
    assert not issues, issues
    return events


async def read_all(stream: AsyncIterator[bytes], *, timeout_s: float = DEADLINE_S) -> bytes:
    """Every block of a registry stream, joined; fail if the stream has not ended after ``timeout_s``."""
    async with asyncio.timeout(timeout_s):
        return b"".join([block async for block in stream])


def gen(prompt: str = "test", max_tokens: int = 8, *, seed: int = 3, **extra: Any) -> GenerationRequest:
    """A generation request with a fixed seed, so the mock's output is reproducible."""
    return GenerationRequest(prompt=prompt, max_tokens=max_tokens, seed=seed, **extra)


def _timed_out(what: str | Callable[[], str], timeout_s: float) -> AssertionError:
    return AssertionError(f"still waiting after {timeout_s:.0f}s for {what if isinstance(what, str) else what()}")


def wait_until(
    predicate: Callable[[], object],
    what: str | Callable[[], str],
    *,
    timeout_s: float = DEADLINE_S,
    interval_s: float = 0.02,
) -> None:
    """Poll ``predicate`` until it is true; fail naming ``what`` (or what it returns then) if it never is."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise _timed_out(what, timeout_s)
        time.sleep(interval_s)


async def wait_until_async(
    predicate: Callable[[], object | Awaitable[object]],
    what: str | Callable[[], str],
    *,
    timeout_s: float = DEADLINE_S,
    interval_s: float = 0.01,
) -> None:
    """`wait_until` inside an event loop; ``predicate`` may be a coroutine function."""

    async def holds() -> bool:
        result = predicate()
        if isinstance(result, Awaitable):
            result = await result
        return bool(result)

    try:
        async with asyncio.timeout(timeout_s):
            while not await holds():  # noqa: ASYNC110 - the state polled here has no event to await
                await asyncio.sleep(interval_s)
    except TimeoutError:
        raise _timed_out(what, timeout_s) from None
