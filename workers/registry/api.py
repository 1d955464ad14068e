"""The registry interface the app talks to: the backend protocol, its errors and the job record.

Two backends implement `RegistryBackend`: `workers.registry.in_process` (the default) and
`workers.registry.redis_backend` (``--registry redis://...``). Both drive the one job lifecycle of
`workers.registry.lifecycle`; they only store events and wake readers. Registry errors are plain
exceptions: the app maps them to HTTP problems.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Protocol

from workers.config import WorkerSettings
from workers.engines.base import GenerationRequest, StopReason
from workers.metrics import CountedRegistry, JobMetrics
from workers.schemas import ErrorInfo, JobState

#: seconds a stopped job's task gets to wind down before DELETE answers anyway
CANCEL_GRACE_S = 5.0


class UnknownJob(LookupError):
    """No job with this id (never existed, cancelled, or reclaimed)."""

    def __init__(self, job_id: str) -> None:
        super().__init__(job_id)
        self.job_id = job_id

    @property
    def detail(self) -> str:
        """The one sentence every unknown-job answer gives."""
        return f"No job `{self.job_id}`: it never existed, was cancelled, or has expired."


class QueueFull(RuntimeError):
    """Too many jobs wait for a generation slot (or the worker is shutting down)."""


class Draining(QueueFull):
    """The worker is shutting down (SIGTERM): it takes no new job or, in a pool, no new reader."""


class IdempotencyKeyReused(ValueError):
    """The submit's Idempotency-Key was taken by a submit with another body (DC-1.11)."""


@dataclass(frozen=True, slots=True)
class Idempotency:
    """A submit's Idempotency-Key (DC-1.9) and the fingerprint of its body (`workers.idempotency`)."""

    key: str
    fingerprint: str


class FinalEventDelivered(Exception):
    """Resume asked for events after the final one: the stream has nothing left to send."""


class RegistryUnavailable(RuntimeError):
    """The registry's store (Redis) cannot be reached; the request may be retried."""


def new_job_id() -> str:
    """128 random bits, URL-safe base64 without padding (22 characters)."""
    return secrets.token_urlsafe(16)


@dataclass(frozen=True, slots=True)
class Clock:
    """The lifecycle's clocks: ``wall`` for the timestamps a status shows, ``mono`` for TTLs and latencies."""

    wall: Callable[[], float] = time.time
    mono: Callable[[], float] = time.monotonic


SYSTEM_CLOCK = Clock()


@dataclass(eq=False)
class JobRecord:
    """What a status answer shows of a job, on every backend (the fields of `JobStatus`)."""

    id: str
    request: GenerationRequest
    created_at: float
    state: JobState = "queued"
    started_at: float | None = None
    finished_at: float | None = None
    tokens_out: int = 0
    stop_reason: StopReason | None = None
    error: ErrorInfo | None = None


@dataclass(eq=False)
class LiveJob(JobRecord):
    """A job generating (or waiting for a slot) in this process: the record plus its lifecycle's state.

    `workers.registry.lifecycle` alone changes ``state``, ``ending`` and the counters; a backend adds
    its storage (the in-process event list, the Redis writer).
    """

    created_mono: float = 0.0
    finished_mono: float | None = None
    task: asyncio.Task[None] | None = None
    #: why the job is being stopped from outside (a `lifecycle.Trigger`); None while it runs its course
    ending: object | None = None
    #: the id the next event gets, and the index the next token event gets
    next_event_id: int = 1
    token_index: int = 0

    #: one future per job that every waiting reader awaits; replaced after each publish
    wake: asyncio.Future[None] | None = field(default=None, repr=False)

    @property
    def finished(self) -> bool:
        return self.finished_mono is not None

    def wake_readers(self) -> None:
        """Resume every reader waiting in `wait` (one future per job, not per reader)."""
        wake = self.wake
        if wake is not None:
            self.wake = None
            if not wake.done():
                wake.set_result(None)

    async def wait(self) -> None:
        """Wait until the next publish (or `wake_readers`); may return early, so callers re-check.

        All readers of a job await the same future, so a publish costs one future however many
        readers wait. A reader whose own task is cancelled (timeout, disconnect) cancels that shared
        future too; the other readers then see a CancelledError that is not theirs (their task has
        no cancellation pending) and return as if woken.
        """
        wake = self.wake
        if wake is None:
            wake = self.wake = asyncio.get_running_loop().create_future()
        try:
            await wake
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is None or task.cancelling():
                raise
            if self.wake is wake:
                self.wake = None


class RegistryBackend(CountedRegistry, Protocol):
    """The public surface of a job registry, as `workers.app` uses it.

    Errors: `submit` raises `QueueFull` (`Draining` while draining) and `IdempotencyKeyReused`; `get`,
    `cancel` and `open_stream` raise `UnknownJob` (`open_stream` also `Draining`, in a pool);
    `open_stream` raises `FinalEventDelivered` when ``last_event_id`` is at or past the final event
    (the route answers 204); any call that needs the store may raise `RegistryUnavailable`.
    """

    @property
    def settings(self) -> WorkerSettings: ...
    @property
    def metrics(self) -> JobMetrics: ...

    def start(self) -> None:
        """Called on the running loop once the engine has started."""

    @property
    def draining(self) -> bool: ...

    def begin_drain(self) -> None:
        """Refuse new jobs (`Draining`); running ones go on. With Redis, also let go of every reader."""

    async def drained(self) -> None:
        """Return once no job of this process is queued or running."""

    def begin_shutdown(self) -> None:
        """Refuse new jobs and end this process's generations with a `shutdown` error event."""

    async def close(self) -> None: ...

    async def submit(self, request: GenerationRequest, idempotency: Idempotency | None = None) -> JobRecord:
        """Admit a job; with ``idempotency``, a key seen within the TTL answers its first job instead
        (raises `IdempotencyKeyReused` when that job's body differs)."""

    async def get(self, job_id: str) -> JobRecord: ...

    async def cancel(self, job_id: str) -> JobRecord:
        """Stop the generation wherever it runs, then forget the job (it answers 404 afterwards)."""

    async def open_stream(self, job_id: str, last_event_id: int | None) -> AsyncIterator[bytes]:
        """Validate now (errors become HTTP statuses); the returned iterator yields SSE bytes."""
