"""/docs renders the API reference in real Chromium with no request leaving the loopback worker."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from workerproc import WorkerProcess

from workers.web import DOCS_ASSET_PATH

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def docs_worker() -> Iterator[WorkerProcess]:
    with WorkerProcess("mock") as worker:
        yield worker


def test_docs_render_offline(page: Any, docs_worker: WorkerProcess) -> None:
    worker_host = urlsplit(docs_worker.url).netloc
    reached_network: list[str] = []  # what got past the page (its CSP) to the network layer
    blocked_by_policy: list[str] = []

    def on_route(route: Any) -> None:
        reached_network.append(route.request.url)
        if urlsplit(route.request.url).netloc == worker_host:
            route.continue_()
        else:
            route.abort()  # never let a test reach the internet, even if the page tried

    page.route("**/*", on_route)
    page.on("requestfailed", lambda req: blocked_by_policy.append(req.url) if req.failure == "csp" else None)
    page.goto(docs_worker.url + "/docs")
    # Redoc has rendered the contract's operations, so the renderer ran and read /openapi.json
    page.locator("h2", has_text="Submit a generation job (first call of the dual call).").first.wait_for()
    page.locator("h2", has_text="Cancel and forget a job.").first.wait_for()
    assert docs_worker.url + DOCS_ASSET_PATH in reached_network
    assert docs_worker.url + "/openapi.json" in reached_network
    elsewhere = [url for url in reached_network if urlsplit(url).netloc != worker_host]
    assert not elsewhere, f"/docs reached beyond the worker: {elsewhere}"
    # Redoc's sidebar attribution image is the one outside resource the page asks for; its CSP stops it
    assert all(urlsplit(url).netloc != worker_host for url in blocked_by_policy), blocked_by_policy


def test_index_links_to_playground(page: Any, docs_worker: WorkerProcess) -> None:
    page.goto(docs_worker.url + "/")
    page.click("text=Playground")
    page.wait_for_url(docs_worker.url + "/playground")
    assert page.title() == "dualcall playground"
