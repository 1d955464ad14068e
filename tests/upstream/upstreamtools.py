"""Shared names of the upstream tests (test modules import these; fixtures live in conftest.py)."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
from workerproc import WorkerProcess

#: ``start_gateway("--ttl-s", "2")``: a gateway in front of the session's transformers serve
GatewayFactory = Callable[..., WorkerProcess]
#: a loaded CI machine can take many seconds to start a worker process
WORKER_START_S = 60.0
#: bounded waits for what a loaded machine does eventually (never asserted as speed)
WAIT_S = 60.0


def wait_health(client: httpx.Client, url: str, status: int) -> httpx.Response:
    """Poll ``url``/health until it answers ``status``; the last answer after `WAIT_S` otherwise."""
    deadline = time.monotonic() + WAIT_S
    while True:
        response = client.get(url + "/health")
        if response.status_code == status or time.monotonic() > deadline:
            return response
        time.sleep(0.1)
