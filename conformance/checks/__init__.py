"""The check registry: each check is data (id, rule, level, title) plus a small function.

Check modules register themselves on import (`load_all`); `--list`, the docs' catalogue and
the pytest plugin are generated from `REGISTRY`, never written by hand.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from conformance.model import CheckSpec, Level

if TYPE_CHECKING:
    from conformance.context import Context

CheckFunc = Callable[["Context"], "str | None"]


class CheckFailed(Exception):
    """The worker broke the rule. ``details`` are extra lines of evidence."""

    def __init__(self, message: str, *details: str) -> None:
        super().__init__(message)
        self.message = message
        self.details = list(details)


class CheckUnverified(Exception):
    """The check could not observe the behaviour it tests: never a failure.

    ``reason`` says what was missing; ``how_to_verify`` what would let the suite observe it
    (a worker setting, a suite option), shown wherever unverified MUST rules are listed.
    """

    def __init__(self, reason: str, how_to_verify: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.how_to_verify = how_to_verify


@dataclass(frozen=True, slots=True)
class Check:
    spec: CheckSpec
    func: CheckFunc
    #: the level that applies to this target, when it depends on what the worker declares
    level_for: Callable[[Context], Level] | None = None

    def level(self, ctx: Context) -> Level:
        return self.level_for(ctx) if self.level_for is not None else self.spec.level


REGISTRY: dict[str, Check] = {}

AREAS: dict[str, str] = {
    "legacy": "Legacy direct-SSE detector",
    "submit": "Submit (POST /v1/inference)",
    "stream": "Stream (GET sse_url)",
    "params": "Generation parameters",
    "job": "Job resource (status, cancel)",
    "lifetime": "Lifetime (TTL, disconnects)",
    "service": "Service endpoints, errors, auth",
    "robustness": "Robustness (hostile input)",
    "fuzz": "Fuzzing from the OpenAPI document",
}


def check(
    check_id: str,
    *,
    rule: str,
    level: Level,
    title: str,
    area: str,
    level_for: Callable[[Context], Level] | None = None,
) -> Callable[[CheckFunc], CheckFunc]:
    """Register a check. The function returns a short pass message (or None) or raises."""

    def register(func: CheckFunc) -> CheckFunc:
        if check_id in REGISTRY:
            raise ValueError(f"duplicate check id {check_id}")
        if area not in AREAS:
            raise ValueError(f"unknown area {area}")
        REGISTRY[check_id] = Check(
            CheckSpec(
                id=check_id, rule=rule, level=level, title=title, area=area, description=(func.__doc__ or "").strip()
            ),
            func,
            level_for,
        )
        return func

    return register


def load_all() -> dict[str, Check]:
    """Import every check module (registration happens on import) and return the registry."""
    from conformance.checks import (  # noqa: F401
        idempotency,
        jobs,
        legacy,
        lifetime,
        outcomes,
        params,
        robustness,
        service,
        stream,
        submit,
    )

    return REGISTRY
