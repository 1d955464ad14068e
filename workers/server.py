"""Run an app under uvicorn on a socket we bind ourselves (so ``--port 0`` reports the real port)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
from collections.abc import Iterator
from types import FrameType
from typing import Any

import uvicorn
from litestar import Litestar


class _Server(uvicorn.Server):
    """Ends open streams (``error`` event, ``[DONE]``) as soon as a shutdown signal arrives.

    uvicorn waits for open responses before running the app's shutdown hooks, so a stream that
    is still generating would otherwise hold shutdown for its whole graceful timeout.
    """

    def __init__(self, config: uvicorn.Config, app: Litestar) -> None:
        super().__init__(config)
        self._app = app
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets=sockets)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """uvicorn re-raises a captured SIGTERM/SIGINT after a graceful shutdown (exit -15/-2);
        a worker that shut down cleanly exits 0 instead."""
        with super().capture_signals():
            yield
            self._captured_signals.clear()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        registry = getattr(self._app.state, "registry", None)
        if registry is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(registry.begin_shutdown)
        super().handle_exit(sig, frame)


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio only sets TCP_NODELAY on sockets it sees as TCP, and without
    # it every response on a kept-alive connection waits ~40 ms for delayed ACKs
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)  # listening before the banner names the URL: an eager client is never refused
    sock.set_inheritable(True)
    return sock


def base_url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


#: seconds open connections get to finish after SIGTERM/SIGINT before uvicorn closes them
DEFAULT_SHUTDOWN_TIMEOUT_S = 5.0


def serve(
    app: Litestar,
    sock: socket.socket,
    *,
    banner: str,
    access_log: bool = False,
    shutdown_timeout_s: float = DEFAULT_SHUTDOWN_TIMEOUT_S,
    **extra: Any,
) -> None:
    """Serve until SIGTERM/SIGINT. Shutdown: stop accepting, end open jobs with an ``error`` event
    and ``[DONE]`` at once, give connections ``shutdown_timeout_s`` to drain, close the rest."""
    config = uvicorn.Config(
        app,
        log_level="info" if access_log else "warning",
        access_log=access_log,
        timeout_graceful_shutdown=shutdown_timeout_s,  # type: ignore[arg-type]  # a float works; typed int
        lifespan="on",
        **extra,
    )
    print(banner, flush=True)
    _Server(config, app).run(sockets=[sock])
    print("dualcall worker stopped", file=sys.stderr, flush=True)
