"""A pool behind nginx under steady streaming load while its replicas restart: drive, restart, measure.

Every job is a greedy (temperature 0) request to the deterministic mock engine, so what each job
must stream is known here (`MockEngine.tokens`). A *stream* is one reference client
(`conformance.client.AsyncDualCallClient`, which resumes with Last-Event-ID) submitting jobs one
after another; `Figures` says what came back: jobs completed or ended with an error code, tokens
lost or duplicated across resumes, text that differs from the engine's, the longest gap a reader
saw between two events, and the 503s the balancer passed back.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from balancer import Nginx
from workerproc import WorkerProcess

from conformance.client import (
    AsyncDualCallClient,
    Backoff,
    DualCallError,
    End,
    ErrorEvent,
    Started,
    Token,
)
from workers.engines.base import GenerationRequest
from workers.engines.mock import MockEngine

#: generous: on a loaded CI machine a worker process can take many seconds to import and bind
START_TIMEOUT_S = 60.0
_ENGINE = MockEngine()


def expected_tokens(prompt: str, max_tokens: int) -> list[str]:
    """The token texts the mock engine streams for a greedy request (no stop strings)."""
    return _ENGINE.tokens(GenerationRequest(prompt=prompt, max_tokens=max_tokens, temperature=0.0))


@dataclass
class JobOutcome:
    prompt: str
    expected: list[str]
    tokens: list[tuple[int, str]] = field(default_factory=list)
    event_ids: list[int] = field(default_factory=list)
    end: str | None = None  # "completed", or the error event's code
    failure: str | None = None  # the client gave up (an exception): the job's end was never seen
    longest_gap_s: float = 0.0

    @property
    def lost(self) -> int:
        """Token indexes missing below the last one the reader saw (all of them, once completed)."""
        seen = {index for index, _ in self.tokens}
        upto = len(self.expected) if self.end == "completed" else (max(seen) + 1 if seen else 0)
        return sum(1 for index in range(upto) if index not in seen)

    @property
    def duplicates(self) -> int:
        return len(self.tokens) - len({index for index, _ in self.tokens})

    @property
    def wrong_text(self) -> bool:
        return any(index >= len(self.expected) or self.expected[index] != text for index, text in self.tokens)

    @property
    def event_ids_ok(self) -> bool:
        """Event ids strictly increasing by one across resumes."""
        return self.event_ids == list(range(self.event_ids[0], self.event_ids[0] + len(self.event_ids)))


@dataclass
class Figures:
    jobs: int
    completed: int
    ended_by_code: dict[str, int]
    client_gave_up: int
    lost_tokens: int
    duplicate_tokens: int
    wrong_text_jobs: int
    event_id_breaks: int
    longest_stall_s: float
    submits_refused_503: int
    streams_refused_503: int
    other_statuses: dict[str, int]

    def line(self) -> str:
        codes = ", ".join(f"{code} {count}" for code, count in sorted(self.ended_by_code.items())) or "none"
        return (
            f"{self.jobs} jobs: {self.completed} completed, ended with error codes: {codes}; "
            f"client gave up {self.client_gave_up}; tokens lost {self.lost_tokens}, duplicated "
            f"{self.duplicate_tokens}; wrong text {self.wrong_text_jobs}; event id breaks "
            f"{self.event_id_breaks}; longest stall {self.longest_stall_s:.2f}s; 503 on submit "
            f"{self.submits_refused_503}, on stream {self.streams_refused_503}; other statuses {self.other_statuses}"
        )


def figures(outcomes: list[JobOutcome], statuses: Counter[str]) -> Figures:
    ended = Counter(job.end for job in outcomes if job.end not in (None, "completed"))
    return Figures(
        jobs=len(outcomes),
        completed=sum(1 for job in outcomes if job.end == "completed"),
        ended_by_code={str(code): count for code, count in ended.items()},
        client_gave_up=sum(1 for job in outcomes if job.failure is not None),
        lost_tokens=sum(job.lost for job in outcomes),
        duplicate_tokens=sum(job.duplicates for job in outcomes),
        wrong_text_jobs=sum(1 for job in outcomes if job.wrong_text),
        event_id_breaks=sum(1 for job in outcomes if job.event_ids and not job.event_ids_ok),
        longest_stall_s=max((job.longest_gap_s for job in outcomes), default=0.0),
        submits_refused_503=statuses["POST 503"],
        streams_refused_503=statuses["GET 503"],
        other_statuses={
            key: count for key, count in statuses.items() if key not in ("POST 503", "GET 503", "POST 202", "GET 200")
        },
    )


class Load:
    """``streams`` reference clients submitting jobs back to back until `stop` is called."""

    def __init__(self, url: str, *, streams: int, max_tokens: int, token: str | None = None) -> None:
        self.url = url
        self.streams = streams
        self.max_tokens = max_tokens
        self.token = token
        self.outcomes: list[JobOutcome] = []
        self.statuses: Counter[str] = Counter()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.progress = asyncio.Event()  # set once as many jobs ended as there are streams

    async def _count(self, response: httpx.Response) -> None:
        self.statuses[f"{response.request.method} {response.status_code}"] += 1

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._stream(number)) for number in range(self.streams)]

    async def stop(self) -> list[JobOutcome]:
        """Let every stream finish the job it is on, then return every job's outcome."""
        self._stop.set()
        await asyncio.gather(*self._tasks)
        return self.outcomes

    async def _stream(self, number: int) -> None:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        http = httpx.AsyncClient(timeout=30.0, headers=headers, event_hooks={"response": [self._count]})
        client = AsyncDualCallClient(
            self.url,
            http=http,
            max_resumes=20,
            backoff=Backoff(initial_s=0.05, max_s=1.0),
            submit_retries=30,
            max_retry_after_s=5.0,
        )
        done = 0
        async with http:
            while not self._stop.is_set():
                prompt = f"pool stream {number} job {done}"
                outcome = JobOutcome(prompt, expected_tokens(prompt, self.max_tokens))
                self.outcomes.append(outcome)
                await self._job(client, outcome)
                done += 1
                if sum(1 for job in self.outcomes if job.end is not None) >= self.streams:
                    self.progress.set()

    async def _job(self, client: AsyncDualCallClient, outcome: JobOutcome) -> None:
        last = time.monotonic()
        try:
            job = await client.submit(outcome.prompt, max_tokens=self.max_tokens, temperature=0)
            async for event in client.events(job):
                now = time.monotonic()
                outcome.longest_gap_s = max(outcome.longest_gap_s, now - last)
                last = now
                outcome.event_ids.append(event.id)
                if isinstance(event, Token):
                    outcome.tokens.append((event.index, event.text))
                elif isinstance(event, End):
                    outcome.end = "completed"
                elif isinstance(event, ErrorEvent):
                    outcome.end = event.code
                elif not isinstance(event, Started):
                    raise AssertionError(f"unexpected event {event!r}")
        except (DualCallError, httpx.HTTPError) as exc:
            outcome.failure = f"{type(exc).__name__}: {exc}"


class Replica:
    """One pool member on a fixed loopback port, so it can be stopped and started again in place."""

    def __init__(self, port: int, *args: str) -> None:
        self.port = port
        self.args = ("--port", str(port), *args)
        self.process: WorkerProcess | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> WorkerProcess:
        self.process = WorkerProcess("mock", *self.args, start_timeout_s=START_TIMEOUT_S).start()
        return self.process

    def stop_with(self, sig: signal.Signals, timeout_s: float) -> int | None:
        """Send ``sig`` and wait (bounded) for the exit; return the exit code (None: still running)."""
        assert self.process is not None and self.process.proc is not None
        self.process.proc.send_signal(sig)
        try:
            return self.process.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def close(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.stop()


#: nginx's fail_timeout in deploy/nginx.conf: a replica marked failed is tried again only after it
REJOIN_S = 2.0


def roll(replicas: list[Replica], sig: signal.Signals, *, stop_timeout_s: float, pause_s: float) -> list[str]:
    """Stop and restart every replica in turn (blocking); return what happened, one line per replica.

    As a deploy does, the next replica stops only once the restarted one is healthy and the balancer
    takes it back: nginx marked it failed while it was down and tries it again after fail_timeout.
    """
    notes: list[str] = []
    for replica in replicas:
        began = time.monotonic()
        code = replica.stop_with(sig, stop_timeout_s)
        stopped = time.monotonic() - began
        output = replica.process.output() if replica.process else ""
        if code is None:
            replica.close()
            raise AssertionError(f"replica {replica.address} still ran {stop_timeout_s}s after {sig.name}\n{output}")
        time.sleep(pause_s)
        replica.start()
        time.sleep(REJOIN_S + pause_s)
        notes.append(f"{replica.address}: {sig.name} -> exit {code} after {stopped:.2f}s, restarted")
    return notes


async def rolling_restart(
    url: str,
    replicas: list[Replica],
    sig: signal.Signals,
    *,
    streams: int,
    max_tokens: int,
    stop_timeout_s: float,
    pause_s: float = 0.5,
    warmup_timeout_s: float = 60.0,
    on_notes: Callable[[list[str]], Any] = lambda notes: None,
) -> Figures:
    """Load the pool, restart every replica one after another with ``sig``, then measure every job."""
    load = Load(url, streams=streams, max_tokens=max_tokens)
    load.start()
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(load.progress.wait(), warmup_timeout_s)
        notes = await asyncio.to_thread(roll, replicas, sig, stop_timeout_s=stop_timeout_s, pause_s=pause_s)
        on_notes(notes)
    finally:
        outcomes = await load.stop()
    return figures(outcomes, load.statuses)


class PoolBehindNginx:
    """Replicas sharing one Redis database, nginx in front; everything stopped by the fixture."""

    def __init__(self, nginx: Nginx, replicas: list[Replica], registry: str) -> None:
        self.nginx = nginx
        self.replicas = replicas
        self.registry = registry

    @property
    def url(self) -> str:
        return self.nginx.url


StartPool = Callable[..., PoolBehindNginx]
