"""RFC 9457 problem+json for every error the worker answers.

Litestar's own exceptions (404 route, 405, 413 body too large, validation) and ours all go
through `problem_response`; anything unexpected becomes a 500 whose body names no internals.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any, Final

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException

log = logging.getLogger("workers.problems")

MEDIA_TYPE: Final = "application/problem+json"
TYPE_PREFIX: Final = "urn:dualcall:problem:"


class FieldError(msgspec.Struct):
    field: str
    message: str


class Problem(msgspec.Struct, omit_defaults=True):
    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None
    errors: list[FieldError] | None = None


class ProblemException(HTTPException):
    """Raise from a handler to answer with a specific problem type."""

    def __init__(
        self,
        status: int,
        slug: str,
        detail: str,
        *,
        headers: dict[str, str] | None = None,
        errors: list[FieldError] | None = None,
    ) -> None:
        super().__init__(detail=detail, status_code=status, headers=headers)
        self.slug = slug
        self.errors = errors


def _slug(status: int) -> str:
    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "-")
    except ValueError:
        return "error"


def problem_response(
    status: int,
    detail: str,
    *,
    slug: str | None = None,
    instance: str | None = None,
    headers: dict[str, str] | None = None,
    errors: list[FieldError] | None = None,
) -> Response[Problem]:
    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = "Error"
    body = Problem(
        type=TYPE_PREFIX + (slug or _slug(status)),
        title=title,
        status=status,
        detail=detail,
        instance=instance,
        errors=errors,
    )
    return Response(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


def handle_http_exception(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Problem]:
    status = exc.status_code
    detail = exc.detail if exc.detail and exc.detail != HTTPStatus(status).phrase else _default_detail(status, request)
    return problem_response(
        status,
        detail,
        slug=getattr(exc, "slug", None),
        instance=request.url.path,
        headers=dict(exc.headers or {}),
        errors=getattr(exc, "errors", None),
    )


def handle_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[Problem]:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem_response(500, "The worker hit an internal error; details are in its log.", instance=request.url.path)


def _default_detail(status: int, request: Request[Any, Any, Any]) -> str:
    if status == 404:
        return f"No resource at {request.url.path}."
    if status == 405:
        return f"{request.method} is not supported on {request.url.path}."
    if status == 413:
        return "The request body is larger than this worker accepts."
    return HTTPStatus(status).description or HTTPStatus(status).phrase
