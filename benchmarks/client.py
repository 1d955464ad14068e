"""A lean HTTP/1.1 load client on asyncio protocols, so the load generator is not what we measure.

httpx plus an SSE parser costs tens of microseconds per event in the client, more than the worker
spends; this client does the least that still measures honestly: it decodes the chunked framing,
counts event boundaries (``\\n\\n``; a compliant stream has none inside an event, since JSON
escapes newlines) and notes when the first token event starts (the first byte after the first
event: ``started`` on the worker, the narration line on the legacy worker).

One `Connection` is one kept-alive TCP connection; requests on it run one after another.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

_CRLF = b"\r\n"
#: body bytes kept of a streamed response: enough to find where the first event ends
_EARLY_LIMIT = 4096


class ProtocolError(RuntimeError):
    pass


@dataclass
class Result:
    status: int = 0
    headers: dict[bytes, bytes] = field(default_factory=dict)
    #: the body of a Content-Length response; the first bytes of a chunked one
    body: bytes = b""
    events: int = 0
    body_bytes: int = 0
    started: float = 0.0
    head_at: float = 0.0
    #: when the first byte after the first event arrived (perf_counter), 0 if never
    first_token_at: float = 0.0
    ended: float = 0.0


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.result = Result()
        self.done: asyncio.Future[Result] | None = None
        self.head: asyncio.Future[Result] | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        #: closed by us: pending responses are cancelled, not failed
        self.closing = False
        self.state = "idle"
        self.remaining = 0
        self.chunked = False
        self.keep_body = True
        self.early = bytearray()
        self.last_byte = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        for future in (self.head, self.done):
            if future is not None and not future.done():
                if self.closing:
                    future.cancel()
                else:
                    future.set_exception(ProtocolError(f"connection closed in state {self.state}: {exc}"))

    def begin(
        self, request: bytes, loop: asyncio.AbstractEventLoop
    ) -> tuple[asyncio.Future[Result], asyncio.Future[Result]]:
        assert self.transport is not None and self.state == "idle"
        self.result = Result(started=time.perf_counter())
        self.done = loop.create_future()
        self.head = loop.create_future()
        self.state = "head"
        self.early = bytearray()
        self.last_byte = 0
        self.transport.write(request)
        return self.head, self.done

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        if self.state == "head" or self.buf:
            self.buf += data
            data = b""
        while True:
            if self.state == "head":
                end = self.buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                self._parse_head(bytes(self.buf[:end]), now)
                del self.buf[: end + 4]
                if self.state == "idle":
                    return
                data, self.buf = bytes(self.buf), bytearray()
            elif self.state == "length":
                piece, data = data[: self.remaining], data[self.remaining :]
                self._body(piece, now)
                self.remaining -= len(piece)
                if self.remaining == 0:
                    self._finish(now)
                return
            elif self.state == "size":
                if data:
                    self.buf += data
                    data = b""
                line_end = self.buf.find(_CRLF)
                if line_end < 0:
                    return
                size = int(bytes(self.buf[:line_end]).split(b";")[0], 16)
                del self.buf[: line_end + 2]
                if size == 0:
                    self.state = "trailer"
                else:
                    self.remaining = size + 2  # the data and its CRLF
                    self.state = "chunk"
                    data, self.buf = bytes(self.buf), bytearray()
            elif self.state == "chunk":
                if not data:
                    return
                take = min(self.remaining, len(data))
                piece, data = data[:take], data[take:]
                self.remaining -= take
                data_part = piece if self.remaining >= 2 else piece[: len(piece) - (2 - self.remaining)]
                if data_part:
                    self._body(data_part, now)
                if self.remaining == 0:
                    self.state = "size"
                    self.buf += data
                    data = b""
            elif self.state == "trailer":
                if data:
                    self.buf += data
                    data = b""
                if len(self.buf) < 2:
                    return
                del self.buf[:2]
                self._finish(now)
                return
            else:
                return

    def _parse_head(self, raw: bytes, now: float) -> None:
        lines = raw.split(_CRLF)
        result = self.result
        result.status = int(lines[0].split(b" ", 2)[1])
        result.head_at = now
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            result.headers[name.strip().lower()] = value.strip()
        assert self.head is not None
        self.head.set_result(result)
        if result.headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            self.state = "size"
            self.keep_body = False
        else:
            self.remaining = int(result.headers.get(b"content-length", b"0"))
            self.keep_body = True
            self.state = "length"
            if self.remaining == 0:
                self._finish(now)

    def _body(self, piece: bytes, now: float) -> None:
        if not piece:
            return
        result = self.result
        result.body_bytes += len(piece)
        result.events += piece.count(b"\n\n") + (self.last_byte == 10 and piece[0] == 10)
        self.last_byte = piece[-1]
        if self.keep_body:
            result.body += piece
        elif not result.first_token_at and len(self.early) < _EARLY_LIMIT:
            self.early += piece
            first_end = self.early.find(b"\n\n")
            if first_end >= 0 and len(self.early) > first_end + 2:
                result.first_token_at = now
                result.body = bytes(self.early)

    def _finish(self, now: float) -> None:
        self.result.ended = now
        self.state = "idle"
        assert self.done is not None
        self.done.set_result(self.result)


class Connection:
    """One kept-alive HTTP/1.1 connection to ``host:port``."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._protocol: _Protocol | None = None

    async def open(self) -> Connection:
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_connection(_Protocol, self.host, self.port)
        self._protocol = protocol
        return self

    def close(self) -> None:
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.closing = True
            self._protocol.transport.close()

    def start(
        self, method: str, path: str, body: bytes = b"", headers: tuple[tuple[str, str], ...] = ()
    ) -> tuple[asyncio.Future[Result], asyncio.Future[Result]]:
        """Send a request; returns (head received, response complete) futures."""
        assert self._protocol is not None
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        lines += [f"{name}: {value}" for name, value in headers]
        if body or method == "POST":
            lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
        request = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
        return self._protocol.begin(request, asyncio.get_running_loop())

    async def request(
        self, method: str, path: str, body: bytes = b"", headers: tuple[tuple[str, str], ...] = ()
    ) -> Result:
        _, done = self.start(method, path, body, headers)
        return await done


def split_url(url: str) -> tuple[str, int]:
    host_port = url.split("://", 1)[1].rstrip("/")
    host, _, port = host_port.rpartition(":")
    return host.strip("[]"), int(port)
