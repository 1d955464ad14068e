"""How a check ends: it returns a pass (with what it observed) or raises one of these.

Kept apart from the registry so that the checks' helpers (`conformance.context`) and the checks
themselves import them without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from conformance.model import Exchange

__all__ = ["CheckFailed", "CheckUnverified", "Passed", "SuiteBroke"]


class CheckFailed(Exception):
    """The worker broke the rule. ``details`` are extra lines of evidence.

    ``exchanges``, when given, are the exchanges that show the broken rule (instead of the
    last ones the check made). ``timing``: the failure was a matter of time (a stall, a deadline),
    so the conditions of the whole run (its load) may be part of it; the replay says so.
    """

    def __init__(
        self, message: str, *details: str, exchanges: list[Exchange] | None = None, timing: bool = False
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = list(details)
        self.exchanges = exchanges
        self.timing = timing


class CheckUnverified(Exception):
    """The check could not observe the behaviour it tests: never a failure.

    ``reason`` says what was missing; ``how_to_verify`` what would let the suite observe it
    (a worker setting, a suite option), shown wherever unverified MUST rules are listed.
    """

    def __init__(self, reason: str, how_to_verify: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.how_to_verify = how_to_verify


class SuiteBroke(Exception):
    """Something inside the suite broke (a library it drives, the interpreter) before the check saw
    evidence either way: the check's outcome is ``error``, never a failure of the worker.

    ``trace`` is the traceback of what broke, for the JSON report.
    """

    def __init__(self, message: str, *details: str, trace: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.details = list(details)
        self.trace = trace


@dataclass(frozen=True, slots=True)
class Passed:
    """A pass with more to say than its message: ``details`` are lines of what was observed."""

    message: str
    details: list[str] = field(default_factory=list)
