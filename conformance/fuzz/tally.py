"""What one fuzz check saw (requests, operations, distinct findings) and the verdict it comes to."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, Literal

from conformance.model import Exchange

__all__ = ["TRANSPORT", "Finding", "FuzzVerdict", "Note", "Tally"]

#: exchanges kept per verdict (one per distinct finding)
MAX_EXCHANGES: Final = 5
#: detail lines kept per verdict
MAX_DETAILS: Final = 20
#: the pseudo-check name of a request that got no response
TRANSPORT: Final = "transport_error"


@dataclass(frozen=True, slots=True)
class Note:
    """A finding of the bridge itself, shaped like a schemathesis ``Failure``."""

    title: str
    message: str


@dataclass(slots=True)
class Finding:
    check: str
    operation: str
    status: int | None
    title: str
    message: str
    exchange: Exchange
    count: int = 1

    def line(self, index: int) -> str:
        status = "no response" if self.status is None else str(self.status)
        text = " ".join(self.message.split())
        if len(text) > 400:
            text = text[:397] + "..."
        times = f" ({self.count}x)" if self.count > 1 else ""
        evidence = f" (exchange {index} in the report)" if index <= MAX_EXCHANGES else ""
        return (
            f"{self.check}: {self.operation} -> {status}{times}: {self.title}"
            + (f" — {text}" if text else "")
            + evidence
        )


@dataclass(slots=True)
class FuzzVerdict:
    """How one fuzz check came out (the check in `conformance.checks.fuzzing` reports it)."""

    id: str
    outcome: Literal["passed", "failed", "unverified", "error"]
    message: str
    exchanges: list[Exchange] = field(default_factory=list)
    details: list[str] = field(default_factory=list)
    how_to_verify: str = ""
    seconds: float = 0.0
    #: for an ``error``: the traceback of what broke inside the suite
    traceback: str = ""


@dataclass(slots=True)
class Tally:
    """What one check id saw: request counts and distinct findings."""

    requests: int = 0
    operations: set[str] = field(default_factory=set)
    findings: dict[tuple[str, str, int | None], Finding] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: why the run stopped for a reason about the target (unreachable, no response to requests in a row)
    aborted: str | None = None
    #: what broke inside the suite (schemathesis, hypothesis, the interpreter): never the target's fault
    suite_error: str | None = None
    suite_trace: str = ""
    #: why nothing the check judges was observed (its verdict is unverified, whatever else happened)
    unobserved: str | None = None
    seconds: float = 0.0
    scenarios: int = 0

    def add(self, finding: Finding) -> None:
        key = (finding.check, finding.operation, finding.status)
        seen = self.findings.get(key)
        if seen is None:
            self.findings[key] = finding
        else:
            seen.count += 1

    def broke(self, reason: str, trace: str) -> None:
        """Something inside the suite broke while this check was being fed (the first reason is kept)."""
        if self.suite_error is None:
            self.suite_error, self.suite_trace = reason, trace

    def verdict(self, check_id: str, clean_message: str) -> FuzzVerdict:
        """Failed on a finding or an aborted run; an error where the suite broke before it saw one;
        passed with ``clean_message`` otherwise."""
        findings = list(self.findings.values())
        details = [finding.line(index) for index, finding in enumerate(findings[:MAX_DETAILS], start=1)]
        if len(findings) > MAX_DETAILS:
            details.append(f"... and {len(findings) - MAX_DETAILS} more distinct findings")
        details.extend(self.notes)
        exchanges = [finding.exchange for finding in findings[:MAX_EXCHANGES]]
        if self.unobserved is not None:
            return FuzzVerdict(
                check_id,
                "unverified",
                self.unobserved,
                details=details,
                how_to_verify="a worker that serves POST /v1/inference and the job routes",
                seconds=self.seconds,
            )
        if self.suite_error is not None:
            if self.aborted is None and not findings:
                return FuzzVerdict(
                    check_id, "error", self.suite_error, [], details, seconds=self.seconds, traceback=self.suite_trace
                )
            details.append(f"the suite broke while fuzzing, not the worker: {self.suite_error}")
        if self.aborted is not None:
            message = self.aborted
            if any(finding.check != TRANSPORT for finding in findings):
                message += f"; {len(findings)} distinct finding(s) before that"
            return FuzzVerdict(check_id, "failed", message, exchanges, details, seconds=self.seconds)
        if findings:
            checks = sorted({finding.check for finding in findings})
            occurrences = sum(finding.count for finding in findings)
            message = (
                f"{len(findings)} distinct finding(s) ({occurrences} occurrences) in {self.requests} fuzzed "
                f"requests: {', '.join(checks)}"
            )
            return FuzzVerdict(check_id, "failed", message, exchanges, details, seconds=self.seconds)
        return FuzzVerdict(check_id, "passed", clean_message, [], details, seconds=self.seconds)
