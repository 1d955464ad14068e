"""Soak: many short jobs (half the readers drop mid-stream), then the TTL.

Memory must come back to where it was: retained jobs go to 0 and the worker's RSS stays flat.
"""

from __future__ import annotations

import time
from typing import Any

import httpx

from benchmarks.servers import rss_kib as _rss_kib
from workers.testing import WorkerProcess


def _metric(url: str, name: str) -> float:
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise LookupError(name)


def soak(jobs: int, ttl_s: float) -> dict[str, Any]:
    """Many short jobs, half read to the end and half dropped after the first bytes; then the TTL.

    Memory must come back to where it was: retained jobs go to 0 and RSS stays flat.
    """
    with WorkerProcess("mock", "--ttl-s", str(ttl_s), "--token-delay-ms", "0") as worker, httpx.Client() as client:
        assert worker.proc is not None
        body = {"prompt": "soak", "max_tokens": 64, "temperature": 0.5}

        def wave(count: int) -> None:
            for number in range(count):
                sse_url = client.post(worker.url + "/v1/inference", json=body, timeout=10).json()["sse_url"]
                with client.stream("GET", worker.url + sse_url, timeout=10) as response:
                    for _ in response.iter_raw():
                        if number % 2:
                            break  # a reader that drops mid-stream

        wave(200)  # warm-up: imports, caches, allocator arenas
        time.sleep(ttl_s * 2 + 0.5)
        before = _rss_kib(worker.proc.pid)
        started = time.perf_counter()
        wave(jobs)
        elapsed = time.perf_counter() - started
        peak_retained = _metric(worker.url, "dualcall_jobs_retained")
        time.sleep(ttl_s * 2 + 0.5)
        return {
            "jobs": jobs,
            "seconds": elapsed,
            "jobs_per_s": jobs / elapsed,
            "retained_at_end_of_load": peak_retained,
            "retained_after_ttl": _metric(worker.url, "dualcall_jobs_retained"),
            "rss_before_kib": before,
            "rss_after_kib": _rss_kib(worker.proc.pid),
        }
