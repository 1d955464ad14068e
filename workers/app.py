"""The Litestar app factory shared by every engine: routes, validation, auth, problem details."""

from __future__ import annotations

import hmac
import re
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, Final

import msgspec
from litestar import Litestar, Request, Response, delete, get, post, route
from litestar.connection import ASGIConnection
from litestar.datastructures import MutableScopeHeaders
from litestar.exceptions import HTTPException
from litestar.handlers.base import BaseRouteHandler
from litestar.params import FromPath
from litestar.types import ASGIApp, Message, Scope

import openapi
from workers import sse
from workers.config import WorkerSettings
from workers.engines.base import Engine, GenerationRequest
from workers.metrics import render_metrics
from workers.problems import FieldError, ProblemException, handle_http_exception, handle_unexpected
from workers.registry import FinalEventDelivered, Job, JobRegistry, QueueFull, UnknownJob
from workers.schemas import Health, InferenceRequest, JobStatus, QueueInfo, SubmitResponse

CONTRACT_HEADER: Final = "Dualcall-Contract-Version"
SUBMIT_PATH: Final = "/v1/inference"
_UNKNOWN_FIELD = re.compile(r"unknown field `([^`]*)`")
_FIELD_PATH = re.compile(r" - at `\$\.?([^`]*)`$")


def stream_path(job_id: str) -> str:
    return f"{SUBMIT_PATH}/{job_id}/stream"


def status_path(job_id: str) -> str:
    return f"{SUBMIT_PATH}/{job_id}"


def _iso(timestamp: float | None) -> str | None:
    return None if timestamp is None else datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")


def job_status(job: Job, state_override: str | None = None) -> JobStatus:
    return JobStatus(
        job_id=job.id,
        state=state_override or job.state,  # type: ignore[arg-type]
        tokens_out=job.tokens_out,
        created_at=_iso(job.created_at) or "",
        started_at=_iso(job.started_at),
        finished_at=_iso(job.finished_at),
        stop_reason=job.stop_reason,
        error=job.error,
        sse_url=stream_path(job.id),
        max_tokens=job.request.max_tokens,
    )


def _registry(request: Request[Any, Any, Any]) -> JobRegistry:
    registry: JobRegistry = request.app.state.registry
    return registry


# -- request parsing --------------------------------------------------------------------------


#: fields typed `integer` in the contract; JSON Schema counts 5.0 as an integer, msgspec does not
_INTEGER_FIELDS: Final = ("max_tokens", "top_k", "seed")


def _decode_request(body: bytes) -> InferenceRequest:
    try:
        raw = msgspec.json.decode(body)
        if isinstance(raw, dict):
            for name in _INTEGER_FIELDS:
                value = raw.get(name)
                if isinstance(value, float) and value.is_integer():
                    raw[name] = int(value)
        return msgspec.convert(raw, type=InferenceRequest)
    except msgspec.ValidationError as exc:
        message = str(exc)
        unknown = _UNKNOWN_FIELD.search(message)
        if unknown and unknown.group(1) == "job_id":
            raise ProblemException(
                422,
                "client-job-id",
                "The server assigns job ids: remove `job_id` from the request body and read `job_id` "
                "and `sse_url` from the 202 response (dual-call contract, DC-1.4).",
                errors=[FieldError(field="job_id", message="not allowed: the server assigns job ids")],
            ) from None
        if unknown:
            raise ProblemException(
                422,
                "unknown-field",
                f"Unknown field `{unknown.group(1)}` in the request body.",
                errors=[FieldError(field=unknown.group(1), message="unknown field")],
            ) from None
        where = _FIELD_PATH.search(message)
        field = where.group(1) if where else ""
        raise ProblemException(
            422,
            "invalid-field",
            f"Invalid request body: {message}.",
            errors=[FieldError(field=field, message=_FIELD_PATH.sub("", message))],
        ) from None
    except msgspec.DecodeError as exc:
        raise ProblemException(400, "malformed-json", f"The request body is not valid JSON: {exc}.") from None


def _to_generation(body: InferenceRequest, settings: WorkerSettings) -> GenerationRequest:
    requested = settings.default_max_tokens if body.max_tokens is msgspec.UNSET else body.max_tokens
    return GenerationRequest(
        prompt=body.prompt,
        max_tokens=min(requested, settings.max_tokens_cap),
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        seed=None if body.seed is msgspec.UNSET else body.seed,
        stop=tuple(body.stop),
    )


def _parse_last_event_id(value: str | None) -> int | None:
    if value is None:
        return None
    if not value.isascii() or not value.isdigit():
        raise ProblemException(400, "invalid-last-event-id", "Last-Event-ID must be a non-negative integer event id.")
    return int(value)


# -- auth and headers ------------------------------------------------------------------------


async def require_bearer(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """Async on purpose: Litestar runs a sync guard in a worker thread, a thread hop on every job request."""
    settings: WorkerSettings = connection.app.state.settings
    if settings.auth_token is None:
        return
    scheme, _sep, token = connection.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), settings.auth_token.encode()):
        raise ProblemException(
            401,
            "unauthorized",
            "This worker requires `Authorization: Bearer <token>` on job routes.",
            headers={"WWW-Authenticate": 'Bearer realm="dualcall"'},
        )


async def add_contract_header(message: Message, scope: Scope) -> None:
    """Every response, errors raised by the router included, names the contract version."""
    if message["type"] == "http.response.start":
        headers = MutableScopeHeaders.from_message(message)
        headers[CONTRACT_HEADER] = openapi.contract_version()


# -- routes ------------------------------------------------------------------------------------


@post(SUBMIT_PATH, guards=[require_bearer], status_code=202)
async def submit(request: Request[Any, Any, Any]) -> Response[SubmitResponse]:
    media_type, _ = request.content_type
    if media_type != "application/json":
        raise ProblemException(
            415,
            "unsupported-media-type",
            f"Send the job as `Content-Type: application/json` (got `{media_type or 'none'}`).",
        )
    body = _decode_request(await request.body())
    registry = _registry(request)
    try:
        job = registry.submit(_to_generation(body, registry.settings))
    except QueueFull as exc:
        retry = str(registry.settings.retry_after_s)
        raise ProblemException(
            503, "queue-full", f"The job queue is full ({exc}); retry later.", headers={"Retry-After": retry}
        ) from None
    sse_url = stream_path(job.id)
    return Response(
        SubmitResponse(job_id=job.id, sse_url=sse_url, status_url=status_path(job.id)),
        status_code=202,
        headers={"Location": sse_url},
    )


def _unknown(job_id: str) -> ProblemException:
    return ProblemException(404, "unknown-job", f"No job `{job_id}`: it never existed, was cancelled, or has expired.")


_STREAM_HEADERS: Final = [(b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]


@get(SUBMIT_PATH + "/{job_id:str}/stream", guards=[require_bearer])
async def stream(request: Request[Any, Any, Any], job_id: FromPath[str]) -> ASGIApp:
    """Errors (401, 400, 404) are problem+json raised before the stream starts; the stream is raw ASGI."""
    last_event_id = _parse_last_event_id(request.headers.get("last-event-id"))
    try:
        events: AsyncIterator[bytes] = _registry(request).open_stream(job_id, last_event_id)
    except UnknownJob:
        raise _unknown(job_id) from None
    except FinalEventDelivered:
        return Response(content=None, status_code=204)  # type: ignore[return-value]
    return sse.EventStreamResponse(events, _STREAM_HEADERS)


@get(SUBMIT_PATH + "/{job_id:str}", guards=[require_bearer])
async def status(request: Request[Any, Any, Any], job_id: FromPath[str]) -> JobStatus:
    try:
        return job_status(_registry(request).get(job_id))
    except UnknownJob:
        raise _unknown(job_id) from None


@delete(SUBMIT_PATH + "/{job_id:str}", guards=[require_bearer], status_code=202)
async def cancel(request: Request[Any, Any, Any], job_id: FromPath[str]) -> Response[JobStatus]:
    try:
        job = await _registry(request).cancel(job_id)
    except UnknownJob:
        raise _unknown(job_id) from None
    return Response(job_status(job), status_code=202)


@route(SUBMIT_PATH + "/{job_id:str}", http_method=["OPTIONS"], status_code=204, include_in_schema=False)
async def job_options() -> Response[None]:
    """Litestar's implicit OPTIONS handler only lists the methods of the first handler on a path.

    Registered before `status` and `cancel`, so Litestar adds no implicit one for this path.
    """
    return Response(None, status_code=204, headers={"Allow": "DELETE, GET, OPTIONS"})


@get("/health")
async def health(request: Request[Any, Any, Any]) -> Response[Health]:
    registry = _registry(request)
    engine_health = registry.engine.health()
    body = Health(
        status="ok" if engine_health.ok else "unavailable",
        engine=registry.engine.name,
        model=registry.engine.model,
        contract_version=openapi.contract_version(),
        deterministic=registry.engine.deterministic,
        job_ttl_s=registry.settings.job_ttl_s,
        max_tokens_cap=registry.settings.max_tokens_cap,
        keepalive_s=registry.settings.keepalive_s,
        queue=QueueInfo(active=registry.active, queued=registry.queued, limit=registry.settings.queue_limit),
        detail=engine_health.detail,
    )
    content = msgspec.to_builtins(body)
    content.update(engine_health.extra)
    return Response(content, status_code=200 if engine_health.ok else 503, headers={"Cache-Control": "no-store"})


@get("/metrics", media_type="text/plain; version=0.0.4")
async def metrics(request: Request[Any, Any, Any]) -> str:
    return render_metrics(_registry(request))


@get("/openapi.yaml", media_type="application/yaml")
async def openapi_yaml(request: Request[Any, Any, Any]) -> bytes:
    document: bytes = request.app.state.contract_yaml
    return document


@get("/openapi.json")
async def openapi_json() -> dict[str, Any]:
    return openapi.load_document()  # parsed once, in create_app


_DOCS_PAGE: Final = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>dualcall worker API</title></head>
<body>
<h1>dualcall worker &mdash; contract {version}</h1>
<p>Machine-readable contract: <a href="/openapi.json">/openapi.json</a> &middot;
<a href="/openapi.yaml">/openapi.yaml</a>. Health: <a href="/health">/health</a>.</p>
<div id="app"></div>
<script id="api-reference" data-url="/openapi.json"></script>
<script src="https://cdn.jsdelivr.net/npm/@scalar/api-reference"></script>
</body></html>
"""


@get("/docs", media_type="text/html")
async def docs() -> str:
    return _DOCS_PAGE.format(version=openapi.contract_version())


# -- factory -----------------------------------------------------------------------------------


def create_app(engine: Engine, settings: WorkerSettings | None = None) -> Litestar:
    """Build the worker app around ``engine``; the engine starts with the app's lifespan."""
    settings = settings or WorkerSettings()
    registry = JobRegistry(engine, settings)

    async def on_startup(app: Litestar) -> None:
        await engine.start()
        registry.start()
        app.state.started_at = time.time()

    async def on_shutdown(_: Litestar) -> None:
        await registry.close()
        await engine.close()

    app = Litestar(
        route_handlers=[submit, stream, job_options, status, cancel, health, metrics, openapi_yaml, openapi_json, docs],
        on_startup=[on_startup],
        on_shutdown=[on_shutdown],
        exception_handlers={HTTPException: handle_http_exception, Exception: handle_unexpected},
        before_send=[add_contract_header],
        request_max_body_size=settings.max_body_bytes,
        openapi_config=None,
        debug=False,
    )
    # read the contract once, here: no file I/O on the event loop while serving
    openapi.load_document()
    app.state.contract_yaml = openapi.DOCUMENT_PATH.read_bytes()
    app.state.registry = registry
    app.state.settings = settings
    return app
