"""/, /playground and /docs are served by the worker itself: no URL outside it unless --docs-cdn."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterator

import httpx
import pytest
from workerproc import WorkerProcess

from workers.web import DOCS_ASSET_PATH, REDOC_CDN_URL, REDOC_FILE, REDOC_SRI, REDOC_VERSION, STATIC_DIR

pytestmark = pytest.mark.slow

_URL_ATTRIBUTE = re.compile(r"""\b(?:src|href|spec-url|action)\s*=\s*["']([^"']*)["']""", re.IGNORECASE)


def referenced_urls(page: str) -> list[str]:
    return _URL_ATTRIBUTE.findall(page)


def external(urls: list[str]) -> list[str]:
    return [url for url in urls if re.match(r"^(?:[a-z][a-z0-9+.-]*:)?//", url, re.IGNORECASE)]


@pytest.fixture(scope="module")
def cdn_worker() -> Iterator[WorkerProcess]:
    with WorkerProcess("mock", "--docs-cdn") as worker:
        yield worker


def test_vendored_renderer_matches_its_pinned_digest() -> None:
    data = (STATIC_DIR / REDOC_FILE).read_bytes()
    digest = "sha384-" + base64.b64encode(hashlib.sha384(data).digest()).decode()
    assert digest == REDOC_SRI
    notes = (STATIC_DIR / "README.md").read_text(encoding="utf-8")
    assert REDOC_SRI in notes and f"redoc@{REDOC_VERSION}" in notes
    assert "MIT" in (STATIC_DIR / f"redoc-{REDOC_VERSION}.LICENSE").read_text(encoding="utf-8")


@pytest.mark.parametrize("path", ["/", "/playground", "/docs"])
def test_pages_reference_nothing_outside_the_worker(mock_worker: WorkerProcess, path: str) -> None:
    page = httpx.get(mock_worker.url + path, timeout=10)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    urls = referenced_urls(page.text)
    assert urls, "the page links nothing"
    assert not external(urls), external(urls)
    assert "{{" not in page.text and "{version}" not in page.text


def test_docs_load_the_local_renderer(mock_worker: WorkerProcess) -> None:
    page = httpx.get(mock_worker.url + "/docs", timeout=10).text
    assert f'<script src="{DOCS_ASSET_PATH}">' in page
    assert 'spec-url="/openapi.json"' in page
    asset = httpx.get(mock_worker.url + DOCS_ASSET_PATH, timeout=10)
    assert asset.status_code == 200
    assert asset.headers["content-type"].startswith("text/javascript")
    assert asset.content == (STATIC_DIR / REDOC_FILE).read_bytes()
    assert "immutable" in asset.headers["cache-control"]


def test_docs_cdn_option_pins_version_and_integrity(cdn_worker: WorkerProcess) -> None:
    page = httpx.get(cdn_worker.url + "/docs", timeout=10).text
    assert external(referenced_urls(page)) == [REDOC_CDN_URL]
    assert f"@{REDOC_VERSION}/" in REDOC_CDN_URL
    tag = re.search(r"<script [^>]*>", page[page.index(REDOC_CDN_URL) - 20 :])
    assert tag is not None
    assert f'integrity="{REDOC_SRI}"' in tag.group(0) and 'crossorigin="anonymous"' in tag.group(0)
    # the page's policy allows exactly that script from outside
    assert f"script-src 'self' {REDOC_CDN_URL};" in page


def test_index_links_the_playground_and_docs(mock_worker: WorkerProcess) -> None:
    urls = referenced_urls(httpx.get(mock_worker.url + "/", timeout=10).text)
    assert {"/playground", "/docs", "/openapi.json", "/health"} <= set(urls)
