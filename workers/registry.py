"""The job registry: ids, event logs, replay/resume, TTL reclaim and the bounded queue.

Every engine plugs in here and no other code touches a job. Each job keeps its events already
encoded as SSE bytes, so a replay to any number of readers is a slice of a list, and the last
element of a finished job's log is the ``[DONE]`` marker (it carries no id).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from workers import sse
from workers.config import WorkerSettings
from workers.engines.base import Engine, EngineError, GenerationRequest, StopReason
from workers.logs import bind_job
from workers.metrics import JobMetrics
from workers.schemas import EndData, ErrorInfo, JobState, StartedData

log = logging.getLogger("workers.registry")

#: seconds a cancelled job's task gets to wind down before DELETE answers anyway
CANCEL_GRACE_S = 5.0
#: a timer may fire a hair before its deadline by the loop's clock; treat that as due
_CLOCK_SLACK_S = 0.001


class UnknownJob(LookupError):
    """No job with this id (never existed, cancelled, or reclaimed)."""


class QueueFull(RuntimeError):
    """Too many jobs wait for a generation slot."""


class FinalEventDelivered(Exception):
    """Resume asked for events after the final one: the stream has nothing left to send."""


def new_job_id() -> str:
    """128 random bits, URL-safe base64 without padding (22 characters)."""
    return secrets.token_urlsafe(16)


@dataclass(eq=False)
class JobRecord:
    """What every registry backend knows of a job it generates: the fields of its `JobStatus`."""

    id: str
    request: GenerationRequest
    created_at: float = field(default_factory=time.time)
    state: JobState = "queued"
    started_at: float | None = None
    finished_at: float | None = None
    tokens_out: int = 0
    stop_reason: StopReason | None = None
    error: ErrorInfo | None = None


@dataclass(eq=False)
class Job(JobRecord):
    #: encoded events; event id ``n`` is at index ``n - 1``; a finished log ends with DONE
    events: list[bytes] = field(default_factory=list)
    readers: int = 0
    attached: bool = False
    task: asyncio.Task[None] | None = None
    #: set before cancelling the task: "shutdown" ends readers with an error event
    cancel_reason: str = "cancelled"
    _token_events: int = 0
    #: one future per job that every waiting reader awaits; replaced after each publish
    _wake: asyncio.Future[None] | None = None
    _created_mono: float = field(default_factory=time.monotonic)
    _finished_mono: float | None = None

    @property
    def finished(self) -> bool:
        return self._finished_mono is not None

    @property
    def final_event_id(self) -> int | None:
        """Id of the ``end``/``error`` event once the job has finished."""
        return len(self.events) - 1 if self.finished else None

    def _publish(self, block: bytes) -> None:
        self.events.append(block)
        self.wake_readers()

    def wake_readers(self) -> None:
        """Resume every reader waiting in `wait_for_events` / `wait` (one future per job, not per reader)."""
        wake = self._wake
        if wake is not None:
            self._wake = None
            if not wake.done():
                wake.set_result(None)

    def emit(self, event: str, payload: object) -> None:
        self._publish(sse.encode_event(len(self.events) + 1, event, payload))

    def emit_token(self, text: str) -> None:
        self._publish(sse.encode_token(len(self.events) + 1, self._token_events, text))
        self._token_events += 1

    def finish(self, state: JobState, *, stop_reason: StopReason | None = None, error: ErrorInfo | None = None) -> None:
        if self.finished:
            return
        self.state = state
        self.stop_reason = stop_reason
        self.error = error
        self.finished_at = time.time()
        self._finished_mono = time.monotonic()
        if error is not None:
            self.emit("error", error)
        else:
            assert stop_reason is not None
            self.emit("end", EndData(tokens_out=self.tokens_out, stop_reason=stop_reason))
        self._publish(sse.DONE)

    async def wait(self) -> None:
        """Wait until the next publish (or `wake_readers`); may return early, so callers re-check.

        All readers of a job await the same future, so a publish costs one future however many
        readers wait. A reader whose own task is cancelled (timeout, disconnect) cancels that shared
        future too; the other readers then see a CancelledError that is not theirs (their task has
        no cancellation pending) and return as if woken.
        """
        wake = self._wake
        if wake is None:
            wake = self._wake = asyncio.get_running_loop().create_future()
        try:
            await wake
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is None or task.cancelling():
                raise
            if self._wake is wake:
                self._wake = None

    async def wait_for_events(self, wait_s: float) -> bool:
        """Wait until a new event is published; False on timeout."""
        known = len(self.events)
        try:
            async with asyncio.timeout(wait_s):
                while len(self.events) == known and not self.finished:
                    await self.wait()
            return True
        except TimeoutError:
            return False


class JobRegistry:
    def __init__(self, engine: Engine, settings: WorkerSettings) -> None:
        self.engine = engine
        self.settings = settings
        self._jobs: dict[str, Job] = {}
        #: sized in start(), after the engine has started and knows its batch size
        self._slots = asyncio.Semaphore(1)
        self._queued = 0
        self._running = 0
        self._sweeper: asyncio.Task[None] | None = None
        self._closing = False
        self.counters: dict[str, int] = {
            "jobs_submitted": 0,
            "jobs_completed": 0,
            "jobs_failed": 0,
            "jobs_cancelled": 0,
            "jobs_reclaimed": 0,
            "jobs_rejected_queue_full": 0,
            "stream_readers": 0,
        }
        self.metrics = JobMetrics(self)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self._slots = asyncio.Semaphore(max(1, self.engine.max_concurrency))
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever(), name="dualcall-sweeper")

    def begin_shutdown(self) -> None:
        """End every open job with an ``error`` event so streams close cleanly."""
        self._closing = True
        for job in list(self._jobs.values()):
            if job.task is not None and not job.task.done():
                job.cancel_reason = "shutdown"
                job.task.cancel()

    async def close(self) -> None:
        self.begin_shutdown()
        tasks = [job.task for job in self._jobs.values() if job.task is not None]
        if self._sweeper is not None:
            self._sweeper.cancel()
            tasks.append(self._sweeper)
        if tasks:
            await asyncio.wait(tasks, timeout=CANCEL_GRACE_S)
        self._jobs.clear()

    # -- jobs ------------------------------------------------------------------------------

    @property
    def active(self) -> int:
        return self._running

    @property
    def queued(self) -> int:
        return self._queued

    @property
    def open_readers(self) -> int:
        """Stream readers attached now, to retained jobs."""
        return sum(job.readers for job in self._jobs.values())

    def __len__(self) -> int:
        return len(self._jobs)

    def submit(self, request: GenerationRequest) -> Job:
        if self._closing:
            raise QueueFull("worker is shutting down")
        capacity = max(1, self.engine.max_concurrency) + self.settings.queue_limit
        if self._queued + self._running >= capacity:
            self.counters["jobs_rejected_queue_full"] += 1
            raise QueueFull(f"{self.settings.queue_limit} jobs already wait for a generation slot")
        job = Job(id=new_job_id(), request=request)
        self._jobs[job.id] = job
        self._queued += 1
        self.counters["jobs_submitted"] += 1
        job.task = asyncio.get_running_loop().create_task(self._run(job), name=f"dualcall-job-{job.id}")
        job.task.add_done_callback(functools.partial(self._task_done, job))
        # sizes only: prompts and generated text never reach the log at INFO
        log.info(
            "job submitted prompt_chars=%d max_tokens=%d",
            len(request.prompt),
            request.max_tokens,
            extra={"job_id": job.id},
        )
        return job

    def _task_done(self, job: Job, task: asyncio.Task[None]) -> None:
        """A task cancelled before its first step never enters `_run`, so its handler cannot run."""
        if task.cancelled() and not job.finished:
            self._queued -= 1
            self._end_cancelled(job)
        if job._finished_mono is not None:
            self.metrics.job_finished(job, job._created_mono, job._finished_mono)
        log.info(
            "job %s tokens_out=%d stop_reason=%s error=%s",
            job.state,
            job.tokens_out,
            job.stop_reason,
            job.error.code if job.error else None,
            extra={"job_id": job.id},
        )

    def get(self, job_id: str) -> Job:
        try:
            return self._jobs[job_id]
        except KeyError:
            raise UnknownJob(job_id) from None

    async def cancel(self, job_id: str) -> Job:
        """Stop generation, tell attached readers, and forget the job."""
        job = self._jobs.pop(job_id, None)
        if job is None:
            raise UnknownJob(job_id)
        if job.task is not None and not job.task.done():
            job.task.cancel()
            await asyncio.wait([job.task], timeout=CANCEL_GRACE_S)
        return job

    def open_stream(self, job_id: str, last_event_id: int | None) -> AsyncIterator[bytes]:
        """Validate a stream request now (so errors become HTTP statuses), stream later."""
        job = self.get(job_id)
        after = last_event_id or 0
        final = job.final_event_id
        if final is not None and after >= final:
            raise FinalEventDelivered
        job.attached = True
        return self._follow(job, min(after, len(job.events)))

    async def _follow(self, job: Job, position: int) -> AsyncIterator[bytes]:
        """Everything from ``position`` on, as it is published; a keep-alive comment when idle.

        What is already in the log goes out in one write (replay is a slice of pre-encoded events);
        a new event is yielded in the loop iteration that published it. The reader holds only its
        position in the shared log. Keep-alive needs no timer per wait: one timer per reader fires
        at most once per interval and re-arms itself while events keep flowing.
        """
        loop = asyncio.get_running_loop()
        keepalive_s = self.settings.keepalive_s
        idle_since = loop.time()
        timer: asyncio.TimerHandle | None = None

        def keepalive_due() -> None:
            nonlocal timer
            due = idle_since + keepalive_s
            if loop.time() + _CLOCK_SLACK_S >= due:
                timer = None
                job.wake_readers()
            else:
                timer = loop.call_at(due, keepalive_due)

        job.readers += 1
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
                if job.finished:
                    return
                if timer is None:
                    timer = loop.call_at(idle_since + keepalive_s, keepalive_due)
                await job.wait()
                if position == len(job.events) and loop.time() + _CLOCK_SLACK_S >= idle_since + keepalive_s:
                    yield sse.KEEPALIVE
                    idle_since = loop.time()
        finally:
            if timer is not None:
                timer.cancel()
            job.readers -= 1

    # -- generation ------------------------------------------------------------------------

    async def _run(self, job: Job) -> None:
        bind_job(job.id)  # engine log lines from this task name the job
        try:
            async with self._slots:
                self._queued -= 1
                self._running += 1
                try:
                    await self._generate(job)
                finally:
                    self._running -= 1
        except asyncio.CancelledError:
            if job.state == "queued":
                self._queued -= 1
            self._end_cancelled(job)
            raise
        except Exception:  # the core must survive any engine bug; the reader gets an error event
            log.exception("job %s: unexpected engine failure", job.id)
            job.finish("failed", error=ErrorInfo(code="internal_error", message="the engine failed unexpectedly"))
            self.counters["jobs_failed"] += 1

    async def _generate(self, job: Job) -> None:
        job.state = "running"
        job.started_at = time.time()
        job.emit("started", StartedData(job_id=job.id))
        stop_reason: StopReason | None = None
        timer = self.metrics.timer(job._created_mono)
        try:
            async with contextlib.aclosing(self.engine.generate(job.request)) as chunks:
                async for chunk in chunks:
                    job.tokens_out += chunk.tokens
                    if chunk.text:
                        job.emit_token(chunk.text)
                        timer.token()
                    if chunk.stop_reason is not None:
                        stop_reason = chunk.stop_reason
                        break
        except EngineError as exc:
            job.finish("failed", error=ErrorInfo(code=exc.code, message=exc.message))
            self.counters["jobs_failed"] += 1
            return
        if stop_reason is None:
            stop_reason = "max_tokens" if job.tokens_out >= job.request.max_tokens else "eos"
        job.finish("completed", stop_reason=stop_reason)
        self.counters["jobs_completed"] += 1

    def _end_cancelled(self, job: Job) -> None:
        if job.finished:
            return
        if job.cancel_reason == "shutdown":
            job.finish("failed", error=ErrorInfo(code="shutdown", message="the worker is shutting down"))
            self.counters["jobs_failed"] += 1
        else:
            job.finish("cancelled", stop_reason="cancelled")
            self.counters["jobs_cancelled"] += 1

    # -- reclaim ---------------------------------------------------------------------------

    async def _sweep_forever(self) -> None:
        interval = max(0.05, min(1.0, self.settings.job_ttl_s / 5))
        while True:
            await asyncio.sleep(interval)
            self.sweep()

    def sweep(self, now: float | None = None) -> int:
        """Reclaim unattached jobs past their TTL and finished jobs past their replay TTL."""
        now = time.monotonic() if now is None else now
        ttl = self.settings.job_ttl_s
        expired = [
            job
            for job in self._jobs.values()
            if (not job.attached and now - job._created_mono > ttl)
            or (job._finished_mono is not None and job.readers == 0 and now - job._finished_mono > ttl)
        ]
        for job in expired:
            del self._jobs[job.id]
            if job.task is not None and not job.task.done():
                job.task.cancel()
            self.counters["jobs_reclaimed"] += 1
            log.info("job reclaimed after its TTL (%gs)", ttl, extra={"job_id": job.id})
        return len(expired)
