"""The one result model; console, JSON, JUnit, HTML and pytest items are views of it."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import Literal

Level = Literal["MUST", "SHOULD", "MAY"]
#: "unverified": the check could not observe the behaviour (never a failure; says why and what would verify it);
#: "error": the suite itself broke (a bug in a check, or its own broken installation): says nothing about the worker
Outcome = Literal["passed", "failed", "warning", "unverified", "error"]
Threshold = Literal["must", "should"]

#: bytes of a response body kept as evidence
EXCERPT_BYTES = 1200


@dataclass(slots=True)
class Exchange:
    """One HTTP request and what came back, trimmed for a report."""

    method: str
    url: str
    request_headers: dict[str, str] = field(default_factory=dict)
    request_body: str | None = None
    status: int | None = None
    response_headers: dict[str, str] = field(default_factory=dict)
    body_excerpt: str = ""
    body_truncated: bool = False
    elapsed_ms: float | None = None
    error: str | None = None

    def curl(self) -> str:
        """A shell command that repeats the request as printed.

        The bearer token comes from ``$DUALCALL_TOKEN`` (double-quoted, so the shell expands it); a
        body with bytes an argument cannot carry (NUL) is piped in through ``printf``.
        """
        parts = ["curl", "-sS", "-i", "-N"] if self.method == "GET" else ["curl", "-sS", "-i", "-X", self.method]
        words = [shlex.quote(part) for part in parts]
        for name, value in self.request_headers.items():
            if name.lower() in {"host", "content-length", "accept-encoding", "connection", "user-agent"}:
                continue
            if name.lower() == "authorization":
                words += ["-H", f'"{name}: Bearer $DUALCALL_TOKEN"']
            else:
                words += ["-H", shlex.quote(f"{name}: {value}")]
        pipe = ""
        if self.request_body is not None:
            if "\x00" in self.request_body:
                escaped = self.request_body.replace("\\", "\\\\").replace("\x00", "\\0000")
                pipe = f"printf %b {shlex.quote(escaped)} | "
                words += ["--data-binary", "@-"]
            else:
                words += ["--data-binary", shlex.quote(self.request_body)]
        words.append(shlex.quote(self.url))
        return pipe + " ".join(words)

    def to_dict(self) -> dict[str, object]:
        return {
            "request": {
                "method": self.method,
                "url": self.url,
                "headers": self.request_headers,
                "body": self.request_body,
            },
            "response": None
            if self.status is None
            else {
                "status": self.status,
                "headers": self.response_headers,
                "body_excerpt": self.body_excerpt,
                "body_truncated": self.body_truncated,
                "elapsed_ms": self.elapsed_ms,
            },
            "error": self.error,
            "curl": self.curl(),
        }


@dataclass(frozen=True, slots=True)
class CheckSpec:
    """Registry entry: the data part of a check."""

    id: str
    rule: str
    level: Level
    title: str
    area: str
    description: str = ""


@dataclass(slots=True)
class CheckResult:
    id: str
    rule: str
    level: Level
    title: str
    outcome: Outcome
    message: str
    exchanges: list[Exchange] = field(default_factory=list)
    details: list[str] = field(default_factory=list)
    duration_s: float = 0.0
    #: for an unverified check: what would let the suite observe the behaviour
    how_to_verify: str = ""
    #: a command that runs this check again (set by whoever ran it)
    replay: str = ""
    #: for an ``error``: the suite's traceback (for its bug report)
    traceback: str = ""
    #: the failure was a matter of timing (a stall, a deadline): the run's load may have been part of it
    depends_on_load: bool = False

    @property
    def evidence(self) -> dict[str, object]:
        return {"details": self.details, "exchanges": [exchange.to_dict() for exchange in self.exchanges]}

    def to_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "rule": self.rule,
            "level": self.level,
            "title": self.title,
            "outcome": self.outcome,
            "message": self.message,
            "how_to_verify": self.how_to_verify,
            "replay": self.replay,
            "duration_s": round(self.duration_s, 3),
            "evidence": self.evidence,
            "traceback": self.traceback,
            "depends_on_load": self.depends_on_load,
        }


@dataclass(slots=True)
class Diagnosis:
    """A named, human diagnosis of a whole worker (e.g. the legacy direct-SSE shape)."""

    name: str
    summary: str
    observations: list[str]
    fixes: list[str]
    #: the diagnosis is what the target is (legacy, not a worker): it explains every failure of the run
    explains_failures: bool = True

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "summary": self.summary, "observations": self.observations, "fixes": self.fixes}


@dataclass(slots=True)
class Summary:
    passed: int = 0
    failed: int = 0
    warnings: int = 0
    unverified: int = 0
    #: checks the suite itself could not run (its own bug or broken installation)
    errors: int = 0
    #: the MUST checks that could not be verified (each with its reason and what would verify it)
    unverified_must: list[CheckResult] = field(default_factory=list)

    @property
    def unverified_must_rules(self) -> list[str]:
        """Distinct rule ids of the unverified MUST checks, in check order."""
        return list(dict.fromkeys(result.rule for result in self.unverified_must))

    def to_dict(self) -> dict[str, object]:
        return {
            "passed": self.passed,
            "failed": self.failed,
            "warnings": self.warnings,
            "unverified": self.unverified,
            "errors": self.errors,
            "unverified_must_rules": self.unverified_must_rules,
            "unverified_must": [
                {"id": r.id, "rule": r.rule, "reason": r.message, "how_to_verify": r.how_to_verify}
                for r in self.unverified_must
            ],
        }


@dataclass(slots=True)
class Report:
    target: str
    contract_version: str
    threshold: Threshold
    started_at: str
    duration_s: float = 0.0
    results: list[CheckResult] = field(default_factory=list)
    diagnoses: list[Diagnosis] = field(default_factory=list)
    worker: dict[str, object] = field(default_factory=dict)
    suite_version: str = ""
    #: ``--require-all``: an unverified MUST check fails the run
    require_all: bool = False
    #: the fuzz seed of this run (``--seed`` replays it); None when nothing was fuzzed
    seed: int | None = None
    #: what the suite recognised at the target before the checks ("dual-call worker", ...)
    target_kind: str = ""
    #: the target is not a dual-call worker at all: the checks were not run (unverified) and the run fails
    target_unsupported: bool = False

    @property
    def summary(self) -> Summary:
        summary = Summary()
        for result in self.results:
            if result.outcome == "passed":
                summary.passed += 1
            elif result.outcome == "failed":
                summary.failed += 1
            elif result.outcome == "warning":
                summary.warnings += 1
            elif result.outcome == "error":
                summary.errors += 1
            else:
                summary.unverified += 1
                if result.level == "MUST":
                    summary.unverified_must.append(result)
        return summary

    @property
    def suite_error(self) -> bool:
        """The suite itself broke on at least one check: the run's verdict cannot be trusted."""
        return any(result.outcome == "error" for result in self.results)

    @property
    def ok(self) -> bool:
        """A dual-call worker, no check failed or broke, and with ``require_all`` no MUST check went unverified."""
        if self.target_unsupported or any(result.outcome in ("failed", "error") for result in self.results):
            return False
        return not (self.require_all and self.summary.unverified_must)

    def to_dict(self) -> dict[str, object]:
        return {
            "schema_version": 2,
            "target": self.target,
            "target_kind": self.target_kind,
            "target_unsupported": self.target_unsupported,
            "contract_version": self.contract_version,
            "suite_version": self.suite_version,
            "threshold": self.threshold,
            "require_all": self.require_all,
            "seed": self.seed,
            "started_at": self.started_at,
            "duration_s": round(self.duration_s, 3),
            "ok": self.ok,
            "summary": self.summary.to_dict(),
            "worker": self.worker,
            "diagnoses": [diagnosis.to_dict() for diagnosis in self.diagnoses],
            "checks": [result.to_dict() for result in self.results],
        }
