"""The Redis registry driven directly in asyncio, against a real redis-server: two registries in one
loop stand in for two replicas. Covers what the HTTP tests cannot reach cheaply: the write fence
after `worker_lost`, the pool-wide queue limit, TTL reclaim of unattached jobs, and start-up errors.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from helpers import events_of, free_port, gen, read_all
from pooltools import registry_url

from workers import sse
from workers.__main__ import main
from workers.config import WorkerSettings
from workers.engines.mock import MockEngine
from workers.metrics import JobMetrics
from workers.registry import FinalEventDelivered, QueueFull, RegistryUnavailable, UnknownJob
from workers.registry.redis_backend import RedisRegistry, check_registry, parse_registry_url
from workers.testing_redis import RedisServer

TIMEOUT_S = 15


@contextlib.asynccontextmanager
async def replica(
    url: str, engine: MockEngine, *, start: bool = True, **settings: object
) -> AsyncIterator[RedisRegistry]:
    registry = RedisRegistry(engine, WorkerSettings(**settings), JobMetrics(), url)  # type: ignore[arg-type]
    if start:
        registry.start()
    try:
        yield registry
    finally:
        await registry.close()


@pytest.mark.asyncio
async def test_a_stalled_owner_cannot_write_after_worker_lost(redis_server: RedisServer) -> None:
    url = registry_url(redis_server, redis_server.fresh_db(), lost_after_s=0.3)
    # not started: no heartbeat, as if the owner's process were frozen between two tokens
    async with (
        replica(url, MockEngine(token_delay_s=1.0), start=False, keepalive_s=1) as owner,
        replica(url, MockEngine()) as reader_side,
    ):
        job = await owner.submit(gen(max_tokens=50))
        raw = await read_all(await reader_side.open_stream(job.id, None))
        assert job.task is not None
        async with asyncio.timeout(TIMEOUT_S):
            await asyncio.wait([job.task])  # the owner's next append failed: it stopped by itself
        # declared lost, not reclaimed: the owner leaves the log to its readers
        assert owner.counters["jobs_reclaimed"] == 0 and reader_side.counters["jobs_lost_declared"] == 1
        events = events_of(raw)
        assert events[-2].event == "error" and '"code":"worker_lost"' in events[-2].data
        assert raw.endswith(sse.DONE)
        stored = await reader_side.redis.xrange(f"dualcall:events:{job.id}")
        assert b"".join(fields[b"b"] for _, fields in stored) == raw  # nothing was added after the end
        status = await reader_side.get(job.id)
        assert status.state == "failed" and status.error is not None and status.error.code == "worker_lost"
        with pytest.raises(FinalEventDelivered):
            await reader_side.open_stream(job.id, int(events[-2].id or 0))


@pytest.mark.asyncio
async def test_the_queue_limit_holds_across_replicas(redis_server: RedisServer) -> None:
    url = registry_url(redis_server, redis_server.fresh_db())
    slow = {"token_delay_s": 0.05, "max_concurrency": 1}
    async with (
        replica(url, MockEngine(**slow), queue_limit=1) as x,  # type: ignore[arg-type]
        replica(url, MockEngine(**slow), queue_limit=1) as y,  # type: ignore[arg-type]
    ):
        running_x = await x.submit(gen(max_tokens=400))
        waiting_x = await x.submit(gen(max_tokens=400))  # the pool's one queue place
        running_y = await y.submit(gen(max_tokens=400))  # y has a free slot: no queueing
        with pytest.raises(QueueFull):
            await y.submit(gen(max_tokens=400))  # y is busy and the pool's queue is full
        with pytest.raises(QueueFull):
            await x.submit(gen(max_tokens=400))
        assert (x.active + y.active, x.queued + y.queued) == (2, 1)
        assert y.counters["jobs_rejected_queue_full"] == 1

        cancelled = await y.cancel(waiting_x.id)  # cancelled from the other replica: the queue place frees
        assert cancelled.state == "cancelled"
        with pytest.raises(UnknownJob):
            await x.get(waiting_x.id)
        admitted = await y.submit(gen(max_tokens=400))
        for job in (running_x, running_y, admitted):
            await x.cancel(job.id)  # any replica cancels any job


@pytest.mark.asyncio
async def test_an_unattached_job_is_reclaimed_after_the_ttl(redis_server: RedisServer) -> None:
    url = registry_url(redis_server, redis_server.fresh_db(), lost_after_s=0.4)
    async with replica(url, MockEngine(token_delay_s=0.05), job_ttl_s=0.3) as owner:
        job = await owner.submit(gen(max_tokens=400))
        assert (await owner.get(job.id)).id == job.id
        assert job.task is not None
        async with asyncio.timeout(TIMEOUT_S):
            await asyncio.wait([job.task])  # generation stops once the record expires
        with pytest.raises(UnknownJob):
            await owner.get(job.id)
        with pytest.raises(UnknownJob):
            await owner.open_stream(job.id, None)
        assert owner.counters["jobs_reclaimed"] == 1
        await asyncio.sleep(0.1)
        assert await owner.redis.exists(f"dualcall:events:{job.id}", f"dualcall:alive:{job.id}") == 0


@pytest.mark.asyncio
async def test_registry_url_errors_are_one_line(redis_server: RedisServer) -> None:
    with pytest.raises(ValueError, match="lost_after_s"):
        parse_registry_url("redis://127.0.0.1:1/0?lost_after_s=soon")
    assert parse_registry_url("redis://h:1/2?lost_after_s=2.5&socket_timeout=3") == (
        "redis://h:1/2?socket_timeout=3",
        2.5,
    )
    with pytest.raises(ValueError, match="cannot reach the registry"):
        await check_registry(f"redis://127.0.0.1:{free_port()}/0")
    assert "Redis 6" in await check_registry(redis_server.url(0)) or "Redis" in await check_registry(
        redis_server.url(0)
    )


@pytest.mark.parametrize(
    ("registry", "message"),
    [("http://127.0.0.1:1/0", "registry must be a redis://"), ("unreachable", "cannot reach the registry")],
)
def test_cli_refuses_a_bad_registry_with_exit_2(
    registry: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    if registry == "unreachable":
        registry = f"redis://127.0.0.1:{free_port()}/0"
    with pytest.raises(SystemExit) as exited:
        raise SystemExit(main(["mock", "--port", "0", "--registry", registry]))
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) <= 2


@pytest.mark.asyncio
async def test_redis_going_away_ends_streams_and_refuses_requests(redis_server: RedisServer) -> None:
    own = RedisServer(redis_server.binary)
    await asyncio.to_thread(own.start)
    try:
        async with replica(registry_url(own, 0), MockEngine(token_delay_s=0.02), keepalive_s=1) as owner:
            job = await owner.submit(gen(max_tokens=400))
            stream = await owner.open_stream(job.id, None)
            first = await anext(stream)
            await asyncio.to_thread(own.stop)
            rest = await read_all(stream)
            events = events_of(first + rest)
            assert events[-2].event == "error" and '"code":"registry_unavailable"' in events[-2].data
            assert (first + rest).endswith(sse.DONE)
            for attempt in (owner.submit(gen()), owner.get(job.id), owner.cancel(job.id)):
                with pytest.raises(RegistryUnavailable):
                    await attempt
    finally:
        await asyncio.to_thread(own.stop)
