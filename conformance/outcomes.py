"""How a job ended, judged by DC-2.15: a valid request ends in an ``error`` only for a runtime limit.

Shared by the stream check ``DC-STREAM-014`` and the fuzzing bridge's ``DC-FUZZ-004``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from conformance.contract import runtime_limit_codes, schema_errors
from conformance.sse import SSEEvent

__all__ = ["ErrorOutcome", "invalid_request", "unexpected_error", "unexpected_status_error"]


@dataclass(frozen=True, slots=True)
class ErrorOutcome:
    """An ``error`` a valid request must not end with."""

    #: the event's (or JobStatus') ``code``; ``None`` when it has none
    code: str | None
    #: the event's data, or the JobStatus ``error`` object, as sent
    data: str

    @property
    def label(self) -> str:
        return self.code if self.code is not None else "no code"

    def describe(self) -> str:
        allowed = ", ".join(sorted(runtime_limit_codes()))
        code = f"code {self.code!r}" if self.code is not None else "no readable code"
        return f"error {self.data} ({code}; a valid request may end in an error only with {allowed})"


def _code(payload: Any) -> str | None:
    code = payload.get("code") if isinstance(payload, dict) else None
    return code if isinstance(code, str) else None


def unexpected_error(events: Iterable[SSEEvent]) -> ErrorOutcome | None:
    """The first ``error`` event whose code is not a runtime-limit code (DC-2.15), if any."""
    allowed = runtime_limit_codes()
    for event in events:
        if event.data == "[DONE]":
            break
        if event.event != "error":
            continue
        try:
            code = _code(json.loads(event.data))
        except ValueError:
            code = None
        if code not in allowed:
            return ErrorOutcome(code, event.data)
    return None


def unexpected_status_error(status: Any) -> ErrorOutcome | None:
    """A ``JobStatus`` (parsed JSON) of a failed job whose ``error.code`` is not a runtime-limit code."""
    if not isinstance(status, dict) or status.get("state") != "failed":
        return None
    error = status.get("error")
    code = _code(error)
    if code in runtime_limit_codes():
        return None
    return ErrorOutcome(code, json.dumps(error, ensure_ascii=False))


def invalid_request(body: Any) -> list[str]:
    """Why ``body`` (parsed JSON) is not a valid ``InferenceRequest``; empty when it is valid (DC-1.1)."""
    return schema_errors("InferenceRequest", body)
