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
stops at ``[DONE]``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any, Final

import httpx
from httpx_sse import ServerSentEvent, aconnect_sse, connect_sse

SUBMIT_PATH: Final = "/v1/inference"
DONE_DATA: Final = "[DONE]"
DEFAULT_TIMEOUT_S: Final = 30.0


class DualCallError(Exception):
    """Base class of the client's errors."""


class ProtocolError(DualCallError):
    """The worker answered something the contract does not allow."""


class ProblemError(DualCallError):
    """The worker answered an RFC 9457 problem (or another error status)."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        self.status = status
        self.problem = problem
        super().__init__(f"{status} {problem.get('title', '')}: {problem.get('detail', '')}".strip())


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


def resolve(base: str, reference: str) -> str:
    """RFC 3986 reference resolution (relative paths, absolute URLs on other hosts)."""
    return str(httpx.URL(base).join(reference))


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
    try:
        body = response.json()
    except ValueError:
        body = {"detail": response.text[:300]}
    return ProblemError(response.status_code, body if isinstance(body, dict) else {"detail": str(body)})


def _body(prompt: str, params: dict[str, Any]) -> dict[str, Any]:
    return {"prompt": prompt, **{key: value for key, value in params.items() if value is not None}}


def _headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def _resume_headers(last_event_id: int | None) -> dict[str, str]:
    return {"Last-Event-ID": str(last_event_id)} if last_event_id is not None else {}


def _after_drop(resumes: int, max_resumes: int, dropped: BaseException | None) -> int:
    """Count one more reconnect, or give up with StreamEnded."""
    resumes += 1
    if resumes > max_resumes:
        raise StreamEnded(f"stream ended before [DONE] {resumes} times (last: {dropped or 'clean close'})")
    return resumes


def _status_body(response: httpx.Response) -> dict[str, Any]:
    if response.status_code != 200:
        raise _problem(response)
    result: dict[str, Any] = response.json()
    return result


def _cancel_body(response: httpx.Response) -> dict[str, Any] | None:
    if response.status_code not in (202, 204):
        raise _problem(response)
    return response.json() if response.content else None


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
    """Blocking client. ``max_resumes`` bounds reconnects after a dropped stream."""

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        max_resumes: int = 3,
        http: httpx.Client | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.max_resumes = max_resumes
        self._http = http or httpx.Client(timeout=timeout, headers=_headers(token))
        self._owns_http = http is None

    def __enter__(self) -> DualCallClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def submit(self, prompt: str, **params: Any) -> Submission:
        url = self.base_url + SUBMIT_PATH
        return parse_submission(url, self._http.post(url, json=_body(prompt, params)))

    def events(self, job: Submission, *, last_event_id: int | None = None) -> Iterator[Event]:
        """Typed events until ``[DONE]``, resuming after a dropped connection."""
        resumes = 0
        while True:
            headers = _resume_headers(last_event_id)
            try:
                with connect_sse(self._http, "GET", job.sse_url, headers=headers) as source:
                    if source.response.status_code == 204:
                        return
                    if source.response.status_code != 200:
                        source.response.read()
                        raise _problem(source.response)
                    _check_stream_type(source.response)
                    for sse in source.iter_sse():
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
            resumes = _after_drop(resumes, self.max_resumes, dropped)

    def generate(self, prompt: str, **params: Any) -> Completion:
        job = self.submit(prompt, **params)
        try:
            return _assemble(job.job_id, list(self.events(job)))
        except Exception:  # DC-C-9: a job given up on is cancelled, not left to the TTL
            try:  # noqa: SIM105  (no contextlib import: keeps this change apart from the imports)
                self.cancel(job)
            except (DualCallError, httpx.HTTPError):
                pass  # the original error is what the caller needs to see
            raise

    def status(self, job: Submission) -> dict[str, Any]:
        return _status_body(self._http.get(job.status_url))

    def cancel(self, job: Submission) -> dict[str, Any] | None:
        return _cancel_body(self._http.delete(job.status_url))


class AsyncDualCallClient:
    """The same API for asyncio."""

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        max_resumes: int = 3,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.max_resumes = max_resumes
        self._http = http or httpx.AsyncClient(timeout=timeout, headers=_headers(token))
        self._owns_http = http is None

    async def __aenter__(self) -> AsyncDualCallClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def submit(self, prompt: str, **params: Any) -> Submission:
        url = self.base_url + SUBMIT_PATH
        return parse_submission(url, await self._http.post(url, json=_body(prompt, params)))

    async def events(self, job: Submission, *, last_event_id: int | None = None) -> AsyncIterator[Event]:
        resumes = 0
        while True:
            headers = _resume_headers(last_event_id)
            try:
                async with aconnect_sse(self._http, "GET", job.sse_url, headers=headers) as source:
                    if source.response.status_code == 204:
                        return
                    if source.response.status_code != 200:
                        await source.response.aread()
                        raise _problem(source.response)
                    _check_stream_type(source.response)
                    async for sse in source.aiter_sse():
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
            resumes = _after_drop(resumes, self.max_resumes, dropped)

    async def generate(self, prompt: str, **params: Any) -> Completion:
        job = await self.submit(prompt, **params)
        try:
            return _assemble(job.job_id, [event async for event in self.events(job)])
        except Exception:  # DC-C-9: a job given up on is cancelled, not left to the TTL
            try:  # noqa: SIM105  (no contextlib import: keeps this change apart from the imports)
                await self.cancel(job)
            except (DualCallError, httpx.HTTPError):
                pass  # the original error is what the caller needs to see
            raise

    async def status(self, job: Submission) -> dict[str, Any]:
        return _status_body(await self._http.get(job.status_url))

    async def cancel(self, job: Submission) -> dict[str, Any] | None:
        return _cancel_body(await self._http.delete(job.status_url))
