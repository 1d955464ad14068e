"""Shared assertions about RFC 9457 problem responses (DC-5.3)."""

from __future__ import annotations

import re
from typing import Any

import httpx

from conformance.verdicts import CheckFailed

PROBLEM_MEDIA_TYPE = "application/problem+json"
REQUIRED_MEMBERS = ("type", "title", "status", "detail")
TRACEBACK = re.compile(r"Traceback \(most recent call last\)|File \"[^\"]+\", line \d+|\bat [\w.$]+\([\w]+\.java:\d+\)")


def problem_defects(status: int, headers: httpx.Headers | dict[str, str], body_text: str) -> list[str]:
    """What is wrong with an error response as a problem+json document (empty when fine)."""
    defects: list[str] = []
    if TRACEBACK.search(body_text):
        defects.append("the body carries a traceback / stack frames")
    content_type = (headers.get("content-type") or "").split(";")[0].strip().lower()
    if content_type != PROBLEM_MEDIA_TYPE:
        defects.append(f"Content-Type is {content_type or 'missing'!r}, not {PROBLEM_MEDIA_TYPE}")
        return defects
    try:
        import json

        body: Any = json.loads(body_text)
    except ValueError:
        defects.append("the body is not JSON")
        return defects
    if not isinstance(body, dict):
        defects.append("the body is not a JSON object")
        return defects
    missing = [member for member in REQUIRED_MEMBERS if member not in body]
    if missing:
        defects.append(f"members missing: {', '.join(missing)}")
    if "status" in body and body["status"] != status:
        defects.append(f"member status is {body['status']!r} but the HTTP status is {status}")
    return defects


def expect_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    """Assert ``response`` is a problem+json answer with ``status``; return its body."""
    if response.status_code != status:
        raise CheckFailed(
            f"answered {response.status_code} instead of {status}",
            f"body: {response.text[:300]!r}",
        )
    defects = problem_defects(response.status_code, response.headers, response.text)
    if defects:
        raise CheckFailed(f"{status} is not a proper problem+json: {'; '.join(defects)}")
    body: dict[str, Any] = response.json()
    return body
