"""Shared fixtures: real worker processes on loopback.

`tests/` has no ``__init__.py``; pytest (rootdir conftest, default ``prepend`` import mode) puts
this directory on ``sys.path``, so test modules import the shared helpers as ``from helpers import ...``
(ports, jobs, streams, waiting for events) and ``from workerproc import WorkerProcess``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from workerproc import WorkerProcess

StartWorker = Callable[..., WorkerProcess]


@pytest.fixture(scope="session")
def mock_worker() -> Iterator[WorkerProcess]:
    """A mock worker with default settings, shared by the whole session."""
    with WorkerProcess("mock") as worker:
        yield worker


@pytest.fixture(scope="session")
def legacy_worker() -> Iterator[WorkerProcess]:
    """The legacy direct-SSE worker (negative control), shared by the whole session."""
    with WorkerProcess("legacy") as worker:
        yield worker


@pytest.fixture
def start_worker() -> Iterator[StartWorker]:
    """Factory: ``start_worker("mock", "--ttl-s", "0.5")`` starts a worker stopped after the test."""
    started: list[WorkerProcess] = []

    def start(engine: str = "mock", *args: str) -> WorkerProcess:
        worker = WorkerProcess(engine, *args)
        started.append(worker)
        return worker.start()

    yield start
    for worker in reversed(started):
        if worker.proc is not None:
            worker.stop()
