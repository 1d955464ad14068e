"""Shared fixtures: real worker processes on loopback.

`tests/` has no ``__init__.py``; pytest (rootdir conftest, default ``prepend`` import mode) puts
this directory on ``sys.path``, so test modules import the shared helpers as ``from helpers import ...``
(ports, jobs, streams, waiting for events) and ``from workerproc import WorkerProcess``.

The repository root is appended (not prepended) to ``sys.path``: `benchmarks` lives beside the
package, outside the wheel the tests run against, while `workers` and `conformance` still come from
the installed wheel, which is earlier on the path.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from workerproc import WorkerProcess

StartWorker = Callable[..., WorkerProcess]

_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.append(_ROOT)


def _loggers() -> list[logging.Logger]:
    known = logging.Logger.manager.loggerDict.values()
    return [logging.getLogger(), *(item for item in known if isinstance(item, logging.Logger))]


def _owned_by_pytest(handler: logging.Handler) -> bool:
    return type(handler).__module__.startswith("_pytest")


@pytest.fixture(autouse=True)
def _logging_restored() -> Iterator[None]:
    """A test that runs a CLI's ``main()`` in-process configures logging for the whole process, with
    handlers writing to the test's captured stderr; once that capture is closed, every later log
    record (httpx logs each request) would print a "Logging error" traceback, from whatever thread
    logged it. Each test gives the process's logging back as it found it (pytest's own capture
    handlers, which pytest attaches and removes around each phase, are left to pytest)."""
    saved = {
        id(logger): ([h for h in logger.handlers if not _owned_by_pytest(h)], logger.level, logger.propagate)
        for logger in _loggers()
    }
    yield
    for logger in _loggers():
        handlers, level, propagate = saved.get(id(logger), ([], logging.NOTSET, True))
        logger.handlers[:] = [*handlers, *(h for h in logger.handlers if _owned_by_pytest(h))]
        logger.setLevel(level)
        logger.propagate = propagate


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
