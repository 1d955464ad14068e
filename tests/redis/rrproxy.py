"""A round-robin reverse proxy for tests: each request goes to the next replica, responses stream through.

A raw ASGI app on uvicorn in a thread, on a free loopback port. It stands in for the load balancer
of docs/scaling.md: nothing pins a client to a replica, so a job's POST, status, stream and DELETE
land on different workers. A client that disconnects closes the upstream response too, so the
worker sees the disconnect as it would behind a real proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import threading
import time
from types import TracebackType
from typing import Any, Self

import httpx
import uvicorn

#: hop-by-hop headers (RFC 9110 §7.6.1) and Host, which the upstream request sets itself
_DROPPED = frozenset({b"connection", b"keep-alive", b"transfer-encoding", b"te", b"upgrade", b"host"})
START_TIMEOUT_S = 10.0


class RoundRobinApp:
    def __init__(self, upstreams: list[str]) -> None:
        self._next = itertools.cycle(upstreams)
        self.forwarded: list[str] = []
        self._client: httpx.AsyncClient | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    self._client = httpx.AsyncClient(timeout=httpx.Timeout(30.0, read=None))
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    if self._client is not None:
                        await self._client.aclose()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        upstream = next(self._next)
        self.forwarded.append(upstream)
        forward = asyncio.ensure_future(self._forward(upstream, scope, body, send))
        disconnect = asyncio.ensure_future(self._wait_disconnect(receive))
        await asyncio.wait([forward, disconnect], return_when=asyncio.FIRST_COMPLETED)
        for task in (forward, disconnect):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if forward.done() and not forward.cancelled() and forward.exception() is not None:
            raise forward.exception()  # type: ignore[misc]

    @staticmethod
    async def _wait_disconnect(receive: Any) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    async def _forward(self, upstream: str, scope: dict[str, Any], body: bytes, send: Any) -> None:
        assert self._client is not None
        url = upstream + scope["raw_path"].decode("latin-1")
        if scope.get("query_string"):
            url += "?" + scope["query_string"].decode("latin-1")
        headers = [(name, value) for name, value in scope["headers"] if name.lower() not in _DROPPED]
        request = self._client.build_request(scope["method"], url, headers=headers, content=body)
        response = await self._client.send(request, stream=True)
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status_code,
                    "headers": [(n, v) for n, v in response.headers.raw if n.lower() not in _DROPPED],
                }
            )
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await response.aclose()


class RoundRobinProxy:
    """``with RoundRobinProxy([url_a, url_b]) as proxy: proxy.url``."""

    def __init__(self, upstreams: list[str]) -> None:
        self.app = RoundRobinApp(upstreams)
        self.url = ""
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> Self:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        config = uvicorn.Config(self.app, log_level="warning", lifespan="on", timeout_graceful_shutdown=2)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the round-robin proxy did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
