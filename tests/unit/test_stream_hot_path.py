"""The live-stream hot path: one wake-up per job, lazy keep-alive timers, token encoding, raw ASGI stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import pytest
from helpers import gen

from conformance.sse import parse_stream
from workers import sse
from workers.config import WorkerSettings
from workers.engines.base import Chunk, EngineHealth, GenerationRequest
from workers.engines.mock import VOCABULARY, MockEngine
from workers.metrics import JobMetrics
from workers.registry.in_process import CLOCK_SLACK_S, InProcessRegistry, Job
from workers.registry.lifecycle import EventKind
from workers.schemas import TokenData

TIMEOUT_S = 10


@pytest.mark.parametrize("text", [*VOCABULARY, "", "x" * 300])
def test_token_encoding_is_the_generic_encoding(text: str) -> None:
    assert sse.encode_token(12, 5, text) == sse.encode_event(12, "token", TokenData(index=5, text=text))


@pytest.mark.asyncio
async def test_wait_for_events_times_out_and_wakes_on_publish() -> None:
    registry = InProcessRegistry(MockEngine(), WorkerSettings(), JobMetrics())
    job = Job(id="j" * 22, request=gen(), created_at=0.0)
    assert await job.wait_for_events(0.01) is False
    waiting = asyncio.ensure_future(job.wait_for_events(TIMEOUT_S))
    await asyncio.sleep(0)
    registry.append(job, 1, sse.encode_token(1, 0, "a"), EventKind.TOKEN)
    assert await waiting is True


@pytest.mark.asyncio
async def test_a_cancelled_waiter_does_not_disturb_the_others() -> None:
    """All readers share one future; cancelling one reader's task must not cancel the others."""
    registry = InProcessRegistry(MockEngine(), WorkerSettings(), JobMetrics())
    job = Job(id="j" * 22, request=gen(), created_at=0.0)
    waiters = [asyncio.ensure_future(job.wait_for_events(TIMEOUT_S)) for _ in range(3)]
    await asyncio.sleep(0)
    waiters[0].cancel()
    await asyncio.sleep(0.01)
    assert waiters[0].cancelled()
    assert not waiters[1].done() and not waiters[2].done()
    registry.append(job, 1, sse.encode_token(1, 0, "a"), EventKind.TOKEN)
    assert await asyncio.gather(waiters[1], waiters[2]) == [True, True]


class StallingEngine:
    """Two tokens at once, then silence until ``resume`` is set, then two more."""

    name = "stalling"
    model = "stalling"
    deterministic = True
    max_concurrency = 1

    def __init__(self) -> None:
        self.resume = asyncio.Event()

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def health(self) -> EngineHealth:
        return EngineHealth(ok=True)

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[Chunk, None]:
        yield Chunk("a")
        yield Chunk("b")
        await self.resume.wait()
        yield Chunk("c")
        yield Chunk("d", stop_reason="max_tokens")


@pytest.mark.asyncio
async def test_keepalive_after_events_when_the_engine_stalls() -> None:
    keepalive_s = 0.05
    engine = StallingEngine()
    registry = InProcessRegistry(engine, WorkerSettings(keepalive_s=keepalive_s), JobMetrics())  # type: ignore[arg-type]
    registry.start()
    loop = asyncio.get_running_loop()
    blocks: list[bytes] = []
    last_block_at: float | None = None  # when the last token before the stall arrived, then each keep-alive
    gaps: list[float] = []  # from that token to the first keep-alive, then between keep-alives
    try:
        job = registry.submit_now(gen(max_tokens=4))
        async with asyncio.timeout(TIMEOUT_S):  # a stream that never sends a keep-alive fails here
            async for block in await registry.open_stream(job.id, None):
                blocks.append(block)
                if b'"text":"b"' in block:
                    last_block_at = loop.time()
                elif block == sse.KEEPALIVE and last_block_at is not None:
                    gaps.append(loop.time() - last_block_at)
                    last_block_at = loop.time()
                    if len(gaps) == 2:
                        engine.resume.set()  # the engine stalls until two keep-alives went out
    finally:
        await registry.close()
    raw = b"".join(blocks)
    stall = raw[raw.index(b'"text":"b"') : raw.index(b'"text":"c"')]
    assert stall.count(sse.KEEPALIVE) >= 2  # keep-alives go out while the job is idle
    # at most one comment per interval: each comes a full interval after the previous block, however
    # long the stall lasted on this machine
    assert min(gaps) >= keepalive_s - CLOCK_SLACK_S, gaps
    events, issues = parse_stream(raw, strict=True)
    assert not issues
    assert [e.event for e in events] == ["started", "token", "token", "token", "token", "end", "message"]


@pytest.mark.asyncio
async def test_many_readers_of_a_live_job_get_identical_streams() -> None:
    registry = InProcessRegistry(MockEngine(token_delay_s=0.001), WorkerSettings(), JobMetrics())
    registry.start()
    try:
        job = registry.submit_now(gen(max_tokens=50))

        async def read() -> bytes:
            return b"".join([block async for block in await registry.open_stream(job.id, None)])

        async with asyncio.timeout(TIMEOUT_S):
            streams = await asyncio.gather(*(read() for _ in range(20)))
    finally:
        await registry.close()
    assert len(set(streams)) == 1
    assert streams[0] == b"".join(job.events)


# -- the raw ASGI stream response --------------------------------------------------------------------------


class FakeServer:
    """ASGI receive/send of one request; ``disconnect`` simulates the client going away."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self._gone = asyncio.Event()

    async def receive(self) -> dict[str, Any]:
        await self._gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        self.messages.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            self._gone.set()  # like uvicorn: receive() reports a disconnect once the response is complete

    def disconnect(self) -> None:
        self._gone.set()


@pytest.mark.asyncio
async def test_event_stream_response_sends_head_then_one_message_per_block() -> None:
    async def blocks() -> AsyncIterator[bytes]:
        yield b"one"
        yield b"two"

    server = FakeServer()
    async with asyncio.timeout(TIMEOUT_S):
        await sse.EventStreamResponse(blocks(), [(b"cache-control", b"no-cache")])({}, server.receive, server.send)
    head, *body = server.messages
    assert head["status"] == 200
    assert (b"content-type", b"text/event-stream; charset=utf-8") in head["headers"]
    assert [(m["body"], m["more_body"]) for m in body] == [(b"one", True), (b"two", True), (b"", False)]


@pytest.mark.asyncio
async def test_event_stream_response_ends_quietly_when_the_client_leaves() -> None:
    registry = InProcessRegistry(MockEngine(), WorkerSettings(queue_limit=4), JobMetrics())
    registry.start()
    try:
        registry.lifecycle.slots = asyncio.Semaphore(0)  # every job stays queued: the stream is idle
        job = registry.submit_now(gen())
        server = FakeServer()
        response = sse.EventStreamResponse(await registry.open_stream(job.id, None), [])
        task = asyncio.ensure_future(response({}, server.receive, server.send))
        await asyncio.sleep(0.05)
        assert job.readers == 1
        server.disconnect()
        async with asyncio.timeout(TIMEOUT_S):
            await task  # returns normally: a client leaving is not an error
        assert not task.cancelled()
        assert job.readers == 0
        assert [m["type"] for m in server.messages] == ["http.response.start"]
    finally:
        await registry.close()
