"""Real third-party SSE clients graded by the caller gate, each against its recorded verdicts.

Node's ``eventsource`` package runs the standard-EventSource caller (eventsource_caller.js) as a
command, the way ``serve-callers --caller`` runs a user's orchestrator; the package is installed
from npm into a temporary folder. httpx-sse driven naively must fail DC-C-4 (it cannot resume).
Chromium's own EventSource is graded in tests/browser/test_eventsource_caller.py.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from callers.expected_verdicts import unexpected_outcomes, unexpected_verdicts
from callers.httpx_sse_caller import httpx_sse_caller
from conformance.callers.arena import ArenaServer
from conformance.callers.drive import CommandCaller, FunctionCaller, run_callers
from conformance.callers.reference import sync_caller

HERE = Path(__file__).resolve().parent
#: the package as npm ships it (v4 needs Node >= 20)
EVENTSOURCE_PACKAGE = "eventsource@4.1.1"
NPM_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def node_caller(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """node_caller.mjs next to a fresh npm install of the eventsource package."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are not installed: Node's eventsource package cannot be graded here")
    folder = tmp_path_factory.mktemp("node-eventsource")
    try:
        install = subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--no-save", EVENTSOURCE_PACKAGE],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=NPM_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.skip(f"npm could not install {EVENTSOURCE_PACKAGE} within {NPM_TIMEOUT_S} s (registry unreachable?)")
    if install.returncode != 0:
        tail = (install.stderr or install.stdout).strip().splitlines()[-3:]
        pytest.skip(f"npm could not install {EVENTSOURCE_PACKAGE} (registry unreachable?): {' / '.join(tail)}")
    for name in ("eventsource_caller.js", "node_caller.mjs"):
        shutil.copy(HERE / name, folder / name)
    yield folder / "node_caller.mjs"


def test_node_eventsource_package_passes_every_rule(arena: ArenaServer, node_caller: Path) -> None:
    caller = CommandCaller(f"{shutil.which('node')} {node_caller} {{submit_url}} {{prompt}}", timeout_s=20)
    report = run_callers(caller, server=arena, jobs=4)
    assert not unexpected_verdicts(report, "node-eventsource"), unexpected_verdicts(report, "node-eventsource")
    assert not unexpected_outcomes(report), unexpected_outcomes(report)
    assert report.ok


def test_httpx_sse_driven_naively_fails_the_resume_rule(arena: ArenaServer) -> None:
    report = run_callers(FunctionCaller(httpx_sse_caller, timeout_s=20), server=arena, jobs=4)
    assert not unexpected_verdicts(report, "httpx-sse-naive"), unexpected_verdicts(report, "httpx-sse-naive")
    assert not report.ok
    resume = next(result for result in report.results if result.id == "DC-CALLER-004")
    assert "did not reconnect" in resume.message and "Last-Event-ID" in resume.message


def test_reference_client_passes_every_rule(arena: ArenaServer) -> None:
    report = run_callers(FunctionCaller(sync_caller, timeout_s=20), server=arena, jobs=4)
    assert not unexpected_verdicts(report, "reference-client"), unexpected_verdicts(report, "reference-client")
    assert not unexpected_outcomes(report), unexpected_outcomes(report)
