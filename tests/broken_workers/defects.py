"""The catalogue of deliberately broken workers: the real mock worker with ONE defect each.

Every entry models a bug a real worker could ship and names the conformance checks that MUST
fail because of it (``caught_by``); a SHOULD check that must warn is listed in ``warned_by``.
``apply()`` builds the defect as a `Broken`: the seams `workers.app.create_app` offers
(`workers.seams.Seams`: the id factory, the event encoder, the request decoder, the generation
mapping, the registry backend, ASGI middleware) and an optional wrapper around the mock engine.
A wire-level defect is a middleware from `asgi.py` that rewrites requests and responses of the
unmodified app. Nothing in `workers` is patched; each broken worker runs in its own process (`serve.py`).
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
import traceback
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextvars import ContextVar
from typing import Any

import msgspec

from workers import requests as worker_requests
from workers import sse as worker_sse
from workers.config import WorkerSettings
from workers.engines.base import Chunk, Engine, EngineError, EngineHealth, GenerationRequest
from workers.engines.mock import MockEngine
from workers.metrics import JobMetrics
from workers.problems import ProblemException
from workers.registry import Clock, Idempotency, JobRecord, UnknownJob, new_job_id
from workers.registry.in_process import InProcessRegistry, Job
from workers.registry.lifecycle import Trigger
from workers.schemas import EndData, ErrorInfo, InferenceRequest, TokenData
from workers.seams import DEFAULT_SEAMS, Seams
from workers.sse import EventEncoder

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


@dataclasses.dataclass(frozen=True)
class Broken:
    """What a defect changes: the app's seams, and the engine (``engine(mock)`` replaces the mock)."""

    seams: Seams = DEFAULT_SEAMS
    engine: Callable[[MockEngine], Engine] | None = None


#: what the install function of the defect being applied has asked for (one defect per process)
_pending: dict[str, Any] = {}


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

    def apply(self) -> Broken:
        """The seams and engine wrapper that make the mock worker show this defect."""
        _pending.clear()
        middleware = self.install()
        engine = _pending.pop("engine", None)
        changes = dict(_pending)
        _pending.clear()
        outer = (*((middleware,) if middleware is not None else ()), *changes.pop("middleware", ()))
        if outer:
            changes["middleware"] = outer
        return Broken(Seams(**changes), engine)


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


# -- the seams a defect sets (each helper records one `Seams` field for `Defect.apply`) ----------------


def _status_swap(match: Callable[[Scope], bool], old: int, new: int) -> Middleware:
    class Swap(Rewriter):
        def start(self, status: int, headers: Headers) -> tuple[int, Headers]:
            return (new if status == old else status), headers

    return rewrite(match, Swap)


def _wrap_decode(wrapper: Callable[[Callable[[bytes], InferenceRequest], bytes], InferenceRequest]) -> None:
    """The submit body parser (``Seams.decode_request``) becomes ``wrapper(original, body)``."""
    original: Callable[[bytes], InferenceRequest] = _pending.get("decode_request", worker_requests.decode_request)
    _pending["decode_request"] = lambda body: wrapper(original, body)


def _wrap_generation(change: Callable[[GenerationRequest, WorkerSettings], GenerationRequest]) -> None:
    """The request -> engine mapping (``Seams.to_generation``) passes its result through ``change``."""
    original = worker_requests.to_generation

    def to_generation(body: InferenceRequest, settings: WorkerSettings) -> GenerationRequest:
        return change(original(body, settings), settings)

    _map_generation(to_generation)


def _map_generation(to_generation: Callable[[InferenceRequest, WorkerSettings], GenerationRequest]) -> None:
    """The request -> engine mapping (``Seams.to_generation``) is ``to_generation``."""
    _pending["to_generation"] = to_generation


def _job_ids(factory: Callable[[], str]) -> None:
    """New jobs get their ids from ``factory`` (``Seams.new_job_id``)."""
    _pending["new_job_id"] = factory


def _encoder(encoder: EventEncoder) -> None:
    """Every event is encoded by ``encoder`` (``Seams.encoder``)."""
    _pending["encoder"] = encoder


def _registry(backend: type[InProcessRegistry]) -> None:
    """The worker runs on ``backend``, an `InProcessRegistry` subclass (``Seams.registry``)."""

    def build(
        engine: Engine,
        settings: WorkerSettings,
        metrics: JobMetrics,
        *,
        encoder: EventEncoder,
        clock: Clock,
        new_id: Callable[[], str],
    ) -> InProcessRegistry:
        return backend(engine, settings, metrics, encoder=encoder, clock=clock, new_id=new_id)

    _pending["registry"] = build


def _engine(wrap: Callable[[MockEngine], Engine]) -> None:
    """The mock engine is replaced by ``wrap(mock)``."""
    _pending["engine"] = wrap


class EngineWrapper:
    """An engine that delegates everything to the mock; subclasses change one behaviour."""

    def __init__(self, inner: MockEngine) -> None:
        self.inner = inner
        self.name = inner.name
        self.model = inner.model
        self.deterministic = inner.deterministic
        self.max_concurrency = inner.max_concurrency

    async def start(self) -> None:
        await self.inner.start()

    async def close(self) -> None:
        await self.inner.close()

    def health(self) -> EngineHealth:
        return self.inner.health()

    def generate(self, request: GenerationRequest) -> AsyncGenerator[Chunk, None]:
        return self.inner.generate(request)


class FramingEncoder(EventEncoder):
    """Every event, tokens included, through one ``encode(event_id, event, payload)``."""

    def __init__(self, encode: Callable[[int, str, object], bytes]) -> None:
        self.encode = encode

    def event(self, event_id: int, event: str, payload: object) -> bytes:
        return self.encode(event_id, event, payload)

    def token(self, event_id: int, index: int, text: str) -> bytes:
        return self.encode(event_id, "token", TokenData(index=index, text=text))

    def final(self, event_id: int, event: str, payload: object) -> bytes:
        return self.encode(event_id, event, payload) + worker_sse.DONE


def _wrap_encoder(encode: Callable[[int, str, object], bytes]) -> None:
    """Replace the SSE encoding of every event (the token fast path included)."""
    _encoder(FramingEncoder(encode))


class FinalEncoder(EventEncoder):
    """The contract's encoding, except for the last block of a job's log (its end/error and [DONE])."""

    def __init__(self, final: Callable[[EventEncoder, int, str, object], bytes]) -> None:
        self._final = final

    def final(self, event_id: int, event: str, payload: object) -> bytes:
        return self._final(self, event_id, event, payload)


def _replace_final(final: Callable[[EventEncoder, int, str, object], bytes]) -> None:
    """The final block of every job is ``final(encoder, event_id, event, payload)``."""
    _encoder(FinalEncoder(final))


_original_encode = worker_sse.encode_event


def _builtins(payload: object) -> Any:
    return msgspec.to_builtins(payload)


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

    def client_or_server_id() -> str:
        chosen = _client_job_id.get()
        _client_job_id.set(None)
        return chosen or new_job_id()

    _wrap_decode(decode)
    _job_ids(client_or_server_id)


@defect(
    "sequential-ids",
    "job ids come from a counter (job-1, job-2, ...): guessable, so one client can read another's job",
    caught_by=("DC-SUBMIT-003",),
)
def _sequential_ids() -> None:
    counter = itertools.count(1)
    _job_ids(lambda: f"job-{next(counter)}")


@defect(
    "short-ids",
    "job ids are 8 hex characters (32 random bits), far below the 122 bits required",
    caught_by=("DC-SUBMIT-003",),
)
def _short_ids() -> None:
    _job_ids(lambda: secrets.token_hex(4))


@defect(
    "non-url-safe-ids",
    "job ids are standard base64 (with '=' padding, '+' and '/'), not URL-safe",
    caught_by=("DC-SUBMIT-003",),
)
def _non_url_safe_ids() -> None:
    _job_ids(lambda: base64.b64encode(secrets.token_bytes(16)).decode())


@defect(
    "ids-too-long",
    "job ids are 171 characters (an opaque signed token), beyond the contract's 22-128",
    caught_by=("DC-SUBMIT-003",),
)
def _ids_too_long() -> None:
    _job_ids(lambda: secrets.token_urlsafe(128))


@defect(
    "submit-waits-for-generation",
    "POST answers 202 only after the whole generation has run (the hand-off is not 'at once')",
    caught_by=("DC-SUBMIT-011",),
    # a TTL longer than a 512-token generation on a loaded machine: the waiting POST must find its job
    worker_args=("--ttl-s", "30"),
)
def _submit_waits_for_generation() -> None:
    class WaitingRegistry(InProcessRegistry):
        async def submit(self, request: GenerationRequest, idempotency: Idempotency | None = None) -> JobRecord:
            job = await super().submit(request, idempotency)
            if isinstance(job, Job) and job.task is not None:
                await asyncio.wait([job.task], timeout=30)
            return job

    _registry(WaitingRegistry)


#: the keys of an HTTP scope that the server sets (the app adds its own caches)
_ASGI_SCOPE_KEYS = ("type", "asgi", "http_version", "scheme", "root_path", "headers", "client", "server", "extensions")


@defect(
    "post-streams",
    "POST creates the job and then answers 200 with its event stream (the legacy shape on a dual-call core)",
    caught_by=("DC-LEGACY-001", "DC-SUBMIT-001"),
)
def _post_streams() -> Middleware:
    class StreamFromPost(Rewriter):
        async def run(self, app: Any, scope: Scope, receive: Receive, send: Send) -> None:
            start: Message = {}
            parts: list[bytes] = []

            async def capture(message: Message) -> None:
                if message["type"] == "http.response.start":
                    start.update(message)
                elif message["type"] == "http.response.body":
                    parts.append(message.get("body", b""))

            await app(scope, receive, capture)
            if start.get("status") != 202:
                await send(start)
                await send({"type": "http.response.body", "body": b"".join(parts), "more_body": False})
                return
            path = json.loads(b"".join(parts))["sse_url"]
            # a fresh scope of the server's own keys: the app caches parsed request data in the one it saw
            stream_scope = {key: scope[key] for key in _ASGI_SCOPE_KEYS if key in scope}
            stream_scope |= {"method": "GET", "path": path, "raw_path": path.encode(), "query_string": b""}
            await app(stream_scope, receive, send)  # the job's event stream, as the answer to the POST

    return rewrite(is_submit, StreamFromPost)


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


#: the traceback of the last unexpected exception while decoding a submit (traceback-500)
_tracebacks: list[str] = []


@defect(
    "traceback-500",
    "a non-object JSON body crashes the parser and the 500 leaks the Python traceback as text/plain",
    caught_by=("DC-SUBMIT-008", "DC-SVC-004"),
)
def _traceback_500() -> Middleware:
    def decode(original: Callable[[bytes], InferenceRequest], body: bytes) -> InferenceRequest:
        try:
            raw = msgspec.json.decode(body)
        except msgspec.DecodeError:
            return original(body)
        raw.get("max_tokens")  # the isinstance(raw, dict) guard is missing: a list body raises
        return original(body)

    def decode_and_remember(original: Callable[[bytes], InferenceRequest], body: bytes) -> InferenceRequest:
        try:
            return decode(original, body)
        except Exception as exc:
            if not isinstance(exc, ProblemException):
                _tracebacks.append("".join(traceback.format_exception(exc)))
            raise

    class TracebackText(BufferedRewriter):
        def rewrite(self, status: int, headers: Headers, body: bytes) -> tuple[int, Headers, bytes]:
            if status == 500 and _tracebacks:
                return 500, set_header(headers, "content-type", "text/plain"), _tracebacks.pop().encode()
            return status, headers, body

    _wrap_decode(decode_and_remember)
    return rewrite(is_submit, TracebackText)


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
def _sse_url_unresolvable() -> Middleware:
    class Unresolvable(JSONRewriter):
        def rewrite_json(self, status: int, headers: Headers, body: Any) -> tuple[int, Headers, Any]:
            if isinstance(body, dict) and isinstance(body.get("sse_url"), str) and isinstance(body.get("job_id"), str):
                body["sse_url"] = f"{body['job_id']}/stream"
                if get_header(headers, "location") is not None:
                    headers = set_header(headers, "location", body["sse_url"])
            return status, headers, body

    return rewrite(lambda scope: is_submit(scope) or bool(JOB_PATH.match(scope.get("path", ""))), Unresolvable)


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
    class Abbreviated(EventEncoder):
        def token(self, event_id: int, index: int, text: str) -> bytes:
            return self.event(event_id, "token", {"i": index, "t": text})

    _encoder(Abbreviated())


# -- DC-2 stream: event sequence --------------------------------------------------------------------


@defect(
    "no-started-event",
    "the stream starts with the first token; no started event confirms the job",
    caught_by=("DC-STREAM-004",),
)
def _no_started_event() -> None:
    class WithoutStarted(EventEncoder):
        """Writes nothing for started (always event 1), so every later event moves one id down."""

        def event(self, event_id: int, event: str, payload: object) -> bytes:
            return b"" if event == "started" else super().event(event_id - 1, event, payload)

        def token(self, event_id: int, index: int, text: str) -> bytes:
            return super().token(event_id - 1, index, text)

        def final(self, event_id: int, event: str, payload: object) -> bytes:
            return super().final(event_id - 1, event, payload)

    _encoder(WithoutStarted())


@defect(
    "token-index-from-one",
    "token indexes start at 1 (the index is bumped before it is used): index 0 is missing",
    caught_by=("DC-STREAM-005",),
)
def _token_index_from_one() -> None:
    class FromOne(EventEncoder):
        def token(self, event_id: int, index: int, text: str) -> bytes:
            return super().token(event_id, index + 1, text)

    _encoder(FromOne())


@defect(
    "two-end-events",
    "the end event is sent twice (once by the generator, once by the finaliser)",
    caught_by=("DC-STREAM-006",),
)
def _two_end_events() -> None:
    _replace_final(
        lambda encoder, event_id, event, payload: (
            encoder.event(event_id, event, payload) + encoder.event(event_id + 1, event, payload) + worker_sse.DONE
        )
    )


@defect(
    "missing-end",
    "no end event: the stream goes from the last token straight to [DONE]",
    caught_by=("DC-STREAM-006",),
)
def _missing_end() -> None:
    _replace_final(lambda encoder, event_id, event, payload: worker_sse.DONE)


@defect(
    "end-tokens-out-zero",
    "end.tokens_out is always 0 (the counter is read before generation updates it)",
    caught_by=("DC-STREAM-006",),
)
def _end_tokens_out_zero() -> None:
    def final(encoder: EventEncoder, event_id: int, event: str, payload: object) -> bytes:
        if isinstance(payload, EndData):
            payload = EndData(tokens_out=0, stop_reason=payload.stop_reason)
        return encoder.event(event_id, event, payload) + worker_sse.DONE

    _replace_final(final)


@defect(
    "late-token-after-end",
    "held-back text is flushed as a token event after end (end is no longer the last event)",
    caught_by=("DC-STREAM-006",),
)
def _late_token_after_end() -> None:
    def final(encoder: EventEncoder, event_id: int, event: str, payload: object) -> bytes:
        late = encoder.token(event_id + 1, payload.tokens_out if isinstance(payload, EndData) else 0, ".")
        return encoder.event(event_id, event, payload) + late + worker_sse.DONE

    _replace_final(final)


@defect(
    "openai-stop-reason",
    'end.stop_reason uses OpenAI\'s "length" instead of the contract\'s "max_tokens"',
    caught_by=("DC-STREAM-003", "DC-PARAM-001"),
)
def _openai_stop_reason() -> None:
    def final(encoder: EventEncoder, event_id: int, event: str, payload: object) -> bytes:
        if isinstance(payload, EndData) and payload.stop_reason == "max_tokens":
            payload = {"tokens_out": payload.tokens_out, "stop_reason": "length"}
        return encoder.event(event_id, event, payload) + worker_sse.DONE

    _replace_final(final)


@defect(
    "done-missing",
    "the stream closes after end without the final data: [DONE] marker",
    caught_by=("DC-STREAM-007",),
)
def _done_missing() -> None:
    _replace_final(lambda encoder, event_id, event, payload: encoder.event(event_id, event, payload))


@defect(
    "early-done",
    "[DONE] is sent before the end event (end arrives after the marker)",
    caught_by=("DC-STREAM-006", "DC-STREAM-007"),
)
def _early_done() -> None:
    _replace_final(lambda encoder, event_id, event, payload: worker_sse.DONE + encoder.event(event_id, event, payload))


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
    class Lenient(InProcessRegistry):
        async def open_stream(self, job_id: str, last_event_id: int | None) -> AsyncIterator[bytes]:
            try:
                return await super().open_stream(job_id, last_event_id)
            except UnknownJob:
                return _no_events()

    _registry(Lenient)


@defect(
    "replay-splits-tokens",
    "all readers of a job share one queue: a second reader gets only what the first has not yet read",
    caught_by=("DC-STREAM-010",),
)
def _replay_splits_tokens() -> None:
    cursors: dict[str, int] = {}

    class SharedQueue(InProcessRegistry):
        async def follow(self, job: Job, position: int) -> AsyncIterator[bytes]:
            job.readers += 1
            try:
                while True:
                    cursor = cursors.get(job.id, 0)
                    if cursor < len(job.events):
                        end = len(job.events)
                        cursors[job.id] = end
                        yield b"".join(job.events[cursor:end])
                        continue
                    if job.complete:
                        return
                    if not await job.wait_for_events(self.settings.keepalive_s):
                        yield self.encoder.keepalive
            finally:
                job.readers -= 1

    _registry(SharedQueue)


@defect(
    "last-event-id-ignored",
    "Last-Event-ID is ignored: every GET replays from the start, even after the final event",
    caught_by=("DC-STREAM-012",),
    warned_by=("DC-STREAM-011",),
)
def _last_event_id_ignored() -> None:
    class FromTheStart(InProcessRegistry):
        async def open_stream(self, job_id: str, last_event_id: int | None) -> AsyncIterator[bytes]:
            return await super().open_stream(job_id, None)

    _registry(FromTheStart)


@defect(
    "resume-off-by-one",
    "Last-Event-ID: k resumes with event k again instead of k+1 (and the final event is re-sent)",
    caught_by=("DC-STREAM-012",),
    warned_by=("DC-STREAM-011",),
)
def _resume_off_by_one() -> None:
    class OneBack(InProcessRegistry):
        async def open_stream(self, job_id: str, last_event_id: int | None) -> AsyncIterator[bytes]:
            return await super().open_stream(job_id, None if not last_event_id else last_event_id - 1)

    _registry(OneBack)


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
    class ClockSeeded(EngineWrapper):
        def generate(self, request: GenerationRequest) -> AsyncGenerator[Chunk, None]:
            # a seed material the request does not determine: every run samples a different text
            salted = dataclasses.replace(request, prompt=f"{request.prompt}\x1f{random.getrandbits(64)}")
            return self.inner.generate(salted)

    _engine(ClockSeeded)


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
    class ForgetOnly(InProcessRegistry):
        async def cancel(self, job_id: str) -> Job:
            job = self.jobs.pop(job_id, None)
            if job is None:
                raise UnknownJob(job_id)
            return job

    _registry(ForgetOnly)


@defect(
    "cancel-ends-with-error",
    "a cancelled job ends its readers' streams with an error event instead of end(cancelled)",
    caught_by=("DC-JOB-002",),
)
def _cancel_ends_with_error() -> None:
    def final(encoder: EventEncoder, event_id: int, event: str, payload: object) -> bytes:
        if isinstance(payload, EndData) and payload.stop_reason == "cancelled":
            event, payload = "error", ErrorInfo(code="cancelled", message="the job was cancelled")
        return encoder.event(event_id, event, payload) + worker_sse.DONE

    _replace_final(final)


@defect(
    "delete-keeps-job",
    "DELETE stops generation but keeps the job: status and stream still answer 200 afterwards",
    caught_by=("DC-JOB-003",),
)
def _delete_keeps_job() -> None:
    class StopOnly(InProcessRegistry):
        async def cancel(self, job_id: str) -> Job:
            job = self.job(job_id)
            if self.lifecycle.stop(job, Trigger.DELETE) and job.task is not None:
                await asyncio.wait([job.task], timeout=5)
            return job

    _registry(StopOnly)


@defect(
    "delete-finished-404",
    "DELETE of a job that already finished answers 404 (only running jobs are 'cancellable')",
    caught_by=("DC-JOB-004",),
)
def _delete_finished_404() -> None:
    class RunningOnly(InProcessRegistry):
        async def cancel(self, job_id: str) -> Job:
            if self.job(job_id).finished:
                raise UnknownJob(job_id)
            return await super().cancel(job_id)

    _registry(RunningOnly)


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
    class NoSweep(InProcessRegistry):
        def sweep(self, now: float | None = None) -> int:
            return 0

    _registry(NoSweep)


@defect(
    "finished-jobs-dropped",
    "a job is forgotten the moment it finishes: no replay within the TTL",
    caught_by=("DC-LIFE-002",),
)
def _finished_jobs_dropped() -> None:
    class Forgetful(InProcessRegistry):
        def task_done(self, job: Job) -> None:
            self.jobs.pop(job.id, None)

    _registry(Forgetful)


#: set once a reader disconnects mid-stream (disconnect-kills-worker)
_wedge: dict[str, bool] = {"wedged": False}


@defect(
    "disconnect-kills-worker",
    "a reader disconnecting mid-stream wedges the engine: later generations fail and /health says 503",
    caught_by=("DC-LIFE-003",),
)
def _disconnect_kills_worker() -> Middleware:
    class Wedging(EngineWrapper):
        def health(self) -> EngineHealth:
            return EngineHealth(ok=False, detail="engine wedged") if _wedge["wedged"] else self.inner.health()

        async def generate(self, request: GenerationRequest) -> AsyncGenerator[Chunk, None]:
            async for chunk in self.inner.generate(request):
                if _wedge["wedged"]:
                    raise EngineError("the engine is wedged", code="wedged")
                yield chunk

    _engine(Wedging)
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
    registries: list[InProcessRegistry] = []

    class Recorded(InProcessRegistry):
        """The worker's registry, once the app has started it (the middleware acts on its jobs)."""

        def start(self) -> None:
            registries.append(self)
            super().start()

    def cancel(scope: Scope) -> None:
        for registry in registries:
            try:
                job = registry.job(_job_id_of(scope))
            except UnknownJob:
                continue
            registry.lifecycle.stop(job, Trigger.DELETE)

    _registry(Recorded)
    return _on_mid_stream_disconnect(cancel)


#: set once a reader disconnects mid-stream (disconnect-stalls-generator)
_stall = asyncio.Event()


@defect(
    "disconnect-stalls-generator",
    "after one reader disconnects mid-stream the generator deadlocks, while /health still answers 200",
    caught_by=("DC-LIFE-003",),
)
def _disconnect_stalls_generator() -> Middleware:
    class Stalling(EngineWrapper):
        async def generate(self, request: GenerationRequest) -> AsyncGenerator[Chunk, None]:
            async for chunk in self.inner.generate(request):
                if _stall.is_set():
                    await asyncio.Event().wait()  # never set: the deadlock (keep-alives still flow)
                yield chunk

    _engine(Stalling)
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
def _errors_not_problem_json() -> Middleware:
    class PlainJSONErrors(BufferedRewriter):
        """Every HTTP error the app answers (all but the unexpected 500) as {"error": detail}."""

        def rewrite(self, status: int, headers: Headers, body: bytes) -> tuple[int, Headers, bytes]:
            content_type = get_header(headers, "content-type") or ""
            if status == 500 or not content_type.startswith("application/problem+json"):
                return status, headers, body
            plain = json.dumps({"error": json.loads(body).get("detail")}).encode()
            return status, set_header(headers, "content-type", "application/json"), plain

    return rewrite(lambda scope: True, PlainJSONErrors)


@defect(
    "no-contract-header",
    "responses do not carry the Dualcall-Contract-Version header",
    caught_by=("DC-SVC-006",),
)
def _no_contract_header() -> Middleware:
    class NoHeader(Rewriter):
        def start(self, status: int, headers: Headers) -> tuple[int, Headers]:
            return status, drop_header(headers, "dualcall-contract-version")

    return rewrite(lambda scope: True, NoHeader)


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
def _auth_not_enforced_on_stream() -> Middleware:
    class LetEveryoneIn(Rewriter):
        """A stream request passes the bearer guard whatever it sends (as if the guard skipped the path)."""

        def request(self, scope: Scope) -> Scope:
            headers = set_header(list(scope["headers"]), "authorization", f"Bearer {AUTH_TOKEN}")
            return {**scope, "headers": headers}

    return rewrite(is_stream, LetEveryoneIn)


__all__ = ["AUTH_TOKEN", "DEFECTS", "Defect"]


# -- the queue bound (DC-1.6) ---------------------------------------------------------------------------------------


@defect(
    "queue-unbounded",
    "the submit path never refuses work: jobs pile up past the advertised queue limit",
    caught_by=("DC-SUBMIT-012",),
    worker_args=("--concurrency", "2", "--queue-limit", "4"),
)
def _queue_unbounded() -> None:
    class Unbounded(InProcessRegistry):
        async def submit(self, request: GenerationRequest, idempotency: Idempotency | None = None) -> Job:
            job = self.lifecycle.new_job(self.new_id(), request, Job)
            self.jobs[job.id] = job
            self.lifecycle.launch(job)
            return job

    _registry(Unbounded)


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
    class Silent(EventEncoder):
        keepalive = b""

    _encoder(Silent())


# -- resume past the end, DELETE's reported state, TTL reclaim of unread jobs, /openapi.yaml ----------


@defect(
    "resume-past-end-bare-done",
    "Last-Event-ID beyond the final id answers 200 with a bare [DONE] (only the exact final id gets 204)",
    caught_by=("DC-STREAM-012",),
)
def _resume_past_end_bare_done() -> None:
    async def bare_done() -> AsyncIterator[bytes]:
        yield worker_sse.DONE

    class Lenient(InProcessRegistry):
        async def open_stream(self, job_id: str, last_event_id: int | None) -> AsyncIterator[bytes]:
            final = self.job(job_id).final_event_id
            if final is not None and last_event_id is not None and last_event_id > final:
                return bare_done()
            return await super().open_stream(job_id, last_event_id)

    _registry(Lenient)


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
    class FinishedOnly(InProcessRegistry):
        def sweep(self, now: float | None = None) -> int:
            running = {job_id: job for job_id, job in self.jobs.items() if not job.finished}
            for job_id in running:
                del self.jobs[job_id]
            try:
                return super().sweep(now)
            finally:
                self.jobs.update(running)

    _registry(FinishedOnly)


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
    class Exclusive(InProcessRegistry):
        async def open_stream(self, job_id: str, last_event_id: int | None) -> AsyncIterator[bytes]:
            if self.job(job_id).readers > 0:
                raise ProblemException(409, "stream-in-use", "this job's stream already has a reader")
            return await super().open_stream(job_id, last_event_id)

    _registry(Exclusive)


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

from . import defects_idempotency, defects_liveness, defects_outcomes, defects_robustness  # noqa: E402, F401
