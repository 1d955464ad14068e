"""Fuzzed requests and responses as report evidence (`Exchange`), and transport errors in a few words.

schemathesis hands over its own request/response objects (or, for the boundary cases, the
records of its CLI); everything here turns them into the suite's `Exchange`, with the bearer
token masked and schemathesis' bookkeeping headers left out.
"""

from __future__ import annotations

import re
from typing import Any, Final

from conformance.fuzz.boundary import BoundaryCase
from conformance.model import EXCERPT_BYTES, Exchange

__all__ = [
    "connection_reason",
    "describe_error",
    "exchange_from_error",
    "exchange_from_record",
    "exchange_from_response",
    "is_connection_failure",
]

_MASKED_TOKEN: Final = "Bearer <redacted>"
_NOISE_HEADERS: Final = frozenset({"x-schemathesis-testcaseid"})
_ERRNO_REASON: Final = re.compile(r"\[Errno -?\d+\] ([^'\")]+)")


def _text(data: object) -> str | None:
    if data is None:
        return None
    # NUL stays a NUL: Exchange.curl() pipes such a body through printf, so the line still runs as printed
    return bytes(data).decode("utf-8", "backslashreplace") if isinstance(data, bytes | bytearray) else str(data)


def _request_headers(headers: object) -> dict[str, str]:
    result: dict[str, str] = {}
    items = headers.items() if isinstance(headers, dict) or hasattr(headers, "items") else []
    for name, value in items:
        key = str(name)
        if key.lower() in _NOISE_HEADERS:
            continue
        result[key] = _MASKED_TOKEN if key.lower() == "authorization" else str(value)
    return result


def _response_headers(headers: object) -> dict[str, str]:
    result: dict[str, str] = {}
    items = headers.items() if hasattr(headers, "items") else []
    for name, value in items:
        result[str(name)] = ", ".join(str(v) for v in value) if isinstance(value, list | tuple) else str(value)
    return result


def _exchange_from_request(request: Any, *, fallback_method: str, fallback_url: str) -> Exchange:
    if request is None:
        return Exchange(method=fallback_method, url=fallback_url)
    return Exchange(
        method=str(getattr(request, "method", None) or fallback_method),
        url=str(getattr(request, "url", None) or fallback_url),
        request_headers=_request_headers(getattr(request, "headers", {})),
        request_body=_text(getattr(request, "body", None)),
    )


def exchange_from_response(response: Any, case: Any, base_url: str) -> Exchange:
    """The evidence of one schemathesis call that got a response."""
    exchange = _exchange_from_request(
        getattr(response, "request", None),
        fallback_method=str(case.method).upper(),
        fallback_url=base_url.rstrip("/") + str(case.formatted_path),
    )
    content = bytes(getattr(response, "content", b"") or b"")
    exchange.status = int(response.status_code)
    exchange.response_headers = _response_headers(getattr(response, "headers", {}))
    exchange.body_excerpt = content[:EXCERPT_BYTES].decode("utf-8", "replace")
    exchange.body_truncated = len(content) > EXCERPT_BYTES
    elapsed = getattr(response, "elapsed", None)
    if isinstance(elapsed, int | float):
        exchange.elapsed_ms = round(float(elapsed) * 1000, 1)
    return exchange


def exchange_from_error(exc: BaseException, case: Any, base_url: str) -> Exchange:
    """The evidence of one schemathesis call that got no response."""
    exchange = _exchange_from_request(
        getattr(exc, "request", None),
        fallback_method=str(case.method).upper(),
        fallback_url=base_url.rstrip("/") + str(case.formatted_path),
    )
    exchange.error = describe_error(exc)
    return exchange


def exchange_from_record(case: BoundaryCase) -> Exchange:
    """The evidence of a boundary case, from the request and response the CLI recorded."""
    request, response = case.request, case.response or {}
    exchange = Exchange(
        method=str(request.get("method") or case.method),
        url=str(request.get("uri") or case.path),
        request_headers=_request_headers(_response_headers(request.get("headers") or {})),
        request_body=_text(request.get("body")),
    )
    if case.response is not None:
        content = bytes(response.get("content") or b"")
        exchange.status = int(response.get("status", 0))
        exchange.response_headers = _response_headers(response.get("headers") or {})
        exchange.body_excerpt = content[:EXCERPT_BYTES].decode("utf-8", "replace")
        exchange.body_truncated = len(content) > EXCERPT_BYTES
        elapsed = response.get("elapsed")
        if isinstance(elapsed, int | float):
            exchange.elapsed_ms = round(float(elapsed) * 1000, 1)
    return exchange


def describe_error(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if len(text) > 300:
        text = text[:297] + "..."
    return f"{type(exc).__name__}: {text}"


def is_connection_failure(exc: BaseException) -> bool:
    """A request that never reached the worker: refused, reset, no route (a read timeout is not one).

    schemathesis sends with ``requests``; its exception classes are told apart by name so that
    the suite does not import the library it never calls itself.
    """
    names = {cls.__name__ for cls in type(exc).__mro__}
    return "ConnectionError" in names and "ReadTimeout" not in names


def connection_reason(exc: BaseException) -> str:
    """The root cause of a connection error in a few words, e.g. ``connection refused``."""
    text = str(exc)
    match = _ERRNO_REASON.search(text)
    if match:
        return match.group(1).strip().rstrip(".").lower()
    if "Name or service not known" in text or "nodename nor servname" in text:
        return "host name not found"
    if "read timed out" in text.lower():
        return "no response within the request timeout"
    if "timed out" in text.lower():
        return "connection timed out"
    return describe_error(exc)
