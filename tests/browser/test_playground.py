"""The playground in real headless Chromium against the mock worker (real uvicorn on loopback).

What only a browser can show: EventSource's own reconnect with ``Last-Event-ID`` after a cut, that
the 204 after the final event stops it, that the contract's ``event: error`` is told apart from a
connection error, and that CORS lets a page on another origin in only when the worker allows it.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from cutproxy import CuttingProxy
from helpers import events_of
from workerproc import WorkerProcess

from workers.web import STATIC_DIR

pytestmark = pytest.mark.slow

FINAL_STATES = ("done", "cancelled", "failed", "closed", "error")


# -- helpers ----------------------------------------------------------------------------------------------


def submit_in_page(page: Any, prompt: str, max_tokens: int) -> None:
    page.fill("#prompt", prompt)
    page.fill("#max-tokens", str(max_tokens))
    page.click("#submit")


def wait_final(page: Any, timeout_ms: int = 30_000) -> str:
    """Wait until the page reaches a final state; return it."""
    page.wait_for_function(
        "states => states.includes(document.getElementById('state').dataset.state)",
        arg=list(FINAL_STATES),
        timeout=timeout_ms,
    )
    state: str = page.eval_on_selector("#state", "e => e.dataset.state")
    return state


def field(page: Any, element_id: str) -> str:
    text: str = page.evaluate("id => document.getElementById(id).textContent", element_id)
    return text


def direct_read(worker_url: str, sse_url: str) -> tuple[str, list[str]]:
    """The same job's completion read straight from the worker (a full replay): text, event types."""
    url = str(httpx.URL(worker_url + "/v1/inference").join(sse_url))
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200, response.text
    events = events_of(response.content)
    text = "".join(json.loads(event.data)["text"] for event in events if event.event == "token")
    return text, [event.event for event in events]


def jobs_submitted(worker_url: str) -> int:
    metrics = httpx.get(worker_url + "/metrics", timeout=10).text
    for line in metrics.splitlines():
        if line.startswith("dualcall_jobs_submitted_total "):
            return int(float(line.split()[1]))
    raise AssertionError(f"no dualcall_jobs_submitted_total in /metrics:\n{metrics}")


@pytest.fixture(scope="module")
def worker() -> Iterator[WorkerProcess]:
    # 15 ms per token: streams last long enough to be cut or cancelled mid-way, short enough for CI
    with WorkerProcess("mock", "--token-delay-ms", "15") as process:
        yield process


@pytest.fixture
def proxy(worker: WorkerProcess) -> Iterator[CuttingProxy]:
    with CuttingProxy(httpx.URL(worker.url).port or 80) as cutting_proxy:
        yield cutting_proxy


# -- the playground, same origin (through the proxy) -----------------------------------------------------


def test_tokens_arrive_in_order_and_complete(page: Any, proxy: CuttingProxy, worker: WorkerProcess) -> None:
    page.goto(proxy.url + "/playground")
    submit_in_page(page, "in order, please", 40)
    assert wait_final(page) == "done"
    sse_url = field(page, "sse-url")
    assert field(page, "job-id") and sse_url.endswith("/stream")
    expected, _ = direct_read(worker.url, sse_url)
    assert field(page, "output") == expected and expected
    assert field(page, "token-count") == field(page, "outcome").split("tokens_out ")[1] == "40"
    assert field(page, "anomalies") == "0"
    assert field(page, "reconnects") == "0"
    assert "end: max_tokens" in field(page, "outcome")
    # the page closed the EventSource on [DONE]: one stream request, and none after a pause
    time.sleep(1.0)
    assert len(proxy.stream_requests()) == 1


def test_resume_after_cut_gives_exact_text(page: Any, proxy: CuttingProxy, worker: WorkerProcess) -> None:
    page.goto(proxy.url + "/playground")
    proxy.cut_next_stream_after(700)  # a few events in, in the middle of one
    submit_in_page(page, "cut me mid-stream", 250)  # ~4 s: the resume lands mid-generation
    assert wait_final(page) == "done"
    assert proxy.cuts == 1
    streams = proxy.stream_requests()
    assert len(streams) == 2, [r.headers for r in streams]
    assert "last-event-id" not in streams[0].headers
    resumed_from = streams[1].headers.get("last-event-id", "")
    assert resumed_from.isdigit() and int(resumed_from) >= 2, streams[1].headers
    expected, _ = direct_read(worker.url, field(page, "sse-url"))
    text = field(page, "output")
    assert text == expected, f"browser text {text!r} differs from the direct read {expected!r}"
    assert field(page, "anomalies") == "0"  # no gap and no duplicate token index
    assert field(page, "token-count") == "250"
    assert int(field(page, "reconnects")) == 1


def test_after_done_eventsource_stops_on_204(page: Any, proxy: CuttingProxy, worker: WorkerProcess) -> None:
    """A bare EventSource that does not close on [DONE] reconnects once, gets 204, and stops."""
    page.goto(proxy.url + "/playground")
    submitted = httpx.post(worker.url + "/v1/inference", json={"prompt": "204", "max_tokens": 4}, timeout=10).json()
    outcome = page.evaluate(
        """url => new Promise(resolve => {
            const source = new EventSource(url);
            const data = [];
            source.addEventListener("message", e => data.push(e.data));
            source.addEventListener("error", e => {
                if (source.readyState === EventSource.CLOSED) resolve({data, closed: true, lastId: e.lastEventId});
            });
            setTimeout(() => { source.close(); resolve({data, closed: false}); }, 20000);
        })""",
        proxy.url + submitted["sse_url"],
    )
    assert outcome["closed"], outcome
    assert outcome["data"] == ["[DONE]"]
    time.sleep(1.5)  # a reconnect loop would show up here
    streams = proxy.stream_requests()
    assert len(streams) == 2, [r.headers for r in streams]
    assert streams[1].headers.get("last-event-id", "").isdigit()


def test_cancel_ends_the_stream(page: Any, proxy: CuttingProxy) -> None:
    page.goto(proxy.url + "/playground")
    submit_in_page(page, "cancel me", 2000)  # 30 s of tokens at 15 ms each
    page.wait_for_function("() => Number(document.getElementById('token-count').textContent) >= 3")
    page.click("#cancel")
    assert wait_final(page) == "cancelled"  # the job did not complete: the page says so
    assert field(page, "state") == "cancelled"
    assert "end: cancelled" in field(page, "outcome")
    assert int(field(page, "token-count")) < 2000
    deletes = [r for r in proxy.requests if r.method == "DELETE"]
    assert len(deletes) == 1 and deletes[0].path.endswith(field(page, "job-id"))
    assert "DELETE answered 202" in field(page, "log")


def test_server_sent_error_event_is_not_a_connection_error(page: Any) -> None:
    """`event: error` reaches the page's "error" listeners; the page must not take it for a dropped connection."""
    with WorkerProcess("mock", "--fail-after", "3") as failing, CuttingProxy(httpx.URL(failing.url).port or 80) as via:
        page.goto(via.url + "/playground")
        submit_in_page(page, "fail soon", 20)
        assert wait_final(page) == "failed"  # an `error` event is a failure (DC-C-7), never "done"
        assert field(page, "outcome").startswith("error: ")
        assert field(page, "reconnects") == "0"
        assert field(page, "token-count") == "3"
        _, events = direct_read(failing.url, field(page, "sse-url"))
        assert events[-2:] == ["error", "message"]  # error, then [DONE]
        assert len(via.stream_requests()) == 1


# -- cross-origin: a page on another loopback port ---------------------------------------------------------


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
def other_origin() -> Iterator[str]:
    """The same playground file, served by a plain HTTP server on another port: another origin."""
    server = _PageServer(("127.0.0.1", 0), _PageHandler)
    server.page = (STATIC_DIR / "playground.html").read_bytes()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.mark.parametrize(
    ("cors_args", "allowed"),
    [
        pytest.param((), False, id="cors-off"),
        pytest.param(("--cors-origin", "http://localhost:9"), False, id="other-origin-allowed"),
        pytest.param(("--cors-origin", "{page_origin}"), True, id="page-origin-allowed"),
    ],
)
def test_cross_origin_page_needs_cors(page: Any, other_origin: str, cors_args: tuple[str, ...], allowed: bool) -> None:
    args = [arg.format(page_origin=other_origin) for arg in cors_args]
    with WorkerProcess("mock", *args) as target:
        page.goto(f"{other_origin}/playground.html?worker={target.url}")
        submit_in_page(page, "from another origin", 12)
        state = wait_final(page)
        if allowed:
            assert state == "done", field(page, "state")
            expected, _ = direct_read(target.url, field(page, "sse-url"))
            assert field(page, "output") == expected and expected
            assert jobs_submitted(target.url) == 1
        else:
            assert state == "error", field(page, "state")
            assert "CORS" in field(page, "state")
            assert field(page, "job-id") == ""
            assert jobs_submitted(target.url) == 0  # the preflight failed, so the POST never left the browser
