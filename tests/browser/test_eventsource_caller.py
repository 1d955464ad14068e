"""Chromium's native EventSource as a caller under the caller gate: it passes every rule.

The caller (tests/callers/eventsource_caller.js, the same script Node runs on the `eventsource`
package) lives in a page on its own origin, as a web app's page would: every request it makes
to the adversarial worker is cross-origin, the stream of ``absolute-sse-url`` on yet another
port. The arena answers CORS for the page's origin (``serve-callers --cors-origin``), so the
browser lets the bytes through and the grade is the caller's, not the arena's headers'.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from callers.expected_verdicts import unexpected_outcomes, unexpected_verdicts

from conformance.callers.arena import ArenaServer
from conformance.callers.drive import ShouldStop, run_callers
from conformance.callers.record import CallerOutcome, CallerTarget

pytestmark = pytest.mark.slow

CALLER_JS = Path(__file__).resolve().parents[1] / "callers" / "eventsource_caller.js"
PAGE_PATH = "/caller.html"
TIMEOUT_MS = 20_000
_CALL = """async ([submitUrl, prompt, timeoutMs]) => {
    const timedOut = new Promise(resolve => setTimeout(() => resolve({timedOut: true}), timeoutMs));
    const call = dualcallCall(EventSource, submitUrl, prompt).then(
        text => ({text}), error => ({error: String(error && error.message || error)}));
    return Promise.race([call, timedOut]);
}"""


class _PageServer(ThreadingHTTPServer):
    page: bytes


class _PageHandler(BaseHTTPRequestHandler):
    server: _PageServer

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(self.server.page)))
        self.end_headers()
        self.wfile.write(self.server.page)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def page_origin() -> Iterator[str]:
    """eventsource_caller.js in a page served by a plain HTTP server on its own loopback port."""
    server = _PageServer(("127.0.0.1", 0), _PageHandler)
    script = CALLER_JS.read_text(encoding="utf-8")
    server.page = f"<!doctype html><meta charset=utf-8><title>caller</title><script>{script}</script>".encode()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(5)


class BrowserCaller:
    """eventsource_caller.js in a page, on the browser's own EventSource and fetch."""

    label = "Chromium EventSource (tests/callers/eventsource_caller.js)"

    def __init__(self, page: Any, page_url: str) -> None:
        self.page = page
        self.url = page_url

    def __call__(self, target: CallerTarget, should_stop: ShouldStop) -> CallerOutcome:
        self.page.goto(self.url)  # a fresh page per scenario: nothing of the last one keeps running
        started = time.monotonic()
        result = self.page.evaluate(_CALL, [target.submit_url, target.prompt, TIMEOUT_MS])
        duration = time.monotonic() - started
        self.page.goto("about:blank")  # closes whatever EventSource is still open
        if result.get("timedOut"):
            return CallerOutcome(succeeded=False, timed_out=True, duration_s=duration, error="timed out")
        if "error" in result:
            return CallerOutcome(succeeded=False, error=result["error"], duration_s=duration)
        return CallerOutcome(succeeded=True, text=result["text"], duration_s=duration)


def test_chromium_eventsource_passes_every_rule(page: Any, page_origin: str) -> None:
    with ArenaServer(cors_origins=frozenset({page_origin})) as arena:
        report = run_callers(BrowserCaller(page, page_origin + PAGE_PATH), server=arena, jobs=1)
    assert not unexpected_verdicts(report, "chromium-eventsource"), unexpected_verdicts(report, "chromium-eventsource")
    assert report.ok
    assert not unexpected_outcomes(report), unexpected_outcomes(report)
    absolute = next(s for s in report.worker["scenarios"] if s["name"] == "absolute-sse-url")
    assert any(" second GET " in line and "-> 200 (stream)" in line for line in absolute["requests"]), absolute
