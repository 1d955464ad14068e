"""The catalogue of deliberately broken workers: the real mock worker with ONE defect each.

Every entry models a bug a real worker could ship and names the conformance checks that MUST
fail because of it (``caught_by``); a SHOULD check that must warn is listed in ``warned_by``.
``apply()`` installs the defect in the current process — by monkeypatching the worker core
(`workers.app`, `workers.registry`, `workers.sse`, the mock engine) or by returning an ASGI
middleware that wraps the unmodified app and mutates requests and responses on the wire.
Each broken worker runs in its own process (`serve.py`), so patches never leak.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import itertools
import json
import random
import re
import secrets
import time
import traceback
from collections.abc import AsyncIterator, Callable
from contextvars import ContextVar
from typing import Any

import msgspec
from litestar import Request, Response, post
from litestar.exceptions import HTTPException
from litestar.response import Stream

import workers.app as worker_app
import workers.registry as worker_registry
from workers import sse as worker_sse
from workers.config import WorkerSettings
from workers.engines import mock as mock_engine
from workers.engines.base import EngineError, EngineHealth, GenerationRequest
from workers.problems import ProblemException
from workers.registry import Job, JobRegistry, UnknownJob
from workers.schemas import EndData, ErrorInfo, InferenceRequest, TokenData

from .asgi import (
    JOB_PATH,
    BufferedRewriter,
    Headers,
    JSONRewriter,
    Message,
    Middleware,
    Receive,
    Rewriter,
    Scope,
    Send,
    SSERewriter,
    answer,
    drop_header,
    get_header,
    is_stream,
    is_submit,
    rewrite,
    route,
    set_header,
)

AUTH_TOKEN = "s3cret"


@dataclasses.dataclass(frozen=True, slots=True)
class Defect:
    name: str
    #: one line: the real bug this models
    description: str
    #: check ids that MUST fail against this worker
    caught_by: tuple[str, ...]
    install: Callable[[], Middleware | None]
    #: SHOULD check ids that must answer "warning"
    warned_by: tuple[str, ...] = ()
    #: extra command-line flags for the worker
    worker_args: tuple[str, ...] = ()
    #: bearer token the suite must send
    suite_token: str | None = None
    #: checks run alongside only to provide evidence (e.g. for the sweeps DC-SVC-004/006); no expectation
    runs_with: tuple[str, ...] = ()

    def apply(self) -> Middleware | None:
        """Install the defect in this process; returns a middleware to wrap the app with, if any."""
        return self.install()


DEFECTS: dict[str, Defect] = {}


def defect(
    name: str,
    description: str,
    *,
    caught_by: tuple[str, ...],
    warned_by: tuple[str, ...] = (),
    worker_args: tuple[str, ...] = (),
    suite_token: str | None = None,
    runs_with: tuple[str, ...] = (),
) -> Callable[[Callable[[], Middleware | None]], Callable[[], Middleware | None]]:
    def register(install: Callable[[], Middleware | None]) -> Callable[[], Middleware | None]:
        if name in DEFECTS:
            raise ValueError(f"duplicate defect {name}")
        DEFECTS[name] = Defect(name, description, caught_by, install, warned_by, worker_args, suite_token, runs_with)
        return install

    return register


# -- shared building blocks ---------------------------------------------------------------------------


def _status_swap(match: Callable[[Scope], bool], old: int, new: int) -> Middleware:
    class Swap(Rewriter):
        def start(self, status: int, headers: Headers) -> tuple[int, Headers]:
            return (new if status == old else status), headers

    return rewrite(match, Swap)


def _wrap_decode(wrapper: Callable[[Callable[[bytes], InferenceRequest], bytes], InferenceRequest]) -> None:
    """Replace `workers.app._decode_request` (the submit body parser) with ``wrapper(original, body)``."""
    original = worker_app._decode_request
    worker_app._decode_request = lambda body: wrapper(original, body)  # type: ignore[assignment]


def _wrap_generation(change: Callable[[GenerationRequest, WorkerSettings], GenerationRequest]) -> None:
    original = worker_app._to_generation

    def to_generation(body: InferenceRequest, settings: WorkerSettings) -> GenerationRequest:
        return change(original(body, settings), settings)

    worker_app._to_generation = to_generation  # type: ignore[assignment]


def _wrap_encoder(encode: Callable[[int, str, object], bytes]) -> None:
    """Replace the SSE encoder every job uses (`workers.sse.encode_event`, and its token fast path)."""
    worker_sse.encode_event = encode  # type: ignore[assignment]
    worker_sse.encode_token = lambda event_id, index, text: encode(event_id, "token", TokenData(index=index, text=text))  # type: ignore[assignment]


_original_encode = worker_sse.encode_event


def _builtins(payload: object) -> Any:
    return msgspec.to_builtins(payload)


def _close(job: Job, state: Any, stop_reason: Any, error: ErrorInfo | None) -> bool:
    """The bookkeeping half of `Job.finish`; False when the job had already finished."""
    if job.finished:
        return False
    job.state = state
    job.stop_reason = stop_reason
    job.error = error
    job.finished_at = time.time()
    job._finished_mono = time.monotonic()
    return True


def _emit_terminal(job: Job, **end_overrides: Any) -> None:
    if job.error is not None:
        job.emit("error", job.error)
    else:
        fields = {"tokens_out": job.tokens_out, "stop_reason": job.stop_reason, **end_overrides}
        job.emit("end", EndData(**fields))


def _replace_finish(emit: Callable[[Job], None]) -> None:
    """Replace `Job.finish` with one whose event emission is ``emit(job)``."""

    def finish(self: Job, state: Any, *, stop_reason: Any = None, error: ErrorInfo | None = None) -> None:
        if _close(self, state, stop_reason, error):
            emit(self)

    Job.finish = finish  # type: ignore[method-assign]


def _problem(status: int, title: str, detail: str) -> bytes:
    return json.dumps({"type": "about:blank", "title": title, "status": status, "detail": detail}).encode()


def _fixed_answer(match: Callable[[Scope], bool], status: int, body: bytes, content_type: str) -> Middleware:
    class Fixed(Rewriter):
        async def run(self, app: Any, scope: Scope, receive: Receive, send: Send) -> None:
            await answer(send, status, body, content_type)

    return rewrite(match, Fixed)


# -- DC-1 submit ------------------------------------------------------------------------------------


@defect(
    "wrong-submit-status",
    "POST /v1/inference answers 200 OK instead of 202 Accepted (a framework's default status kept)",
    caught_by=("DC-SUBMIT-001",),
)
def _wrong_submit_status() -> Middleware:
    return _status_swap(is_submit, 202, 200)


@defect(
    "no-location",
    "the 202 hand-off has no Location header (only the JSON body names sse_url)",
    caught_by=("DC-SUBMIT-002",),
)
def _no_location() -> Middleware:
    class NoLocation(Rewriter):
        def start(self, status: int, headers: Headers) -> tuple[int, Headers]:
            return status, drop_header(headers, "location")

    return rewrite(is_submit, NoLocation)


@defect(
    "location-mismatch",
    "Location names the job resource (REST habit for 'created') instead of sse_url",
    caught_by=("DC-SUBMIT-002",),
)
def _location_mismatch() -> Middleware:
    class StatusLocation(Rewriter):
        def start(self, status: int, headers: Headers) -> tuple[int, Headers]:
            location = get_header(headers, "location")
            if location is not None:
                headers = set_header(headers, "location", location.removesuffix("/stream"))
            return status, headers

    return rewrite(is_submit, StatusLocation)


_client_job_id: ContextVar[str | None] = ContextVar("client_job_id", default=None)


@defect(
    "client-job-id-honoured",
    "a job_id in the request body is silently used as the job's id (legacy clients keep 'working')",
    caught_by=("DC-SUBMIT-004",),
)
def _client_job_id_honoured() -> None:
    def decode(original: Callable[[bytes], InferenceRequest], body: bytes) -> InferenceRequest:
        try:
            raw = json.loads(body)
        except ValueError:
            return original(body)
        if isinstance(raw, dict) and isinstance(raw.get("job_id"), str):
            _client_job_id.set(raw.pop("job_id"))
            body = json.dumps(raw).encode()
        return original(body)

    server_id = worker_registry.new_job_id

    def new_job_id() -> str:
        chosen = _client_job_id.get()
        _client_job_id.set(None)
        return chosen or server_id()

    _wrap_decode(decode)
    worker_registry.new_job_id = new_job_id


@defect(
    "sequential-ids",
    "job ids come from a counter (job-1, job-2, ...): guessable, so one client can read another's job",
    caught_by=("DC-SUBMIT-003",),
)
def _sequential_ids() -> None:
    counter = itertools.count(1)
    worker_registry.new_job_id = lambda: f"job-{next(counter)}"


@defect(
    "short-ids",
    "job ids are 8 hex characters (32 random bits), far below the 122 bits required",
    caught_by=("DC-SUBMIT-003",),
)
def _short_ids() -> None:
    worker_registry.new_job_id = lambda: secrets.token_hex(4)


@defect(
    "non-url-safe-ids",
    "job ids are standard base64 (with '=' padding, '+' and '/'), not URL-safe",
    caught_by=("DC-SUBMIT-003",),
)
def _non_url_safe_ids() -> None:
    worker_registry.new_job_id = lambda: base64.b64encode(secrets.token_bytes(16)).decode()


@defect(
    "ids-too-long",
    "job ids are 171 characters (an opaque signed token), beyond the contract's 22-128",
    caught_by=("DC-SUBMIT-003",),
)
def _ids_too_long() -> None:
    worker_registry.new_job_id = lambda: secrets.token_urlsafe(128)


@defect(
    "submit-waits-for-generation",
    "POST answers 202 only after the whole generation has run (the hand-off is not 'at once')",
    caught_by=("DC-SUBMIT-011",),
    # a TTL longer than a 512-token generation on a loaded machine: the waiting POST must find its job
    worker_args=("--ttl-s", "30"),
)
def _submit_waits_for_generation() -> None:
    original = worker_app.submit.fn

    async def submit(request: Request[Any, Any, Any]) -> Response[Any]:
        handed_off = await original(request)
        job = request.app.state.registry.registry.get(handed_off.content.job_id)  # the in-process JobRegistry
        if job.task is not None:
            await asyncio.wait([job.task], timeout=30)
        return handed_off

    worker_app.submit = post(worker_app.SUBMIT_PATH, guards=[worker_app.require_bearer], status_code=202)(submit)


@defect(
    "post-streams",
    "POST creates the job and then answers 200 with its event stream (the legacy shape on a dual-call core)",
    caught_by=("DC-LEGACY-001", "DC-SUBMIT-001"),
)
def _post_streams() -> None:
    original = worker_app.submit.fn

    async def submit(request: Request[Any, Any, Any]) -> Any:
        handed_off = await original(request)
        registry: JobRegistry = request.app.state.registry.registry  # the in-process backend's JobRegistry
        events = registry.open_stream(handed_off.content.job_id, None)
        return Stream(events, media_type=worker_sse.MEDIA_TYPE, headers={"Cache-Control": "no-cache"})

    worker_app.submit = post(
        worker_app.SUBMIT_PATH, guards=[worker_app.require_bearer], status_code=200, media_type=worker_sse.MEDIA_TYPE
    )(submit)


@defect(
    "unknown-fields-ignored",
    "unknown request fields are silently dropped (a typo like `temprature` goes unnoticed)",
    caught_by=("DC-SUBMIT-005",),
)
def _unknown_fields_ignored() -> None:
    known = {*InferenceRequest.__struct_fields__, "job_id"}

    def decode(original: Callable[[bytes], InferenceRequest], body: bytes) -> InferenceRequest:
        try:
            raw = json.loads(body)
        except ValueError:
            return original(body)
        if isinstance(raw, dict):
            body = json.dumps({key: value for key, value in raw.items() if key in known}).encode()
        return original(body)

    _wrap_decode(decode)


@defect(
    "malformed-json-500",
    "the body is parsed outside the error handling, so malformed JSON becomes a 500 instead of 400",
    caught_by=("DC-SUBMIT-006",),
)
def _malformed_json_500() -> None:
    def decode(original: Callable[[bytes], InferenceRequest], body: bytes) -> InferenceRequest:
        msgspec.json.decode(body)  # raises msgspec.DecodeError: an unexpected exception -> 500
        return original(body)

    _wrap_decode(decode)


@defect(
    "invalid-values-400",
    "invalid field values are answered 400 Bad Request instead of 422",
    caught_by=("DC-SUBMIT-008",),
)
def _invalid_values_400() -> None:
    def decode(original: Callable[[bytes], InferenceRequest], body: bytes) -> InferenceRequest:
        try:
            return original(body)
        except ProblemException as exc:
            if exc.status_code == 422 and exc.slug == "invalid-field":
                raise ProblemException(400, "bad-request", exc.detail) from None
            raise

    _wrap_decode(decode)


@defect(
    "traceback-500",
    "a non-object JSON body crashes the parser and the 500 leaks the Python traceback as text/plain",
    caught_by=("DC-SUBMIT-008", "DC-SVC-004"),
)
def _traceback_500() -> None:
    def decode(original: Callable[[bytes], InferenceRequest], body: bytes) -> InferenceRequest:
        try:
            raw = msgspec.json.decode(body)
        except msgspec.DecodeError:
            return original(body)
        raw.get("max_tokens")  # the isinstance(raw, dict) guard is missing: a list body raises
        return original(body)

    def handle_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[str]:
        text = "".join(traceback.format_exception(exc))
        return Response(text, status_code=500, media_type="text/plain")

    _wrap_decode(decode)
    worker_app.handle_unexpected = handle_unexpected  # type: ignore[assignment]


@defect(
    "415-missing",
    "the Content-Type of a submit is never looked at: a form body is parsed as JSON (400, not 415)",
    caught_by=("DC-SUBMIT-007",),
)
def _415_missing() -> Middleware:
    class ForceJSON(Rewriter):
        def request(self, scope: Scope) -> Scope:
            return {**scope, "headers": set_header(list(scope["headers"]), "content-type", "application/json")}

    return rewrite(is_submit, ForceJSON)


@defect(
    "oversized-body-accepted",
    "no request body limit (64 MiB): a 4 MiB body is read and parsed, answered 422 instead of 413",
    caught_by=("DC-SUBMIT-009",),
    worker_args=("--max-body-bytes", str(64 * 1024 * 1024)),
)
def _oversized_body_accepted() -> None:
    return None


@defect(
    "sse-url-unresolvable",
    "sse_url is `<job_id>/stream` without the leading path, so it resolves to /v1/<job_id>/stream (404)",
    caught_by=("DC-SUBMIT-010",),
)
def _sse_url_unresolvable() -> None:
    worker_app.stream_path = lambda job_id: f"{job_id}/stream"


# -- DC-2 stream: headers and framing ---------------------------------------------------------------


@defect(
    "wrong-stream-content-type",
    "the stream is served as text/plain (the handler's media type was forgotten)",
    caught_by=("DC-STREAM-001", "DC-SUBMIT-010"),
)
def _wrong_stream_content_type() -> Middleware:
    class PlainText(Rewriter):
        def start(self, status: int, headers: Headers) -> tuple[int, Headers]:
            if status == 200:
                headers = set_header(headers, "content-type", "text/plain; charset=utf-8")
            return status, headers

    return rewrite(is_stream, PlainText)


@defect(
    "no-cache-control",
    "the stream has no Cache-Control: no-cache, so proxies may buffer or cache it",
    caught_by=("DC-STREAM-001",),
)
def _no_cache_control() -> Middleware:
    class NoCacheControl(Rewriter):
        def start(self, status: int, headers: Headers) -> tuple[int, Headers]:
            return status, drop_header(headers, "cache-control")

    return rewrite(is_stream, NoCacheControl)


@defect(
    "missing-id-lines",
    "events carry no id: line, so gaps cannot be detected and a dropped stream cannot resume",
    caught_by=("DC-STREAM-002",),
)
def _missing_id_lines() -> None:
    _wrap_encoder(
        lambda event_id, event, payload: b"event: %s\ndata: %s\n\n" % (event.encode(), msgspec.json.encode(payload))
    )


@defect(
    "ids-from-zero",
    "event ids start at 0 (an enumerate() off by one): started is id 0, not 1",
    caught_by=("DC-STREAM-002",),
)
def _ids_from_zero() -> None:
    _wrap_encoder(lambda event_id, event, payload: _original_encode(event_id - 1, event, payload))


@defect(
    "id-gap",
    "the event id counter also counts the job's internal state changes: ids jump from 1 to 3",
    caught_by=("DC-STREAM-002",),
)
def _id_gap() -> None:
    _wrap_encoder(lambda event_id, event, payload: _original_encode(event_id + (event_id > 1), event, payload))


@defect(
    "pretty-json-data",
    "data is pretty-printed JSON sent as several data: lines (valid SSE, but not one line of JSON)",
    caught_by=("DC-STREAM-003",),
)
def _pretty_json_data() -> None:
    def encode(event_id: int, event: str, payload: object) -> bytes:
        lines = json.dumps(_builtins(payload), indent=1).split("\n")
        data = "".join(f"data: {line}\n" for line in lines)
        return f"id: {event_id}\nevent: {event}\n{data}\n".encode()

    _wrap_encoder(encode)


@defect(
    "raw-token-text",
    "token text is written raw on data: lines (one per line of text), as the legacy workers did",
    caught_by=("DC-STREAM-003", "DC-STREAM-005", "DC-STREAM-008"),
)
def _raw_token_text() -> None:
    def encode(event_id: int, event: str, payload: object) -> bytes:
        if not isinstance(payload, TokenData):
            return _original_encode(event_id, event, payload)
        data = "".join(f"data: {line}\n" for line in payload.text.split("\n"))
        return f"id: {event_id}\nevent: {event}\n{data}\n".encode()

    _wrap_encoder(encode)


@defect(
    "splitlines-framing",
    "JSON with ensure_ascii=False is framed with str.splitlines(), which also splits on U+2028 and U+0085",
    caught_by=("DC-STREAM-008",),
)
def _splitlines_framing() -> None:
    def encode(event_id: int, event: str, payload: object) -> bytes:
        text = json.dumps(_builtins(payload), ensure_ascii=False)
        data = "".join(f"data: {line}\n" for line in text.splitlines())
        return f"id: {event_id}\nevent: {event}\n{data}\n".encode()

    _wrap_encoder(encode)


@defect(
    "bad-event-schema",
    'token events use abbreviated keys {"i": 0, "t": "..."} instead of {"index", "text"}',
    caught_by=("DC-STREAM-003",),
)
def _bad_event_schema() -> None:
    def emit_token(self: Job, text: str) -> None:
        self.emit("token", {"i": self._token_events, "t": text})
        self._token_events += 1

    Job.emit_token = emit_token  # type: ignore[method-assign]


# -- DC-2 stream: event sequence --------------------------------------------------------------------


@defect(
    "no-started-event",
    "the stream starts with the first token; no started event confirms the job",
    caught_by=("DC-STREAM-004",),
)
def _no_started_event() -> None:
    emit = Job.emit

    def emit_without_started(self: Job, event: str, payload: object) -> None:
        if event != "started":
            emit(self, event, payload)

    Job.emit = emit_without_started  # type: ignore[method-assign]


@defect(
    "token-index-from-one",
    "token indexes start at 1 (the index is bumped before it is used): index 0 is missing",
    caught_by=("DC-STREAM-005",),
)
def _token_index_from_one() -> None:
    def emit_token(self: Job, text: str) -> None:
        self._token_events += 1
        self.emit("token", TokenData(index=self._token_events, text=text))

    Job.emit_token = emit_token  # type: ignore[method-assign]


@defect(
    "two-end-events",
    "the end event is sent twice (once by the generator, once by the finaliser)",
    caught_by=("DC-STREAM-006",),
)
def _two_end_events() -> None:
    def emit(job: Job) -> None:
        _emit_terminal(job)
        _emit_terminal(job)
        job._publish(worker_sse.DONE)

    _replace_finish(emit)


@defect(
    "missing-end",
    "no end event: the stream goes from the last token straight to [DONE]",
    caught_by=("DC-STREAM-006",),
)
def _missing_end() -> None:
    _replace_finish(lambda job: job._publish(worker_sse.DONE))


@defect(
    "end-tokens-out-zero",
    "end.tokens_out is always 0 (the counter is read before generation updates it)",
    caught_by=("DC-STREAM-006",),
)
def _end_tokens_out_zero() -> None:
    def emit(job: Job) -> None:
        _emit_terminal(job, tokens_out=0)
        job._publish(worker_sse.DONE)

    _replace_finish(emit)


@defect(
    "late-token-after-end",
    "held-back text is flushed as a token event after end (end is no longer the last event)",
    caught_by=("DC-STREAM-006",),
)
def _late_token_after_end() -> None:
    def emit(job: Job) -> None:
        _emit_terminal(job)
        job.emit_token(".")
        job._publish(worker_sse.DONE)

    _replace_finish(emit)


@defect(
    "openai-stop-reason",
    'end.stop_reason uses OpenAI\'s "length" instead of the contract\'s "max_tokens"',
    caught_by=("DC-STREAM-003", "DC-PARAM-001"),
)
def _openai_stop_reason() -> None:
    def emit(job: Job) -> None:
        if job.error is None and job.stop_reason == "max_tokens":
            _emit_terminal(job, stop_reason="length")
        else:
            _emit_terminal(job)
        job._publish(worker_sse.DONE)

    _replace_finish(emit)


@defect(
    "done-missing",
    "the stream closes after end without the final data: [DONE] marker",
    caught_by=("DC-STREAM-007",),
)
def _done_missing() -> None:
    _replace_finish(_emit_terminal)


@defect(
    "early-done",
    "[DONE] is sent before the end event (end arrives after the marker)",
    caught_by=("DC-STREAM-006", "DC-STREAM-007"),
)
def _early_done() -> None:
    def emit(job: Job) -> None:
        job._publish(worker_sse.DONE)
        _emit_terminal(job)

    _replace_finish(emit)


@defect(
    "no-close-after-done",
    "after [DONE] the server keeps the connection open (the response is ended 3 s later)",
    caught_by=("DC-STREAM-007",),
)
def _no_close_after_done() -> Middleware:
    class HoldOpen(SSERewriter):
        async def finish(self, send: Send) -> None:
            if self.done_sent:
                await asyncio.sleep(3.0)
            await super().finish(send)

    return rewrite(is_stream, HoldOpen)


@defect(
    "bytes-after-done",
    "a keep-alive timer still fires after [DONE] and writes a comment before the stream closes",
    caught_by=("DC-STREAM-007",),
)
def _bytes_after_done() -> Middleware:
    class TrailingKeepAlive(SSERewriter):
        async def finish(self, send: Send) -> None:
            if self.done_sent:
                await asyncio.sleep(0.5)
                await send({"type": "http.response.body", "body": worker_sse.KEEPALIVE, "more_body": True})
            await super().finish(send)

    return rewrite(is_stream, TrailingKeepAlive)


async def _no_events() -> AsyncIterator[bytes]:
    return
    yield  # pragma: no cover - makes this an async generator


@defect(
    "empty-200-for-unknown-id",
    "an unknown (or deleted) job's stream answers an empty 200 text/event-stream instead of 404",
    caught_by=("DC-STREAM-009", "DC-JOB-003"),
)
def _empty_200_for_unknown_id() -> None:
    open_stream = JobRegistry.open_stream

    def lenient(self: JobRegistry, job_id: str, last_event_id: int | None) -> AsyncIterator[bytes]:
        try:
            return open_stream(self, job_id, last_event_id)
        except UnknownJob:
            return _no_events()

    JobRegistry.open_stream = lenient  # type: ignore[method-assign]


@defect(
    "replay-splits-tokens",
    "all readers of a job share one queue: a second reader gets only what the first has not yet read",
    caught_by=("DC-STREAM-010",),
)
def _replay_splits_tokens() -> None:
    cursors: dict[str, int] = {}

    async def follow(self: JobRegistry, job: Job, position: int) -> AsyncIterator[bytes]:
        job.readers += 1
        try:
            while True:
                cursor = cursors.get(job.id, 0)
                if cursor < len(job.events):
                    end = len(job.events)
                    cursors[job.id] = end
                    yield b"".join(job.events[cursor:end])
                    continue
                if job.finished:
                    return
                if not await job.wait_for_events(self.settings.keepalive_s):
                    yield worker_sse.KEEPALIVE
        finally:
            job.readers -= 1

    JobRegistry._follow = follow  # type: ignore[method-assign]


@defect(
    "last-event-id-ignored",
    "Last-Event-ID is ignored: every GET replays from the start, even after the final event",
    caught_by=("DC-STREAM-012",),
    warned_by=("DC-STREAM-011",),
)
def _last_event_id_ignored() -> None:
    open_stream = JobRegistry.open_stream
    JobRegistry.open_stream = lambda self, job_id, last_event_id: open_stream(self, job_id, None)  # type: ignore[method-assign]


@defect(
    "resume-off-by-one",
    "Last-Event-ID: k resumes with event k again instead of k+1 (and the final event is re-sent)",
    caught_by=("DC-STREAM-012",),
    warned_by=("DC-STREAM-011",),
)
def _resume_off_by_one() -> None:
    open_stream = JobRegistry.open_stream

    def resume(self: JobRegistry, job_id: str, last_event_id: int | None) -> AsyncIterator[bytes]:
        return open_stream(self, job_id, None if not last_event_id else last_event_id - 1)

    JobRegistry.open_stream = resume  # type: ignore[method-assign]


# -- DC-2.13/2.14 generation parameters -------------------------------------------------------------


@defect(
    "max-tokens-ignored",
    "the request's max_tokens is dropped; every job generates the default 64 tokens",
    caught_by=("DC-PARAM-001",),
)
def _max_tokens_ignored() -> None:
    _wrap_generation(lambda request, settings: dataclasses.replace(request, max_tokens=settings.default_max_tokens))


@defect(
    "stop-ignored",
    "stop strings are not passed to the engine; generation runs through them",
    caught_by=("DC-PARAM-002",),
)
def _stop_ignored() -> None:
    _wrap_generation(lambda request, settings: dataclasses.replace(request, stop=()))


@defect(
    "nondeterministic-mock",
    "/health says deterministic: true, but the mock seeds from the clock (hash() salt, time, ...)",
    caught_by=("DC-PARAM-003",),
)
def _nondeterministic_mock() -> None:
    mock_engine._seed_for = lambda request: random.getrandbits(64)


# -- DC-3 job resource ------------------------------------------------------------------------------


@defect(
    "status-missing-state",
    "the job status body has no state member",
    caught_by=("DC-JOB-001",),
)
def _status_missing_state() -> Middleware:
    class DropState(JSONRewriter):
        def rewrite_json(self, status: int, headers: Headers, body: Any) -> tuple[int, Headers, Any]:
            if status == 200 and isinstance(body, dict):
                body.pop("state", None)
            return status, headers, body

    return rewrite(route("GET", JOB_PATH), DropState)


@defect(
    "status-missing-sse-url",
    "the job status body has no sse_url, so a status poller cannot find the stream",
    caught_by=("DC-JOB-001",),
)
def _status_missing_sse_url() -> Middleware:
    class DropSSEURL(JSONRewriter):
        def rewrite_json(self, status: int, headers: Headers, body: Any) -> tuple[int, Headers, Any]:
            if status == 200 and isinstance(body, dict):
                body.pop("sse_url", None)
            return status, headers, body

    return rewrite(route("GET", JOB_PATH), DropSSEURL)


@defect(
    "unknown-job-200-status",
    "status of an unknown job answers 200 with a JSON null (a dict .get() serialised as is)",
    caught_by=("DC-JOB-005",),
)
def _unknown_job_200_status() -> Middleware:
    class NullStatus(BufferedRewriter):
        def rewrite(self, status: int, headers: Headers, body: bytes) -> tuple[int, Headers, bytes]:
            if status == 404:
                return 200, set_header(headers, "content-type", "application/json"), b"null"
            return status, headers, body

    return rewrite(route("GET", JOB_PATH), NullStatus)


@defect(
    "cancel-ignored",
    "DELETE answers 202 and forgets the job, but generation runs on to max_tokens",
    caught_by=("DC-JOB-002",),
)
def _cancel_ignored() -> None:
    async def cancel(self: JobRegistry, job_id: str) -> Job:
        job = self._jobs.pop(job_id, None)
        if job is None:
            raise UnknownJob(job_id)
        return job

    JobRegistry.cancel = cancel  # type: ignore[method-assign]


@defect(
    "cancel-ends-with-error",
    "a cancelled job ends its readers' streams with an error event instead of end(cancelled)",
    caught_by=("DC-JOB-002",),
)
def _cancel_ends_with_error() -> None:
    def end_cancelled(self: JobRegistry, job: Job) -> None:
        job.finish("failed", error=ErrorInfo(code="cancelled", message="the job was cancelled"))

    JobRegistry._end_cancelled = end_cancelled  # type: ignore[method-assign]


@defect(
    "delete-keeps-job",
    "DELETE stops generation but keeps the job: status and stream still answer 200 afterwards",
    caught_by=("DC-JOB-003",),
)
def _delete_keeps_job() -> None:
    async def cancel(self: JobRegistry, job_id: str) -> Job:
        job = self.get(job_id)
        if job.task is not None and not job.task.done():
            job.task.cancel()
            await asyncio.wait([job.task], timeout=worker_registry.CANCEL_GRACE_S)
        return job

    JobRegistry.cancel = cancel  # type: ignore[method-assign]


@defect(
    "delete-finished-404",
    "DELETE of a job that already finished answers 404 (only running jobs are 'cancellable')",
    caught_by=("DC-JOB-004",),
)
def _delete_finished_404() -> None:
    cancel = JobRegistry.cancel

    async def strict_cancel(self: JobRegistry, job_id: str) -> Job:
        if self.get(job_id).finished:
            raise UnknownJob(job_id)
        return await cancel(self, job_id)

    JobRegistry.cancel = strict_cancel  # type: ignore[method-assign]


@defect(
    "delete-answers-200",
    "DELETE answers 200 OK instead of 202 Accepted",
    caught_by=("DC-JOB-003", "DC-JOB-004"),
)
def _delete_answers_200() -> Middleware:
    return _status_swap(route("DELETE", JOB_PATH), 202, 200)


@defect(
    "delete-answers-204",
    "DELETE answers 204 No Content instead of 202 with the job's status at the time of the call",
    caught_by=("DC-JOB-004",),
)
def _delete_answers_204() -> Middleware:
    class NoContent(BufferedRewriter):
        def rewrite(self, status: int, headers: Headers, body: bytes) -> tuple[int, Headers, bytes]:
            if status == 202:
                return 204, drop_header(headers, "content-type"), b""
            return status, headers, body

    return rewrite(route("DELETE", JOB_PATH), NoContent)


@defect(
    "no-405",
    "an unsupported method answers 404 Not Found (a catch-all route) instead of 405 with Allow",
    caught_by=("DC-JOB-006",),
)
def _no_405() -> Middleware:
    class NotFound(JSONRewriter):
        def rewrite_json(self, status: int, headers: Headers, body: Any) -> tuple[int, Headers, Any]:
            if status != 405:
                return status, headers, body
            if isinstance(body, dict):
                body.update(status=404, title="Not Found", detail="No such resource.")
            return 404, drop_header(headers, "allow"), body

    return rewrite(lambda scope: True, NotFound)


@defect(
    "405-without-allow",
    "405 Method Not Allowed is answered without the Allow header",
    caught_by=("DC-JOB-006",),
)
def _405_without_allow() -> Middleware:
    class NoAllow(Rewriter):
        def start(self, status: int, headers: Headers) -> tuple[int, Headers]:
            return status, (drop_header(headers, "allow") if status == 405 else headers)

    return rewrite(lambda scope: True, NoAllow)


# -- DC-4 lifetime ----------------------------------------------------------------------------------


@defect(
    "ttl-never-reclaims",
    "the TTL sweeper never reclaims anything: abandoned and finished jobs live forever",
    caught_by=("DC-LIFE-001", "DC-LIFE-002"),
)
def _ttl_never_reclaims() -> None:
    JobRegistry.sweep = lambda self, now=None: 0  # type: ignore[method-assign]


@defect(
    "finished-jobs-dropped",
    "a job is forgotten the moment it finishes: no replay within the TTL",
    caught_by=("DC-LIFE-002",),
)
def _finished_jobs_dropped() -> None:
    generate = JobRegistry._generate

    async def generate_then_forget(self: JobRegistry, job: Job) -> None:
        try:
            await generate(self, job)
        finally:
            self._jobs.pop(job.id, None)

    JobRegistry._generate = generate_then_forget  # type: ignore[method-assign]


#: set once a reader disconnects mid-stream (disconnect-kills-worker)
_wedge: dict[str, bool] = {"wedged": False}


@defect(
    "disconnect-kills-worker",
    "a reader disconnecting mid-stream wedges the engine: later generations fail and /health says 503",
    caught_by=("DC-LIFE-003",),
)
def _disconnect_kills_worker() -> Middleware:
    health = mock_engine.MockEngine.health
    generate = mock_engine.MockEngine.generate

    def wedged_health(self: mock_engine.MockEngine) -> EngineHealth:
        return EngineHealth(ok=False, detail="engine wedged") if _wedge["wedged"] else health(self)

    async def wedged_generate(self: mock_engine.MockEngine, request: GenerationRequest) -> AsyncIterator[Any]:
        async for chunk in generate(self, request):
            if _wedge["wedged"]:
                raise EngineError("the engine is wedged", code="wedged")
            yield chunk

    mock_engine.MockEngine.health = wedged_health  # type: ignore[method-assign]
    mock_engine.MockEngine.generate = wedged_generate  # type: ignore[method-assign]

    return _on_mid_stream_disconnect(lambda _scope: _wedge.update(wedged=True))


def _on_mid_stream_disconnect(react: Callable[[Scope], None]) -> Middleware:
    """Call ``react(scope)`` when a stream reader hangs up before its response is complete."""

    class DisconnectWatch(Rewriter):
        async def run(self, app: Any, scope: Scope, receive: Receive, send: Send) -> None:
            completed = False

            async def watch_send(message: Message) -> None:
                nonlocal completed
                if message["type"] == "http.response.body" and not message.get("more_body", False):
                    completed = True
                await send(message)

            async def watch_receive() -> Message:
                message = await receive()
                if message["type"] == "http.disconnect" and not completed:
                    react(scope)
                return message

            await app(scope, watch_receive, watch_send)

    return rewrite(is_stream, DisconnectWatch)


def _job_id_of(scope: Scope) -> str:
    return str(scope["path"]).split("/")[3]


@defect(
    "disconnect-cancels-job",
    "one reader hanging up cancels the job for every reader (the stream's finally block cancels generation)",
    caught_by=("DC-LIFE-003",),
)
def _disconnect_cancels_job() -> Middleware:
    registries = _capture_registries()

    def cancel(scope: Scope) -> None:
        for registry in registries:
            try:
                job = registry.get(_job_id_of(scope))
            except UnknownJob:
                continue
            if job.task is not None and not job.task.done():
                job.task.cancel()

    return _on_mid_stream_disconnect(cancel)


def _capture_registries() -> list[JobRegistry]:
    """The worker's registry, once the app has started it (for defects that act on jobs from middleware)."""
    registries: list[JobRegistry] = []
    start = JobRegistry.start

    def recording_start(self: JobRegistry) -> None:
        registries.append(self)
        start(self)

    JobRegistry.start = recording_start  # type: ignore[method-assign]
    return registries


#: set once a reader disconnects mid-stream (disconnect-stalls-generator)
_stall = asyncio.Event()


@defect(
    "disconnect-stalls-generator",
    "after one reader disconnects mid-stream the generator deadlocks, while /health still answers 200",
    caught_by=("DC-LIFE-003",),
)
def _disconnect_stalls_generator() -> Middleware:
    generate = mock_engine.MockEngine.generate

    async def stalling_generate(self: mock_engine.MockEngine, request: GenerationRequest) -> AsyncIterator[Any]:
        async for chunk in generate(self, request):
            if _stall.is_set():
                await asyncio.Event().wait()  # never set: the deadlock (keep-alives still flow)
            yield chunk

    mock_engine.MockEngine.generate = stalling_generate  # type: ignore[method-assign]
    return _on_mid_stream_disconnect(lambda _scope: _stall.set())


# -- DC-5 service -----------------------------------------------------------------------------------


@defect(
    "health-missing-fields",
    "/health answers 200 {status: ok} without engine and model",
    caught_by=("DC-SVC-001",),
)
def _health_missing_fields() -> Middleware:
    class Thin(JSONRewriter):
        def rewrite_json(self, status: int, headers: Headers, body: Any) -> tuple[int, Headers, Any]:
            if isinstance(body, dict):
                body.pop("engine", None)
                body.pop("model", None)
            return status, headers, body

    return rewrite(route("GET", "/health"), Thin)


@defect(
    "health-says-healthy",
    '/health answers status "healthy" instead of the contract\'s "ok"',
    caught_by=("DC-SVC-001",),
)
def _health_says_healthy() -> Middleware:
    class Healthy(JSONRewriter):
        def rewrite_json(self, status: int, headers: Headers, body: Any) -> tuple[int, Headers, Any]:
            if isinstance(body, dict) and body.get("status") == "ok":
                body["status"] = "healthy"
            return status, headers, body

    return rewrite(route("GET", "/health"), Healthy)


@defect(
    "no-openapi",
    "the worker does not serve its OpenAPI document (/openapi.json is 404)",
    caught_by=("DC-SVC-002",),
)
def _no_openapi() -> Middleware:
    body = _problem(404, "Not Found", "No resource at /openapi.json.")
    return _fixed_answer(route("GET", "/openapi.json"), 404, body, "application/problem+json")


@defect(
    "no-metrics",
    "no Prometheus metrics: /metrics is 404 (a SHOULD, so only a warning)",
    caught_by=(),
    warned_by=("DC-SVC-003",),
)
def _no_metrics() -> Middleware:
    body = _problem(404, "Not Found", "No resource at /metrics.")
    return _fixed_answer(route("GET", "/metrics"), 404, body, "application/problem+json")


@defect(
    "errors-not-problem-json",
    'errors are answered as application/json {"error": "..."} instead of problem+json',
    caught_by=("DC-SUBMIT-006", "DC-JOB-005", "DC-SVC-004"),
)
def _errors_not_problem_json() -> None:
    def handle_http_exception(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
        return Response(
            {"error": exc.detail}, status_code=exc.status_code, media_type="application/json", headers=exc.headers
        )

    worker_app.handle_http_exception = handle_http_exception  # type: ignore[assignment]


@defect(
    "no-contract-header",
    "responses do not carry the Dualcall-Contract-Version header",
    caught_by=("DC-SVC-006",),
)
def _no_contract_header() -> None:
    async def no_header(message: Any, scope: Any) -> None:
        return None

    worker_app.add_contract_header = no_header


@defect(
    "401-not-problem",
    "with auth on, 401 is a bare text/plain 'Unauthorized' instead of a problem document",
    caught_by=("DC-SVC-005", "DC-SVC-004"),
    worker_args=("--auth-token", AUTH_TOKEN),
    suite_token=AUTH_TOKEN,
)
def _401_not_problem() -> Middleware:
    class PlainUnauthorized(BufferedRewriter):
        def rewrite(self, status: int, headers: Headers, body: bytes) -> tuple[int, Headers, bytes]:
            if status == 401:
                return 401, set_header(headers, "content-type", "text/plain; charset=utf-8"), b"Unauthorized"
            return status, headers, body

    return rewrite(lambda scope: True, PlainUnauthorized)


@defect(
    "contract-header-missing-on-errors",
    "error responses (built outside the normal response path) lack the Dualcall-Contract-Version header",
    caught_by=("DC-SVC-006",),
    runs_with=("DC-SUBMIT-006",),
)
def _contract_header_missing_on_errors() -> Middleware:
    class NoHeaderOnErrors(Rewriter):
        def start(self, status: int, headers: Headers) -> tuple[int, Headers]:
            return status, (drop_header(headers, "dualcall-contract-version") if status >= 400 else headers)

    return rewrite(lambda scope: True, NoHeaderOnErrors)


@defect(
    "auth-not-enforced-on-stream",
    "with auth on, the bearer guard's job-route matcher misses the stream path: anyone can read any job",
    caught_by=("DC-SVC-005",),
    worker_args=("--auth-token", AUTH_TOKEN),
    suite_token=AUTH_TOKEN,
)
def _auth_not_enforced_on_stream() -> None:
    is_job_route = worker_app._is_job_route
    worker_app._is_job_route = lambda path: is_job_route(path) and not path.endswith("/stream")  # type: ignore[assignment]


__all__ = ["AUTH_TOKEN", "DEFECTS", "Defect"]


# -- the queue bound (DC-1.6) ---------------------------------------------------------------------------------------


@defect(
    "queue-unbounded",
    "the submit path never refuses work: jobs pile up past the advertised queue limit",
    caught_by=("DC-SUBMIT-012",),
    worker_args=("--concurrency", "2", "--queue-limit", "4"),
)
def _queue_unbounded() -> None:
    def submit(self: JobRegistry, request: GenerationRequest) -> Job:
        job = Job(id=worker_registry.new_job_id(), request=request)
        self._jobs[job.id] = job
        self._queued += 1
        job.task = asyncio.get_running_loop().create_task(self._run(job))
        return job

    JobRegistry.submit = submit  # type: ignore[method-assign]


@defect(
    "queue-full-without-retry-after",
    "the full queue answers 503 but without Retry-After, so clients retry in a tight loop",
    caught_by=("DC-SUBMIT-012",),
    worker_args=("--concurrency", "2", "--queue-limit", "4"),
)
def _queue_full_without_retry_after() -> Middleware:
    class NoRetryAfter(Rewriter):
        def start(self, status: int, headers: Headers) -> tuple[int, Headers]:
            return status, (drop_header(headers, "retry-after") if status == 503 else headers)

    return rewrite(is_submit, NoRetryAfter)


@defect(
    "queue-full-500",
    "a full queue surfaces as 500 Internal Server Error instead of 503",
    caught_by=("DC-SUBMIT-012",),
    worker_args=("--concurrency", "2", "--queue-limit", "4"),
)
def _queue_full_500() -> Middleware:
    return _status_swap(is_submit, 503, 500)


@defect(
    "no-keepalive",
    "idle streams stay silent: proxies with idle timeouts cut a long-queued job's stream",
    caught_by=(),
    warned_by=("DC-STREAM-013",),
)
def _no_keepalive() -> None:
    worker_sse.KEEPALIVE = b""  # type: ignore[misc]


# -- gaps closed by the second round (issue 8) --------------------------------------------------------


@defect(
    "resume-past-end-bare-done",
    "Last-Event-ID beyond the final id answers 200 with a bare [DONE] (only the exact final id gets 204)",
    caught_by=("DC-STREAM-012",),
)
def _resume_past_end_bare_done() -> None:
    open_stream = JobRegistry.open_stream

    async def bare_done() -> AsyncIterator[bytes]:
        yield worker_sse.DONE

    def lenient_open(self: JobRegistry, job_id: str, last_event_id: int | None) -> AsyncIterator[bytes]:
        final = self.get(job_id).final_event_id
        if final is not None and last_event_id is not None and last_event_id > final:
            return bare_done()
        return open_stream(self, job_id, last_event_id)

    JobRegistry.open_stream = lenient_open  # type: ignore[method-assign]


@defect(
    "delete-reports-running",
    "DELETE of a running job answers 202 with state 'running' (the status read before the cancel took effect)",
    caught_by=("DC-JOB-002", "DC-JOB-003"),
)
def _delete_reports_running() -> Middleware:
    class StaleState(JSONRewriter):
        def rewrite_json(self, status: int, headers: Headers, body: Any) -> tuple[int, Headers, Any]:
            if status == 202 and isinstance(body, dict) and body.get("state") == "cancelled":
                body["state"] = "running"
            return status, headers, body

    return rewrite(route("DELETE", JOB_PATH), StaleState)


@defect(
    "unattached-running-never-reclaimed",
    "the sweeper reclaims only finished jobs: a job nobody reads generates on after its TTL",
    caught_by=("DC-LIFE-001",),
    # 512 tokens at 20 ms: the job outlives the 2 s TTL and the suite's wait
    worker_args=("--token-delay-ms", "20"),
)
def _unattached_running_never_reclaimed() -> None:
    sweep = JobRegistry.sweep

    def finished_only(self: JobRegistry, now: float | None = None) -> int:
        running = {job_id: job for job_id, job in self._jobs.items() if not job.finished}
        for job_id in running:
            del self._jobs[job_id]
        try:
            return sweep(self, now)
        finally:
            self._jobs.update(running)

    JobRegistry.sweep = finished_only  # type: ignore[method-assign]


@defect(
    "no-openapi-yaml",
    "only /openapi.json is served; /openapi.yaml, which DC-5.2 also names, is 404",
    caught_by=("DC-SVC-002",),
)
def _no_openapi_yaml() -> Middleware:
    body = _problem(404, "Not Found", "no such resource")
    return _fixed_answer(route("GET", "/openapi.yaml"), 404, body, "application/problem+json")


# -- conforming variants: unusual but allowed shapes the suite must PASS --------------------------------------------

#: not defects: each is the mock serving a shape the contract allows but the mock does not use
VARIANTS: dict[str, Defect] = {}


def variant(
    name: str, description: str
) -> Callable[[Callable[[], Middleware | None]], Callable[[], Middleware | None]]:
    def register(install: Callable[[], Middleware | None]) -> Callable[[], Middleware | None]:
        VARIANTS[name] = Defect(name, description, (), install)
        return install

    return register


def _rewrite_sse_url(make: Callable[[Scope, str, str], str]) -> Middleware:
    class NewReference(JSONRewriter):
        def rewrite_json(self, status: int, headers: Headers, body: Any) -> tuple[int, Headers, Any]:
            if status == 202 and isinstance(body, dict) and isinstance(body.get("sse_url"), str):
                body["sse_url"] = make(self.scope, body["job_id"], body["sse_url"])
                headers = set_header(headers, "location", body["sse_url"])
            return status, headers, body

    return rewrite(is_submit, NewReference)


@variant(
    "absolute-sse-url",
    "sse_url is an absolute URL on another host name (localhost, while the suite targets 127.0.0.1): DC-1.7",
)
def _absolute_sse_url() -> Middleware:
    return _rewrite_sse_url(lambda scope, job_id, path: f"http://localhost:{scope['server'][1]}{path}")


@variant(
    "path-relative-sse-url",
    "sse_url is `inference/<id>/stream`, relative to the POST URL's path (RFC 3986 resolution): DC-1.7",
)
def _path_relative_sse_url() -> Middleware:
    return _rewrite_sse_url(lambda scope, job_id, path: f"inference/{job_id}/stream")


def _reframe(line_end: bytes) -> Middleware:
    class Reframe(SSERewriter):
        def block(self, block: bytes) -> bytes:
            return block.replace(b"\n", line_end)

    return rewrite(is_stream, Reframe)


@variant("crlf-framing", "the stream is framed with CRLF line endings, which SSE allows (DC-2.3, WHATWG)")
def _crlf_framing() -> Middleware:
    return _reframe(b"\r\n")


@variant("cr-framing", "the stream is framed with bare CR line endings, which SSE allows (DC-2.3, WHATWG)")
def _cr_framing() -> Middleware:
    return _reframe(b"\r")


@variant("no-charset", "the stream's Content-Type is text/event-stream without a charset parameter (DC-2.1)")
def _no_charset() -> Middleware:
    class Bare(Rewriter):
        def start(self, status: int, headers: Headers) -> tuple[int, Headers]:
            return status, set_header(headers, "content-type", "text/event-stream") if status == 200 else headers

    return rewrite(is_stream, Bare)


@variant("no-store", "the stream says Cache-Control: no-store instead of no-cache (DC-2.1)")
def _no_store() -> Middleware:
    class NoStore(Rewriter):
        def start(self, status: int, headers: Headers) -> tuple[int, Headers]:
            return status, set_header(headers, "cache-control", "no-store") if status == 200 else headers

    return rewrite(is_stream, NoStore)


@variant("one-reader-409", "a second reader of a job that is being read gets 409 problem (DC-2.10)")
def _one_reader_409() -> None:
    open_stream = JobRegistry.open_stream

    def exclusive(self: JobRegistry, job_id: str, last_event_id: int | None) -> AsyncIterator[bytes]:
        if self.get(job_id).readers > 0:
            raise ProblemException(409, "stream-in-use", "this job's stream already has a reader")
        return open_stream(self, job_id, last_event_id)

    JobRegistry.open_stream = exclusive  # type: ignore[method-assign]


#: where the other-stream-path variant serves streams
_EVENTS_PATH = re.compile(r"^/events/([^/]+)$")


@variant(
    "other-stream-path",
    "streams live at /events/{job_id} and the default path answers 404: only sse_url leads there (DC-1.7)",
)
def _other_stream_path() -> Middleware:
    def move(body: Any) -> Any:
        if isinstance(body, dict) and isinstance(body.get("sse_url"), str) and isinstance(body.get("job_id"), str):
            body["sse_url"] = f"/events/{body['job_id']}"
        return body

    class Moved(JSONRewriter):
        def rewrite_json(self, status: int, headers: Headers, body: Any) -> tuple[int, Headers, Any]:
            body = move(body)
            if status == 202 and isinstance(body, dict) and "sse_url" in body:
                headers = set_header(headers, "location", body["sse_url"])
            return status, headers, body

    moved = rewrite(lambda scope: is_submit(scope) or bool(JOB_PATH.match(scope.get("path", ""))), Moved)
    not_found = _problem(404, "Not Found", "streams are served at sse_url")

    def middleware(app: Any) -> Any:
        inner = moved(app)

        async def serve(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "http" and is_stream(scope):
                await answer(send, 404, not_found, "application/problem+json")
                return
            match = _EVENTS_PATH.match(scope.get("path", "")) if scope["type"] == "http" else None
            if match:
                path = f"/v1/inference/{match.group(1)}/stream"
                scope = {**scope, "path": path, "raw_path": path.encode()}
            await inner(scope, receive, send)

        return serve

    return middleware


# -- further catalogue modules (registered with `defect` above) ---------------------------------------------------

from . import defects_outcomes, defects_robustness  # noqa: E402, F401
