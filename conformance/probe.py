"""The checks' HTTP layer: every request is recorded as evidence, streams are captured raw.

Streams are read as bytes and parsed with the suite's own strict parser (`conformance.sse`),
never with the worker's encoder or a lenient client, so framing bugs stay visible.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Final

import httpx

from conformance.client import SUBMIT_PATH
from conformance.model import EXCERPT_BYTES, Exchange
from conformance.sse import FramingIssue, SSEEvent, SSEParser

#: largest stream body a check reads (a misbehaving worker must not exhaust memory)
MAX_STREAM_BYTES: Final = 4 * 1024 * 1024
#: how long a worker gets to close the connection after ``data: [DONE]``
CLOSE_GRACE_S: Final = 2.0
#: methods a transport failure before any response may be retried for (RFC 9110 §9.2.2)
_IDEMPOTENT: Final = frozenset({"GET", "HEAD", "OPTIONS", "DELETE", "PUT"})
#: how long after the suite left a stream at [DONE] a 409 for it may still be the worker noticing that
REATTACH_AFTER_DONE_S: Final = 3.0
_REATTACH_PAUSE_S: Final = 0.1
#: how often the stream watchdog looks at the clock
_WATCH_INTERVAL_S: Final = 0.1


class TargetUnusable(Exception):
    """The suite cannot test this target as given (a usage error: CLI exit 2), with the fix in the message."""


class TargetUnreachable(TargetUnusable):
    """The target does not answer HTTP at all."""


class BudgetSpent(Exception):
    """The running check used up its time budget; no further request is sent for it."""


@dataclass(slots=True)
class StreamCapture:
    url: str
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes = b""
    events: list[SSEEvent] = field(default_factory=list)
    issues: list[FramingIssue] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    done_seen: bool = False
    closed_after_done: bool = False
    bytes_after_done: bytes = b""
    truncated: bool = False
    #: the read was ended by ``max_duration_s`` (not an error: the check asked for a bounded read)
    timed_out: bool = False
    #: the suite closed the connection (deadline, or the server kept it open after [DONE])
    closed_by_suite: bool = False
    #: no event (comments do not count) arrived for the probe's ``stall_s`` while the stream was open
    stalled: bool = False
    error: str | None = None
    elapsed_s: float = 0.0
    first_event_s: float | None = None
    #: the read as report evidence (what a check shows when this read broke its rule)
    exchange: Exchange | None = None
    #: the read waited (up to CLOSE_GRACE_S) after [DONE] to see whether the server closes (DC-2.7)
    awaited_close: bool = False

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")

    @property
    def protocol_events(self) -> list[SSEEvent]:
        """Events before ``[DONE]`` (``[DONE]`` itself excluded)."""
        out: list[SSEEvent] = []
        for event in self.events:
            if event.data == "[DONE]":
                break
            out.append(event)
        return out

    def token_texts(self) -> list[str]:
        texts: list[str] = []
        for event in self.protocol_events:
            if event.event == "token":
                try:
                    texts.append(str(json.loads(event.data)["text"]))
                except (ValueError, KeyError, TypeError):
                    texts.append("")
        return texts

    def final_event(self) -> SSEEvent | None:
        events = self.protocol_events
        return events[-1] if events else None

    def excerpt(self, limit: int = 400) -> str:
        return _excerpt(self.raw, limit)[0]


def _stop_reading(capture: StreamCapture, response: httpx.Response, *, deadline: bool) -> None:
    """Timer callback: close the connection from the suite's side."""
    capture.closed_by_suite = True
    capture.timed_out = capture.timed_out or deadline
    response.close()


class _Watchdog(threading.Thread):
    """Ends a stream read that outlives its deadline, or that sees no event for ``stall_s``.

    Keep-alive comments do not count as progress: a worker whose generator deadlocked may keep
    sending them forever, and the suite must end such a read with evidence instead of hanging.
    """

    def __init__(
        self, capture: StreamCapture, response: httpx.Response, *, deadline: float | None, stall_s: float
    ) -> None:
        super().__init__(daemon=True, name="dualcall-stream-watchdog")
        self.capture = capture
        self.response = response
        self.deadline = deadline
        self.stall_s = stall_s
        self.last_event = time.monotonic()
        self.finished = threading.Event()

    def progress(self) -> None:
        self.last_event = time.monotonic()

    def run(self) -> None:
        while not self.finished.wait(_WATCH_INTERVAL_S):
            now = time.monotonic()
            if self.deadline is not None and now >= self.deadline:
                _stop_reading(self.capture, self.response, deadline=True)
                return
            if not self.capture.done_seen and now - self.last_event >= self.stall_s:
                self.capture.stalled = True
                self.capture.error = f"no event for {self.stall_s:g} s while the stream stayed open"
                _stop_reading(self.capture, self.response, deadline=False)
                return


def _consumed(buffer: bytearray, done: SSEEvent) -> int:
    """Offset just past the [DONE] event block inside ``buffer``."""
    return buffer.find(done.raw) + len(done.raw) if done.raw else len(buffer)


def _excerpt(body: bytes, limit: int = EXCERPT_BYTES) -> tuple[str, bool]:
    return body[:limit].decode("utf-8", errors="replace"), len(body) > limit


def _request_body_text(content: bytes | None) -> str | None:
    if content is None or content == b"":
        return None
    text, truncated = _excerpt(content, 2000)
    return text if not truncated else f"{text[:200]} …[truncated: {len(content)} bytes in all]"


class Probe:
    """A recording HTTP client bound to one target."""

    def __init__(
        self, base_url: str, *, token: str | None = None, timeout_s: float = 10.0, stall_s: float | None = None
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout_s = timeout_s
        #: a stream read with no event for this long ends (see `_Watchdog`)
        self.stall_s = stall_s if stall_s is not None else 3 * timeout_s
        #: monotonic time after which the running check may send nothing more (set by the runner)
        self.deadline: float | None = None
        self.http = httpx.Client(timeout=httpx.Timeout(timeout_s), follow_redirects=False)
        self.exchanges: list[Exchange] = []
        self.all_exchanges: list[Exchange] = []
        #: every stream read in this run, for the checks that sweep them
        self.captures: list[StreamCapture] = []
        self._lock = threading.Lock()
        #: streams this probe stopped reading at [DONE] (before the server ended them), and when
        self._left_at_done: dict[str, float] = {}

    def close(self) -> None:
        self.http.close()

    @property
    def submit_url(self) -> str:
        return self.base_url + SUBMIT_PATH

    def _headers(self, headers: dict[str, str] | None, auth: bool) -> dict[str, str]:
        merged = {"Authorization": f"Bearer {self.token}"} if auth and self.token else {}
        merged.update(headers or {})
        return merged

    def _record(self, exchange: Exchange) -> None:
        with self._lock:
            self.exchanges.append(exchange)
            self.all_exchanges.append(exchange)

    def _send(self, request: httpx.Request, *, stream: bool = False) -> httpx.Response:
        """Send; an idempotent request whose kept-alive connection the server closed just then is sent once more.

        A server may close an idle keep-alive connection at the moment the client reuses it; the
        request never reached the worker, so that is no evidence about the worker (RFC 9110 §9.2.2).
        """
        try:
            return self.http.send(request, stream=stream)
        except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError):
            if request.method not in _IDEMPOTENT:
                raise
            return self.http.send(request, stream=stream)

    def _reattach(self, request: httpx.Request, response: httpx.Response) -> httpx.Response:
        """A 409 for a stream this probe itself just left at [DONE] is retried for a moment.

        A worker that allows one reader per job (DC-2.10) may still count the suite's earlier read
        as attached until it notices the hang-up; that 409 is about the suite, not the worker.
        """
        with self._lock:
            left = self._left_at_done.get(str(request.url))
        while (
            response.status_code == 409
            and left is not None
            and time.monotonic() - left < REATTACH_AFTER_DONE_S
            and (self.deadline is None or time.monotonic() < self.deadline)
        ):
            response.close()
            time.sleep(_REATTACH_PAUSE_S)
            response = self._send(request, stream=True)
        return response

    def _check_budget(self) -> None:
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise BudgetSpent("the check used up its time budget")

    @contextmanager
    def recording(self) -> Iterator[list[Exchange]]:
        """Collect the exchanges made inside the block (one check's evidence)."""
        with self._lock:
            self.exchanges = []
        yield self.exchanges

    def request(
        self,
        method: str,
        url: str,
        *,
        json_body: Any = None,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
        auth: bool = True,
        timeout_s: float | None = None,
    ) -> httpx.Response:
        self._check_budget()
        if json_body is not None:
            content = json.dumps(json_body).encode()
            headers = {"Content-Type": "application/json", **(headers or {})}
        request = self.http.build_request(
            method,
            url,
            content=content,
            headers=self._headers(headers, auth),
            timeout=httpx.Timeout(timeout_s) if timeout_s is not None else httpx.USE_CLIENT_DEFAULT,
        )
        exchange = Exchange(
            method=method,
            url=str(request.url),
            request_headers={k: v for k, v in request.headers.items() if k.lower() != "authorization"}
            | ({"Authorization": "Bearer ***"} if "authorization" in request.headers else {}),
            request_body=_request_body_text(content),
        )
        started = time.perf_counter()
        try:
            response = self._send(request)
        except httpx.HTTPError as exc:
            exchange.error = f"{type(exc).__name__}: {exc}"
            self._record(exchange)
            raise
        exchange.elapsed_ms = round((time.perf_counter() - started) * 1000, 1)
        exchange.status = response.status_code
        exchange.response_headers = dict(response.headers)
        exchange.body_excerpt, exchange.body_truncated = _excerpt(response.content)
        self._record(exchange)
        return response

    def submit(self, body: dict[str, Any], *, headers: dict[str, str] | None = None) -> httpx.Response:
        return self.request("POST", self.submit_url, json_body=body, headers=headers)

    def stream(
        self,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        auth: bool = True,
        method: str = "GET",
        content: bytes | None = None,
        stop_after_events: int | None = None,
        on_event: Any = None,
        max_duration_s: float | None = None,
        await_close: bool = False,
    ) -> StreamCapture:
        """Read a stream to its end (or ``stop_after_events``), recording raw bytes and timing.

        ``on_event(capture, event)`` is called for each event as it arrives (used to act
        mid-stream, e.g. cancel or disconnect); returning True stops reading. Every read ends by
        the check's deadline, and when no event arrives for ``stall_s`` (``capture.stalled``).
        A read ends at ``data: [DONE]``; only with ``await_close`` does it wait (at most
        ``CLOSE_GRACE_S``) to see whether the server closes after it (DC-2.7), so that a worker
        keeping connections open delays that one read, not every read of the run.
        """
        self._check_budget()
        capture = StreamCapture(url=url, awaited_close=await_close)
        parser = SSEParser(strict=True)
        request = self.http.build_request(method, url, headers=self._headers(headers, auth), content=content)
        exchange = Exchange(
            method=method,
            url=url,
            request_headers={k: v for k, v in request.headers.items() if k.lower() != "authorization"},
            request_body=_request_body_text(content),
        )
        started = time.perf_counter()
        buffer = bytearray()
        timer: threading.Timer | None = None
        watchdog: _Watchdog | None = None
        response: httpx.Response | None = None
        ends = [limit for limit in (self.deadline,) if limit is not None]
        if max_duration_s is not None:
            ends.append(time.monotonic() + max_duration_s)
        try:
            response = self._send(request, stream=True)
            response = self._reattach(request, response)
            capture.status = response.status_code
            capture.headers = dict(response.headers)
            watchdog = _Watchdog(capture, response, deadline=min(ends) if ends else None, stall_s=self.stall_s)
            watchdog.start()
            for chunk in response.iter_raw():
                if capture.done_seen:
                    capture.bytes_after_done += chunk
                    continue
                buffer += chunk
                new_events = parser.feed(chunk)
                if new_events:
                    watchdog.progress()
                for event in new_events:
                    if capture.first_event_s is None:
                        capture.first_event_s = time.perf_counter() - started
                    capture.events.append(event)
                    if event.data == "[DONE]":
                        capture.done_seen = True
                        # whatever followed [DONE] in the same read also breaks DC-2.7
                        capture.bytes_after_done += bytes(buffer[_consumed(buffer, event) :])
                        if not await_close:
                            capture.closed_by_suite = True
                            response.close()
                            with self._lock:
                                self._left_at_done[str(request.url)] = time.monotonic()
                            break
                        timer = threading.Timer(
                            CLOSE_GRACE_S, _stop_reading, args=(capture, response), kwargs={"deadline": False}
                        )
                        timer.daemon = True
                        timer.start()
                        break
                    stop = on_event(capture, event) if on_event is not None else False
                    if stop or (stop_after_events is not None and len(capture.events) >= stop_after_events):
                        capture.error = "stopped by the check"
                        response.close()
                        break
                if capture.error == "stopped by the check" or (capture.done_seen and not await_close):
                    break
                if len(buffer) > MAX_STREAM_BYTES:
                    capture.truncated = True
                    response.close()
                    break
            else:
                if not capture.done_seen:
                    # a final CR is only known to end a line once the stream ends (it could have begun a CRLF)
                    for event in parser.close():
                        capture.events.append(event)
                        if event.data == "[DONE]":
                            capture.done_seen = True
                            break
                if capture.done_seen:
                    capture.closed_after_done = not capture.closed_by_suite
        except httpx.StreamClosed:
            pass  # our own close after the grace period: the server kept the connection open
        except httpx.HTTPError as exc:
            if not capture.closed_by_suite:
                capture.error = f"{type(exc).__name__}: {exc}"
        finally:
            if timer is not None:
                timer.cancel()
            if watchdog is not None:
                watchdog.finished.set()
            if response is not None:
                response.close()
        capture.raw = bytes(buffer)
        capture.issues = list(parser.issues)
        capture.comments = list(parser.comments)
        capture.elapsed_s = time.perf_counter() - started
        exchange.elapsed_ms = round(capture.elapsed_s * 1000, 1)
        exchange.status = capture.status
        exchange.response_headers = capture.headers
        exchange.body_excerpt, exchange.body_truncated = _excerpt(capture.raw)
        exchange.error = capture.error
        capture.exchange = exchange
        self._record(exchange)
        with self._lock:
            self.captures.append(capture)
        return capture
