"""The processes a benchmark measures: the worker, the legacy worker and the bare baseline."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from workers.testing import WorkerProcess

#: a loaded shared machine can take many seconds to import Litestar
START_TIMEOUT_S = 90.0


class BaselineProcess(WorkerProcess):
    """`python -m benchmarks.baseline` on a free loopback port (same start/stop handling as a worker)."""

    def __init__(self) -> None:
        super().__init__("baseline", start_timeout_s=START_TIMEOUT_S)

    @property
    def command(self) -> list[str]:
        return [sys.executable, "-m", "benchmarks.baseline", "--port", "0"]


def worker(*args: str) -> WorkerProcess:
    """The dual-call mock worker with no token delay."""
    return WorkerProcess("mock", "--token-delay-ms", "0", *args, start_timeout_s=START_TIMEOUT_S)


def legacy() -> WorkerProcess:
    """The legacy direct-SSE worker on the same mock engine."""
    return WorkerProcess("legacy", "--token-delay-ms", "0", start_timeout_s=START_TIMEOUT_S)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_s(pid: int) -> float:
    """CPU seconds a process's live threads have run so far, to the nanosecond (Linux schedstat).

    ``/proc/<pid>/stat`` counts in clock ticks (10 ms): over a trial of 40 jobs that is a quarter
    of a millisecond per job, coarser than the differences measured. The scheduler's own run time
    per thread (``/proc/<pid>/task/<tid>/schedstat``, first field, ns) has no such step; where it
    is missing the tick count is the fallback. Threads that have exited are not counted.
    """
    try:
        return (
            sum(int((task / "schedstat").read_text().split()[0]) for task in Path(f"/proc/{pid}/task").iterdir()) / 1e9
        )
    except (OSError, ValueError, IndexError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
