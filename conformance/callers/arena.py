"""The adversarial worker: a raw ASGI app on two loopback listeners, so every byte, cut and delay is ours.

URLs: ``/run/<token>/<scenario>/v1/inference`` is a run's submit URL (a run is one caller run
against one scenario; the token keeps runs apart). Streams live where ``sse_url`` says:

* ``default``: ``{prefix}/v1/inference/{id}/stream`` on the primary listener;
* ``relative-query``: ``../streams/{id}?sig=...&job={id}`` (resolves to ``{prefix}/streams/{id}?...``);
* ``absolute``: ``http://HOST:SECOND_PORT{prefix}/relay/{id}?...`` on the second listener.

A request for the default stream path of a job whose ``sse_url`` points elsewhere answers 404 —
legal, the stream lives elsewhere — and is recorded as a built path.

Both listeners answer CORS (preflights included) for the origins of the arena itself — a page
served from one listener reads the stream on the other, as the ``absolute`` scenario makes a
browser do — and for the extra origins it is given (a page hosted elsewhere). Without that, a
browser would block the bytes and the grade would blame the caller for the arena's answer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
import socket
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Literal, NoReturn
from urllib.parse import parse_qs, urlsplit

import uvicorn

from conformance.callers.record import Hit, ScenarioRun, ScriptedJob
from conformance.callers.scenarios import (
    DONE_LINE,
    MID_EVENT_TOKEN,
    MID_UTF8_CHAR,
    MID_UTF8_TOKEN,
    Scenario,
    WireEvent,
)
from conformance.client import resolve
from conformance.contract import contract_version

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_RUN_PATH = re.compile(r"^/run/(?P<token>[A-Za-z0-9_-]+)/(?P<scenario>[a-z0-9-]+)(?P<rest>/.*)?$")
_RUN_TOKEN = re.compile(r"^/run/([A-Za-z0-9_-]+)")
_SUBMIT = "/v1/inference"
_JOB = re.compile(r"^/v1/inference/(?P<id>[A-Za-z0-9_-]+)$")
_DEFAULT_STREAM = re.compile(r"^/v1/inference/(?P<id>[A-Za-z0-9_-]+)/stream$")
_QUERY_STREAM = re.compile(r"^/streams/(?P<id>[A-Za-z0-9_-]+)$")
_RELAY_STREAM = re.compile(r"^/relay/(?P<id>[A-Za-z0-9_-]+)$")
_EXCERPT_CHARS = 600
_LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "[::1]"})
#: what a browser page may send and read across origins: the contract's methods and headers
_CORS_METHODS = "GET, POST, DELETE"
_CORS_EXPOSED = "Retry-After, Location"
_CORS_MAX_AGE_S = "600"
#: pause between the small chunks of the mid-UTF-8 scenario, so they leave as separate writes
_CHUNK_PAUSE_S = 0.002
_CHUNK_BYTES = 5


class _StreamCut(Exception):
    """Raised inside the app to make uvicorn reset the connection mid-body (a dropped connection)."""


class _QuietCuts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], _StreamCut))


def _problem(status: int, title: str, detail: str) -> tuple[int, dict[str, str], bytes]:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    return status, {"content-type": "application/problem+json"}, json.dumps(body).encode()


class Arena:
    """The ASGI app. Runs are registered by :meth:`new_run`; everything else answers 404."""

    def __init__(self, cors_origins: frozenset[str] = frozenset()) -> None:
        self.host = "127.0.0.1"
        self.primary_port = 0
        self.second_port = 0
        #: origins besides the arena's own that may read its answers in a browser
        self.cors_origins = frozenset(origin.rstrip("/") for origin in cors_origins)
        self._runs: dict[str, ScenarioRun] = {}
        self._jobs: dict[str, tuple[ScenarioRun, ScriptedJob]] = {}

    # --- runs -----------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.primary_port}"

    def new_run(self, scenario: Scenario) -> ScenarioRun:
        token = secrets.token_hex(4)
        run = ScenarioRun(scenario, token, f"{self.base_url}/run/{token}/{scenario.name}")
        self._runs[token] = run
        return run

    def allows_origin(self, origin: str) -> bool:
        """A page on this origin may read the arena's answers: one of its own listeners, or one it was given."""
        if origin.rstrip("/") in self.cors_origins:
            return True
        try:
            parts = urlsplit(origin)
            port = parts.port
        except ValueError:
            return False
        host = parts.netloc.rpartition(":")[0]
        own_hosts = _LOOPBACK_NAMES | {self.host, f"[{self.host}]"}
        return parts.scheme == "http" and host in own_hosts and port in (self.primary_port, self.second_port)

    # --- ASGI -----------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        origin = next((value.decode("latin-1") for name, value in scope["headers"] if name.lower() == b"origin"), None)
        if origin is not None and self.allows_origin(origin):
            send = _with_cors(send, origin)
        listener: Literal["primary", "second"] = (
            "second" if scope["server"] and scope["server"][1] == self.second_port else "primary"
        )
        query = scope.get("query_string", b"").decode("latin-1")
        path = scope["path"]
        url = f"http://{self.host}:{scope['server'][1]}{scope.get('raw_path', path.encode()).decode('latin-1')}"
        url += f"?{query}" if query else ""
        headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]}
        body = await _read_body(receive)
        match = _RUN_PATH.match(path)
        run = self._run_of(path, url, match)
        if run is None:
            await _answer(
                send, *_problem(404, "Not Found", "no such adversarial run; use a URL printed by serve-callers")
            )
            return
        hit = run.add(
            Hit(
                at=run.now(),
                listener=listener,
                method=scope["method"],
                url=url,
                headers=headers,
                body=body.decode("utf-8", "replace") if body else None,
            )
        )
        if hit.method == "OPTIONS" and "access-control-request-method" in headers:
            hit.kind = "preflight"  # the browser asking, not the caller's request: answered, never graded
            await self._preflight(hit, send, origin)
            hit.answered_at = run.now()
            return
        # a mangled URL (not /run/<token>/<scenario>/...) is still recorded, as evidence against the caller
        rest = (match["rest"] or "/") if match and match["scenario"] == run.scenario.name else "/?"
        try:
            await self._route(run, hit, rest, query, receive=receive, send=send)
        finally:
            hit.answered_at = run.now()

    def _run_of(self, path: str, url: str, match: re.Match[str] | None) -> ScenarioRun | None:
        """The run a request belongs to: by its URL prefix, or by a job id anywhere in a mangled URL."""
        if match is not None and match["token"] in self._runs:
            return self._runs[match["token"]]
        token = _RUN_TOKEN.match(path)
        if token is not None and token[1] in self._runs:
            return self._runs[token[1]]
        return next((run for job_id, (run, _) in self._jobs.items() if job_id in url), None)

    async def _route(self, run: ScenarioRun, hit: Hit, rest: str, query: str, *, receive: Receive, send: Send) -> None:
        method = hit.method
        if rest == _SUBMIT and hit.listener == "primary":
            if method != "POST":
                await self._reply(hit, send, 405, {"allow": "POST"}, b"")
                return
            await self._submit(run, hit, send)
            return
        if rest == "/health" and method == "GET":  # callers may look before they submit (DC-5.1)
            await self._reply(hit, send, 200, {"content-type": "application/json"}, _health(run.scenario))
            return
        stream = self._stream_target(run, hit, rest, query)
        if stream is not None:
            if method != "GET":
                await self._reply(hit, send, 405, {"allow": "GET"}, b"")
                return
            await self._stream(run, stream, hit, receive, send)
            return
        job_match = _JOB.match(rest)
        job = run.job(job_match["id"]) if job_match and hit.listener == "primary" else None
        if job is not None and not job.deleted and method in ("GET", "DELETE"):
            hit.kind, hit.job_id = ("status" if method == "GET" else "cancel"), job.job_id
            status_body = self._status(job, "cancelled" if method == "DELETE" else "completed")
            if method == "DELETE":
                job.deleted = True
            await self._reply(
                hit, send, 200 if method == "GET" else 202, {"content-type": "application/json"}, status_body
            )
            return
        if hit.kind == "other":
            hit.job_id = next((job.job_id for job in run.jobs if job.job_id in hit.url), None)
            if hit.job_id is not None and method == "GET":
                hit.kind = "wrong-stream"
        await self._reply(hit, send, *_problem(404, "Not Found", hit.note or "nothing lives at this URL"))

    def _stream_target(self, run: ScenarioRun, hit: Hit, rest: str, query: str) -> ScriptedJob | None:
        """The job whose stream this request names correctly; records a built or wrong stream URL."""
        for pattern, style, listener in (
            (_DEFAULT_STREAM, "default", "primary"),
            (_QUERY_STREAM, "relative-query", "primary"),
            (_RELAY_STREAM, "absolute", "second"),
        ):
            found = pattern.match(rest)
            if not found:
                continue
            job = run.job(found["id"])
            if job is None:
                return None
            hit.job_id = job.job_id
            if job.deleted:
                hit.kind, hit.note = "stream", "the job was cancelled"  # the right URL, answered 404
                return None
            if job.scenario.sse_url != style or hit.listener != listener:
                hit.kind = "built-stream" if style == "default" else "wrong-stream"
                hit.note = f"this job's stream is at sse_url {job.sse_url!r} (resolved: {job.stream_url})"
                return None
            if style != "default" and parse_qs(query) != parse_qs(job.stream_url.partition("?")[2]):
                hit.kind = "wrong-stream"
                hit.note = f"the query string of sse_url {job.sse_url!r} is missing or altered"
                return None
            hit.kind = "stream"
            return job
        return None

    # --- submit ---------------------------------------------------------------------------

    async def _submit(self, run: ScenarioRun, hit: Hit, send: Send) -> None:
        hit.kind = "submit"
        scenario = run.scenario
        submits = len(run.of_kind("submit"))
        if scenario.busy_submits < 0 or submits <= scenario.busy_submits:
            status, headers, body = _problem(
                503, "Service Unavailable", "the job queue is full; retry after Retry-After"
            )
            await self._reply(hit, send, status, headers | {"retry-after": str(scenario.retry_after_s)}, body)
            return
        try:
            request = json.loads(hit.body or "")
        except ValueError:
            request = None
        if not isinstance(request, dict) or not isinstance(request.get("prompt"), str):
            await self._reply(hit, send, *_problem(422, "Unprocessable Content", "body must be an InferenceRequest"))
            return
        # a client job_id is recorded (DC-C-1) but not rejected, so the run goes on to test the other rules
        job_id = secrets.token_urlsafe(16)
        prefix = f"/run/{run.token}/{scenario.name}"
        signature = secrets.token_hex(6)
        if scenario.sse_url == "absolute":
            sse_url = f"http://{_hostname(hit, self.host)}:{self.second_port}{prefix}/relay/{job_id}?sig={signature}"
        elif scenario.sse_url == "relative-query":
            sse_url = f"../streams/{job_id}?sig={signature}&job={job_id}"
        else:
            sse_url = f"{prefix}/v1/inference/{job_id}/stream"
        job = ScriptedJob(
            job_id=job_id,
            scenario=scenario,
            events=scenario.events(job_id),
            sse_url=sse_url,
            stream_url=resolve(run.submit_url, sse_url),
            created_at=time.monotonic(),
        )
        run.jobs.append(job)
        self._jobs[job_id] = (run, job)
        hit.job_id = job_id
        answer: dict[str, Any] = {"job_id": job_id, "sse_url": sse_url, "status_url": f"{prefix}/v1/inference/{job_id}"}
        if scenario.unknown_events:
            answer |= {"queue_position": 0, "links": {"self": answer["status_url"]}, "estimated_start_s": 0.0}
        headers = {"content-type": "application/json", "location": sse_url}
        await self._reply(hit, send, 202, headers, json.dumps(answer).encode())

    def _status(self, job: ScriptedJob, state: str) -> bytes:
        tokens = sum(1 for event in job.events if event.type == "token")
        return json.dumps(
            {
                "job_id": job.job_id,
                "state": state,
                "tokens_out": tokens,
                "created_at": "2026-01-01T00:00:00Z",
                "sse_url": job.sse_url,
            }
        ).encode()

    # --- stream ---------------------------------------------------------------------------

    async def _stream(self, run: ScenarioRun, job: ScriptedJob, hit: Hit, receive: Receive, send: Send) -> None:
        scenario = job.scenario
        raw_last = hit.last_event_id = hit.header("last-event-id")
        if raw_last is not None and not raw_last.strip().isdigit():
            await self._reply(hit, send, *_problem(400, "Bad Request", "Last-Event-ID must be a non-negative integer"))
            return
        last = int(raw_last) if raw_last is not None else 0
        first_connection = len(run.streams(job)) == 1
        if last >= job.final_id and scenario.cut != "every-attempt":
            await self._reply(hit, send, 204, {}, b"")
            return
        hit.status = 200
        hit.response_headers = {"content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache"}
        await send({"type": "http.response.start", "status": 200, "headers": _raw(hit.response_headers)})
        left = asyncio.Event()
        watcher = asyncio.create_task(_watch_disconnect(receive, left, hit, run))
        run.open_connections += 1
        try:
            await self._play(
                run=run, job=job, hit=hit, last=last, first_connection=first_connection, left=left, send=send
            )
        finally:
            run.open_connections -= 1
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)

    async def _play(
        self,
        *,
        run: ScenarioRun,
        job: ScriptedJob,
        hit: Hit,
        last: int,
        first_connection: bool,
        left: asyncio.Event,
        send: Send,
    ) -> None:
        scenario = job.scenario
        pending = [event for event in job.events if event.id > last]
        awkward = scenario.awkward_framing
        excerpt = bytearray()

        async def write(data: bytes) -> None:
            excerpt.extend(data[: max(0, _EXCERPT_CHARS - len(excerpt))])
            hit.response_excerpt = excerpt.decode("utf-8", "replace")
            await send({"type": "http.response.body", "body": data, "more_body": True})

        if scenario.retry_ms is not None:
            await write(f"retry: {scenario.retry_ms}\n\n".encode())
        if scenario.cut == "every-attempt":
            if pending and pending[0].type == "started" and last == 0:
                await write(pending[0].encode())
                hit.delivered.append(pending[0].id)
            else:
                await write(b": keep-alive\n\n")
            await asyncio.sleep(0.05)
            self._cut(hit, "right after `started`" if last == 0 else "before any new event")
        cut_plan = _cut_plan(scenario, pending) if first_connection else None
        for event in pending:
            if event.type == "token" and scenario.first_token_delay_s:
                wait = job.created_at + scenario.first_token_delay_s - time.monotonic()
                if wait > 0 and not await _wait_or_leave(left, wait):
                    return
            if left.is_set():
                return
            data = event.encode(awkward=awkward)
            if cut_plan is not None and cut_plan[0] == event.id:
                _, keep, how, where = cut_plan
                if scenario.cut == "mid-utf8":
                    await self._send_chunked(write, data[:keep])
                else:
                    await write(data[:keep])
                await asyncio.sleep(0.05)
                if how == "reset":
                    self._cut(hit, where)
                hit.cut, hit.cut_where = True, where
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            if scenario.cut == "mid-utf8" and first_connection:
                await self._send_chunked(write, data)
            else:
                await write(data)
            hit.delivered.append(event.id)
            hit.final_delivered = hit.final_delivered or event.is_final
            if awkward and event.type == "started":
                await write(b"retry: 1500\r\n\r\n: keep-alive\r\n\r\n")
            elif awkward:
                await write(b": keep-alive\r\n\r\n")
        if scenario.cut == "before-done" and first_connection:
            hit.cut, hit.cut_where = True, "after `end`, before [DONE]"
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        await write(DONE_LINE)
        hit.done_at = run.now()
        if scenario.close_delay_s:
            await _wait_or_leave(left, scenario.close_delay_s)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    @staticmethod
    async def _send_chunked(write: Callable[[bytes], Awaitable[None]], data: bytes) -> None:
        for start in range(0, len(data), _CHUNK_BYTES):
            await write(data[start : start + _CHUNK_BYTES])
            await asyncio.sleep(_CHUNK_PAUSE_S)

    @staticmethod
    def _cut(hit: Hit, where: str) -> NoReturn:
        hit.cut, hit.cut_where = True, where
        raise _StreamCut(where)

    async def _preflight(self, hit: Hit, send: Send, origin: str | None) -> None:
        if origin is None or not self.allows_origin(origin):
            note = f"origin {origin!r} is not the arena's own; serve-callers --cors-origin allows another"
            hit.note = note
            await self._reply(hit, send, 403, {"content-type": "text/plain"}, note.encode())
            return
        headers = {
            "access-control-allow-methods": _CORS_METHODS,
            "access-control-allow-headers": hit.header("access-control-request-headers") or "",
            "access-control-max-age": _CORS_MAX_AGE_S,
        }
        await self._reply(hit, send, 204, {name: value for name, value in headers.items() if value}, b"")

    async def _reply(self, hit: Hit, send: Send, status: int, headers: dict[str, str], body: bytes) -> None:
        hit.status = status
        hit.response_headers = dict(headers)
        hit.response_excerpt = body[:_EXCERPT_CHARS].decode("utf-8", "replace")
        await _answer(send, status, headers, body)


def _health(scenario: Scenario) -> bytes:
    return json.dumps(
        {
            "status": "ok",
            "engine": "adversary",
            "model": "scripted",
            "contract_version": contract_version(),
            "keepalive_s": scenario.keepalive_s,
        }
    ).encode()


def _with_cors(send: Send, origin: str) -> Send:
    """*send*, with the CORS answer for *origin* added to every response start."""
    extra = [
        (b"access-control-allow-origin", origin.encode("latin-1")),
        (b"access-control-expose-headers", _CORS_EXPOSED.encode()),
        (b"vary", b"Origin"),
    ]

    async def cors_send(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = dict(message, headers=[*message.get("headers", []), *extra])
        await send(message)

    return cors_send


def _hostname(hit: Hit, default: str) -> str:
    """The host the caller used (the same host, another port); the listen address without a Host header."""
    host = hit.header("host") or ""
    if host.startswith("["):
        return host[: host.find("]") + 1] or default
    return host.rpartition(":")[0] if ":" in host else host or default


def _cut_plan(scenario: Scenario, pending: list[WireEvent]) -> tuple[int, int, str, str] | None:
    """(event id, bytes of it to send, "reset" or "close", where) for a first connection's cut."""
    if scenario.cut == "mid-event":
        event = next(e for e in pending if e.type == "token" and e.data["index"] == MID_EVENT_TOKEN)
        data = event.encode()
        keep = data.index(b'"text"') + 4  # the id: and event: lines, and part of the data line
        return event.id, keep, "reset", f"in the middle of event {event.id} (its id: line was sent)"
    if scenario.cut == "mid-utf8":
        event = next(e for e in pending if e.type == "token" and e.data["index"] == MID_UTF8_TOKEN)
        data = event.encode()
        keep = data.index(MID_UTF8_CHAR.encode()) + 1  # one byte of a three-byte character
        return event.id, keep, "close", f"inside the UTF-8 bytes of {MID_UTF8_CHAR!r} in event {event.id}"
    return None


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    return b"".join(chunks)


async def _watch_disconnect(receive: Receive, left: asyncio.Event, hit: Hit, run: ScenarioRun) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            hit.disconnected_at = run.now()
            left.set()
            return


async def _wait_or_leave(left: asyncio.Event, seconds: float) -> bool:
    """Sleep *seconds*; False when the caller disconnected meanwhile."""
    try:
        await asyncio.wait_for(left.wait(), timeout=seconds)
    except TimeoutError:
        return True
    return False


def _raw(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()]


async def _answer(send: Send, status: int, headers: dict[str, str], body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": _raw(headers)})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class ArenaServer:
    """The arena served by uvicorn in a background thread, on two loopback ports."""

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, second_port: int = 0, cors_origins: frozenset[str] = frozenset()
    ) -> None:
        self.arena = Arena(cors_origins)
        self.arena.host = host
        self._ports = (port, second_port)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> ArenaServer:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def start(self) -> None:
        sockets = []
        for port in self._ports:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.arena.host, port))
            sockets.append(sock)
        self.arena.primary_port = sockets[0].getsockname()[1]
        self.arena.second_port = sockets[1].getsockname()[1]
        logging.getLogger("uvicorn.error").addFilter(_QuietCuts())
        config = uvicorn.Config(
            self.arena,
            http="h11",
            lifespan="off",
            log_config=None,
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": sockets}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the adversarial worker did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
        self._server = self._thread = None

    def settle(self, run: ScenarioRun, timeout_s: float = 1.0) -> None:
        """Wait (bounded) until the run's streams have finished, so their records are complete."""
        deadline = time.monotonic() + timeout_s + run.scenario.close_delay_s
        while run.open_connections and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.05)
