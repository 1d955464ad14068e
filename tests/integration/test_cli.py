"""`python -m workers`: help, usage errors and start-up failures are one clear line, exit 2."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

USAGE_ERROR = 2


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "workers", *args],
        check=False,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=30,
        stdin=subprocess.DEVNULL,
    )


def assert_one_error_line(done: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert done.returncode == USAGE_ERROR, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    assert "Traceback" not in done.stdout
    errors = [
        line for line in done.stderr.splitlines() if "error" in line.lower() or line.startswith("dualcall-worker:")
    ]
    assert len(errors) == 1, done.stderr
    for needle in needles:
        assert needle in errors[0], done.stderr
    return errors[0]


def test_help() -> None:
    done = run_cli("--help")
    assert done.returncode == 0
    for engine in ("mock", "legacy", "exllamav2"):
        assert engine in done.stdout
    assert done.stderr == ""


@pytest.mark.parametrize("engine", ["mock", "legacy", "exllamav2"])
def test_engine_help(engine: str) -> None:
    done = run_cli(engine, "--help")
    assert done.returncode == 0
    for option in ("--port", "--ttl-s", "--auth-token", "--keepalive-s"):
        assert option in done.stdout


@pytest.mark.parametrize(
    "args,needle",
    [
        (("mock", "--ttl-s", "-1"), "--ttl-s"),
        (("mock", "--ttl-s", "0"), "--ttl-s"),
        (("mock", "--keepalive-s", "0"), "--keepalive-s"),
        (("mock", "--queue-limit", "-3"), "--queue-limit"),
        (("mock", "--port", "-1"), "--port"),
        (("mock", "--port", "abc"), "--port"),
        (("mock", "--port", "70000"), "--port"),
        (("mock", "--token-delay-ms", "-5"), "--token-delay-ms"),
        (("mock", "--concurrency", "0"), "--concurrency"),
        (("mock", "--fail-after", "-1"), "--fail-after"),
        (("mock", "--no-such-flag"), "--no-such-flag"),
        (("bogus",), "bogus"),
        ((), "required"),
        (("exllamav2",), "--model"),
    ],
)
def test_bad_arguments_exit_2_with_one_error_line(args: tuple[str, ...], needle: str) -> None:
    done = run_cli(*args)
    assert_one_error_line(done, needle)
    assert done.stdout == ""


def test_exllamav2_missing_model_is_one_line() -> None:
    done = run_cli("exllamav2", "--model", "/nonexistent", "--port", "0")
    assert done.returncode == USAGE_ERROR, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("dualcall-worker: ")
    assert "/nonexistent" in lines[0]
    assert " on http://" not in done.stdout  # no banner for a worker that never served


def test_port_in_use_is_one_line() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_cli("mock", "--port", str(port))
    assert done.returncode == USAGE_ERROR, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert f"127.0.0.1:{port}" in lines[0]
    assert "Traceback" not in done.stderr
    assert done.stdout == ""


def test_version() -> None:
    from importlib.metadata import version

    done = run_cli("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"dualcall-worker {version('dualcall')}"
