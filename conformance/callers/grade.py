"""Fold the findings of all scenario runs into the suite's result model: one CheckResult per rule.

A rule fails (a SHOULD rule warns, unless the threshold is ``should``) on evidence from any run;
passes only when a run of a scenario built for it showed it kept (a pass seen elsewhere is kept
in the details but proves nothing about the hard case); is reported as not verified otherwise.
Every broken rule also gets a diagnosis, in the style of the legacy worker's: what was seen, in
which scenario, and what to change.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from datetime import UTC, datetime

from conformance import __version__
from conformance.callers.record import Hit, ScenarioRun
from conformance.callers.rules import RULES, CallerRule, Finding
from conformance.contract import contract_version
from conformance.model import CheckResult, Diagnosis, Exchange, Outcome, Report, Threshold

#: the outcome of a rule no run could observe: never a failure
NOT_OBSERVED: Outcome = "unverified"
#: exchanges kept as evidence per check
MAX_EXCHANGES = 6
#: requests logged per scenario in the report's ``worker`` section
MAX_LOGGED_REQUESTS = 40


def request_line(hit: Hit) -> str:
    """One line of the request log: time, request, answer, and what the stream delivered."""
    line = f"{hit.at:7.3f}s {hit.listener} {hit.method} {hit.url} -> {hit.status} ({hit.kind})"
    if hit.last_event_id is not None:
        line += f" Last-Event-ID: {hit.last_event_id}"
    if hit.delivered:
        line += f"; events {hit.delivered[0]}..{hit.delivered[-1]} sent"
    if hit.cut:
        line += f"; cut {hit.cut_where}"
    if hit.done_at is not None:
        line += f"; [DONE] at {hit.done_at:.3f}s"
    if hit.disconnected_at is not None:
        line += f"; caller disconnected at {hit.disconnected_at:.3f}s"
    return line


def exchange(hit: Hit) -> Exchange:
    return Exchange(
        method=hit.method,
        url=hit.url,
        request_headers=dict(hit.headers),
        request_body=hit.body,
        status=hit.status,
        response_headers=dict(hit.response_headers),
        body_excerpt=hit.response_excerpt,
        elapsed_ms=None if hit.answered_at is None else round((hit.answered_at - hit.at) * 1000, 1),
        error=f"connection cut by the adversarial worker {hit.cut_where}" if hit.cut else None,
    )


def _built_for(rule: CallerRule, scenario: str) -> bool:
    return not rule.scenarios or scenario in rule.scenarios


def grade_rule(rule: CallerRule, runs: Sequence[ScenarioRun], threshold: Threshold) -> CheckResult:
    findings: list[Finding] = [finding for run in runs for finding in rule.grade(run)]
    failed = [finding for finding in findings if finding.verdict == "fail"]
    own = [finding for finding in findings if _built_for(rule, finding.scenario)]
    passed = [finding for finding in own if finding.verdict == "pass"]
    unverified = [finding for finding in own if finding.verdict == "unverified"]
    details = [f"[{finding.scenario}] {finding.verdict.upper()}: {finding.message}" for finding in findings]
    result = CheckResult(
        id=rule.check_id, rule=rule.rule, level=rule.level, title=rule.title, outcome="passed", message=""
    )
    result.details = details
    if failed:
        result.outcome = "failed" if rule.level == "MUST" or threshold == "should" else "warning"
        first = failed[0]
        more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        result.message = f"[{first.scenario}] {first.message}{more}"
        hits = [hit for finding in failed for hit in finding.hits]
        result.exchanges = [exchange(hit) for hit in hits[:MAX_EXCHANGES]]
    elif passed:
        scenarios = sorted({finding.scenario for finding in passed})
        result.message = f"[{passed[0].scenario}] {passed[0].message}" + (
            f" (kept in {len(scenarios)} scenarios)" if len(scenarios) > 1 else ""
        )
    else:
        result.outcome = NOT_OBSERVED
        tested = ", ".join(rule.scenarios) or "every scenario"
        if hasattr(result, "how_to_verify"):  # the newer model says what would verify it
            setattr(  # noqa: B010  (the older model has no such field)
                result,
                "how_to_verify",
                f"run the scenarios {tested} with a caller whose result is known (--caller, or the "
                "dualcall_caller fixture's check()/grade())",
            )
        if unverified:
            reason = f"[{unverified[0].scenario}] {unverified[0].message}"
        elif any(_built_for(rule, run.scenario.name) for run in runs):
            reason = f"no run of {tested} showed it"
        else:
            reason = f"scenarios run: none of {tested}"
        result.message = f"not verified: {reason}"
    return result


def diagnose(rule: CallerRule, result: CheckResult, findings: Sequence[Finding]) -> Diagnosis:
    return Diagnosis(
        name=f"caller breaks {rule.rule}",
        summary=f"{rule.rule} ({rule.level}): a caller {rule.title}. This caller does not.",
        observations=[f"[{finding.scenario}] {finding.message}" for finding in findings if finding.verdict == "fail"],
        fixes=[rule.fix],
    )


def replay_command(command: str, failing: Sequence[str]) -> str:
    """The command that runs a command caller again on the scenarios where it broke a rule."""
    scenarios = ",".join(dict.fromkeys(failing))
    return f"dualcall-conformance serve-callers --caller {shlex.quote(command)}" + (
        f" --scenarios {scenarios}" if scenarios else ""
    )


def build_report(
    runs: Sequence[ScenarioRun],
    *,
    target: str,
    command: str | None = None,
    threshold: Threshold = "must",
    started_at: datetime | None = None,
    duration_s: float = 0.0,
    adversary: str = "",
    require_all: bool = False,
) -> Report:
    report = Report(
        target=target,
        contract_version=contract_version(),
        threshold=threshold,
        started_at=(started_at or datetime.now(UTC)).isoformat(timespec="seconds"),
        duration_s=duration_s,
        suite_version=__version__,
        require_all=require_all,
    )
    for rule in RULES:
        result = grade_rule(rule, runs, threshold)
        report.results.append(result)
        if result.outcome in ("failed", "warning"):
            findings = [finding for run in runs for finding in rule.grade(run)]
            report.diagnoses.append(diagnose(rule, result, findings))
            if command is not None:
                failing = [finding.scenario for finding in findings if finding.verdict == "fail"]
                result.replay = replay_command(command, failing)
    report.worker = {
        "mode": "caller conformance (adversarial worker)",
        "adversary": adversary,
        "scenarios": [
            {
                "name": run.scenario.name,
                "title": run.scenario.title,
                "base_url": run.base_url,
                "caller": run.outcome.summary() if run.outcome else "not run",
                "requests": [request_line(hit) for hit in run.hits[:MAX_LOGGED_REQUESTS]],
            }
            for run in runs
        ],
    }
    return report
