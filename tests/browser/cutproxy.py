"""A loopback TCP proxy in front of a worker: records every HTTP request head, and cuts one stream.

The browser talks to the proxy as if it were the worker (same origin), so the proxy sees what the
browser really sends: how many times it opened the stream and with which ``Last-Event-ID``. Arming a
cut makes the next ``GET .../stream`` connection close after a number of response-body bytes, in the
middle of an event, the way a dropped network connection looks to EventSource.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

_REQUEST_HEAD = re.compile(rb"(GET|POST|DELETE|OPTIONS|HEAD|PUT|PATCH) (\S+) HTTP/1\.[01]\r\n(.*?)\r\n\r\n", re.DOTALL)
_CHUNK = 65536


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]

    @property
    def is_stream(self) -> bool:
        return self.method == "GET" and self.path.split("?")[0].endswith("/stream")


@dataclass
class _Connection:
    client: socket.socket
    upstream: socket.socket
    #: response-body bytes still to forward before the cut; None: no cut on this connection
    cut_budget: int | None = None
    pending: bytearray = field(default_factory=bytearray)


class CuttingProxy:
    """``with CuttingProxy(worker_port) as proxy: ... proxy.url ... proxy.requests``"""

    def __init__(self, upstream_port: int, host: str = "127.0.0.1") -> None:
        self.upstream = (host, upstream_port)
        self.listener = socket.create_server((host, 0))
        self.port: int = self.listener.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        self.requests: list[RecordedRequest] = []
        self.cuts = 0
        self._armed_cut: int | None = None
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._closed = False

    # -- control -----------------------------------------------------------------------------

    def cut_next_stream_after(self, body_bytes: int) -> None:
        """The next stream response is closed after ``body_bytes`` bytes of its body."""
        with self._lock:
            self._armed_cut = body_bytes

    def stream_requests(self) -> list[RecordedRequest]:
        with self._lock:
            return [request for request in self.requests if request.is_stream]

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> Self:
        self._spawn(self._accept_loop)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._closed = True
        _shutdown(self.listener)  # shutdown, not just close, wakes the thread blocked in accept()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            _shutdown(sock)
        for thread in self._threads:
            thread.join(5)

    def _spawn(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        thread.start()
        self._threads.append(thread)

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.upstream, timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets += [client, upstream]
            connection = _Connection(client, upstream)
            self._spawn(self._client_to_upstream, connection)
            self._spawn(self._upstream_to_client, connection)

    # -- pumps -------------------------------------------------------------------------------

    def _client_to_upstream(self, connection: _Connection) -> None:
        try:
            while data := connection.client.recv(_CHUNK):
                connection.pending += data
                self._record_heads(connection)
                connection.upstream.sendall(data)
        except OSError:
            pass
        _shutdown(connection.upstream)

    def _record_heads(self, connection: _Connection) -> None:
        while match := _REQUEST_HEAD.search(connection.pending):
            method, path, head = (bytes(group) for group in match.groups())
            del connection.pending[: match.end()]  # after reading the groups: they view this buffer
            headers = {}
            for line in head.decode("latin-1").split("\r\n"):
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            request = RecordedRequest(method.decode(), path.decode("latin-1"), headers)
            with self._lock:
                self.requests.append(request)
                if request.is_stream and self._armed_cut is not None:
                    # set before the request goes upstream, so the response cannot outrun it
                    connection.cut_budget, self._armed_cut = self._armed_cut, None

    def _upstream_to_client(self, connection: _Connection) -> None:
        in_body = False
        head = bytearray()
        try:
            while data := connection.upstream.recv(_CHUNK):
                if connection.cut_budget is None:
                    connection.client.sendall(data)
                    continue
                if not in_body:
                    head += data
                    end = head.find(b"\r\n\r\n")
                    if end < 0:
                        connection.client.sendall(data)
                        continue
                    in_body = True
                    body_start = len(data) - (len(head) - end - 4)
                    connection.client.sendall(data[:body_start])
                    data = data[body_start:]
                forward = data[: connection.cut_budget]
                connection.client.sendall(forward)
                connection.cut_budget -= len(forward)
                if connection.cut_budget <= 0:
                    with self._lock:
                        self.cuts += 1
                    break
        except OSError:
            pass
        _shutdown(connection.client)
        _shutdown(connection.upstream)


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
