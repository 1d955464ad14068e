"""Start a real worker process (`python -m workers <engine> --port 0 ...`) for tests and scripts.

Orchestrator authors can use it in their own test suites to develop against the mock worker.

Usage::

    with WorkerProcess("mock", "--ttl-s", "0.5") as worker:
        httpx.get(worker.url + "/health")

The helper reads the banner line from stdout to learn the URL (``... on http://127.0.0.1:PORT``),
waits (bounded) until ``GET /health`` answers, and on exit sends SIGTERM, then SIGKILL after a grace
period. On a start-up failure it raises `WorkerStartError` carrying the process output.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from types import TracebackType
from typing import Self

import httpx

__all__ = ["WorkerProcess", "WorkerStartError", "free_port"]

_BANNER_URL = re.compile(r" on (http://\S+?)(?:\s|$)")
DEFAULT_START_TIMEOUT_S = 15.0
DEFAULT_STOP_TIMEOUT_S = 5.0


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago, for a server the caller starts next.

    The port is released before it is returned, so another process may take it first: use it for
    servers that cannot bind port 0 and report back (the worker itself prints its port instead).
    """
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class WorkerStartError(RuntimeError):
    """The worker did not print its banner or did not become healthy in time."""


class WorkerProcess:
    """One worker subprocess on a free loopback port; a context manager."""

    def __init__(
        self,
        engine: str = "mock",
        *args: str,
        start_timeout_s: float = DEFAULT_START_TIMEOUT_S,
        env: dict[str, str] | None = None,
    ) -> None:
        self.engine = engine
        self.args = tuple(args)
        self.start_timeout_s = start_timeout_s
        self.env = env
        self.url = ""
        self.proc: subprocess.Popen[str] | None = None
        self.stdout_lines: list[str] = []
        self.stderr_lines: list[str] = []
        self._readers: list[threading.Thread] = []
        self._banner = threading.Event()

    # -- output ------------------------------------------------------------------------------

    @property
    def command(self) -> list[str]:
        return [sys.executable, "-m", "workers", self.engine, "--port", "0", *self.args]

    @property
    def stdout(self) -> str:
        return "".join(self.stdout_lines)

    @property
    def stderr(self) -> str:
        return "".join(self.stderr_lines)

    def output(self) -> str:
        """Everything the process printed so far, for failure messages."""
        return f"$ {' '.join(self.command)}\n--- stdout ---\n{self.stdout}--- stderr ---\n{self.stderr}"

    def _pump(self, stream: object, sink: list[str], *, banner: bool) -> None:
        for line in stream:  # type: ignore[attr-defined]
            sink.append(line)
            if banner and not self.url:
                match = _BANNER_URL.search(line)
                if match:
                    self.url = match.group(1).rstrip("/")
                    self._banner.set()
        if banner:
            self._banner.set()  # EOF: wake the waiter, which then sees no URL

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Self:
        env = dict(os.environ if self.env is None else self.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        self.proc = subprocess.Popen(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            errors="replace",
            env=env,
        )
        for stream, sink, banner in (
            (self.proc.stdout, self.stdout_lines, True),
            (self.proc.stderr, self.stderr_lines, False),
        ):
            reader = threading.Thread(target=self._pump, args=(stream, sink), kwargs={"banner": banner}, daemon=True)
            reader.start()
            self._readers.append(reader)
        deadline = time.monotonic() + self.start_timeout_s
        try:
            if not self._banner.wait(self.start_timeout_s) or not self.url:
                raise WorkerStartError(f"worker printed no banner URL\n{self._exit_note()}{self.output()}")
            self._wait_healthy(deadline)
        except BaseException:
            self.stop()
            raise
        return self

    def _exit_note(self) -> str:
        code = None if self.proc is None else self.proc.poll()
        return "" if code is None else f"(exited with code {code})\n"

    def _wait_healthy(self, deadline: float) -> None:
        last_error = "no attempt"
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.proc is not None and self.proc.poll() is not None:
                    break
                try:
                    response = client.get(self.url + "/health")
                    if response.status_code == 200:
                        return
                    last_error = f"/health answered {response.status_code}"
                except httpx.HTTPError as exc:
                    last_error = repr(exc)
                time.sleep(0.05)
        raise WorkerStartError(f"worker at {self.url} not healthy: {last_error}\n{self._exit_note()}{self.output()}")

    def terminate(self, timeout_s: float = DEFAULT_STOP_TIMEOUT_S) -> int | None:
        """Send SIGTERM and wait up to ``timeout_s``; return the exit code (None if still running)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout_s: float = DEFAULT_STOP_TIMEOUT_S) -> int:
        """SIGTERM, then SIGKILL after ``timeout_s``; return the exit code."""
        assert self.proc is not None
        code = self.terminate(timeout_s)
        if code is None:
            self.proc.kill()
            code = self.proc.wait(timeout_s)
        for reader in self._readers:
            reader.join(timeout_s)
        return code

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.proc is not None:
            self.stop()

    def __repr__(self) -> str:
        return f"WorkerProcess({self.engine!r}, *{self.args!r}, url={self.url!r})"
