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
is refused and it stops. The scripts (`workers.registry.redis_scripts`) store; the lifecycle
(`workers.registry.lifecycle`) decides what is written.

Pool-wide, ``dualcall:queue`` (a sorted set scored by the owner's last heartbeat) counts the jobs
that wait for a generation slot on any replica: "queue full" means ``queue_limit`` jobs wait in
the whole pool. DELETE on any replica sets the job's ``cancel`` flag and publishes the id on
``dualcall:cancel``; the owner cancels at once on the message, or at its next heartbeat from the flag.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import secrets
import socket
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from workers.config import WorkerSettings
from workers.engines.base import Engine, GenerationRequest
from workers.metrics import JobMetrics
from workers.registry.api import (
    CANCEL_GRACE_S,
    SYSTEM_CLOCK,
    Clock,
    Draining,
    FinalEventDelivered,
    Idempotency,
    IdempotencyKeyReused,
    JobRecord,
    LiveJob,
    QueueFull,
    RegistryUnavailable,
    UnknownJob,
    new_job_id,
)
from workers.registry.lifecycle import (
    WORKER_LOST,
    DrivesLifecycle,
    EventKind,
    InvalidTransition,
    Lifecycle,
    StoreRefused,
    StoreUnavailable,
    Trigger,
    advance,
    final_event,
    new_counters,
)
from workers.registry.redis_scripts import APPEND, CANCEL, FORGET, OPEN, SUBMIT, TOUCH
from workers.schemas import ErrorInfo
from workers.sse import SSE_ENCODER, EventEncoder

log = logging.getLogger("workers.registry.redis")

#: seconds without a heartbeat after which a queued or running job counts as lost (``?lost_after_s=``)
DEFAULT_LOST_AFTER_S: Final = 5.0
#: seconds an event log outlives its job record, so a reader mid-replay can finish when the TTL strikes
STREAM_GRACE_S: Final = 10.0
#: events the owner may queue ahead of its writer before the generation waits for Redis
MAX_PENDING_EVENTS: Final = 256
#: a job's writer makes at most one append per window while events come faster (it batches them)
FLUSH_WINDOW_S: Final = 0.001
#: entries one XREAD returns at most
READ_BATCH: Final = 1024
#: seconds between polls while DELETE waits for the owner to write the final event
CANCEL_POLL_S: Final = 0.02
CANCEL_CHANNEL: Final = "dualcall:cancel"
QUEUE_KEY: Final = "dualcall:queue"
MIN_SERVER_MAJOR: Final = 5  # Redis Streams

REGISTRY_UNAVAILABLE: Final = "registry_unavailable"


def meta_key(job_id: str) -> str:
    return f"dualcall:job:{job_id}"


def events_key(job_id: str) -> str:
    return f"dualcall:events:{job_id}"


def alive_key(job_id: str) -> str:
    return f"dualcall:alive:{job_id}"


def idempotency_key(key: str) -> str:
    """Hashed: a key is up to 255 characters of the client's choosing."""
    return f"dualcall:idem:{hashlib.sha256(key.encode()).hexdigest()}"


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


@dataclass(eq=False)
class OwnedJob(LiveJob):
    """A job generating (or waiting for a slot) on this replica, with its writer's queue."""

    in_pool_queue: bool = False
    #: events encoded but not yet in Redis, and the record fields they update
    pending: list[tuple[int, bytes]] = field(default_factory=list)
    pending_fields: dict[str, str] = field(default_factory=dict)
    final_queued: bool = False
    writer: asyncio.Task[None] | None = None
    #: why the writer stopped: `StoreRefused` (the record refused the append) or `StoreUnavailable`
    write_failure: Exception | None = None
    #: the blocks Redis has acknowledged, in order (event id ``n`` at index ``n - 1``): readers on this
    #: replica follow them here instead of reading them back from Redis
    written: list[bytes] = field(default_factory=list)
    final_written: bool = False
    #: the event loop's time of the writer's last script call
    last_write: float = float("-inf")


def _text(meta: Mapping[Any, Any], name: str) -> str | None:
    value = meta.get(name.encode())
    return None if value is None or value == b"" else value.decode()


def _float(meta: Mapping[Any, Any], name: str) -> float | None:
    value = _text(meta, name)
    return None if value is None else float(value)


def record_from_meta(job_id: str, meta: Mapping[Any, Any]) -> JobRecord:
    """A job as its Redis record describes it (status answers on any replica)."""
    error = meta.get(b"error")
    return JobRecord(
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


class RedisRegistry(DrivesLifecycle):
    """`workers.registry.api.RegistryBackend` on Redis Streams (see the module docstring); the lifecycle's store."""

    def __init__(
        self,
        engine: Engine,
        settings: WorkerSettings,
        metrics: JobMetrics,
        url: str,
        *,
        encoder: EventEncoder = SSE_ENCODER,
        clock: Clock = SYSTEM_CLOCK,
        new_id: Callable[[], str] = new_job_id,
    ) -> None:
        redis_url, self.lost_after_s = parse_registry_url(url)
        self.engine = engine
        self.settings = settings
        self.metrics = metrics
        self.encoder = encoder
        self.clock = clock
        self.new_id = new_id
        self.redis = aioredis.Redis.from_url(redis_url)
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.heartbeat_s = self.lost_after_s / 4
        self._background: set[asyncio.Task[None]] = set()
        self._submit = self.redis.register_script(SUBMIT)
        self._append_script = self.redis.register_script(APPEND)
        self._open = self.redis.register_script(OPEN)
        self._touch = self.redis.register_script(TOUCH)
        self._cancel = self.redis.register_script(CANCEL)
        self._forget = self.redis.register_script(FORGET)
        self.counters = new_counters("jobs_lost_declared")
        #: stream readers attached to this replica now
        self.open_readers = 0
        self.lifecycle = Lifecycle(engine, self, metrics=metrics, encoder=encoder, clock=clock, counters=self.counters)

    # -- the registry's life -------------------------------------------------------------------

    def start(self) -> None:
        self.lifecycle.start()
        self._spawn(self._heartbeat_forever(), "dualcall-heartbeat")
        self._spawn(self._listen_for_cancels(), "dualcall-cancel-listener")

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def begin_drain(self) -> None:
        """Refuse new jobs and new readers (`Draining`); readers attached here let go (`_tail`) and
        resume on another replica, while this replica's jobs go on generating into Redis."""
        super().begin_drain()
        for job in self.lifecycle.jobs():
            job.wake_readers()  # a reader following a job of this replica sees the drain now (`_follow_here`)

    async def close(self) -> None:
        await self.lifecycle.close()
        for task in list(self._background):
            task.cancel()
        if self._background:
            await asyncio.wait(list(self._background), timeout=CANCEL_GRACE_S)
        await self.redis.aclose()

    # -- gauges (this replica) ---------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.lifecycle.jobs())

    @contextlib.contextmanager
    def _unavailable_without_redis(self) -> Iterator[None]:
        """A request that needs Redis while it is unreachable fails with `RegistryUnavailable`."""
        try:
            yield
        except RedisError as exc:
            log.warning("registry unreachable: %s", exc)
            raise RegistryUnavailable("the job registry (Redis) is unreachable") from None

    # -- jobs ------------------------------------------------------------------------------

    async def submit(self, request: GenerationRequest, idempotency: Idempotency | None = None) -> JobRecord:
        lifecycle = self.lifecycle
        must_queue = lifecycle.must_queue()
        job = lifecycle.new_job(self.new_id(), request, OwnedJob)
        job.in_pool_queue = must_queue
        lifecycle.reserve()  # before the await, so concurrent submits count it
        keys = [QUEUE_KEY, meta_key(job.id), alive_key(job.id)]
        keyed: list[str] = []
        if idempotency is not None:
            keys.append(idempotency_key(idempotency.key))
            keyed.append(idempotency.fingerprint)
        try:
            with self._unavailable_without_redis():
                admitted = await self._submit(
                    keys=keys,
                    args=[
                        job.id,
                        _ms(self.clock.wall()),
                        _ms(self.lost_after_s),
                        self.settings.queue_limit,
                        int(must_queue),
                        _ms(self.settings.job_ttl_s),
                        self.owner,
                        msgspec.json.encode(request),
                        repr(job.created_at),
                        *keyed,
                    ],
                )
        except BaseException:
            lifecycle.release()
            raise
        if isinstance(admitted, bytes):  # the key was held: its first job answers (DC-1.10, DC-1.11)
            lifecycle.release()
            held_id, _, held_fingerprint = admitted.decode().partition(" ")
            if idempotency is None or held_fingerprint != idempotency.fingerprint:
                raise IdempotencyKeyReused(idempotency.key if idempotency else "")
            return JobRecord(id=held_id, request=request, created_at=job.created_at)
        if not admitted:
            lifecycle.release()
            self.counters["jobs_rejected_queue_full"] += 1
            raise QueueFull(f"{self.settings.queue_limit} jobs already wait for a generation slot in the pool")
        lifecycle.launch(job, reserved=True)
        return job

    async def get(self, job_id: str) -> JobRecord:
        with self._unavailable_without_redis():
            meta = await self.redis.hgetall(meta_key(job_id))
        if not meta or b"deleted" in meta:
            raise UnknownJob(job_id)
        return record_from_meta(job_id, meta)

    async def cancel(self, job_id: str) -> JobRecord:
        """Mark the job deleted (404 from now on), stop its generation wherever it runs, answer its last state."""
        with self._unavailable_without_redis():
            return await self._cancel_job(job_id)

    async def _cancel_job(self, job_id: str) -> JobRecord:
        verdict = await self._cancel(keys=[meta_key(job_id), events_key(job_id)], args=[_ms(STREAM_GRACE_S)])
        if verdict is None:
            raise UnknownJob(job_id)
        if verdict == 0:
            local = self.lifecycle.live(job_id)
            if local is not None:
                self.lifecycle.stop(local, Trigger.DELETE)
            else:
                await self.redis.publish(CANCEL_CHANNEL, job_id)
            await self._await_final(job_id)
        meta = await self.redis.hgetall(meta_key(job_id))
        if not meta:
            raise UnknownJob(job_id)
        return record_from_meta(job_id, meta)

    async def _await_final(self, job_id: str) -> None:
        """Wait (bounded) for the owner's final event; end the job here if the owner is gone."""
        deadline = self.clock.mono() + CANCEL_GRACE_S
        while self.clock.mono() < deadline:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.hmget(meta_key(job_id), ["final", "n", "tokens_out", "state"])
                pipe.exists(alive_key(job_id))
                (final, last, tokens_out, state), alive = await pipe.execute()
            if final is not None or last is None:
                return
            if not alive:
                await self._end_on_behalf(job_id, int(last) + 1, state, int(tokens_out or 0), Trigger.DELETE)
                continue
            await asyncio.sleep(CANCEL_POLL_S)

    async def open_stream(self, job_id: str, last_event_id: int | None) -> AsyncIterator[bytes]:
        if self.lifecycle.draining:  # another replica serves the same log: send the reader there
            raise Draining("this replica is shutting down; another one serves the stream")
        with self._unavailable_without_redis():
            position = await self._open(
                keys=[meta_key(job_id), events_key(job_id)],
                args=[
                    last_event_id or 0,
                    _ms(self.lost_after_s + self.settings.job_ttl_s),
                    _ms(self.settings.job_ttl_s),
                    _ms(self.clock.wall()),
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
            local = self.lifecycle.live(job_id)
            if isinstance(local, OwnedJob):
                cursor = [position]
                async for block in self._follow_here(local, cursor):
                    yield block
                if local.final_written:
                    return
                position = cursor[0]
            async for block in self._tail(job_id, position):
                yield block
        finally:
            self.open_readers -= 1

    async def _follow_here(self, job: OwnedJob, cursor: list[int]) -> AsyncIterator[bytes]:
        """A job generating on this replica: its blocks as Redis acknowledges them, without reading them back.

        The reader sees exactly the log in Redis (a block is here only once its append succeeded), a
        round trip sooner and without an XREAD per wake-up. It stops when the final block is written,
        or when the writer stopped short (refused or unreachable): `_tail` takes over from Redis.
        """
        keepalive_s = self.settings.keepalive_s
        while True:
            if self.lifecycle.draining:
                return  # `_tail` lets the reader go, to resume on another replica
            written, position = job.written, cursor[0]
            end = len(written)
            if position < end:
                cursor[0] = end
                yield b"".join(written[position:end]) if end - position > 1 else written[position]
                continue
            if job.final_written or job.write_failure is not None or (job.finished and job.writer is None):
                return
            try:
                async with asyncio.timeout(keepalive_s):
                    await job.wait()
            except TimeoutError:
                yield self.encoder.keepalive

    async def _tail(self, job_id: str, position: int) -> AsyncIterator[bytes]:
        stream = events_key(job_id)
        block_ms = _ms(min(self.settings.keepalive_s, self.lost_after_s / 2))
        mono = self.clock.mono
        last_sent = mono()
        while True:
            if self.lifecycle.draining or (self.lifecycle.closing and self.lifecycle.live(job_id) is None):
                # drop the connection (no [DONE]) so the client resumes with Last-Event-ID on another
                # replica, which tails the same log (this one's jobs go on generating while it drains)
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
                last_sent = mono()
                continue
            if verdict == "gone":
                yield self._local_error(position, WORKER_LOST, "the job's record is gone from the registry")
                return
            if mono() - last_sent >= self.settings.keepalive_s:
                yield self.encoder.keepalive
                last_sent = mono()

    def _local_error(self, position: int, code: str, message: str) -> bytes:
        """An error event for this reader alone, when nothing can be written to the log."""
        return self.encoder.final(position + 1, "error", ErrorInfo(code=code, message=message))

    async def _check_owner(self, job_id: str) -> str:
        """ "live", "gone" (no record, no log), or "declared" after ending a lost owner's job."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hmget(meta_key(job_id), ["final", "n", "tokens_out", "state"])
            pipe.exists(alive_key(job_id))
            pipe.exists(events_key(job_id))
            (final, last, tokens_out, state), alive, logged = await pipe.execute()
        if last is None:
            return "live" if logged else "gone"
        if final is not None or alive:
            return "live"
        message = f"the replica generating this job stopped sending heartbeats for {self.lost_after_s:g}s"
        error = ErrorInfo(code=WORKER_LOST, message=message)
        if await self._end_on_behalf(job_id, int(last) + 1, state, int(tokens_out or 0), Trigger.LOST, error=error):
            self.counters["jobs_lost_declared"] += 1
            log.warning("job %s: owner lost, ended with worker_lost", job_id)
        return "declared"

    async def _end_on_behalf(
        self,
        job_id: str,
        event_id: int,
        state: bytes | None,
        tokens_out: int,
        trigger: Trigger,
        *,
        error: ErrorInfo | None = None,
    ) -> bool:
        """Write the final event of a job whose owner's heartbeat is gone; False if someone else wrote first."""
        try:
            ended = advance((state or b"queued").decode(), trigger)  # type: ignore[arg-type]
        except InvalidTransition:
            return False
        assert ended is not None
        name, payload = final_event(ended, trigger, tokens_out, None, error)
        fields = {"state": ended, "finished_at": repr(self.clock.wall())}
        if isinstance(payload, ErrorInfo):
            fields["error"] = msgspec.json.encode(payload).decode()
        else:
            fields["stop_reason"] = payload.stop_reason
        written = await self._append_script(
            keys=[meta_key(job_id), events_key(job_id), alive_key(job_id)],
            args=self._append_args([(event_id, self.encoder.final(event_id, name, payload))], True, True, fields),
        )
        return bool(written == 1)

    def _append_args(
        self, events: list[tuple[int, bytes]], final: bool, on_behalf: bool, fields: dict[str, str]
    ) -> list[Any]:
        args: list[Any] = [
            len(events),
            int(final),
            _ms(STREAM_GRACE_S),
            _ms(self.settings.job_ttl_s),
            _ms(self.clock.wall()),
            int(on_behalf),
        ]
        for event_id, block in events:
            args += [event_id, block]
        for name, value in fields.items():
            args += [name, value]
        return args

    # -- the lifecycle's store (owner side) --------------------------------------------------------

    def append(self, job: OwnedJob, event_id: int, block: bytes, kind: EventKind) -> bool:
        """Queue a block for the job's writer; ask for a flush only at the end or when the writer lags.

        One writer task per job sends what has piled up as one script call, so a fast engine pays one
        round trip per batch, not per token; a slow engine's token still leaves at once.
        """
        if job.write_failure is not None:
            raise job.write_failure
        final = kind is EventKind.FINAL
        if kind is EventKind.TOKEN:
            job.pending_fields["tokens_out"] = str(job.tokens_out)
        elif kind is EventKind.STARTED:
            job.pending_fields.update(state="running", started_at=repr(job.started_at))
        else:
            fields = {"state": job.state, "finished_at": repr(job.finished_at), "tokens_out": str(job.tokens_out)}
            if job.error is not None:
                fields["error"] = msgspec.json.encode(job.error).decode()
            if job.stop_reason is not None:
                fields["stop_reason"] = job.stop_reason
            job.pending_fields.update(fields)
            job.final_queued = True
        job.pending.append((event_id, block))
        if job.writer is None:
            job.writer = asyncio.get_running_loop().create_task(self._write(job), name=f"dualcall-write-{job.id}")
        return final or len(job.pending) >= MAX_PENDING_EVENTS

    async def flush(self, job: OwnedJob) -> None:
        """Wait until the writer has sent everything queued; raise what stopped it."""
        while job.writer is not None:
            await asyncio.shield(job.writer)
        if job.write_failure is not None:
            raise job.write_failure

    async def _write(self, job: OwnedJob) -> None:
        """Send what is queued, one script call per batch: at once when the job's writer has been idle
        for a flush window, else when the window since its last call has passed (the final event goes
        at once). A slow engine's token leaves as soon as it comes; a fast one's pile up into a batch.
        """
        loop = asyncio.get_running_loop()
        try:
            while job.pending:
                wait_s = job.last_write + FLUSH_WINDOW_S - loop.time()
                if wait_s > 0 and not job.final_queued:
                    await asyncio.sleep(wait_s)
                job.last_write = loop.time()
                events, job.pending = job.pending, []
                fields, job.pending_fields = job.pending_fields, {}
                final = job.final_queued  # the final event is in this batch, if it is queued at all
                written = await self._append_script(
                    keys=[meta_key(job.id), events_key(job.id), alive_key(job.id)],
                    args=self._append_args(events, final, False, fields),
                )
                if written != 1:
                    job.write_failure = StoreRefused(job.id)
                    break
                job.written += [block for _, block in events]
                job.final_written = final
                job.wake_readers()
        except RedisError as exc:
            job.write_failure = StoreUnavailable(str(exc))
        finally:
            job.pending.clear()
            job.writer = None
            job.wake_readers()  # a reader here that waits for blocks that will not come reads Redis instead

    async def running(self, job: OwnedJob) -> None:
        if job.in_pool_queue:
            job.in_pool_queue = False
            try:
                await self.redis.zrem(QUEUE_KEY, job.id)
            except RedisError as exc:
                raise StoreUnavailable(str(exc)) from None

    async def forget(self, job: OwnedJob) -> None:
        """Drop the log and heartbeat when the TTL took the record; keep them when another replica wrote
        the job's end (it declared this replica lost) and the log must stay."""
        try:
            forgotten = await self._forget(keys=[meta_key(job.id), events_key(job.id), alive_key(job.id)])
        except RedisError:
            return
        if forgotten == 1 and job.ending is not Trigger.TTL:  # the heartbeat counted the ones it found
            self.counters["jobs_reclaimed"] += 1

    def task_done(self, job: OwnedJob) -> None:
        if job.in_pool_queue:
            job.in_pool_queue = False
            self._spawn(self._leave_pool_queue(job.id), f"dualcall-dequeue-{job.id}")

    async def _leave_pool_queue(self, job_id: str) -> None:
        with contextlib.suppress(RedisError):
            await self.redis.zrem(QUEUE_KEY, job_id)

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
        jobs = [job for job in self.lifecycle.jobs() if isinstance(job, OwnedJob) and not job.finished]
        if not jobs:
            return
        now_ms = _ms(self.clock.wall())
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
            if verdict == b"gone":
                if self.lifecycle.stop(job, Trigger.TTL):
                    self.counters["jobs_reclaimed"] += 1
            elif verdict == b"cancel":
                self.lifecycle.stop(job, Trigger.DELETE)

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
                        job = self.lifecycle.live(bytes(message["data"]).decode())
                        if job is not None:
                            self.lifecycle.stop(job, Trigger.DELETE)
            except RedisError as exc:
                if not lost:
                    log.warning("cancel channel lost (%s); the heartbeat's cancel flag covers the gap", exc)
                    lost = True
                await asyncio.sleep(self.heartbeat_s)
