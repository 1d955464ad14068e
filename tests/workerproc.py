"""Test-side name of `workers.testing` (kept so test modules import one short name)."""

from workers.testing import WorkerProcess, WorkerStartError

__all__ = ["WorkerProcess", "WorkerStartError"]
