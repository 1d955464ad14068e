"""The one job lifecycle every registry backend drives: the state machine and the job task.

States and who may move a job between them (in the style of h11's ``_state``: a table, not flags)::

    queued  --SLOT (the core: a generation slot is free)----------------------> running
    running --ENGINE_END (the engine's chunks, through `workers.generation`)--> completed
    running --ENGINE_ERROR (the engine raised EngineError)--------------------> failed
    running --ENGINE_CRASH (the engine raised anything else)------------------> failed
    queued/running --DELETE (a client, on any replica)------------------------> cancelled
    queued/running --SHUTDOWN (this process stops)----------------------------> failed
    queued/running --LOST (a reader's replica: the owner's heartbeat is gone)-> failed
    queued/running --TTL (the sweeper, or the store expired the record)-------> (forgotten)

A terminal state has no way out: a second ending is refused (`InvalidTransition`). Every ending but
TTL publishes exactly one final event (`final_event`): ``end`` for completed and cancelled jobs,
``error`` for failed ones. A TTL ending publishes nothing: no reader is attached to a reclaimed job.

`Lifecycle` runs one task per job: wait for a slot, generate, end. The backend is only a `JobStore`:
it stores the encoded event blocks and wakes readers. Policy (the stop reason, the counters, the
latency histograms, what an ending publishes) is decided here, the same way on every backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Callable
from typing import Any, Final, Protocol, TypeVar

from workers.engines.base import Engine, EngineError, GenerationRequest, StopReason
from workers.generation import Generation
from workers.logs import bind_job
from workers.metrics import JobMetrics
from workers.registry.api import CANCEL_GRACE_S, Clock, Draining, LiveJob
from workers.schemas import EndData, ErrorInfo, JobState, StartedData
from workers.sse import EventEncoder

log = logging.getLogger("workers.registry")


class Trigger(enum.Enum):
    SLOT = "slot"
    ENGINE_END = "engine_end"
    ENGINE_ERROR = "engine_error"
    ENGINE_CRASH = "engine_crash"
    DELETE = "delete"
    SHUTDOWN = "shutdown"
    LOST = "lost"
    TTL = "ttl"


#: the state a trigger moves a job to; None: the job is forgotten without a final event
TRANSITIONS: Final[dict[JobState, dict[Trigger, JobState | None]]] = {
    "queued": {
        Trigger.SLOT: "running",
        Trigger.DELETE: "cancelled",
        Trigger.SHUTDOWN: "failed",
        Trigger.LOST: "failed",
        Trigger.TTL: None,
    },
    "running": {
        Trigger.ENGINE_END: "completed",
        Trigger.ENGINE_ERROR: "failed",
        Trigger.ENGINE_CRASH: "failed",
        Trigger.DELETE: "cancelled",
        Trigger.SHUTDOWN: "failed",
        Trigger.LOST: "failed",
        Trigger.TTL: None,
    },
    "completed": {},
    "failed": {},
    "cancelled": {},
}

#: the error event of the endings that do not come from the engine
_ERRORS: Final = {
    Trigger.SHUTDOWN: ErrorInfo(code="shutdown", message="the worker is shutting down"),
    Trigger.ENGINE_CRASH: ErrorInfo(code="internal_error", message="the engine failed unexpectedly"),
}
WORKER_LOST: Final = "worker_lost"
_COUNTER_OF_STATE: Final = {"completed": "jobs_completed", "failed": "jobs_failed", "cancelled": "jobs_cancelled"}


class InvalidTransition(RuntimeError):
    """A trigger that the job's state does not allow (a bug in the caller, never a client's doing)."""


def advance(state: JobState, trigger: Trigger) -> JobState | None:
    """The state ``trigger`` moves a job in ``state`` to (None: forgotten); raises `InvalidTransition`."""
    try:
        return TRANSITIONS[state][trigger]
    except KeyError:
        raise InvalidTransition(f"{trigger.value} is not allowed in state {state}") from None


def final_event(
    state: JobState, trigger: Trigger, tokens_out: int, stop_reason: StopReason | None, error: ErrorInfo | None
) -> tuple[str, EndData | ErrorInfo]:
    """The final event (name, payload) of an ending; ``stop_reason``/``error`` only for engine endings."""
    if state == "completed":
        assert stop_reason is not None
        return "end", EndData(tokens_out=tokens_out, stop_reason=stop_reason)
    if state == "cancelled":
        return "end", EndData(tokens_out=tokens_out, stop_reason="cancelled")
    return "error", error or _ERRORS[trigger]


def new_counters(*extra: str) -> dict[str, int]:
    names = (
        "jobs_submitted",
        "jobs_completed",
        "jobs_failed",
        "jobs_cancelled",
        "jobs_reclaimed",
        "jobs_rejected_queue_full",
        "stream_readers",
        *extra,
    )
    return dict.fromkeys(names, 0)


class StoreRefused(Exception):
    """The store refused a job's event: its record is gone or already final (reclaimed, or declared lost)."""


class StoreUnavailable(Exception):
    """The store cannot be reached: the job stops; readers learn of it from the store (its heartbeat)."""


class EventKind(enum.Enum):
    STARTED = "started"
    TOKEN = "token"
    FINAL = "final"


J = TypeVar("J", bound=LiveJob)
J_contra = TypeVar("J_contra", bound=LiveJob, contravariant=True)


class JobStore(Protocol[J_contra]):
    """What a backend does for the lifecycle: store a job's encoded events and wake its readers."""

    def append(self, job: J_contra, event_id: int, block: bytes, kind: EventKind) -> bool:
        """Store (or queue) event ``event_id``; True when the lifecycle must `flush` before generating more."""

    async def flush(self, job: J_contra) -> None:
        """Wait until every appended block is stored; raise `StoreRefused` / `StoreUnavailable`."""

    async def running(self, job: J_contra) -> None:
        """The job got a generation slot (before its ``started`` event)."""

    async def forget(self, job: J_contra) -> None:
        """The job was reclaimed (TTL): drop what is stored of it."""

    def task_done(self, job: J_contra) -> None:
        """The job's task has ended, whatever the reason; the job is no longer this process's."""


class Lifecycle:
    """Runs every job of one registry: slots, the bounded queue, generation, endings, counters, metrics."""

    def __init__(
        self,
        engine: Engine,
        store: JobStore[Any],
        *,
        metrics: JobMetrics,
        encoder: EventEncoder,
        clock: Clock,
        counters: dict[str, int],
    ) -> None:
        self.engine = engine
        self.store = store
        self.metrics = metrics
        self.encoder = encoder
        self.clock = clock
        self.counters = counters
        #: sized in start(), after the engine has started and knows its batch size
        self.slots = asyncio.Semaphore(1)
        self.queued = 0
        self.running = 0
        self.closing = False
        #: SIGTERM's first step: no new job; the running ones go on (`drained` waits for them)
        self.draining = False
        self._live: dict[str, LiveJob] = {}
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def concurrency(self) -> int:
        return max(1, self.engine.max_concurrency)

    def start(self) -> None:
        """(Re)start on the running loop: an app whose lifespan ended may be served again."""
        self.slots = asyncio.Semaphore(self.concurrency)
        self.closing = False
        self.draining = False

    def jobs(self) -> list[LiveJob]:
        """The jobs whose task has not ended yet."""
        return list(self._live.values())

    def live(self, job_id: str) -> LiveJob | None:
        return self._live.get(job_id)

    # -- entering ----------------------------------------------------------------------------

    def new_job(
        self, job_id: str, request: GenerationRequest, factory: Callable[..., J]
    ) -> J:  # factory: the backend's job class
        if self.closing or self.draining:
            raise Draining("the worker is shutting down")
        return factory(id=job_id, request=request, created_at=self.clock.wall(), created_mono=self.clock.mono())

    def must_queue(self) -> bool:
        """True when a new job would wait for a slot here."""
        return self.queued + self.running >= self.concurrency

    def reserve(self) -> None:
        """Count a job as queued before it is admitted (while a backend awaits its store)."""
        self.queued += 1

    def release(self) -> None:
        """Undo `reserve`: the job was not admitted."""
        self.queued -= 1

    def launch(self, job: LiveJob, *, reserved: bool = False) -> None:
        """Count the job as queued (unless `reserve` did) and start its task (the caller has admitted it)."""
        if not reserved:
            self.queued += 1
        self.counters["jobs_submitted"] += 1
        self._live[job.id] = job
        self._idle.clear()
        job.task = asyncio.get_running_loop().create_task(self._run(job), name=f"dualcall-job-{job.id}")
        job.task.add_done_callback(lambda _task: self._task_done(job))
        # sizes only: prompts and generated text never reach the log at INFO
        log.info(
            "job submitted prompt_chars=%d max_tokens=%d",
            len(job.request.prompt),
            job.request.max_tokens,
            extra={"job_id": job.id},
        )

    # -- stopping from outside ---------------------------------------------------------------

    def stop(self, job: LiveJob, trigger: Trigger) -> bool:
        """Ask a job's task to end with ``trigger`` (DELETE, SHUTDOWN, TTL); False if it is ending already."""
        if job.finished or job.ending is not None or job.task is None or job.task.done():
            return False
        advance(job.state, trigger)  # refuses a trigger the table does not allow, before anything changes
        job.ending = trigger
        job.task.cancel()
        return True

    def begin_drain(self) -> None:
        self.draining = True

    async def drained(self) -> None:
        """Return once every job task of this process has ended."""
        while self._live:
            await self._idle.wait()

    def begin_shutdown(self) -> None:
        self.closing = True
        for job in self.jobs():
            self.stop(job, Trigger.SHUTDOWN)

    async def close(self) -> None:
        self.begin_shutdown()
        tasks = [job.task for job in self.jobs() if job.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=CANCEL_GRACE_S)

    # -- the job task --------------------------------------------------------------------------

    def _task_done(self, job: LiveJob) -> None:
        self._live.pop(job.id, None)
        if not self._live:
            self._idle.set()
        task = job.task
        if task is not None and task.cancelled() and not job.finished:
            # cancelled before its first step: `_run` never ran, so nobody else can end it
            self.queued -= 1
            asyncio.get_running_loop().create_task(self._end_stopped(job), name=f"dualcall-end-{job.id}")
            return
        self.store.task_done(job)
        log.info(
            "job %s tokens_out=%d stop_reason=%s error=%s",
            job.state,
            job.tokens_out,
            job.stop_reason,
            job.error.code if job.error else None,
            extra={"job_id": job.id},
        )

    async def _end_stopped(self, job: LiveJob) -> None:
        try:
            await self._stopped(job)
        finally:
            self.store.task_done(job)

    async def _run(self, job: LiveJob) -> None:
        bind_job(job.id)  # engine log lines from this task name the job
        waiting = True
        try:
            async with self.slots:
                self.queued -= 1
                waiting = False
                self.running += 1
                try:
                    job.state = advance(job.state, Trigger.SLOT) or job.state
                    job.started_at = self.clock.wall()
                    await self.store.running(job)
                    await self._generate(job)
                finally:
                    self.running -= 1
        except asyncio.CancelledError:
            if waiting:
                self.queued -= 1
            await self._stopped(job)
            raise
        except StoreRefused:
            log.info("job %s: the registry refused its events (reclaimed or declared lost)", job.id)
            job.finished_mono = self.clock.mono()
            await self.store.forget(job)
        except StoreUnavailable as exc:  # the log cannot grow: readers learn of it from the store
            log.warning("job %s: stopped, the registry refused its events: %s", job.id, exc)
            job.finished_mono = self.clock.mono()
            self.counters["jobs_failed"] += 1
        except Exception:  # the core must survive any engine bug; the reader gets an error event
            log.exception("job %s: unexpected engine failure", job.id)
            with contextlib.suppress(StoreRefused, StoreUnavailable):
                await self._end(job, Trigger.ENGINE_CRASH)

    async def _stopped(self, job: LiveJob) -> None:
        """End a job stopped from outside with the trigger it was stopped with."""
        trigger = job.ending if isinstance(job.ending, Trigger) else Trigger.DELETE
        if job.finished:
            return
        try:
            await self._end(job, trigger)
        except (StoreRefused, StoreUnavailable) as exc:
            log.warning("job %s: could not record its ending: %s", job.id, exc)

    async def _generate(self, job: LiveJob) -> None:
        store, encoder = self.store, self.encoder
        self._publish(job, encoder.event(job.next_event_id, "started", StartedData(job_id=job.id)), EventKind.STARTED)
        generation = Generation(job.request.max_tokens, job.request.stop)
        timer = self.metrics.timer(job.created_mono, self.clock.mono)
        # the per-token path: locals, no helper calls beyond the generation, the encoder and the store
        feed, encode_token, append, token = generation.feed, encoder.token, store.append, EventKind.TOKEN
        try:
            async with contextlib.aclosing(self.engine.generate(job.request)) as chunks:
                async for chunk in chunks:
                    text = feed(chunk)
                    job.tokens_out = generation.tokens_out
                    if text:
                        event_id = job.next_event_id
                        job.next_event_id = event_id + 1
                        index = job.token_index
                        job.token_index = index + 1
                        timer.token()
                        if append(job, event_id, encode_token(event_id, index, text), token):
                            await store.flush(job)
                    if generation.reason is not None:
                        break  # leaving `aclosing` closes the engine's iterator: it stops computing
            if generation.reason is None:
                text = generation.end()
                if text:
                    timer.token()
                    self._token(job, text)
        except EngineError as exc:
            await self._end(job, Trigger.ENGINE_ERROR, error=ErrorInfo(code=exc.code, message=exc.message))
            return
        await self._end(job, Trigger.ENGINE_END, stop_reason=generation.reason)

    def _token(self, job: LiveJob, text: str) -> bool:
        event_id = job.next_event_id
        job.next_event_id = event_id + 1
        index = job.token_index
        job.token_index = index + 1
        return self.store.append(job, event_id, self.encoder.token(event_id, index, text), EventKind.TOKEN)

    def _publish(self, job: LiveJob, block: bytes, kind: EventKind) -> bool:
        event_id = job.next_event_id
        job.next_event_id = event_id + 1
        return self.store.append(job, event_id, block, kind)

    async def _end(
        self, job: LiveJob, trigger: Trigger, *, stop_reason: StopReason | None = None, error: ErrorInfo | None = None
    ) -> None:
        state = advance(job.state, trigger)
        job.finished_mono = self.clock.mono()
        if state is None:  # TTL: nobody reads it, nothing to publish
            await self.store.forget(job)
            return
        name, payload = final_event(state, trigger, job.tokens_out, stop_reason, error)
        job.state = state
        job.stop_reason = payload.stop_reason if isinstance(payload, EndData) else None
        job.error = payload if isinstance(payload, ErrorInfo) else None
        job.finished_at = self.clock.wall()
        self.counters[_COUNTER_OF_STATE[state]] += 1
        self.metrics.job_finished(state, job.created_mono, job.finished_mono)
        self._publish(job, self.encoder.final(job.next_event_id, name, payload), EventKind.FINAL)
        await self.store.flush(job)


class DrivesLifecycle:
    """What every backend answers straight from its `Lifecycle`: the drain, the shutdown, the gauges."""

    lifecycle: Lifecycle

    @property
    def draining(self) -> bool:
        return self.lifecycle.draining

    def begin_drain(self) -> None:
        """Refuse new jobs; running ones go on (a backend adds what happens to its readers)."""
        self.lifecycle.begin_drain()

    async def drained(self) -> None:
        await self.lifecycle.drained()

    def begin_shutdown(self) -> None:
        """End every open job with an ``error`` event so streams close cleanly."""
        self.lifecycle.begin_shutdown()

    @property
    def active(self) -> int:
        return self.lifecycle.running

    @property
    def queued(self) -> int:
        return self.lifecycle.queued
