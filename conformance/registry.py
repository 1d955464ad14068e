"""The check registry: each check is data (id, rule, level, title) plus a small function.

Check modules (`conformance.checks`) register themselves on import (`conformance.checks.load_all`);
`--list`, the docs' catalogue and the pytest plugin are generated from `REGISTRY`, never written
by hand. How a check ends is in `conformance.verdicts`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from conformance.model import CheckSpec, Level
from conformance.verdicts import Passed

if TYPE_CHECKING:
    from conformance.context import Context

CheckFunc = Callable[["Context"], "str | Passed | None"]


@dataclass(frozen=True, slots=True)
class Check:
    spec: CheckSpec
    func: CheckFunc
    #: the level that applies to this target, when it depends on what the worker declares
    level_for: Callable[[Context], Level] | None = None
    #: runs after every other check, because it sweeps the evidence they gathered
    sweep: bool = False
    #: generates requests from the run's seed (its replay command carries ``--seed``)
    seeded: bool = False

    def level(self, ctx: Context) -> Level:
        return self.level_for(ctx) if self.level_for is not None else self.spec.level


REGISTRY: dict[str, Check] = {}

#: every area, in run order (within an area, checks run in the order they are registered)
AREAS: dict[str, str] = {
    "legacy": "Legacy direct-SSE detector",
    "submit": "Submit (POST /v1/inference)",
    "stream": "Stream (GET sse_url)",
    "params": "Generation parameters",
    "job": "Job resource (status, cancel)",
    "lifetime": "Lifetime (TTL, disconnects)",
    "robustness": "Robustness (hostile input)",
    "service": "Service endpoints, errors, auth",
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
    sweep: bool = False,
    seeded: bool = False,
) -> Callable[[CheckFunc], CheckFunc]:
    """Register a check. The function returns a short pass message (or a `Passed`, or None) or raises."""

    def register(func: CheckFunc) -> CheckFunc:
        if check_id in REGISTRY:
            raise ValueError(f"duplicate check id {check_id}")
        if area not in AREAS:
            raise ValueError(f"unknown area {area}")
        REGISTRY[check_id] = Check(
            CheckSpec(
                id=check_id,
                rule=rule,
                level=level,
                title=title,
                area=area,
                description=" ".join((func.__doc__ or "").split()),
            ),
            func,
            level_for,
            sweep,
            seeded,
        )
        return func

    return register
