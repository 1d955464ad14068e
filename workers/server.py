"""Run an app under uvicorn on a socket we bind ourselves (so ``--port 0`` reports the real port).

Shutdown in two steps. SIGTERM (or SIGINT) first *drains*: the registry refuses new jobs and
/health answers 503, so a balancer stops sending work here, while running jobs go on generating
for up to ``shutdown_timeout_s``. Then uvicorn stops: what still runs ends with the contract's
``shutdown`` error and open connections are closed. A second signal skips what is left of the drain.

Every connection also gets a send timeout: a client that leaves the bytes written to it unread for
``send_timeout_s`` (a stalled stream reader) is disconnected, so it holds neither a connection nor
buffered output forever; a stream reader then resumes with Last-Event-ID.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import sys
from collections.abc import Iterator
from types import FrameType
from typing import Any, Protocol, runtime_checkable

import uvicorn
from litestar import Litestar
from uvicorn.protocols.http.auto import AutoHTTPProtocol

log = logging.getLogger("workers.server")


@runtime_checkable
class Drainable(Protocol):
    """A registry that can drain: refuse new work, let running jobs finish (`workers.registry`)."""

    def begin_drain(self) -> None: ...

    async def drained(self) -> None: ...

    def begin_shutdown(self) -> None: ...


def stall_guarded(base: type[asyncio.Protocol], send_timeout_s: float) -> type[asyncio.Protocol]:
    """``base`` (uvicorn's HTTP protocol) with a send timeout.

    The transport pauses the protocol when its write buffer passes the high-water mark (the
    client stopped reading) and resumes it below the low one; a connection paused for
    ``send_timeout_s`` in a row is aborted with a TCP reset. Not a close: a close waits for the
    unread bytes to be sent, which never happens, and a FIN would queue behind them in the kernel.
    """

    class StallGuardedProtocol(base):  # type: ignore[valid-type,misc]
        _stall_timer: asyncio.TimerHandle | None = None

        def pause_writing(self) -> None:
            super().pause_writing()
            if self._stall_timer is None:
                self._stall_timer = asyncio.get_running_loop().call_later(send_timeout_s, self._stalled)

        def resume_writing(self) -> None:
            self._cancel_stall_timer()
            super().resume_writing()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_stall_timer()
            super().connection_lost(exc)

        def _cancel_stall_timer(self) -> None:
            if self._stall_timer is not None:
                self._stall_timer.cancel()
                self._stall_timer = None

        def _stalled(self) -> None:
            self._stall_timer = None
            transport: asyncio.Transport | None = getattr(self, "transport", None)
            if transport is None or transport.is_closing():
                return
            peer = transport.get_extra_info("peername")
            log.warning("disconnected %s: it left written bytes unread for %gs (send timeout)", peer, send_timeout_s)
            sock = transport.get_extra_info("socket")
            if sock is not None:  # a reset, not a FIN queued behind megabytes the client will never read
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()

    return StallGuardedProtocol


class _Server(uvicorn.Server):
    """Drains on the first shutdown signal, then ends open streams (``error`` event, ``[DONE]``).

    uvicorn waits for open responses before running the app's shutdown hooks, so a stream that
    is still generating would otherwise hold shutdown for its whole graceful timeout.
    """

    def __init__(self, config: uvicorn.Config, app: Litestar, drain_timeout_s: float) -> None:
        super().__init__(config)
        self._app = app
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_timeout_s = drain_timeout_s
        self._drain: asyncio.Task[None] | None = None

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
        if self._loop is not None and isinstance(registry, Drainable) and self._drain is None and not self.should_exit:
            self._loop.call_soon_threadsafe(self._start_drain, registry, sig, frame)
            return
        self._stop(sig, frame)

    def _start_drain(self, registry: Drainable, sig: int, frame: FrameType | None) -> None:
        if self._drain is not None or self.should_exit:
            self._stop(sig, frame)  # a second signal: stop now
            return
        log.info("draining: new jobs are refused; running jobs get %gs to finish", self._drain_timeout_s)
        registry.begin_drain()
        self._drain = asyncio.get_running_loop().create_task(self._drain_then_stop(registry, sig, frame))

    async def _drain_then_stop(self, registry: Drainable, sig: int, frame: FrameType | None) -> None:
        try:
            await asyncio.wait_for(registry.drained(), self._drain_timeout_s)
        except TimeoutError:
            log.warning("drain timed out after %gs: the jobs still running end with `shutdown`", self._drain_timeout_s)
        self._stop(sig, frame)

    def _stop(self, sig: int, frame: FrameType | None) -> None:
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


#: seconds running jobs get to finish after SIGTERM/SIGINT (the drain); then open connections as long again
DEFAULT_SHUTDOWN_TIMEOUT_S = 5.0
#: seconds a client may leave written bytes unread before its connection is aborted
DEFAULT_SEND_TIMEOUT_S = 30.0


def serve(
    app: Litestar,
    sock: socket.socket,
    *,
    banner: str,
    access_log: bool = False,
    shutdown_timeout_s: float = DEFAULT_SHUTDOWN_TIMEOUT_S,
    send_timeout_s: float = DEFAULT_SEND_TIMEOUT_S,
    **extra: Any,
) -> None:
    """Serve until SIGTERM/SIGINT. Shutdown: drain (refuse new jobs, let running ones finish) for up
    to ``shutdown_timeout_s``, then stop accepting, end what still runs with an ``error`` event and
    ``[DONE]``, give connections ``shutdown_timeout_s`` to finish, close the rest."""
    config = uvicorn.Config(
        app,
        http=stall_guarded(AutoHTTPProtocol, send_timeout_s),
        log_level="info" if access_log else "warning",
        access_log=access_log,
        timeout_graceful_shutdown=shutdown_timeout_s,  # type: ignore[arg-type]  # a float works; typed int
        lifespan="on",
        **extra,
    )
    print(banner, flush=True)
    _Server(config, app, shutdown_timeout_s).run(sockets=[sock])
    print("dualcall worker stopped", file=sys.stderr, flush=True)
