"""The in-process registry (the default): each job's log is a list of encoded blocks in this process.

Storage and notification only; the lifecycle (`workers.registry.lifecycle`) decides everything else.
Each job keeps its events already encoded as SSE bytes, so a replay to any number of readers is a
slice of a list; the last element of a finished job's log is its ``end``/``error`` event followed
by ``[DONE]``, so event id ``n`` is element ``n - 1``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from workers.config import WorkerSettings
from workers.engines.base import Engine, GenerationRequest
from workers.metrics import JobMetrics
from workers.registry.api import (
    CANCEL_GRACE_S,
    SYSTEM_CLOCK,
    Clock,
    FinalEventDelivered,
    Idempotency,
    IdempotencyKeyReused,
    JobRecord,
    LiveJob,
    QueueFull,
    UnknownJob,
    new_job_id,
)
from workers.registry.lifecycle import DrivesLifecycle, EventKind, Lifecycle, Trigger, new_counters
from workers.sse import SSE_ENCODER, EventEncoder

log = logging.getLogger("workers.registry")

_FINAL = EventKind.FINAL
#: a timer may fire a hair before its deadline by the loop's clock; treat that as due
CLOCK_SLACK_S = 0.001


@dataclass(eq=False)
class Job(LiveJob):
    """A job of the in-process registry: its record, and its log of encoded blocks."""

    events: list[bytes] = field(default_factory=list)
    #: readers attached now, and whether any reader ever attached (an unattached job's TTL runs from submit)
    readers: int = 0
    attached: bool = False
    #: the id of the ``end``/``error`` event once it is in the log
    final_event_id: int | None = None

    @property
    def complete(self) -> bool:
        """The log holds the final event: nothing more will be published."""
        return self.final_event_id is not None

    async def wait_for_events(self, wait_s: float) -> bool:
        """Wait until a new event is published; False on timeout."""
        known = len(self.events)
        try:
            async with asyncio.timeout(wait_s):
                while len(self.events) == known and not self.complete:
                    await self.wait()
            return True
        except TimeoutError:
            return False


class InProcessRegistry(DrivesLifecycle):
    """`workers.registry.api.RegistryBackend` in this process's memory; the lifecycle's `JobStore`."""

    def __init__(
        self,
        engine: Engine,
        settings: WorkerSettings,
        metrics: JobMetrics,
        *,
        encoder: EventEncoder = SSE_ENCODER,
        clock: Clock = SYSTEM_CLOCK,
        new_id: Callable[[], str] = new_job_id,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.metrics = metrics
        self.encoder = encoder
        self.clock = clock
        self.new_id = new_id
        self.counters = new_counters()
        self.lifecycle = Lifecycle(engine, self, metrics=metrics, encoder=encoder, clock=clock, counters=self.counters)
        self.jobs: dict[str, Job] = {}
        #: Idempotency-Key -> (job id, body fingerprint, monotonic expiry): kept for the job TTL
        self.keys: dict[str, tuple[str, str, float]] = {}
        self._readers = 0
        self._sweeper: asyncio.Task[None] | None = None

    # -- the registry's life -------------------------------------------------------------------

    def start(self) -> None:
        self.lifecycle.start()
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever(), name="dualcall-sweeper")

    # begin_drain (DrivesLifecycle): running jobs and their readers go on, since a job cannot leave
    # this process

    async def close(self) -> None:
        await self.lifecycle.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.wait([self._sweeper], timeout=CANCEL_GRACE_S)
        self.jobs.clear()

    # -- gauges ----------------------------------------------------------------------------------

    @property
    def open_readers(self) -> int:
        """Stream readers attached now."""
        return self._readers

    def __len__(self) -> int:
        return len(self.jobs)

    # -- the backend interface ---------------------------------------------------------------------

    async def submit(self, request: GenerationRequest, idempotency: Idempotency | None = None) -> JobRecord:
        return self.submit_now(request, idempotency)

    def submit_now(self, request: GenerationRequest, idempotency: Idempotency | None = None) -> JobRecord:
        """`submit` without a coroutine (the in-process registry needs no I/O to admit a job)."""
        lifecycle = self.lifecycle
        job = lifecycle.new_job(self.new_id(), request, Job)
        if idempotency is not None and (held := self._held(idempotency, request)) is not None:
            return held
        if lifecycle.queued + lifecycle.running >= lifecycle.concurrency + self.settings.queue_limit:
            self.counters["jobs_rejected_queue_full"] += 1
            raise QueueFull(f"{self.settings.queue_limit} jobs already wait for a generation slot")
        self.jobs[job.id] = job
        if idempotency is not None:
            expiry = self.clock.mono() + self.settings.job_ttl_s
            self.keys[idempotency.key] = (job.id, idempotency.fingerprint, expiry)
        lifecycle.launch(job)
        return job

    def _held(self, idempotency: Idempotency, request: GenerationRequest) -> JobRecord | None:
        """The job a live key answers (DC-1.10); raises `IdempotencyKeyReused` for another body (DC-1.11)."""
        entry = self.keys.get(idempotency.key)
        if entry is None or entry[2] <= self.clock.mono():
            return None
        job_id, fingerprint, _ = entry
        if fingerprint != idempotency.fingerprint:
            raise IdempotencyKeyReused(idempotency.key)
        # a job deleted since keeps its id: its stream and status answer 404, as for the first caller
        return self.jobs.get(job_id) or JobRecord(id=job_id, request=request, created_at=self.clock.wall())

    async def get(self, job_id: str) -> Job:
        return self.job(job_id)

    def job(self, job_id: str) -> Job:
        try:
            return self.jobs[job_id]
        except KeyError:
            raise UnknownJob(job_id) from None

    async def cancel(self, job_id: str) -> Job:
        """Stop generation, tell attached readers, and forget the job."""
        job = self.jobs.pop(job_id, None)
        if job is None:
            raise UnknownJob(job_id)
        if self.lifecycle.stop(job, Trigger.DELETE) and job.task is not None:
            await asyncio.wait([job.task], timeout=CANCEL_GRACE_S)
        return job

    async def open_stream(self, job_id: str, last_event_id: int | None) -> AsyncIterator[bytes]:
        return self.stream(self.job(job_id), last_event_id)

    def stream(self, job: Job, last_event_id: int | None) -> AsyncIterator[bytes]:
        """Validate a stream request now (so errors become HTTP statuses), stream later."""
        after = last_event_id or 0
        final = job.final_event_id
        if final is not None and after >= final:
            raise FinalEventDelivered
        job.attached = True
        return self.follow(job, min(after, len(job.events)))

    async def follow(self, job: Job, position: int) -> AsyncIterator[bytes]:
        """Everything from ``position`` on, as it is published; a keep-alive comment when idle.

        What is already in the log goes out in one write (replay is a slice of pre-encoded events);
        a new event is yielded in the loop iteration that published it. The reader holds only its
        position in the shared log. Keep-alive needs no timer per wait: one timer per reader fires
        at most once per interval and re-arms itself while events keep flowing.
        """
        loop = asyncio.get_running_loop()
        keepalive_s = self.settings.keepalive_s
        keepalive = self.encoder.keepalive
        idle_since = loop.time()
        timer: asyncio.TimerHandle | None = None

        def keepalive_due() -> None:
            nonlocal timer
            due = idle_since + keepalive_s
            if loop.time() + CLOCK_SLACK_S >= due:
                timer = None
                job.wake_readers()
            else:
                timer = loop.call_at(due, keepalive_due)

        job.readers += 1
        self._readers += 1
        self.counters["stream_readers"] += 1
        try:
            while True:
                events = job.events
                end = len(events)
                if position < end:
                    yield b"".join(events[position:end]) if end - position > 1 else events[position]
                    position = end
                    idle_since = loop.time()
                    continue
                if job.final_event_id is not None:
                    return
                if timer is None:
                    timer = loop.call_at(idle_since + keepalive_s, keepalive_due)
                await job.wait()
                if position == len(job.events) and loop.time() + CLOCK_SLACK_S >= idle_since + keepalive_s:
                    yield keepalive
                    idle_since = loop.time()
        finally:
            if timer is not None:
                timer.cancel()
            job.readers -= 1
            self._readers -= 1

    # -- the lifecycle's store -------------------------------------------------------------------

    def append(self, job: Job, event_id: int, block: bytes, kind: EventKind) -> bool:
        job.events.append(block)
        if kind is _FINAL:
            job.final_event_id = event_id
        job.wake_readers()
        return False

    async def flush(self, job: Job) -> None:
        """Appends are stored at once."""

    async def running(self, job: Job) -> None:
        """Nothing to record: the job's state is in memory."""

    async def forget(self, job: Job) -> None:
        self.jobs.pop(job.id, None)

    def task_done(self, job: Job) -> None:
        """The job stays in `jobs` for replay until its TTL or a DELETE."""

    # -- reclaim ---------------------------------------------------------------------------

    async def _sweep_forever(self) -> None:
        interval = max(0.05, min(1.0, self.settings.job_ttl_s / 5))
        while True:
            await asyncio.sleep(interval)
            self.sweep()

    def sweep(self, now: float | None = None) -> int:
        """Reclaim unattached jobs past their TTL and finished jobs past their replay TTL."""
        now = self.clock.mono() if now is None else now
        ttl = self.settings.job_ttl_s
        expired = [
            job
            for job in self.jobs.values()
            if (not job.attached and now - job.created_mono > ttl)
            or (job.finished_mono is not None and job.readers == 0 and now - job.finished_mono > ttl)
        ]
        for job in expired:
            del self.jobs[job.id]
            self.lifecycle.stop(job, Trigger.TTL)
            self.counters["jobs_reclaimed"] += 1
            log.info("job reclaimed after its TTL (%gs)", ttl, extra={"job_id": job.id})
        for key in [key for key, (_, _, expiry) in self.keys.items() if expiry <= now]:
            del self.keys[key]
        return len(expired)
