"""The conformance suite passes against each replica of a Redis-backed pool and through a round-robin proxy.

Behind the proxy every request lands on the next replica, so a job's POST, status, stream,
resume and DELETE are served by different processes; the lifetime checks see the TTL hold
across replicas. The runs go one after another: they share the pool's queue, and one run's
queue saturation (DC-SUBMIT-012) would refuse the other's submissions.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pooltools import Pool
from rrproxy import RoundRobinProxy

from conformance.context import Options
from conformance.model import Report
from conformance.runner import RunConfig, run

pytestmark = pytest.mark.slow

#: the pool's TTL is 2 s (POOL_FLAGS); the budget lets the lifetime checks wait it out
OPTIONS = Options(timeout_s=10, ttl_budget_s=4)


@pytest.fixture(scope="module")
def proxy(pool: Pool) -> Iterator[RoundRobinProxy]:
    with RoundRobinProxy([pool.a.url, pool.b.url]) as proxy:
        yield proxy


def failures(report: Report) -> list[str]:
    return [f"{r.id}: {r.message}" for r in report.results if r.outcome == "failed"]


def suite(url: str) -> Report:
    report = run(RunConfig(target=url, options=OPTIONS, fuzz=False))
    assert not failures(report), failures(report)
    return report


def test_suite_passes_against_replica_a(pool: Pool) -> None:
    suite(pool.a.url)


def test_suite_passes_against_replica_b(pool: Pool) -> None:
    suite(pool.b.url)


def test_suite_passes_through_a_round_robin_proxy(pool: Pool, proxy: RoundRobinProxy) -> None:
    report = suite(proxy.url)
    passed = {r.id for r in report.results if r.outcome == "passed"}
    # the checks that matter most for a pool actually ran (not skipped) through the proxy
    for check in ("DC-STREAM-001", "DC-LIFE-001", "DC-LIFE-002"):
        assert check in passed, {r.id: (r.outcome, r.message) for r in report.results}
    assert set(proxy.app.forwarded) == {pool.a.url, pool.b.url}
