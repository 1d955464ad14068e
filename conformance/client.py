"""Reference dual-call client (httpx + httpx-sse), sync and async.

What orchestrator authors import::

    from conformance.client import DualCallClient

    with DualCallClient("http://127.0.0.1:8000") as client:
        job = client.submit("Hello", max_tokens=32)
        for event in client.events(job):
            if isinstance(event, Token):
                print(event.text, end="")

The client follows ``sse_url`` as a URL reference resolved against the POST URL (it never
builds the stream path itself), resumes with ``Last-Event-ID`` after a dropped connection, and
stops at ``[DONE]``. Reconnects wait with bounded exponential backoff and jitter; a submit
answered ``503`` is retried a bounded number of times, after ``Retry-After`` when the worker
sends one (the job was not created, so the retry cannot duplicate it). A stream request answered
``503`` is resumed after ``Retry-After`` the same way, and one a gateway answered ``502``/``504``
(no replica reachable for a moment) after the backoff: a GET changes nothing.

Every submit carries an ``Idempotency-Key`` (contract DC-1.9), one random key per job, the same on
each retry of it. So a submit whose answer was lost (the connection dropped, a balancer answered
``502``/``504``) is retried too: a worker that honours the key answers the job the first attempt
created. A worker that does not honour it (it does not advertise ``idempotency_key`` in /health)
may then create a second job, which expires unread; ``idempotency_keys=False`` sends no key and
retries only ``503``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from http import HTTPStatus
from typing import Any, Final

import httpx
from httpx_sse import ServerSentEvent, aconnect_sse, connect_sse

SUBMIT_PATH: Final = "/v1/inference"
IDEMPOTENCY_HEADER: Final = "Idempotency-Key"
#: statuses of a submit whose job may or may not exist: retried only with an idempotency key
_AMBIGUOUS_STATUSES: Final = (502, 504)
#: stream answers that mean "not now": the request is resumed later (a GET creates nothing)
_RESUMABLE_STATUSES: Final = (502, 503, 504)
DONE_DATA: Final = "[DONE]"
DEFAULT_TIMEOUT_S: Final = 30.0
#: characters of a non-problem error body kept in the exception
BODY_EXCERPT_CHARS: Final = 300
_PROBLEM_MEMBERS: Final = ("type", "title", "detail")


class DualCallError(Exception):
    """Base class of the client's errors."""


class ProtocolError(DualCallError):
    """The worker answered something the contract does not allow."""


class ProblemError(DualCallError):
    """The worker answered an error status: an RFC 9457 problem, or any other body.

    ``problem`` is the problem document; for another body it is ``{"detail": <excerpt>}``, and
    ``body`` keeps the excerpt either way, so the message never loses what the worker said.
    ``retry_after_s`` is the worker's ``Retry-After`` in seconds, when it sent one.
    """

    def __init__(
        self, status: int, problem: dict[str, Any], *, body: str | None = None, retry_after_s: float | None = None
    ) -> None:
        self.status = status
        self.problem = problem
        self.body = body if body is not None else str(problem.get("detail", ""))
        self.retry_after_s = retry_after_s
        super().__init__(_describe(status, problem, self.body))


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _is_problem(document: dict[str, Any]) -> bool:
    return any(isinstance(document.get(member), str) and document[member] for member in _PROBLEM_MEMBERS)


def _describe(status: int, problem: dict[str, Any], body: str) -> str:
    if _is_problem(problem) and ("title" in problem or "type" in problem):
        title = problem.get("title") or _reason(status)
        detail = problem.get("detail")
        return f"{status} {title}: {detail}" if detail else f"{status} {title}"
    return f"{status} {_reason(status)}: {body!r}" if body else f"{status} {_reason(status)} (empty body)"


def _excerpt(text: str, limit: int = BODY_EXCERPT_CHARS) -> str:
    return text if len(text) <= limit else f"{text[:limit]}… (+{len(text) - limit} chars)"


class StreamEnded(DualCallError):
    """The stream ended before ``end``/``error`` and could not be resumed."""


@dataclass(frozen=True, slots=True)
class Submission:
    job_id: str
    sse_url: str
    """Absolute stream URL, resolved against the POST URL."""
    status_url: str
    """Absolute status/cancel URL (the worker's ``status_url`` if given)."""


@dataclass(frozen=True, slots=True)
class Started:
    id: int
    job_id: str


@dataclass(frozen=True, slots=True)
class Token:
    id: int
    index: int
    text: str


@dataclass(frozen=True, slots=True)
class End:
    id: int
    tokens_out: int
    stop_reason: str


@dataclass(frozen=True, slots=True)
class ErrorEvent:
    id: int
    code: str
    message: str


Event = Started | Token | End | ErrorEvent


@dataclass(frozen=True, slots=True)
class Completion:
    job_id: str
    text: str
    tokens_out: int
    stop_reason: str | None
    error: ErrorEvent | None
    events: tuple[Event, ...]


class GenerationFailed(DualCallError):
    """The job finished with an ``error`` event (DC-C-7): a failure, never a completion.

    ``code`` and ``message`` are the error event's; ``partial_text`` is what arrived before it
    (never the answer); ``completion`` keeps every event, as ``generate()`` returned it before
    it raised.
    """

    def __init__(self, completion: Completion, error: ErrorEvent) -> None:
        self.completion = completion
        self.error = error
        self.code = error.code
        self.message = error.message
        self.partial_text = completion.text
        super().__init__(f"generation failed: {error.code}: {error.message}")


@functools.lru_cache(maxsize=64)
def _base_url(base: str) -> httpx.URL:
    """A client resolves against the same POST URL job after job: parse it once."""
    return httpx.URL(base)


def resolve(base: str, reference: str) -> str:
    """RFC 3986 reference resolution (relative paths, absolute URLs on other hosts)."""
    return str(_base_url(base).join(reference))


def parse_submission(post_url: str, response: httpx.Response) -> Submission:
    content_type = response.headers.get("content-type", "")
    if "text/event-stream" in content_type:  # before the status check: legacy workers answer 200
        raise ProtocolError(
            "POST answered with an event stream: this is the legacy direct-SSE shape, not the dual-call contract"
        )
    if 200 <= response.status_code < 300 and response.status_code != 202:
        raise ProtocolError(f"submit answered {response.status_code}; the dual-call contract answers 202 Accepted")
    if response.status_code != 202:
        raise _problem(response)
    try:
        body = response.json()
        job_id, sse_url = body["job_id"], body["sse_url"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ProtocolError(f"submit response is not {{job_id, sse_url}} JSON: {response.text[:200]!r}") from exc
    if not isinstance(job_id, str) or not isinstance(sse_url, str):
        raise ProtocolError("job_id and sse_url must be strings")
    status_ref = body.get("status_url") if isinstance(body.get("status_url"), str) else f"{SUBMIT_PATH}/{job_id}"
    return Submission(job_id=job_id, sse_url=resolve(post_url, sse_url), status_url=resolve(post_url, status_ref))


def to_event(sse: ServerSentEvent) -> Event | None:
    """Typed event, or None for ``[DONE]``; raises ProtocolError on anything off-contract."""
    if sse.data == DONE_DATA:
        return None
    try:
        event_id = int(sse.id)
        data = json.loads(sse.data)
        if sse.event == "started":
            return Started(event_id, str(data["job_id"]))
        if sse.event == "token":
            return Token(event_id, int(data["index"]), str(data["text"]))
        if sse.event == "end":
            return End(event_id, int(data["tokens_out"]), str(data["stop_reason"]))
        if sse.event == "error":
            return ErrorEvent(event_id, str(data["code"]), str(data["message"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise ProtocolError(f"malformed {sse.event!r} event (id {sse.id!r}): {sse.data[:200]!r}") from exc
    raise ProtocolError(f"unknown event type {sse.event!r}")


def _is_unknown_event(sse: ServerSentEvent) -> bool:
    """DC-C-8: event types the client does not know are skipped (the contract grows by new ones)."""
    return sse.data != DONE_DATA and sse.event not in ("started", "token", "end", "error")


def _event_id(sse: ServerSentEvent, previous: int | None) -> int | None:
    return int(sse.id) if sse.id.isdigit() else previous


def _check_stream_type(response: httpx.Response) -> None:
    """A 200 that is not an event stream is off-contract, not a dropped connection to retry."""
    content_type = response.headers.get("content-type", "")
    if "text/event-stream" not in content_type:
        raise ProtocolError(f"stream answered 200 {content_type or 'without a Content-Type'}, not text/event-stream")


def _problem(response: httpx.Response) -> ProblemError:
    excerpt = _excerpt(response.text)
    try:
        document = response.json()
    except ValueError:
        document = None
    if not isinstance(document, dict) or not _is_problem(document):
        document = {"detail": excerpt}
    return ProblemError(
        response.status_code, document, body=excerpt, retry_after_s=retry_after_seconds(response.headers)
    )


def retry_after_seconds(headers: httpx.Headers, *, now: datetime | None = None) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP-date (RFC 9110 10.2.3); None if absent/invalid."""
    value = headers.get("retry-after", "").strip()
    if not value:
        return None
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


@dataclass(frozen=True, slots=True)
class Backoff:
    """Bounded exponential backoff with jitter for reconnects and retries.

    Attempt ``n`` (from 1) waits ``min(max_s, initial_s * factor ** (n - 1))``, scaled by a random
    factor in ``[1 - jitter, 1]`` so that many clients cut off together do not reconnect together.
    """

    initial_s: float = 0.1
    factor: float = 2.0
    max_s: float = 5.0
    jitter: float = 0.5

    def ceiling(self, attempt: int) -> float:
        return min(self.max_s, self.initial_s * self.factor ** max(0, attempt - 1))

    def delay(self, attempt: int) -> float:
        return self.ceiling(attempt) * (1.0 - self.jitter * random.random())


DEFAULT_BACKOFF: Final = Backoff()


def _submit_wait(
    error: ProblemError | httpx.TransportError,
    attempt: int,
    retries: int,
    backoff: Backoff,
    max_wait_s: float,
    *,
    keyed: bool = False,
) -> float | None:
    """Seconds to wait before retrying a submit that failed with ``error``, or None to give up.

    ``503`` created no job (DC-1.6): always retried. A lost answer (a transport error, a
    gateway's ``502``/``504``) may hide a created job: retried only when the submit carries an
    idempotency key, whose retry answers that job (DC-1.10).
    """
    if attempt > retries:
        return None
    if isinstance(error, httpx.TransportError):
        return backoff.delay(attempt) if keyed else None
    if keyed and error.status in _AMBIGUOUS_STATUSES:
        return backoff.delay(attempt)
    if error.status != 503:
        return None
    if error.retry_after_s is None:
        return backoff.delay(attempt)
    return error.retry_after_s if error.retry_after_s <= max_wait_s else None


def new_idempotency_key() -> str:
    """A fresh key for one job's submit and its retries (DC-1.9): a random UUID."""
    return str(uuid.uuid4())


def _key_headers(key: str | None) -> dict[str, str]:
    return {IDEMPOTENCY_HEADER: key} if key else {}


def _stream_wait(response: httpx.Response, resumes: int, backoff: Backoff, max_wait_s: float) -> float:
    """Seconds to wait before resuming a stream request answered 502/503/504; the problem if too long."""
    wait = retry_after_seconds(response.headers)
    if wait is None:
        return backoff.delay(resumes)
    if wait > max_wait_s:
        raise _problem(response)
    return wait


def _body(prompt: str, params: dict[str, Any]) -> dict[str, Any]:
    return {"prompt": prompt, **{key: value for key, value in params.items() if value is not None}}


def _headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def _resume_headers(last_event_id: int | None) -> dict[str, str]:
    return {"Last-Event-ID": str(last_event_id)} if last_event_id is not None else {}


def _after_drop(resumes: int, max_resumes: int, dropped: BaseException | None) -> int:
    """Count one more reconnect without progress, or give up with StreamEnded."""
    resumes += 1
    if resumes > max_resumes:
        raise StreamEnded(
            f"stream ended before [DONE] {resumes} times without progress (last: {dropped or 'clean close'})"
        )
    return resumes


async def _no_events() -> AsyncIterator[ServerSentEvent]:
    return
    yield  # an async generator that yields nothing


def _status_body(response: httpx.Response) -> dict[str, Any]:
    if response.status_code != 200:
        raise _problem(response)
    result: dict[str, Any] = response.json()
    return result


def _cancel_body(response: httpx.Response) -> dict[str, Any] | None:
    if response.status_code not in (202, 204):
        raise _problem(response)
    return response.json() if response.content else None


def _succeeded(completion: Completion) -> Completion:
    """The completion of a job that ended with ``end``; GenerationFailed for one that ended with ``error``."""
    if completion.error is not None:
        raise GenerationFailed(completion, completion.error)
    return completion


def _assemble(job_id: str, events: list[Event]) -> Completion:
    end = next((event for event in events if isinstance(event, End)), None)
    error = next((event for event in events if isinstance(event, ErrorEvent)), None)
    return Completion(
        job_id=job_id,
        text="".join(event.text for event in events if isinstance(event, Token)),
        tokens_out=end.tokens_out if end else 0,
        stop_reason=end.stop_reason if end else None,
        error=error,
        events=tuple(events),
    )


class DualCallClient:
    """Blocking client.

    ``max_resumes`` bounds consecutive reconnects that deliver no new event; each waits
    ``backoff.delay(n)``. ``submit_retries`` bounds retries of a submit answered 503, each after
    the worker's ``Retry-After`` (given up at once when that exceeds ``max_retry_after_s``) or,
    without one, after ``backoff.delay(n)``. ``sleep`` is how the client waits (tests pass a recorder).
    """

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        max_resumes: int = 3,
        backoff: Backoff = DEFAULT_BACKOFF,
        submit_retries: int = 2,
        max_retry_after_s: float = 30.0,
        idempotency_keys: bool = True,
        sleep: Callable[[float], None] = time.sleep,
        http: httpx.Client | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.max_resumes = max_resumes
        self.backoff = backoff
        self.submit_retries = submit_retries
        self.max_retry_after_s = max_retry_after_s
        self.idempotency_keys = idempotency_keys
        self._sleep = sleep
        self._http = http or httpx.Client(timeout=timeout, headers=_headers(token))
        self._owns_http = http is None

    def __enter__(self) -> DualCallClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def submit(self, prompt: str, *, idempotency_key: str | None = None, **params: Any) -> Submission:
        """POST the job; retried up to ``submit_retries`` times (see module doc)."""
        url = self.base_url + SUBMIT_PATH
        key = idempotency_key or (new_idempotency_key() if self.idempotency_keys else None)
        attempt = 0
        while True:
            try:
                response = self._http.post(url, json=_body(prompt, params), headers=_key_headers(key))
                return parse_submission(url, response)
            except (ProblemError, httpx.TransportError) as error:
                attempt += 1
                wait = _submit_wait(
                    error, attempt, self.submit_retries, self.backoff, self.max_retry_after_s, keyed=key is not None
                )
                if wait is None:
                    raise
            self._sleep(wait)

    def events(self, job: Submission, *, last_event_id: int | None = None) -> Iterator[Event]:
        """Typed events until ``[DONE]``, resuming after a dropped connection."""
        resumes = 0
        while True:
            resumed_after = last_event_id
            headers = _resume_headers(last_event_id)
            refused: httpx.Response | None = None
            try:
                with connect_sse(self._http, "GET", job.sse_url, headers=headers) as source:
                    if source.response.status_code == 204:
                        return
                    if source.response.status_code in _RESUMABLE_STATUSES:  # busy, draining, gateway: later
                        source.response.read()
                        refused = source.response
                    elif source.response.status_code != 200:
                        source.response.read()
                        raise _problem(source.response)
                    else:
                        _check_stream_type(source.response)
                    for sse in () if refused is not None else source.iter_sse():
                        if sse.data == "":  # WHATWG: no data, no dispatch (keepalive comments after an id)
                            continue
                        if _is_unknown_event(sse):  # DC-C-8: the contract grows by new event types
                            last_event_id = _event_id(sse, last_event_id)
                            continue
                        event = to_event(sse)
                        if event is None:
                            return
                        last_event_id = event.id
                        yield event
            except httpx.TransportError as exc:
                dropped: BaseException | None = exc
            else:
                dropped = None  # closed cleanly but before [DONE]: also resumable
            if last_event_id != resumed_after:
                resumes = 0  # progress: only reconnects that deliver nothing count against max_resumes
            resumes = _after_drop(resumes, self.max_resumes, dropped)
            if refused is not None:
                self._sleep(_stream_wait(refused, resumes, self.backoff, self.max_retry_after_s))
            else:
                self._sleep(self.backoff.delay(resumes))

    def generate(self, prompt: str, **params: Any) -> Completion:
        """Submit, follow ``sse_url``, collect; GenerationFailed when the job ends with ``error``."""
        job = self.submit(prompt, **params)
        try:
            completion = _assemble(job.job_id, list(self.events(job)))
        except Exception:  # DC-C-9: a job given up on is cancelled, not left to the TTL
            try:  # noqa: SIM105  (no contextlib import: keeps this change apart from the imports)
                self.cancel(job)
            except (DualCallError, httpx.HTTPError):
                pass  # the original error is what the caller needs to see
            raise
        return _succeeded(completion)  # the job is over either way: nothing to cancel

    def status(self, job: Submission) -> dict[str, Any]:
        return _status_body(self._http.get(job.status_url))

    def cancel(self, job: Submission) -> dict[str, Any] | None:
        return _cancel_body(self._http.delete(job.status_url))


#: after ``[DONE]``, how long the async client waits for the response's end so it can reuse the connection
END_OF_RESPONSE_WAIT_S: Final = 0.05


async def _end_of_response(stream: AsyncIterator[ServerSentEvent]) -> None:
    """After ``[DONE]``: take the end of the response if it is there at once, so the connection is reused.

    A worker ends the response right after ``[DONE]`` (the chunked terminator is usually in the same
    read). Leaving the ``with`` block before that end closes the connection instead of returning it to
    the pool, and the next request pays for a new TCP connection, on both sides. Anything else (more
    data, or a connection held open by a buffering proxy) is not waited for: the response is closed
    as before, well within DC-C-10's "close at [DONE]".
    """
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(END_OF_RESPONSE_WAIT_S):
            async for _ in stream:
                return


class AsyncDualCallClient:
    """The same API for asyncio."""

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        max_resumes: int = 3,
        backoff: Backoff = DEFAULT_BACKOFF,
        submit_retries: int = 2,
        max_retry_after_s: float = 30.0,
        idempotency_keys: bool = True,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.max_resumes = max_resumes
        self.backoff = backoff
        self.submit_retries = submit_retries
        self.max_retry_after_s = max_retry_after_s
        self.idempotency_keys = idempotency_keys
        self._sleep = sleep
        self._http = http or httpx.AsyncClient(timeout=timeout, headers=_headers(token))
        self._owns_http = http is None

    async def __aenter__(self) -> AsyncDualCallClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def submit(self, prompt: str, *, idempotency_key: str | None = None, **params: Any) -> Submission:
        url = self.base_url + SUBMIT_PATH
        key = idempotency_key or (new_idempotency_key() if self.idempotency_keys else None)
        attempt = 0
        while True:
            try:
                response = await self._http.post(url, json=_body(prompt, params), headers=_key_headers(key))
                return parse_submission(url, response)
            except (ProblemError, httpx.TransportError) as error:
                attempt += 1
                wait = _submit_wait(
                    error, attempt, self.submit_retries, self.backoff, self.max_retry_after_s, keyed=key is not None
                )
                if wait is None:
                    raise
            await self._sleep(wait)

    async def events(self, job: Submission, *, last_event_id: int | None = None) -> AsyncIterator[Event]:
        resumes = 0
        while True:
            resumed_after = last_event_id
            headers = _resume_headers(last_event_id)
            refused: httpx.Response | None = None
            try:
                async with aconnect_sse(self._http, "GET", job.sse_url, headers=headers) as source:
                    if source.response.status_code == 204:
                        return
                    if source.response.status_code != 200:
                        await source.response.aread()
                        if source.response.status_code not in _RESUMABLE_STATUSES:
                            raise _problem(source.response)
                        refused = source.response  # busy, draining, or a gateway without a replica: later
                    else:
                        _check_stream_type(source.response)
                    stream = _no_events() if refused is not None else source.aiter_sse()
                    async for sse in stream:
                        if sse.data == "":  # WHATWG: no data, no dispatch (keepalive comments after an id)
                            continue
                        if _is_unknown_event(sse):  # DC-C-8: the contract grows by new event types
                            last_event_id = _event_id(sse, last_event_id)
                            continue
                        event = to_event(sse)
                        if event is None:
                            await _end_of_response(stream)
                            return
                        last_event_id = event.id
                        yield event
            except httpx.TransportError as exc:
                dropped: BaseException | None = exc
            else:
                dropped = None  # closed cleanly but before [DONE]: also resumable
            if last_event_id != resumed_after:
                resumes = 0  # progress: only reconnects that deliver nothing count against max_resumes
            resumes = _after_drop(resumes, self.max_resumes, dropped)
            if refused is not None:
                await self._sleep(_stream_wait(refused, resumes, self.backoff, self.max_retry_after_s))
            else:
                await self._sleep(self.backoff.delay(resumes))

    async def generate(self, prompt: str, **params: Any) -> Completion:
        """Submit, follow ``sse_url``, collect; GenerationFailed when the job ends with ``error``."""
        job = await self.submit(prompt, **params)
        try:
            completion = _assemble(job.job_id, [event async for event in self.events(job)])
        except Exception:  # DC-C-9: a job given up on is cancelled, not left to the TTL
            try:  # noqa: SIM105  (no contextlib import: keeps this change apart from the imports)
                await self.cancel(job)
            except (DualCallError, httpx.HTTPError):
                pass  # the original error is what the caller needs to see
            raise
        return _succeeded(completion)  # the job is over either way: nothing to cancel

    async def status(self, job: Submission) -> dict[str, Any]:
        return _status_body(await self._http.get(job.status_url))

    async def cancel(self, job: Submission) -> dict[str, Any] | None:
        return _cancel_body(await self._http.delete(job.status_url))
