"""Broken workers for the robustness checks (DC-5.6): hostile bodies, deep JSON.

Registered into the same catalogue as `defects.py` (which imports this module at its end).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import msgspec

from workers.schemas import InferenceRequest

from .asgi import BufferedRewriter, Headers, Middleware, is_submit, rewrite, set_header
from .defects import _wrap_decode, defect


@defect(
    "recursive-json-decoder",
    "the submit route decodes the body with an unguarded recursive decoder: 1000 `[` raise RecursionError -> 500",
    caught_by=("DC-ROB-001", "DC-ROB-002"),
)
def _recursive_json_decoder() -> None:
    def decode(original: Callable[[bytes], InferenceRequest], body: bytes) -> InferenceRequest:
        with contextlib.suppress(msgspec.DecodeError):  # the bug the worker once had: a RecursionError escapes
            msgspec.json.decode(body)
        return original(body)

    _wrap_decode(decode)


@defect(
    "utf8-decode-crash",
    "the submit route decodes the body as UTF-8 text first: an invalid byte raises UnicodeDecodeError -> 500",
    caught_by=("DC-ROB-001",),
)
def _utf8_decode_crash() -> None:
    def decode(original: Callable[[bytes], InferenceRequest], body: bytes) -> InferenceRequest:
        body.decode("utf-8")  # strict: raises on invalid UTF-8 and nothing turns that into a 4xx
        return original(body)

    _wrap_decode(decode)


@defect(
    "deep-json-bare-400",
    "deeply nested JSON is refused with a bare text/plain 400 instead of a problem document",
    caught_by=("DC-ROB-002",),
)
def _deep_json_bare_400() -> Middleware:
    class Bare(BufferedRewriter):
        def rewrite(self, status: int, headers: Headers, body: bytes) -> tuple[int, Headers, bytes]:
            if status == 400 and b"json-too-deep" in body:
                return 400, set_header(headers, "content-type", "text/plain; charset=utf-8"), b"Bad Request"
            return status, headers, body

    return rewrite(is_submit, Bare)
