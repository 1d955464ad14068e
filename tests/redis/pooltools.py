"""Shared names of the Redis pool tests (test modules import these; fixtures live in conftest.py)."""

from __future__ import annotations

from collections.abc import Callable

from workerproc import WorkerProcess

from workers.testing_redis import RedisServer

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


def registry_url(server: RedisServer, db: int, lost_after_s: float = LOST_AFTER_S) -> str:
    return f"{server.url(db)}?lost_after_s={lost_after_s:g}"


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
