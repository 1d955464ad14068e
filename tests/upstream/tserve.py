"""Run a real `transformers serve` (Hugging Face's OpenAI-compatible server) on a free loopback port.

    with TransformersServe(model_dir, "--continuous-batching") as server:
        httpx.get(server.url + "/v1/models")

The model is the random-weight checkpoint of ``python -m workers.tinymodel`` (no download: the
server runs with ``HF_HUB_OFFLINE=1``), served on CPU with one OpenMP thread. Start-up waits,
bounded, until ``GET /health`` answers 200; on exit the server gets SIGTERM, then SIGKILL.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Self

import httpx

from workers.testing_redis import free_port

#: measured ~25 s on an idle 2-core machine and ~90 s at load average 20: generous on purpose
START_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 10.0


def transformers_missing() -> str | None:
    """Why `transformers serve` cannot run here (one line), or None."""
    for module, extra in (("transformers", "transformers[serving]"), ("torch", "torch"), ("fastapi", "fastapi")):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install {extra}; `tox -e upstream` installs it)"
    return None


def transformers_command() -> list[str]:
    """The `transformers` console script of this interpreter's environment."""
    script = Path(sys.executable).parent / "transformers"
    found = str(script) if script.is_file() else shutil.which("transformers")
    if found is None:
        raise RuntimeError("the `transformers` console script is not installed next to this Python")
    return [found]


class TransformersServe:
    """One `transformers serve MODEL_DIR` process on 127.0.0.1; a context manager."""

    def __init__(self, model_dir: str | Path, *args: str, start_timeout_s: float = START_TIMEOUT_S) -> None:
        self.model_dir = str(model_dir)
        self.args = tuple(args)
        self.start_timeout_s = start_timeout_s
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def model(self) -> str:
        """The id the server pins (and answers 400 to any other)."""
        return self.model_dir

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, port: int | None = None) -> Self:
        """Start the server (on ``port``, e.g. the same one again after `kill`) and wait until healthy."""
        self.port = port or free_port()
        env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
        command = [
            *transformers_command(),
            "serve",
            self.model_dir,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--device",
            "cpu",
            "--log-level",
            "warning",
            *self.args,
        ]
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop(), it outlives this call
        self.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log, env=env)
        try:
            self._wait_healthy(time.monotonic() + self.start_timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_healthy(self, deadline: float) -> None:
        last = "no attempt"
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.proc is not None and self.proc.poll() is not None:
                    last = f"exited with code {self.proc.returncode}"
                    break
                try:
                    response = client.get(self.url + "/health")
                    if response.status_code == 200:
                        return
                    last = f"/health answered {response.status_code}"
                except httpx.HTTPError as exc:
                    last = repr(exc)
                time.sleep(0.2)
        raise RuntimeError(f"transformers serve on {self.url} not healthy: {last}\n{self.output()}")

    def output(self) -> str:
        """What the server printed (stdout and stderr), for failure messages."""
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read().decode("utf-8", "replace")[-8000:]

    def cpu_seconds(self) -> float:
        """User plus system CPU time the server process has used so far (from /proc)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
        return (utime + stime) / os.sysconf("SC_CLK_TCK")

    def kill(self) -> None:
        """SIGKILL: the server dies mid-whatever, as a crashed upstream does."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(STOP_TIMEOUT_S)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT_S)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
