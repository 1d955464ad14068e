"""What a person opens in a browser: the index, the playground, the API reference, and CORS.

Every page and asset ships with the package (``workers/static/``) and is read once, when the app is
created; nothing here loads from the internet unless ``--docs-cdn`` asks for the pinned CDN copy.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from litestar import Request, Response, get
from litestar.config.cors import CORSConfig

import openapi

STATIC_DIR: Final = Path(__file__).parent / "static"
REDOC_VERSION: Final = "2.5.4"
REDOC_FILE: Final = f"redoc-{REDOC_VERSION}.standalone.js"
#: digest of the vendored file; the CDN serves the npm package's bytes unchanged, so it is also the SRI
REDOC_SRI: Final = "sha384-w447zOpYfw/1Tv/5AK9NfHTlQIqE3RVR6KY62jCyy9zNDgO64cMwGGP1Fj0zJVf5"
REDOC_CDN_URL: Final = f"https://cdn.jsdelivr.net/npm/redoc@{REDOC_VERSION}/bundles/redoc.standalone.js"
DOCS_ASSET_PATH: Final = f"/docs/assets/{REDOC_FILE}"

#: what a browser page on an allowed origin needs to submit, stream, resume and cancel
CORS_METHODS: Final = ("GET", "POST", "DELETE")
CORS_REQUEST_HEADERS: Final = ("Content-Type", "Authorization", "Last-Event-ID")
CORS_EXPOSED_HEADERS: Final = ("Location", "Dualcall-Contract-Version", "Retry-After")


def cors_config(origins: tuple[str, ...]) -> CORSConfig | None:
    """CORS is off (no Access-Control-* header at all) unless origins are configured."""
    if not origins:
        return None
    return CORSConfig(
        allow_origins=list(origins),
        allow_methods=list(CORS_METHODS),  # type: ignore[arg-type]
        allow_headers=list(CORS_REQUEST_HEADERS),
        expose_headers=list(CORS_EXPOSED_HEADERS),
        allow_credentials=False,
    )


@dataclass(frozen=True, slots=True)
class StaticPages:
    index: str
    playground: str
    docs: str
    redoc: bytes


def load_pages(*, docs_cdn: bool) -> StaticPages:
    """Read and fill the pages once, at app creation: no file I/O on the event loop."""
    version = html.escape(openapi.contract_version())
    if docs_cdn:
        script = f'<script src="{REDOC_CDN_URL}" integrity="{REDOC_SRI}" crossorigin="anonymous"></script>'
        script_src = f"'self' {REDOC_CDN_URL}"
    else:
        script = f'<script src="{DOCS_ASSET_PATH}"></script>'
        script_src = "'self'"
    return StaticPages(
        index=(STATIC_DIR / "index.html").read_text(encoding="utf-8").replace("{{version}}", version),
        playground=(STATIC_DIR / "playground.html").read_text(encoding="utf-8").replace("{{version}}", version),
        docs=_DOCS_PAGE.format(version=version, script=script, csp=_DOCS_CSP.format(script_src=script_src)),
        redoc=(STATIC_DIR / REDOC_FILE).read_bytes(),
    )


#: Redoc's sidebar shows an attribution image from its vendor's CDN, with no option to turn it off;
#: the policy keeps that (and anything else) from leaving the worker, and the image just does not show
_DOCS_CSP: Final = (
    "default-src 'none'; script-src {script_src}; worker-src blob:; style-src 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'"
)

_DOCS_PAGE: Final = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>dualcall worker API &mdash; contract {version}</title>
<style>body{{margin:0;font-family:system-ui,sans-serif}} nav{{padding:.5rem 1rem;border-bottom:1px solid #ddd}}</style>
</head>
<body>
<nav><strong>dualcall worker &mdash; contract {version}</strong> &middot;
<a href="/">home</a> &middot; <a href="/playground">playground</a> &middot;
<a href="/openapi.json">/openapi.json</a> &middot; <a href="/openapi.yaml">/openapi.yaml</a> &middot;
<a href="/health">/health</a></nav>
<redoc spec-url="/openapi.json"></redoc>
<noscript>The API reference needs JavaScript; the contract itself is at /openapi.yaml.</noscript>
{script}
</body></html>
"""


def _pages(request: Request[Any, Any, Any]) -> StaticPages:
    pages: StaticPages = request.app.state.pages
    return pages


@get("/", media_type="text/html", include_in_schema=False)
async def index(request: Request[Any, Any, Any]) -> str:
    return _pages(request).index


@get("/playground", media_type="text/html", include_in_schema=False)
async def playground(request: Request[Any, Any, Any]) -> str:
    return _pages(request).playground


@get("/docs", media_type="text/html", include_in_schema=False)
async def docs(request: Request[Any, Any, Any]) -> str:
    return _pages(request).docs


@get(DOCS_ASSET_PATH, media_type="text/javascript; charset=utf-8", include_in_schema=False)
async def docs_asset(request: Request[Any, Any, Any]) -> Response[bytes]:
    # the file name carries the version, so browsers may keep it
    return Response(_pages(request).redoc, headers={"Cache-Control": "public, max-age=31536000, immutable"})


ROUTES: Final = (index, playground, docs, docs_asset)
