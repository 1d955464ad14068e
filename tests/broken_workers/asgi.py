"""Byte-level ASGI middleware for injecting defects around the real worker app.

A defect that lives on the wire (a status code, a header, the SSE framing) is injected by
wrapping the unmodified Litestar app: `rewrite(match, Rewriter subclass)` runs one rewriter
per matching request. Rewriters see the request scope, the response start and the body
chunks exactly as the worker sends them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Middleware = Callable[[ASGIApp], ASGIApp]
Headers = list[tuple[bytes, bytes]]
Match = Callable[[Scope], bool]

DONE = b"data: [DONE]\n\n"
JOB_PATH = re.compile(r"^/v1/inference/[^/]+$")
STREAM_PATH = re.compile(r"^/v1/inference/[^/]+/stream$")


# -- matching ---------------------------------------------------------------------------------------


def route(method: str | None, pattern: str | re.Pattern[str]) -> Match:
    """Match requests by method (None: any) and a full-path regex."""
    compiled = re.compile(pattern) if isinstance(pattern, str) else pattern

    def match(scope: Scope) -> bool:
        return (method is None or scope.get("method") == method) and bool(compiled.fullmatch(scope.get("path", "")))

    return match


def is_submit(scope: Scope) -> bool:
    return scope.get("method") == "POST" and scope.get("path") == "/v1/inference"


def is_stream(scope: Scope) -> bool:
    return scope.get("method") == "GET" and bool(STREAM_PATH.match(scope.get("path", "")))


# -- headers ----------------------------------------------------------------------------------------


def get_header(headers: Headers, name: str) -> str | None:
    key = name.lower().encode()
    return next((value.decode("latin-1") for header, value in headers if header.lower() == key), None)


def drop_header(headers: Headers, name: str) -> Headers:
    key = name.lower().encode()
    return [(header, value) for header, value in headers if header.lower() != key]


def set_header(headers: Headers, name: str, value: str) -> Headers:
    return [*drop_header(headers, name), (name.lower().encode(), value.encode("latin-1"))]


# -- rewriters --------------------------------------------------------------------------------------


class Rewriter:
    """One response passing through; override any hook. The default passes everything on."""

    def __init__(self, scope: Scope) -> None:
        self.scope = scope
        self.status = 0

    def request(self, scope: Scope) -> Scope:
        """Rewrite the request scope (headers, path) before the app sees it."""
        return scope

    def start(self, status: int, headers: Headers) -> tuple[int, Headers]:
        return status, headers

    async def body(self, chunk: bytes, more_body: bool, send: Send) -> None:
        await send({"type": "http.response.body", "body": chunk, "more_body": more_body})

    async def run(self, app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.status, headers = self.start(message["status"], list(message.get("headers", [])))
                await send({**message, "status": self.status, "headers": headers})
            elif message["type"] == "http.response.body":
                await self.body(message.get("body", b""), message.get("more_body", False), send)
            else:
                await send(message)

        await app(self.request(scope), receive, send_wrapper)


class BufferedRewriter(Rewriter):
    """Collects a (small, non-streaming) response and rewrites it whole; fixes Content-Length."""

    def rewrite(self, status: int, headers: Headers, body: bytes) -> tuple[int, Headers, bytes]:
        return status, headers, body

    async def run(self, app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
        start: Message = {}
        parts: list[bytes] = []

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body":
                parts.append(message.get("body", b""))
                if not message.get("more_body", False):
                    status, headers, body = self.rewrite(
                        start["status"], list(start.get("headers", [])), b"".join(parts)
                    )
                    self.status = status
                    if status in (204, 304):
                        headers = drop_header(headers, "content-length")
                    else:
                        headers = set_header(headers, "content-length", str(len(body)))
                    await send({**start, "status": status, "headers": headers})
                    await send({"type": "http.response.body", "body": body, "more_body": False})
            else:
                await send(message)

        await app(self.request(scope), receive, send_wrapper)


class JSONRewriter(BufferedRewriter):
    """Rewrites a JSON body (left alone when it is not JSON)."""

    def rewrite_json(self, status: int, headers: Headers, body: Any) -> tuple[int, Headers, Any]:
        return status, headers, body

    def rewrite(self, status: int, headers: Headers, body: bytes) -> tuple[int, Headers, bytes]:
        try:
            document = json.loads(body)
        except ValueError:
            return status, headers, body
        status, headers, document = self.rewrite_json(status, headers, document)
        return status, headers, json.dumps(document).encode()


class SSERewriter(Rewriter):
    """Rewrites an event stream one complete block (up to its blank line) at a time."""

    def __init__(self, scope: Scope) -> None:
        super().__init__(scope)
        self._pending = b""
        self.done_sent = False

    def block(self, block: bytes) -> bytes:
        """One event, comment or ``[DONE]`` block, terminating blank line included."""
        return block

    async def finish(self, send: Send) -> None:
        """Called when the worker ends the response; must send the final body message."""
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def body(self, chunk: bytes, more_body: bool, send: Send) -> None:
        if self.status != 200:
            await super().body(chunk, more_body, send)
            return
        self._pending += chunk
        out = bytearray()
        while (end := self._pending.find(b"\n\n")) >= 0:
            block, self._pending = self._pending[: end + 2], self._pending[end + 2 :]
            self.done_sent = self.done_sent or block == DONE
            out += self.block(block)
        if out:
            await send({"type": "http.response.body", "body": bytes(out), "more_body": True})
        if not more_body:
            if self._pending:
                await send({"type": "http.response.body", "body": self._pending, "more_body": True})
            await self.finish(send)


# -- wiring -----------------------------------------------------------------------------------------


def rewrite(match: Match, factory: Callable[[Scope], Rewriter]) -> Middleware:
    """Middleware that runs ``factory(scope)`` on every HTTP request ``match`` accepts."""

    def middleware(app: ASGIApp) -> ASGIApp:
        async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http" or not match(scope):
                await app(scope, receive, send)
                return
            await factory(scope).run(app, scope, receive, send)

        return wrapped

    return middleware


def chain(*middlewares: Middleware) -> Middleware:
    """Apply several middlewares; the first one listed is the outermost."""

    def middleware(app: ASGIApp) -> ASGIApp:
        for wrap in reversed(middlewares):
            app = wrap(app)
        return app

    return middleware


async def answer(send: Send, status: int, body: bytes, content_type: str, headers: Headers | None = None) -> None:
    """Send a complete response without asking the app (with the contract header, as the worker would)."""
    import openapi

    head: Headers = [
        (b"content-type", content_type.encode()),
        (b"content-length", str(len(body)).encode()),
        (b"dualcall-contract-version", openapi.contract_version().encode()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": head + list(headers or [])})
    await send({"type": "http.response.body", "body": body, "more_body": False})
