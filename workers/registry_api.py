"""The registry backend interface the app talks to, and the factory that picks one at start.

Two backends implement `RegistryBackend`:

* in-process (the default): today's `workers.registry.JobRegistry`, wrapped by `InProcessBackend`
  so its synchronous calls fit the interface; the stream iterator is the registry's own, untouched;
* Redis Streams (``--registry redis://host:port/db``): `workers.registry_redis.RedisRegistry`,
  where any replica of a pool serves any job's status, stream and DELETE.

Calls that may need network I/O (submit, get, cancel, open_stream) are coroutines; the gauges and
counters are local to the process (per replica with Redis).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from workers.config import WorkerSettings
from workers.engines.base import Engine, GenerationRequest, StopReason
from workers.metrics import CountedRegistry, JobMetrics
from workers.registry import JobRegistry
from workers.schemas import ErrorInfo, JobState


class JobView(Protocol):
    """What a status answer reads of a job (`workers.registry.Job` has all of it)."""

    @property
    def id(self) -> str: ...
    @property
    def request(self) -> GenerationRequest: ...
    @property
    def state(self) -> JobState: ...
    @property
    def tokens_out(self) -> int: ...
    @property
    def created_at(self) -> float: ...
    @property
    def started_at(self) -> float | None: ...
    @property
    def finished_at(self) -> float | None: ...
    @property
    def stop_reason(self) -> StopReason | None: ...
    @property
    def error(self) -> ErrorInfo | None: ...


class RegistryBackend(CountedRegistry, Protocol):
    """The public surface of a job registry, as `workers.app` and `workers.metrics` use it.

    Errors: `submit` raises `workers.registry.QueueFull`; `get`, `cancel` and `open_stream` raise
    `workers.registry.UnknownJob`; `open_stream` raises `workers.registry.FinalEventDelivered`
    when ``last_event_id`` is at or past the final event (the route answers 204).
    """

    @property
    def settings(self) -> WorkerSettings: ...
    @property
    def metrics(self) -> JobMetrics: ...

    def start(self) -> None:
        """Called on the running loop once the engine has started."""

    def begin_shutdown(self) -> None:
        """Refuse new jobs and end this process's generations with a `shutdown` error event."""

    async def close(self) -> None: ...

    async def submit(self, request: GenerationRequest) -> JobView: ...

    async def get(self, job_id: str) -> JobView: ...

    async def cancel(self, job_id: str) -> JobView:
        """Stop the generation wherever it runs, then forget the job (it answers 404 afterwards)."""

    async def open_stream(self, job_id: str, last_event_id: int | None) -> AsyncIterator[bytes]:
        """Validate now (errors become HTTP statuses); the returned iterator yields SSE bytes."""


class InProcessBackend:
    """`JobRegistry` behind the `RegistryBackend` interface: one coroutine frame per request, none per event."""

    def __init__(self, engine: Engine, settings: WorkerSettings) -> None:
        self.registry = JobRegistry(engine, settings)

    @property
    def engine(self) -> Engine:
        return self.registry.engine

    @property
    def settings(self) -> WorkerSettings:
        return self.registry.settings

    @property
    def counters(self) -> dict[str, int]:
        return self.registry.counters

    @property
    def active(self) -> int:
        return self.registry.active

    @property
    def queued(self) -> int:
        return self.registry.queued

    @property
    def metrics(self) -> JobMetrics:
        return self.registry.metrics

    @property
    def open_readers(self) -> int:
        return self.registry.open_readers

    def __len__(self) -> int:
        return len(self.registry)

    def start(self) -> None:
        self.registry.start()

    def begin_shutdown(self) -> None:
        self.registry.begin_shutdown()

    async def close(self) -> None:
        await self.registry.close()

    async def submit(self, request: GenerationRequest) -> JobView:
        return self.registry.submit(request)

    async def get(self, job_id: str) -> JobView:
        return self.registry.get(job_id)

    async def cancel(self, job_id: str) -> JobView:
        return await self.registry.cancel(job_id)

    async def open_stream(self, job_id: str, last_event_id: int | None) -> AsyncIterator[bytes]:
        return self.registry.open_stream(job_id, last_event_id)


def create_registry(engine: Engine, settings: WorkerSettings) -> RegistryBackend:
    """The backend ``settings.registry_url`` names: None is in-process, ``redis://...`` is Redis Streams."""
    if settings.registry_url is None:
        return InProcessBackend(engine, settings)
    from workers.registry_redis import RedisRegistry  # the `redis` extra is only needed here

    return RedisRegistry(engine, settings, settings.registry_url)
