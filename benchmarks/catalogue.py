"""The scenarios ``python -m benchmarks`` knows, the modes that size them, and what a pass shares.

A scenario is a name, a progress size and a function of one `Pass` that returns its results as
plain data (numbers, strings, dicts, lists). Scenario modules are listed in `SCENARIO_MODULES`;
each exposes ``SCENARIOS``, a tuple of `Scenario`. A module imports what only it needs (redis, the
conformance suite) inside its functions, so listing it costs nothing when it is not chosen.
"""

from __future__ import annotations

import contextlib
import importlib
import statistics
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from benchmarks import loadgen
from benchmarks import servers as processes
from benchmarks.servers import BaselineProcess
from workers.testing import WorkerProcess

#: modules whose ``SCENARIOS`` make up the catalogue, in the order a full pass runs them; a listed module
#: that is not there (or has no ``SCENARIOS``) adds nothing
SCENARIO_MODULES = (
    "benchmarks.scenarios",
    "benchmarks.client_share",
    "benchmarks.pool",
    "benchmarks.redis_registry",
    "benchmarks.gateway",
)

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Mode:
    name: str
    trials: int
    handoff_jobs: dict[int, int]  # concurrency -> jobs per trial
    handoff_tokens: int
    live_tokens: int
    live64_tokens: int
    replay_tokens: int
    replay_readers: tuple[int, ...]
    idle_streams: int
    memory_trials: int
    suite_fuzz: bool
    suite_trials: int
    #: jobs per trial of the reference-client and pool scenarios
    client_jobs: int = 60
    pool_jobs: int = 256
    pool_users: int = 8
    pool_tokens: int = 16
    #: tokens of the Redis registry's cost-per-token job, and of its latency job
    redis_tokens: int = 2048
    redis_latency_tokens: int = 300


QUICK = Mode(
    name="quick",
    trials=3,
    handoff_jobs={1: 40, 8: 64, 64: 128},
    handoff_tokens=8,
    live_tokens=2048,
    live64_tokens=128,
    replay_tokens=1024,
    replay_readers=(1, 16, 256),
    idle_streams=1000,
    memory_trials=1,
    suite_fuzz=False,
    suite_trials=1,
)
FULL = Mode(
    name="full",
    trials=7,
    handoff_jobs={1: 300, 8: 400, 64: 1024},
    handoff_tokens=8,
    live_tokens=4096,
    live64_tokens=512,
    replay_tokens=4096,
    replay_readers=(1, 4, 16, 64, 256),
    idle_streams=1000,
    memory_trials=3,
    suite_fuzz=True,
    suite_trials=3,
    client_jobs=200,
    pool_jobs=800,
    redis_tokens=4096,
    redis_latency_tokens=500,
)


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def alternate(trials: int, names: tuple[str, ...]) -> Iterator[tuple[int, str]]:
    """(trial, name) pairs, the order reversed every other trial so no side always goes first."""
    for trial in range(trials):
        for name in names if trial % 2 == 0 else names[::-1]:
            yield trial, name


class ScenarioUnavailable(RuntimeError):
    """What a scenario needs is not installed here (the message says what to install)."""


@dataclass
class Servers:
    worker: WorkerProcess
    legacy: WorkerProcess
    bare: BaselineProcess


def worker_for_load() -> WorkerProcess:
    # slots and queue large enough that no scenario queues: the hand-off, not the queue, is measured
    return processes.worker("--concurrency", "64", "--queue-limit", "1024", "--ttl-s", "600")


@dataclass
class Pass:
    """One pass over the chosen scenarios: the mode, the progress bar, and servers started on first use."""

    mode: Mode
    clients: int
    step: Progress
    _stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    _servers: Servers | None = None
    _pools: dict[int, loadgen.ClientPool] = field(default_factory=dict)

    @property
    def servers(self) -> Servers:
        """The dual-call worker, the legacy worker and the bare-ASGI baseline, shared by the scenarios."""
        if self._servers is None:
            self._servers = Servers(
                worker=self._stack.enter_context(worker_for_load()),
                bare=self._stack.enter_context(BaselineProcess()),
                legacy=self._stack.enter_context(processes.legacy()),
            )
        return self._servers

    def pool(self, processes: int = 0) -> loadgen.ClientPool:
        """Forked client processes (default: the run's ``--clients``), kept for the whole pass."""
        count = processes or self.clients
        if count not in self._pools:
            self._pools[count] = loadgen.ClientPool(count)
            self._stack.callback(self._pools[count].close)
        return self._pools[count]

    def release(self) -> None:
        """Stop the shared servers and client processes (a later scenario starts them again)."""
        self._stack.close()
        self._stack = contextlib.ExitStack()
        self._servers = None
        self._pools = {}


@dataclass(frozen=True)
class Scenario:
    name: str
    #: one line for ``--help`` and the report
    about: str
    run: Callable[[Pass], dict[str, Any]]
    #: progress steps the scenario reports in a mode
    steps: Callable[[Mode], int]
    #: uses `Pass.servers` (the shared worker, legacy and bare processes)
    shares_servers: bool = False
    #: part of a run without ``--only``
    default: bool = True


def catalogue() -> dict[str, Scenario]:
    found: dict[str, Scenario] = {}
    for module_name in SCENARIO_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise  # the module is there but something it imports is not: say so
            continue
        for scenario in getattr(module, "SCENARIOS", ()):
            if scenario.name in found:
                raise RuntimeError(f"two scenarios named {scenario.name!r} ({module_name})")
            found[scenario.name] = scenario
    return found
