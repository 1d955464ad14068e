"""The Litestar app factory shared by every engine: routes, validation, auth, problem details."""

from __future__ import annotations

import hmac
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, Final

import msgspec
from litestar import Litestar, Request, Response, delete, get, post, route
from litestar.connection import ASGIConnection
from litestar.enums import MediaType
from litestar.exceptions import HTTPException, MethodNotAllowedException
from litestar.handlers.base import BaseRouteHandler
from litestar.params import FromPath
from litestar.response.base import ASGIResponse
from litestar.types import ASGIApp, Message, Scope

import openapi
from workers import idempotency, sse, web
from workers.config import WorkerSettings
from workers.engines.base import Engine
from workers.logs import bind_job
from workers.metrics import MEDIA_TYPE as METRICS_MEDIA_TYPE
from workers.metrics import JobMetrics
from workers.problems import ProblemException, handle_http_exception, handle_unexpected
from workers.registry import (
    Draining,
    FinalEventDelivered,
    IdempotencyKeyReused,
    JobRecord,
    QueueFull,
    RegistryBackend,
    RegistryUnavailable,
    UnknownJob,
)
from workers.schemas import Health, JobStatus, QueueInfo, SubmitResponse
from workers.seams import DEFAULT_SEAMS, Middleware, Seams

_encode_json = msgspec.json.Encoder().encode
CONTRACT_HEADER: Final = "Dualcall-Contract-Version"
SUBMIT_PATH: Final = "/v1/inference"


def stream_path(job_id: str) -> str:
    return f"{SUBMIT_PATH}/{job_id}/stream"


def status_path(job_id: str) -> str:
    return f"{SUBMIT_PATH}/{job_id}"


def _iso(timestamp: float | None) -> str | None:
    return None if timestamp is None else datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")


def job_status(job: JobRecord) -> JobStatus:
    return JobStatus(
        job_id=job.id,
        state=job.state,
        tokens_out=job.tokens_out,
        created_at=_iso(job.created_at) or "",
        started_at=_iso(job.started_at),
        finished_at=_iso(job.finished_at),
        stop_reason=job.stop_reason,
        error=job.error,
        sse_url=stream_path(job.id),
        max_tokens=job.request.max_tokens,
    )


def _registry(request: Request[Any, Any, Any]) -> RegistryBackend:
    registry: RegistryBackend = request.app.state.registry
    return registry


def _seams(request: Request[Any, Any, Any]) -> Seams:
    seams: Seams = request.app.state.seams
    return seams


def _registry_problem(exc: UnknownJob | RegistryUnavailable | Draining, settings: WorkerSettings) -> ProblemException:
    """The HTTP answer to a registry error (the registry itself knows nothing of HTTP)."""
    if isinstance(exc, UnknownJob):
        return ProblemException(404, "unknown-job", exc.detail)
    if isinstance(exc, Draining):
        return ProblemException(
            503,
            "draining",
            f"This worker is shutting down ({exc}); retry, and another replica will answer.",
            headers={"Retry-After": str(settings.retry_after_s)},
        )
    return ProblemException(
        503,
        "registry-unavailable",
        "The job registry (Redis) is unreachable; retry later.",
        headers={"Retry-After": str(settings.retry_after_s)},
    )


# -- request parsing --------------------------------------------------------------------------


_EVENT_ID_DIGITS: Final = 18


def _parse_last_event_id(value: str | None) -> int | None:
    if value is None:
        return None
    if not value.isascii() or not value.isdigit():
        raise ProblemException(400, "invalid-last-event-id", "Last-Event-ID must be a non-negative integer event id.")
    # past every event any job can have; int() refuses strings of over 4300 digits
    return int(value) if len(value) <= _EVENT_ID_DIGITS else 10**_EVENT_ID_DIGITS


# -- auth and headers ------------------------------------------------------------------------


def _is_job_route(path: str) -> bool:
    return path == SUBMIT_PATH or path.startswith(SUBMIT_PATH + "/")


def _unauthorized(connection: ASGIConnection[Any, Any, Any, Any]) -> ProblemException | None:
    """The 401 to answer, or None: auth is off, the path is no job route, or the token matches.

    A CORS preflight (OPTIONS with Access-Control-Request-Method) never carries credentials (Fetch
    standard), so it is not asked for them.
    """
    settings: WorkerSettings = connection.app.state.settings
    if settings.auth_token is None or not _is_job_route(connection.scope["path"]):
        return None
    method = connection.scope.get("method")  # absent on websocket scopes
    if method == "OPTIONS" and "access-control-request-method" in connection.headers:
        return None
    scheme, _sep, token = connection.headers.get("authorization", "").partition(" ")
    # constant time: the comparison must not reveal how much of a guessed token is right
    if scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), settings.auth_token.encode()):
        return None
    return ProblemException(
        401,
        "unauthorized",
        "This worker requires `Authorization: Bearer <token>` on job routes.",
        headers={"WWW-Authenticate": 'Bearer realm="dualcall"'},
    )


async def require_bearer(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """App-wide guard: every handler of a job route, Litestar's implicit OPTIONS ones included.

    Async on purpose: Litestar runs a sync guard in a worker thread, a thread hop on every request.
    """
    if (problem := _unauthorized(connection)) is not None:
        raise problem


def method_not_allowed(request: Request[Any, Any, Any], exc: MethodNotAllowedException) -> Response[Any]:
    """HEAD, PUT... on a job route without the token answer 401, not 405: no routing news before auth."""
    return handle_http_exception(request, _unauthorized(request) or exc)


_CONTRACT_HEADER_NAME: Final = CONTRACT_HEADER.lower().encode("latin-1")


async def add_contract_header(message: Message, scope: Scope) -> None:
    """Every response, errors raised by the router included, names the contract version.

    The raw header list is rebuilt directly (Litestar's header classes parse and re-encode it).
    """
    if message["type"] == "http.response.start":
        headers = [item for item in message.get("headers", ()) if item[0].lower() != _CONTRACT_HEADER_NAME]
        headers.append((_CONTRACT_HEADER_NAME, openapi.contract_version().encode("latin-1")))
        message["headers"] = headers


async def _bind_job_from_path(request: Request[Any, Any, Any]) -> None:
    """Log lines of a request on a job's path (access line included) carry the job id."""
    job_id = request.path_params.get("job_id")
    if isinstance(job_id, str):
        bind_job(job_id)


# -- routes ------------------------------------------------------------------------------------


@post(SUBMIT_PATH, status_code=202)
async def submit(request: Request[Any, Any, Any]) -> ASGIApp:
    media_type, _ = request.content_type
    if media_type != "application/json":
        raise ProblemException(
            415,
            "unsupported-media-type",
            f"Send the job as `Content-Type: application/json` (got `{media_type or 'none'}`).",
        )
    seams = _seams(request)
    raw = await request.body()
    body = seams.decode_request(raw)
    registry = _registry(request)
    engine_health = registry.engine.health()
    if not engine_health.ok:
        # refused now rather than accepted into a job that would fail for a reason known now
        raise ProblemException(
            503,
            "engine-unavailable",
            f"The engine cannot take jobs now ({engine_health.detail or 'unhealthy'}); retry later.",
            headers={"Retry-After": str(registry.settings.retry_after_s)},
        )
    try:
        keyed = idempotency.from_header(request.headers.get("idempotency-key"), raw)
    except idempotency.MalformedKey as exc:
        raise ProblemException(400, "invalid-idempotency-key", f"{exc} (DC-1.12).") from None
    try:
        job = await registry.submit(seams.to_generation(body, registry.settings), keyed)
    except (RegistryUnavailable, Draining) as exc:
        raise _registry_problem(exc, registry.settings) from None
    except IdempotencyKeyReused:
        raise ProblemException(
            422,
            "idempotency-key-reused",
            "This Idempotency-Key was already used for another request (a different body); "
            "send a new key for a new request (DC-1.11).",
        ) from None
    except QueueFull as exc:
        retry = str(registry.settings.retry_after_s)
        raise ProblemException(
            503, "queue-full", f"The job queue is full ({exc}); retry later.", headers={"Retry-After": retry}
        ) from None
    bind_job(job.id)  # the access line of this POST names the job it created
    sse_url = stream_path(job.id)
    # encoded here and sent as is: a `Response` would pick a serializer and build its headers per job
    return ASGIResponse(
        body=_encode_json(SubmitResponse(job_id=job.id, sse_url=sse_url, status_url=status_path(job.id))),
        status_code=202,
        media_type=MediaType.JSON,
        headers={"Location": sse_url},
    )


_STREAM_HEADERS: Final = [(b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]


@get(SUBMIT_PATH + "/{job_id:str}/stream")
async def stream(request: Request[Any, Any, Any], job_id: FromPath[str]) -> ASGIApp:
    """Errors (401, 400, 404) are problem+json raised before the stream starts; the stream is raw ASGI."""
    last_event_id = _parse_last_event_id(request.headers.get("last-event-id"))
    registry = _registry(request)
    if registry.open_readers >= registry.settings.max_open_streams:
        raise ProblemException(
            503,
            "too-many-streams",
            f"This worker serves {registry.settings.max_open_streams} streams already; resume later.",
            headers={"Retry-After": str(registry.settings.retry_after_s)},
        )
    try:
        events: AsyncIterator[bytes] = await registry.open_stream(job_id, last_event_id)
    except (UnknownJob, RegistryUnavailable, Draining) as exc:
        raise _registry_problem(exc, registry.settings) from None
    except FinalEventDelivered:
        return Response(content=None, status_code=204)  # type: ignore[return-value]
    return sse.EventStreamResponse(events, _STREAM_HEADERS)


@get(SUBMIT_PATH + "/{job_id:str}")
async def status(request: Request[Any, Any, Any], job_id: FromPath[str]) -> JobStatus:
    registry = _registry(request)
    try:
        return job_status(await registry.get(job_id))
    except (UnknownJob, RegistryUnavailable) as exc:
        raise _registry_problem(exc, registry.settings) from None


@delete(SUBMIT_PATH + "/{job_id:str}", status_code=202)
async def cancel(request: Request[Any, Any, Any], job_id: FromPath[str]) -> Response[JobStatus]:
    registry = _registry(request)
    try:
        job = await registry.cancel(job_id)
    except (UnknownJob, RegistryUnavailable) as exc:
        raise _registry_problem(exc, registry.settings) from None
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
    ok = engine_health.ok and not registry.draining  # a draining worker takes no new job: out of rotation
    body = Health(
        status="ok" if ok else "unavailable",
        engine=registry.engine.name,
        model=registry.engine.model,
        contract_version=openapi.contract_version(),
        deterministic=registry.engine.deterministic,
        job_ttl_s=registry.settings.job_ttl_s,
        max_tokens_cap=registry.settings.max_tokens_cap,
        keepalive_s=registry.settings.keepalive_s,
        queue=QueueInfo(active=registry.active, queued=registry.queued, limit=registry.settings.queue_limit),
        idempotency_key=True,
        detail="draining: the worker is shutting down" if registry.draining else engine_health.detail,
    )
    content = msgspec.to_builtins(body)
    content.update(engine_health.extra)
    return Response(content, status_code=200 if ok else 503, headers={"Cache-Control": "no-store"})


@get("/metrics", media_type=METRICS_MEDIA_TYPE)
async def metrics(request: Request[Any, Any, Any]) -> bytes:
    return _registry(request).metrics.render()


@get("/openapi.yaml", media_type="application/yaml")
async def openapi_yaml(request: Request[Any, Any, Any]) -> bytes:
    document: bytes = request.app.state.contract_yaml
    return document


@get("/openapi.json")
async def openapi_json() -> dict[str, Any]:
    return openapi.load_document()  # parsed once, in create_app


# -- factory -----------------------------------------------------------------------------------


class WorkerApp(Litestar):
    """The worker's Litestar app; ``Seams.middleware`` wraps every HTTP request outside Litestar's own layers."""

    _outer: Any = None

    def wrap(self, middleware: list[Middleware]) -> None:
        outer: Any = self._litestar
        for wrap in reversed(middleware):
            outer = wrap(outer)
        self._outer = outer

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await super().__call__(scope, receive, send)
        else:
            await (self._outer or self._litestar)(scope, receive, send)

    async def _litestar(self, scope: Any, receive: Any, send: Any) -> None:
        # an event stream's body blocks skip Litestar's own send wrappers (see `sse.EventStreamResponse`)
        scope[sse.BODY_SEND] = send
        await Litestar.__call__(self, scope, receive, send)


def create_app(engine: Engine, settings: WorkerSettings | None = None, seams: Seams = DEFAULT_SEAMS) -> Litestar:
    """Build the worker app around ``engine``; the engine starts with the app's lifespan.

    ``seams`` substitutes parts of the core (`workers.seams.Seams`); the defaults are production's.
    """
    settings = settings or WorkerSettings()
    job_metrics = JobMetrics()
    registry = seams.registry(
        engine, settings, job_metrics, encoder=seams.encoder, clock=seams.clock, new_id=seams.new_job_id
    )
    job_metrics.bind(registry)

    async def on_startup(app: Litestar) -> None:
        await engine.start()
        registry.start()
        app.state.started_at = time.time()

    async def on_shutdown(_: Litestar) -> None:
        await registry.close()
        await engine.close()

    app = WorkerApp(
        route_handlers=[
            *(submit, stream, job_options, status, cancel, health, metrics, openapi_yaml, openapi_json),
            *web.ROUTES,
        ],
        on_startup=[on_startup],
        on_shutdown=[on_shutdown],
        exception_handlers={
            MethodNotAllowedException: method_not_allowed,
            HTTPException: handle_http_exception,
            Exception: handle_unexpected,
        },
        # no token, no guard: Litestar copies the route handler for each guard on every request
        guards=[require_bearer] if settings.auth_token is not None else [],
        before_send=[add_contract_header],
        before_request=_bind_job_from_path,
        logging_config=None,  # the process owns logging (workers.logs), not the app factory
        request_max_body_size=settings.max_body_bytes,
        cors_config=web.cors_config(settings.cors_origins),
        openapi_config=None,
        debug=False,
    )
    # read the contract once, here: no file I/O on the event loop while serving
    openapi.load_document()
    app.state.contract_yaml = openapi.DOCUMENT_PATH.read_bytes()
    app.state.pages = web.load_pages(docs_cdn=settings.docs_cdn)
    app.state.registry = registry
    app.state.settings = settings
    app.state.seams = seams
    if seams.middleware:
        app.wrap(list(seams.middleware))
    return app
