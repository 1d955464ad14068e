"""Reads the streams of jobs that fuzzing submitted with valid bodies, to their end (DC-2.15).

Generated requests that a worker accepts are only half tested by their 202: the question is how
the job ends. A bounded thread pool reads each accepted job's stream with the suite's strict
reader (`conformance.probe.Probe.stream`), every read with its own deadline, while fuzzing goes
on; `StreamReader.finish` waits a bounded time for the rest.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Final

import httpx

from conformance.client import resolve
from conformance.model import Exchange
from conformance.outcomes import ErrorOutcome, unexpected_error
from conformance.probe import Probe, StreamCapture

__all__ = ["MAX_READ_JOBS", "AcceptedJob", "ReadResult", "StreamReader"]

#: accepted jobs whose streams are read, at most, in one fuzz run
MAX_READ_JOBS: Final = 100
#: streams read at once
READERS: Final = 4
#: a second reader refused with 409 (DC-2.10) is retried once after this pause
_RETRY_409_S: Final = 0.5


@dataclass(frozen=True, slots=True)
class AcceptedJob:
    """A submission answered 202 whose body is valid by the contract."""

    job_id: str
    sse_url: str
    body: Any
    #: the submit request and its 202, the evidence of a finding
    submit: Exchange
    #: where the body came from: ``boundary``, ``positive``, ``negative`` or ``stateful``
    source: str
    #: read late (after a whole phase): when the worker has already reclaimed it, submit the body again
    resubmit_when_gone: bool = False


@dataclass(slots=True)
class ReadResult:
    job: AcceptedJob
    stream_url: str = ""
    #: an error event a valid request must not end with
    outcome: ErrorOutcome | None = None
    #: the stream delivered an ``end`` or ``error`` event
    ended: bool = False
    #: why the job was not read to its end
    note: str | None = None
    #: the id of the job submitted again for a reclaimed one (to be cancelled afterwards)
    resubmitted: str | None = None


@dataclass(slots=True)
class ReadSummary:
    results: list[ReadResult] = field(default_factory=list)
    #: accepted valid jobs beyond :data:`MAX_READ_JOBS`
    over_limit: int = 0
    #: reads still running, or not started, when the time was up
    unfinished: int = 0

    def ended_by_source(self) -> Counter[str]:
        return Counter(result.job.source for result in self.results if result.ended)

    def notes(self) -> list[str]:
        counts = Counter(result.note for result in self.results if result.note and not result.ended)
        lines = [f"{count} accepted job(s) not read to the end: {note}" for note, count in sorted(counts.items())]
        if self.over_limit:
            lines.append(f"{self.over_limit} further accepted job(s) not read (limit {MAX_READ_JOBS} per run)")
        if self.unfinished:
            lines.append(f"{self.unfinished} read(s) not finished within the time budget")
        return lines


def _ended(capture: StreamCapture) -> bool:
    return any(event.event in ("end", "error") for event in capture.protocol_events)


class StreamReader:
    """Reads accepted jobs' streams in a small thread pool while fuzzing goes on."""

    def __init__(self, base_url: str, *, token: str | None, timeout_s: float) -> None:
        self.probe = Probe(base_url, token=token, timeout_s=timeout_s)
        #: one read may take this long before the suite closes it
        self.read_s = max(5.0, timeout_s)
        self._pool = ThreadPoolExecutor(max_workers=READERS, thread_name_prefix="dualcall-fuzz-reader")
        self._futures: list[Future[ReadResult]] = []
        self._seen: set[str] = set()
        self._lock = threading.Lock()
        self._stop_at: float | None = None
        self._over_limit = 0
        self._pending = 0

    def add(self, job: AcceptedJob) -> None:
        with self._lock:
            if job.job_id in self._seen or self._stop_at is not None:
                return
            self._seen.add(job.job_id)
            if len(self._futures) >= MAX_READ_JOBS:
                self._over_limit += 1
                return
            self._futures.append(self._pool.submit(self._read, job))

    def _time_left(self) -> float:
        if self._stop_at is None:
            return self.read_s
        return min(self.read_s, self._stop_at - time.monotonic())

    def _stream(self, url: str) -> StreamCapture | None:
        left = self._time_left()
        if left <= 0:
            return None
        capture = self.probe.stream(url, max_duration_s=left)
        if capture.status == 409:
            time.sleep(_RETRY_409_S)
            left = self._time_left()
            capture = self.probe.stream(url, max_duration_s=left) if left > 0 else capture
        return capture

    def _read(self, job: AcceptedJob) -> ReadResult:
        result = ReadResult(job, stream_url=resolve(self.probe.submit_url, job.sse_url))
        try:
            capture = self._stream(result.stream_url)
            if capture is not None and capture.status == 404 and job.resubmit_when_gone:
                capture = self._resubmit(result)
        except httpx.HTTPError as exc:
            result.note = f"the read failed ({type(exc).__name__})"
            return result
        if capture is None:
            result.note = result.note or "time budget spent before the read"
            return result
        result.ended = _ended(capture)
        result.outcome = unexpected_error(capture.events)
        if not result.ended:
            result.note = result.note or self._why_unfinished(capture)
        return result

    def _resubmit(self, result: ReadResult) -> StreamCapture | None:
        """The job was reclaimed before it could be read: submit the same body once more and read that."""
        response = self.probe.submit(result.job.body)
        if response.status_code != 202:
            result.note = f"reclaimed before the read; submitted again, answered {response.status_code}"
            return None
        try:
            data = response.json()
            job_id, sse_url = str(data["job_id"]), str(data["sse_url"])
        except (ValueError, KeyError, TypeError):
            result.note = "reclaimed before the read; the new 202 has no job_id/sse_url"
            return None
        result.resubmitted = job_id
        result.stream_url = resolve(self.probe.submit_url, sse_url)
        return self._stream(result.stream_url)

    @staticmethod
    def _why_unfinished(capture: StreamCapture) -> str:
        if capture.status is None:
            return f"no response ({capture.error or 'connection failed'})"
        if capture.status != 200:
            gone = " (cancelled by the fuzzer, or reclaimed)" if capture.status == 404 else ""
            return f"the stream answered {capture.status}{gone}"
        if capture.timed_out:
            return "no end or error event before the read's deadline"
        return "the stream ended without an end or error event"

    def finish(self, grace_s: float) -> ReadSummary:
        """Stop taking jobs and wait at most ``grace_s`` (plus one read) for the reads."""
        with self._lock:
            self._stop_at = time.monotonic() + grace_s
            futures = list(self._futures)
        done, pending = wait(futures, timeout=grace_s + self.read_s + 1.0)
        for future in pending:
            future.cancel()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._pending = len(pending)
        summary = ReadSummary(over_limit=self._over_limit, unfinished=len(pending))
        for future in done:
            with contextlib.suppress(Exception):
                summary.results.append(future.result())
        return summary

    def close(self) -> None:
        """Close the connections, unless a read is still running (its thread ends at its own deadline)."""
        if not self._pending:
            self.probe.close()


def body_text(body: Any) -> str:
    """The JSON body as a one-line string for a finding's message."""
    try:
        text = json.dumps(body, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(body)
    return text if len(text) <= 300 else text[:297] + "..."
