"""Real nginx (Debian's package) in front of a pool, from the repository's deploy/nginx.conf template.

nginx runs in the foreground (``daemon off``) with its own prefix directory (pid, logs, temp
files) and listens on a free loopback port; the replicas' ports are written into the template's
upstream block, so a replica restarted on the same port rejoins without a reload.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

import openapi
from workers.testing import free_port

TEMPLATE = Path(__file__).resolve().parents[2] / "deploy" / "nginx.conf"
#: Debian installs nginx in /usr/sbin, which is not on every user's PATH
NGINX_CANDIDATES = ("nginx", "/usr/sbin/nginx")
START_TIMEOUT_S = 15.0
#: set by `.ci/run` while it installs Debian packages in the background: "installing", then "done <status>"
INSTALL_STATUS = os.environ.get("DUALCALL_NGINX_INSTALL")
INSTALL_WAIT_S = 600.0
_PLACEHOLDER = re.compile(r"@[A-Z_]+@")


def find_nginx() -> str | None:
    for candidate in NGINX_CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    return None


def wait_for_ci_install() -> None:
    """Wait (bounded) for the concurrent CI install of nginx to end, whatever its outcome."""
    if not INSTALL_STATUS:
        return
    status = Path(INSTALL_STATUS)
    deadline = time.monotonic() + INSTALL_WAIT_S
    while time.monotonic() < deadline:
        if not status.exists() or status.read_text(encoding="utf-8").startswith("done"):
            return
        time.sleep(1.0)


def render(template: str, *, prefix: str, listen: str, servers: list[str]) -> str:
    """Fill the template's placeholders (comment lines, which name them, are left as they are)."""
    upstream = "\n".join(f"        server {server} max_fails=1 fail_timeout=2s;" for server in servers)
    values = {
        "@PREFIX@": prefix,
        "@LISTEN@": listen,
        "@SERVERS@": upstream,
        "@CONTRACT_VERSION@": openapi.contract_version(),
    }
    lines = []
    for original in template.splitlines():
        line = original
        if not line.lstrip().startswith("#"):
            for name, value in values.items():
                line = line.replace(name, value)
            left = _PLACEHOLDER.search(line)
            if left:
                raise ValueError(f"the nginx template has a placeholder this renderer does not fill: {left.group()}")
        lines.append(line)
    return "\n".join(lines) + "\n"


class Nginx:
    """``with Nginx(binary, ["127.0.0.1:8001", ...]) as lb: lb.url``; stopped (QUIT, then KILL) on exit."""

    def __init__(self, binary: str, servers: list[str]) -> None:
        self.binary = binary
        self.servers = servers
        self.port = 0
        self.prefix = ""
        self.proc: subprocess.Popen[bytes] | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def error_log(self) -> str:
        path = Path(self.prefix) / "error.log"
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""

    def access_log(self) -> str:
        path = Path(self.prefix) / "access.log"
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""

    def start(self) -> Self:
        self._tmp = tempfile.TemporaryDirectory(prefix="dualcall-nginx-")
        self.prefix = self._tmp.name
        # run as root, nginx's workers drop to an unprivileged user that must reach the temp dirs
        Path(self.prefix).chmod(0o755)
        self.port = free_port()
        config = render(
            TEMPLATE.read_text(encoding="utf-8"),
            prefix=self.prefix,
            listen=f"127.0.0.1:{self.port}",
            servers=self.servers,
        )
        config_path = Path(self.prefix) / "nginx.conf"
        config_path.write_text(config, encoding="utf-8")
        command = [self.binary, "-p", self.prefix, "-c", str(config_path), "-e", "stderr", "-g", "daemon off;"]
        self.proc = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                output = self.proc.stdout.read().decode(errors="replace") if self.proc.stdout else ""
                raise RuntimeError(f"nginx exited with {self.proc.returncode}: {output[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"nginx did not listen on port {self.port} within {START_TIMEOUT_S}s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # fast shutdown: open streams are cut
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc is not None and self.proc.stdout:
            self.proc.stdout.close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
