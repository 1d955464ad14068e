"""The proof in both directions: the reference client passes every caller rule, the naive caller fails.

The reference client runs in-process (sync and async API); the naive caller runs as a command,
the way ``serve-callers --caller`` runs a user's orchestrator.
"""

from __future__ import annotations

import sys

import pytest

from callers.toy import ToyCaller
from conformance.callers.arena import ArenaServer
from conformance.callers.drive import CommandCaller, FunctionCaller, run_callers, select
from conformance.callers.reference import async_caller, sync_caller
from conformance.callers.rules import RULES
from conformance.model import Report

ALL_CHECKS = {rule.check_id for rule in RULES}
NAIVE = f"{sys.executable} -m conformance.callers.naive {{submit_url}} {{prompt}}"
#: what the naive caller breaks, and the scenario that shows it
NAIVE_BREAKS = {
    "DC-CALLER-002": "absolute-sse-url",
    "DC-CALLER-003": "retry-after",
    "DC-CALLER-004": "cut-mid-event",
    "DC-CALLER-007": "error-event",
    "DC-CALLER-008": "unknown-events",
    "DC-CALLER-009": "cut-mid-event",
}


def outcomes(report: Report) -> dict[str, str]:
    return {result.id: result.outcome for result in report.results}


@pytest.mark.parametrize("caller", [sync_caller, async_caller, ToyCaller()], ids=["sync-client", "async-client", "toy"])
def test_conforming_callers_pass_every_rule(arena: ArenaServer, caller: object) -> None:
    report = run_callers(FunctionCaller(caller, timeout_s=15), server=arena, jobs=4)  # type: ignore[arg-type]
    problems = {result.id: result.message for result in report.results if result.outcome != "passed"}
    assert not problems, problems
    assert set(outcomes(report)) == ALL_CHECKS
    assert report.ok and not report.diagnoses


def test_naive_caller_fails_with_a_diagnosis_per_broken_rule(arena: ArenaServer) -> None:
    scenarios = select(sorted(set(NAIVE_BREAKS.values())))
    report = run_callers(CommandCaller(NAIVE, timeout_s=15), scenarios=scenarios, server=arena, jobs=4)
    failed = {check for check, outcome in outcomes(report).items() if outcome == "failed"}
    assert failed == set(NAIVE_BREAKS), {r.id: r.message for r in report.results}
    assert not report.ok
    by_rule = {diagnosis.name: diagnosis for diagnosis in report.diagnoses}
    for check_id, scenario in NAIVE_BREAKS.items():
        rule = next(rule for rule in RULES if rule.check_id == check_id)
        diagnosis = by_rule[f"caller breaks {rule.rule}"]
        assert any(f"[{scenario}]" in line for line in diagnosis.observations), diagnosis
        assert diagnosis.fixes == [rule.fix]
    result = next(result for result in report.results if result.id == "DC-CALLER-002")
    assert "built the stream path itself" in result.message
    assert result.exchanges and "/v1/inference/" in result.exchanges[0].url
    retry = next(result for result in report.results if result.id == "DC-CALLER-003")
    assert "Retry-After: 1" in retry.message
