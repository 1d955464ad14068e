"""Fixtures of the upstream tests: a real `transformers serve` on loopback serving a tiny model.

Only when transformers (with torch and the serving extra) is not importable do these tests skip,
saying so; `tox -e upstream` installs it. Everything else that goes wrong is a failure.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tserve import TransformersServe, transformers_missing
from upstreamtools import WORKER_START_S, GatewayFactory
from workerproc import WorkerProcess

from workers import tinymodel


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The random-weight Llama checkpoint of `workers.tinymodel`, with its chat template."""
    missing = transformers_missing()
    if missing is not None:  # checked first: no checkpoint is built for a server that cannot run
        pytest.skip(f"transformers serve is unavailable: {missing}")
    out = tmp_path_factory.mktemp("tinymodel")
    tinymodel.build(out)
    return out


@pytest.fixture(scope="session")
def tserve(tiny_model_dir: Path) -> Iterator[TransformersServe]:
    """One `transformers serve --continuous-batching` for the session (concurrent streams batch)."""
    with TransformersServe(tiny_model_dir, "--continuous-batching") as server:
        yield server


@pytest.fixture
def start_gateway(tserve: TransformersServe) -> Iterator[GatewayFactory]:
    """Factory: ``start_gateway("--ttl-s", "2")`` runs ``dualcall-worker gateway`` in front of `tserve`."""
    started: list[WorkerProcess] = []

    def start(*args: str) -> WorkerProcess:
        worker = WorkerProcess(
            "gateway", "--upstream", tserve.url, "--upstream-api", "openai-chat", *args, start_timeout_s=WORKER_START_S
        )
        started.append(worker)
        return worker.start()

    yield start
    for worker in reversed(started):
        if worker.proc is not None and worker.returncode is None:
            worker.stop()
