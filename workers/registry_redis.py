"""The job registry on Redis Streams: every replica of a pool serves any job's status, stream and DELETE.

A job runs on the replica that accepted its POST (the *owner*); its log lives in Redis, so readers
may attach to any replica. Keys of one job (see docs/scaling.md for the whole picture):

* ``dualcall:job:<id>`` — hash: request, state, timestamps, ``tokens_out``, ``n`` (last event id),
  ``final`` (id of the ``end``/``error`` event), flags ``attached``, ``cancel``, ``deleted``, ``owner``;
  its expiry is the job TTL;
* ``dualcall:events:<id>`` — stream: entry ``0-<event id>`` holds field ``b``, the SSE bytes exactly as
  `workers.sse` encodes them (replay is XRANGE/XREAD, never a re-encode); the final entry carries the
  ``end``/``error`` event followed by ``[DONE]``, and a field ``f``;
* ``dualcall:alive:<id>`` — the owner's heartbeat: a key with a ``lost_after_s`` expiry, refreshed
  every ``lost_after_s / 4`` while the job is queued or running.

Every append is a compare-and-set on the record's last event id ``n`` (and is refused once ``final``
is set). So when a reader finds the heartbeat gone and writes ``error {code: worker_lost}`` on the
dead owner's behalf, a stalled owner that wakes up again cannot add anything after it: its append
is refused and it stops. The scripts are in `workers.registry_redis_scripts`.

Pool-wide, ``dualcall:queue`` (a sorted set scored by the owner's last heartbeat) counts the jobs
that wait for a generation slot on any replica: "queue full" means ``queue_limit`` jobs wait in
the whole pool. DELETE on any replica sets the job's ``cancel`` flag and publishes the id on
``dualcall:cancel``; the owner cancels at once on the message, or at its next heartbeat from the flag.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from workers import sse
from workers.config import WorkerSettings
from workers.engines.base import Engine, EngineError, GenerationRequest, StopReason
from workers.metrics import JobMetrics
from workers.problems import ProblemException
from workers.registry import CANCEL_GRACE_S, FinalEventDelivered, JobRecord, QueueFull, UnknownJob, new_job_id
from workers.registry_redis_scripts import APPEND, CANCEL, FORGET, OPEN, SUBMIT, TOUCH
from workers.schemas import EndData, ErrorInfo, JobState, StartedData, TokenData

log = logging.getLogger("workers.registry_redis")

#: seconds without a heartbeat after which a queued or running job counts as lost (``?lost_after_s=``)
DEFAULT_LOST_AFTER_S: Final = 5.0
#: seconds an event log outlives its job record, so a reader mid-replay can finish when the TTL strikes
STREAM_GRACE_S: Final = 10.0
#: events the owner may queue ahead of its writer before the generation waits for Redis
MAX_PENDING_EVENTS: Final = 256
#: entries one XREAD returns at most
READ_BATCH: Final = 1024
#: seconds between polls while DELETE waits for the owner to write the final event
CANCEL_POLL_S: Final = 0.02
CANCEL_CHANNEL: Final = "dualcall:cancel"
QUEUE_KEY: Final = "dualcall:queue"
MIN_SERVER_MAJOR: Final = 5  # Redis Streams

WORKER_LOST: Final = "worker_lost"
REGISTRY_UNAVAILABLE: Final = "registry_unavailable"


def meta_key(job_id: str) -> str:
    return f"dualcall:job:{job_id}"


def events_key(job_id: str) -> str:
    return f"dualcall:events:{job_id}"


def alive_key(job_id: str) -> str:
    return f"dualcall:alive:{job_id}"


def parse_registry_url(url: str) -> tuple[str, float]:
    """Split our own option ``lost_after_s`` off a redis URL; ValueError names a bad value."""
    parts = urlsplit(url)
    lost_after_s = DEFAULT_LOST_AFTER_S
    kept: list[tuple[str, str]] = []
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name != "lost_after_s":
            kept.append((name, value))
            continue
        try:
            lost_after_s = float(value)
        except ValueError:
            lost_after_s = -1.0
        if not 0 < lost_after_s < 3600:
            raise ValueError(f"lost_after_s must be a number of seconds in (0, 3600), got {value!r}")
    return urlunsplit(parts._replace(query=urlencode(kept))), lost_after_s


async def check_registry(url: str) -> str:
    """Connect once and check the server has Streams; return a one-line description or raise ValueError."""
    redis_url, lost_after_s = parse_registry_url(url)
    client = aioredis.Redis.from_url(redis_url, socket_connect_timeout=5, socket_timeout=5)
    try:
        info = await client.info("server")
    except (RedisError, OSError) as exc:
        raise ValueError(f"cannot reach the registry at {redis_url}: {exc}") from None
    finally:
        await client.aclose()
    version = str(info.get("redis_version", "0"))
    if int(version.split(".", maxsplit=1)[0]) < MIN_SERVER_MAJOR:
        raise ValueError(f"the registry at {redis_url} runs Redis {version}; Streams need Redis 5 or newer")
    return f"Redis {version} at {redis_url}, jobs lost after {lost_after_s:g}s without a heartbeat"


class JobLost(Exception):
    """The job's record is gone or already final: it was reclaimed, deleted or declared lost elsewhere."""


@dataclass(frozen=True, slots=True)
class JobSnapshot:
    """A job as its Redis record describes it (status answers on any replica)."""

    id: str
    request: GenerationRequest
    state: JobState
    tokens_out: int
    created_at: float
    started_at: float | None
    finished_at: float | None
    stop_reason: StopReason | None
    error: ErrorInfo | None


@dataclass(eq=False)
class OwnedJob(JobRecord):
    """A job generating (or waiting for a slot) on this replica."""

    task: asyncio.Task[None] | None = None
    #: "shutdown" ends readers with an error event; "reclaimed" publishes nothing (the record is gone)
    cancel_reason: str = "cancelled"
    in_pool_queue: bool = False
    entered: bool = False
    finished: bool = False
    next_event_id: int = 1
    token_events: int = 0
    #: events encoded but not yet in Redis, and the record fields they update
    pending: list[tuple[int, bytes]] = field(default_factory=list)
    pending_fields: dict[str, str] = field(default_factory=dict)
    final_queued: bool = False
    writer: asyncio.Task[None] | None = None
    #: why the writer stopped: JobLost (the record refused the append) or a RedisError
    write_failure: Exception | None = None


def _text(meta: Mapping[Any, Any], name: str) -> str | None:
    value = meta.get(name.encode())
    return None if value is None or value == b"" else value.decode()


def _float(meta: Mapping[Any, Any], name: str) -> float | None:
    value = _text(meta, name)
    return None if value is None else float(value)


def snapshot_from_meta(job_id: str, meta: Mapping[Any, Any]) -> JobSnapshot:
    error = meta.get(b"error")
    return JobSnapshot(
        id=job_id,
        request=msgspec.json.decode(meta[b"request"], type=GenerationRequest),
        state=(_text(meta, "state") or "queued"),  # type: ignore[arg-type]
        tokens_out=int(_text(meta, "tokens_out") or 0),
        created_at=_float(meta, "created_at") or 0.0,
        started_at=_float(meta, "started_at"),
        finished_at=_float(meta, "finished_at"),
        stop_reason=_text(meta, "stop_reason"),  # type: ignore[arg-type]
        error=None if not error else msgspec.json.decode(error, type=ErrorInfo),
    )


def _entries(reply: Any) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """The entries of a one-stream XREAD reply (RESP2: ``[[key, entries]]``; RESP3: ``{key: [entries]}``)."""
    if not reply:
        return []
    if isinstance(reply, dict):
        (entries,) = reply.values()
        return list(entries[0] if entries and isinstance(entries[0], list) else entries)
    return list(reply[0][1])


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


class RedisRegistry:
    """`workers.registry_api.RegistryBackend` on Redis Streams; see the module docstring."""

    def __init__(self, engine: Engine, settings: WorkerSettings, url: str) -> None:
        redis_url, self.lost_after_s = parse_registry_url(url)
        self.engine = engine
        self.settings = settings
        self.redis = aioredis.Redis.from_url(redis_url)
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.heartbeat_s = self.lost_after_s / 4
        self._local: dict[str, OwnedJob] = {}
        self._slots = asyncio.Semaphore(1)
        self._queued = 0
        self._running = 0
        self._closing = False
        self._background: set[asyncio.Task[None]] = set()
        self._submit = self.redis.register_script(SUBMIT)
        self._append_script = self.redis.register_script(APPEND)
        self._open = self.redis.register_script(OPEN)
        self._touch = self.redis.register_script(TOUCH)
        self._cancel = self.redis.register_script(CANCEL)
        self._forget = self.redis.register_script(FORGET)
        self.counters: dict[str, int] = {
            "jobs_submitted": 0,
            "jobs_completed": 0,
            "jobs_failed": 0,
            "jobs_cancelled": 0,
            "jobs_reclaimed": 0,
            "jobs_rejected_queue_full": 0,
            "stream_readers": 0,
            "jobs_lost_declared": 0,
        }
        #: stream readers attached to this replica now
        self.open_readers = 0
        #: counters and gauges of this replica; the latency histograms are the in-process registry's only
        self.metrics = JobMetrics(self)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self._slots = asyncio.Semaphore(max(1, self.engine.max_concurrency))
        self._spawn(self._heartbeat_forever(), "dualcall-heartbeat")
        self._spawn(self._listen_for_cancels(), "dualcall-cancel-listener")

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def begin_shutdown(self) -> None:
        self._closing = True
        for job in list(self._local.values()):
            if job.task is not None and not job.task.done():
                job.cancel_reason = "shutdown"
                job.task.cancel()

    async def close(self) -> None:
        self.begin_shutdown()
        jobs = [job.task for job in self._local.values() if job.task is not None]
        if jobs:
            await asyncio.wait(jobs, timeout=CANCEL_GRACE_S)
        for task in list(self._background):
            task.cancel()
        if self._background:
            await asyncio.wait(list(self._background), timeout=CANCEL_GRACE_S)
        self._local.clear()
        await self.redis.aclose()

    # -- gauges (this replica) ---------------------------------------------------------------

    @property
    def active(self) -> int:
        return self._running

    @property
    def queued(self) -> int:
        return self._queued

    def __len__(self) -> int:
        return len(self._local)

    @contextlib.contextmanager
    def _answer_503_without_redis(self) -> Iterator[None]:
        """A request that needs Redis while it is unreachable gets a 503 problem, not a 500."""
        try:
            yield
        except RedisError as exc:
            log.warning("registry unreachable: %s", exc)
            raise ProblemException(
                503,
                "registry-unavailable",
                "The job registry (Redis) is unreachable; retry later.",
                headers={"Retry-After": str(self.settings.retry_after_s)},
            ) from None

    # -- jobs ------------------------------------------------------------------------------

    async def submit(self, request: GenerationRequest) -> OwnedJob:
        if self._closing:
            raise QueueFull("worker is shutting down")
        must_queue = self._queued + self._running >= max(1, self.engine.max_concurrency)
        job = OwnedJob(id=new_job_id(), request=request, in_pool_queue=must_queue)
        self._queued += 1  # reserved before the await, so concurrent submits count it
        try:
            with self._answer_503_without_redis():
                admitted = await self._submit(
                    keys=[QUEUE_KEY, meta_key(job.id), alive_key(job.id)],
                    args=[
                        job.id,
                        _ms(time.time()),
                        _ms(self.lost_after_s),
                        self.settings.queue_limit,
                        int(must_queue),
                        _ms(self.settings.job_ttl_s),
                        self.owner,
                        msgspec.json.encode(request),
                        repr(job.created_at),
                    ],
                )
        except BaseException:
            self._queued -= 1
            raise
        if not admitted:
            self._queued -= 1
            self.counters["jobs_rejected_queue_full"] += 1
            raise QueueFull(f"{self.settings.queue_limit} jobs already wait for a generation slot in the pool")
        self._local[job.id] = job
        self.counters["jobs_submitted"] += 1
        job.task = asyncio.get_running_loop().create_task(self._run(job), name=f"dualcall-job-{job.id}")
        job.task.add_done_callback(functools.partial(self._task_done, job))
        return job

    async def get(self, job_id: str) -> JobSnapshot:
        with self._answer_503_without_redis():
            meta = await self.redis.hgetall(meta_key(job_id))
        if not meta or b"deleted" in meta:
            raise UnknownJob(job_id)
        return snapshot_from_meta(job_id, meta)

    async def cancel(self, job_id: str) -> JobSnapshot:
        """Mark the job deleted (404 from now on), stop its generation wherever it runs, answer its last state."""
        with self._answer_503_without_redis():
            return await self._cancel_job(job_id)

    async def _cancel_job(self, job_id: str) -> JobSnapshot:
        verdict = await self._cancel(keys=[meta_key(job_id), events_key(job_id)], args=[_ms(STREAM_GRACE_S)])
        if verdict is None:
            raise UnknownJob(job_id)
        if verdict == 0:
            local = self._local.get(job_id)
            if local is not None and local.task is not None:
                local.task.cancel()
            else:
                await self.redis.publish(CANCEL_CHANNEL, job_id)
            await self._await_final(job_id)
        meta = await self.redis.hgetall(meta_key(job_id))
        if not meta:
            raise UnknownJob(job_id)
        return snapshot_from_meta(job_id, meta)

    async def _await_final(self, job_id: str) -> None:
        """Wait (bounded) for the owner's final event; end the job here if the owner is gone."""
        deadline = time.monotonic() + CANCEL_GRACE_S
        while time.monotonic() < deadline:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.hmget(meta_key(job_id), ["final", "n", "tokens_out"])
                pipe.exists(alive_key(job_id))
                (final, last, tokens_out), alive = await pipe.execute()
            if final is not None or last is None:
                return
            if not alive:
                payload = EndData(tokens_out=int(tokens_out or 0), stop_reason="cancelled")
                fields = {"state": "cancelled", "stop_reason": "cancelled"}
                await self._append_on_behalf(job_id, int(last) + 1, "end", payload, fields)
                continue
            await asyncio.sleep(CANCEL_POLL_S)

    async def open_stream(self, job_id: str, last_event_id: int | None) -> AsyncIterator[bytes]:
        now = time.time()
        with self._answer_503_without_redis():
            position = await self._open(
                keys=[meta_key(job_id), events_key(job_id)],
                args=[
                    last_event_id or 0,
                    _ms(self.lost_after_s + self.settings.job_ttl_s),
                    _ms(self.settings.job_ttl_s),
                    _ms(now),
                    _ms(STREAM_GRACE_S),
                ],
            )
        if position is None:
            raise UnknownJob(job_id)
        if position == -1:
            raise FinalEventDelivered
        return self._follow(job_id, int(position))

    async def _follow(self, job_id: str, position: int) -> AsyncIterator[bytes]:
        """Replay then tail the log with XREAD BLOCK; between entries, check the owner's heartbeat."""
        self.counters["stream_readers"] += 1
        self.open_readers += 1
        try:
            async for block in self._tail(job_id, position):
                yield block
        finally:
            self.open_readers -= 1

    async def _tail(self, job_id: str, position: int) -> AsyncIterator[bytes]:
        stream = events_key(job_id)
        block_ms = _ms(min(self.settings.keepalive_s, self.lost_after_s / 2))
        last_sent = time.monotonic()
        while True:
            if self._closing and job_id not in self._local:
                # the job generates elsewhere: drop the connection (no [DONE]) so the client resumes
                # with Last-Event-ID on another replica, instead of holding this one's shutdown
                return
            try:
                reply = _entries(await self.redis.xread({stream: f"0-{position}"}, count=READ_BATCH, block=block_ms))
                if not reply:
                    verdict = await self._check_owner(job_id)
            except RedisError as exc:
                log.warning("job %s: registry unreachable while streaming: %s", job_id, exc)
                yield self._local_error(position, REGISTRY_UNAVAILABLE, "the job registry (Redis) is unreachable")
                return
            if reply:
                blocks = [fields[b"b"] for _, fields in reply]
                position = int(reply[-1][0].split(b"-")[1])
                yield b"".join(blocks) if len(blocks) > 1 else blocks[0]
                if b"f" in reply[-1][1]:
                    return
                last_sent = time.monotonic()
                continue
            if verdict == "gone":
                yield self._local_error(position, WORKER_LOST, "the job's record is gone from the registry")
                return
            if time.monotonic() - last_sent >= self.settings.keepalive_s:
                yield sse.KEEPALIVE
                last_sent = time.monotonic()

    @staticmethod
    def _local_error(position: int, code: str, message: str) -> bytes:
        """An error event for this reader alone, when nothing can be written to the log."""
        return sse.encode_event(position + 1, "error", ErrorInfo(code=code, message=message)) + sse.DONE

    async def _check_owner(self, job_id: str) -> str:
        """ "live", "gone" (no record, no log), or "declared" after ending a lost owner's job."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hmget(meta_key(job_id), ["final", "n"])
            pipe.exists(alive_key(job_id))
            pipe.exists(events_key(job_id))
            (final, last), alive, logged = await pipe.execute()
        if last is None:
            return "live" if logged else "gone"
        if final is not None or alive:
            return "live"
        message = f"the replica generating this job stopped sending heartbeats for {self.lost_after_s:g}s"
        fields = {"state": "failed"}
        if await self._append_on_behalf(
            job_id, int(last) + 1, "error", ErrorInfo(code=WORKER_LOST, message=message), fields
        ):
            self.counters["jobs_lost_declared"] += 1
            log.warning("job %s: owner lost, ended with worker_lost", job_id)
        return "declared"

    async def _append_on_behalf(
        self, job_id: str, event_id: int, event: str, payload: object, fields: dict[str, str]
    ) -> bool:
        """Write the final event of a job whose owner's heartbeat is gone; False if someone else wrote first."""
        if isinstance(payload, ErrorInfo):
            fields = {**fields, "error": msgspec.json.encode(payload).decode()}
        block = sse.encode_event(event_id, event, payload) + sse.DONE
        fields = {**fields, "finished_at": repr(time.time())}
        written = await self._append_script(
            keys=[meta_key(job_id), events_key(job_id), alive_key(job_id)],
            args=self._append_args([(event_id, block)], final=True, on_behalf=True, fields=fields),
        )
        return bool(written == 1)

    def _append_args(
        self, events: list[tuple[int, bytes]], *, final: bool, on_behalf: bool, fields: dict[str, str]
    ) -> list[Any]:
        args: list[Any] = [
            len(events),
            int(final),
            _ms(STREAM_GRACE_S),
            _ms(self.settings.job_ttl_s),
            _ms(time.time()),
            int(on_behalf),
        ]
        for event_id, block in events:
            args += [event_id, block]
        for name, value in fields.items():
            args += [name, value]
        return args

    # -- generation (owner side) ---------------------------------------------------------------

    async def _append(self, job: OwnedJob, event: str, payload: object, fields: dict[str, str], final: bool) -> None:
        """Queue an event for the job's writer; wait for it only at the end or when the writer lags.

        One writer task per job sends what has piled up as one script call, so a fast engine pays one
        round trip per batch, not per token; a slow engine's token still leaves at once.
        """
        if job.write_failure is not None:
            raise job.write_failure
        block = sse.encode_event(job.next_event_id, event, payload)
        if final:
            block += sse.DONE
            job.final_queued = True
        job.pending.append((job.next_event_id, block))
        job.pending_fields.update(fields)
        job.next_event_id += 1
        if job.writer is None:
            job.writer = asyncio.get_running_loop().create_task(self._write(job), name=f"dualcall-write-{job.id}")
        if final or len(job.pending) >= MAX_PENDING_EVENTS:
            await self._written(job)

    async def _written(self, job: OwnedJob) -> None:
        """Wait until the writer has sent everything queued; raise what stopped it."""
        while job.writer is not None:
            await asyncio.shield(job.writer)
        if job.write_failure is not None:
            raise job.write_failure

    async def _write(self, job: OwnedJob) -> None:
        try:
            while job.pending:
                events, job.pending = job.pending, []
                fields, job.pending_fields = job.pending_fields, {}
                written = await self._append_script(
                    keys=[meta_key(job.id), events_key(job.id), alive_key(job.id)],
                    args=self._append_args(events, final=job.final_queued, on_behalf=False, fields=fields),
                )
                if written != 1:
                    job.write_failure = JobLost(job.id)
                    break
        except RedisError as exc:
            job.write_failure = exc
        finally:
            job.pending.clear()
            job.writer = None

    async def _finish(
        self, job: OwnedJob, state: JobState, *, stop_reason: StopReason | None = None, error: ErrorInfo | None = None
    ) -> None:
        if job.finished:
            return
        job.finished = True
        job.state = state
        job.stop_reason = stop_reason
        job.error = error
        job.finished_at = time.time()
        fields = {"state": state, "finished_at": repr(job.finished_at), "tokens_out": str(job.tokens_out)}
        if error is not None:
            fields["error"] = msgspec.json.encode(error).decode()
            await self._append(job, "error", error, fields, final=True)
        else:
            assert stop_reason is not None
            fields["stop_reason"] = stop_reason
            await self._append(job, "end", EndData(tokens_out=job.tokens_out, stop_reason=stop_reason), fields, True)

    def _task_done(self, job: OwnedJob, task: asyncio.Task[None]) -> None:
        """A task cancelled before its first step never enters `_run`: end the job from here."""
        if task.cancelled() and not job.entered:
            self._queued -= 1
            self._local.pop(job.id, None)
            self._spawn(self._end_cancelled(job), f"dualcall-cancel-{job.id}")

    async def _run(self, job: OwnedJob) -> None:
        job.entered = True
        try:
            async with self._slots:
                self._queued -= 1
                self._running += 1
                job.state = "running"
                try:
                    await self._generate(job)
                finally:
                    self._running -= 1
        except asyncio.CancelledError:
            if job.state == "queued":
                self._queued -= 1
            await self._end_cancelled(job)
            raise
        except JobLost:
            job.finished = True
            if await self._forget_if_reclaimed(job):
                self.counters["jobs_reclaimed"] += 1
        except RedisError as exc:  # the log cannot grow: readers learn of it from the heartbeat, which stops
            log.warning("job %s: stopped, the registry refused its events: %s", job.id, exc)
            self.counters["jobs_failed"] += 1
        except Exception:  # an engine bug: the reader gets an error event
            log.exception("job %s: unexpected failure", job.id)
            self.counters["jobs_failed"] += 1
            with contextlib.suppress(RedisError, JobLost):
                await self._finish(
                    job, "failed", error=ErrorInfo(code="internal_error", message="the engine failed unexpectedly")
                )
        finally:
            self._local.pop(job.id, None)
            if job.in_pool_queue:
                with contextlib.suppress(RedisError):
                    await self.redis.zrem(QUEUE_KEY, job.id)

    async def _generate(self, job: OwnedJob) -> None:
        if job.in_pool_queue:
            job.in_pool_queue = False
            await self.redis.zrem(QUEUE_KEY, job.id)
        job.started_at = time.time()
        await self._append(
            job, "started", StartedData(job_id=job.id), {"state": "running", "started_at": repr(job.started_at)}, False
        )
        stop_reason: StopReason | None = None
        try:
            async with contextlib.aclosing(self.engine.generate(job.request)) as chunks:
                async for chunk in chunks:
                    job.tokens_out += chunk.tokens
                    if chunk.text:
                        payload = TokenData(index=job.token_events, text=chunk.text)
                        await self._append(job, "token", payload, {"tokens_out": str(job.tokens_out)}, False)
                        job.token_events += 1
                    if chunk.stop_reason is not None:
                        stop_reason = chunk.stop_reason
                        break
        except EngineError as exc:
            await self._finish(job, "failed", error=ErrorInfo(code=exc.code, message=exc.message))
            self.counters["jobs_failed"] += 1
            return
        if stop_reason is None:
            stop_reason = "max_tokens" if job.tokens_out >= job.request.max_tokens else "eos"
        await self._finish(job, "completed", stop_reason=stop_reason)
        self.counters["jobs_completed"] += 1

    async def _forget_if_reclaimed(self, job: OwnedJob) -> bool:
        """After a refused append: True (and the log dropped) when the TTL took the record, False when
        another replica wrote the job's end (it declared this replica lost) and the log must stay."""
        try:
            forgotten = await self._forget(keys=[meta_key(job.id), events_key(job.id), alive_key(job.id)])
        except RedisError:
            return False
        return bool(forgotten == 1)

    async def _end_cancelled(self, job: OwnedJob) -> None:
        if job.finished:
            return
        if job.cancel_reason == "reclaimed":
            job.finished = True
            await self._forget_if_reclaimed(job)
            return
        try:
            if job.cancel_reason == "shutdown":
                await self._finish(
                    job, "failed", error=ErrorInfo(code="shutdown", message="the worker is shutting down")
                )
                self.counters["jobs_failed"] += 1
            else:
                await self._finish(job, "cancelled", stop_reason="cancelled")
                self.counters["jobs_cancelled"] += 1
        except (RedisError, JobLost) as exc:
            log.warning("job %s: could not record the cancellation: %s", job.id, exc)

    # -- the owner's watch: heartbeats, cancel flags, reclaim ----------------------------------

    async def _heartbeat_forever(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self.heartbeat_s)
            try:
                await self.heartbeat()
            except RedisError as exc:
                if not failing:
                    log.warning("heartbeats fail (%s); readers will count this replica's jobs as lost", exc)
                failing = True
            else:
                if failing:
                    log.warning("heartbeats back")
                failing = False

    async def heartbeat(self) -> None:
        """Refresh the heartbeat of every job this replica holds; stop the cancelled and the reclaimed."""
        jobs = [job for job in self._local.values() if not job.finished]
        if not jobs:
            return
        now_ms = _ms(time.time())
        async with self.redis.pipeline(transaction=False) as pipe:
            for job in jobs:
                await self._touch(
                    keys=[meta_key(job.id), alive_key(job.id), QUEUE_KEY, events_key(job.id)],
                    args=[
                        self.owner,
                        _ms(self.lost_after_s),
                        _ms(self.lost_after_s + self.settings.job_ttl_s),
                        int(job.in_pool_queue),
                        now_ms,
                        job.id,
                        _ms(STREAM_GRACE_S),
                    ],
                    client=pipe,
                )
            verdicts = await pipe.execute()
        for job, verdict in zip(jobs, verdicts, strict=True):
            if verdict == b"ok" or job.task is None or job.task.done():
                continue
            if verdict == b"gone":
                job.cancel_reason = "reclaimed"
                self.counters["jobs_reclaimed"] += 1
            job.task.cancel()

    async def _listen_for_cancels(self) -> None:
        lost = False
        while True:
            try:
                async with self.redis.pubsub() as pubsub:
                    await pubsub.subscribe(CANCEL_CHANNEL)
                    if lost:
                        log.warning("cancel channel back")
                        lost = False
                    async for message in pubsub.listen():
                        if message.get("type") != "message":
                            continue
                        job = self._local.get(bytes(message["data"]).decode())
                        if job is not None and job.task is not None and not job.task.done():
                            job.task.cancel()
            except RedisError as exc:
                if not lost:
                    log.warning("cancel channel lost (%s); the heartbeat's cancel flag covers the gap", exc)
                    lost = True
                await asyncio.sleep(self.heartbeat_s)
