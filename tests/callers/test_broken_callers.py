"""Every caller check is proven by a broken caller: one defect, and exactly its checks fail.

Each entry of ``callers.defects.BROKEN_CALLERS`` is the toy caller (which passes every rule, see
test_reference_callers.py) with ONE knob turned. It runs against the scenarios of its rule; the
checks in ``caught_by`` must fail, those in ``warned_by`` must warn, and no other check may.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import sys
from pathlib import Path

import pytest

from callers.defects import BROKEN_CALLERS, BrokenCaller
from callers.toy import ToyCaller
from conformance.callers.arena import ArenaServer
from conformance.callers.drive import Caller, CommandCaller, FunctionCaller, run_callers, select
from conformance.callers.rules import RULES

TESTS_DIR = Path(__file__).resolve().parents[1]


def toy_caller(broken: BrokenCaller, monkeypatch: pytest.MonkeyPatch) -> Caller:
    if not broken.as_command:
        return FunctionCaller(ToyCaller(broken.knobs), timeout_s=broken.timeout_s)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")]))
    knobs = shlex.quote(json.dumps(dataclasses.asdict(broken.knobs)))
    command = f"{sys.executable} -m callers.toy {knobs} {{submit_url}} {{base_url}} {{prompt}}"
    return CommandCaller(command, timeout_s=broken.timeout_s)


@pytest.mark.parametrize("broken", BROKEN_CALLERS, ids=[broken.name for broken in BROKEN_CALLERS])
def test_broken_caller_is_caught(arena: ArenaServer, broken: BrokenCaller, monkeypatch: pytest.MonkeyPatch) -> None:
    caller = toy_caller(broken, monkeypatch)
    report = run_callers(caller, scenarios=select(broken.scenarios), server=arena, jobs=3)
    verdicts = {result.id: (result.outcome, result.message) for result in report.results}
    failed = {check for check, (outcome, _) in verdicts.items() if outcome == "failed"}
    warned = {check for check, (outcome, _) in verdicts.items() if outcome == "warning"}
    assert (failed, warned) == (set(broken.caught_by), set(broken.warned_by)), verdicts
    for check in broken.caught_by + broken.warned_by:
        result = next(result for result in report.results if result.id == check)
        assert result.message and any("FAIL:" in detail for detail in result.details)
        assert any(broken.evidence in detail for detail in result.details if "FAIL:" in detail), result.details
        assert any(diagnosis.name.endswith(result.rule) for diagnosis in report.diagnoses)


def test_every_caller_check_is_proven_by_a_broken_caller() -> None:
    proven = {check for broken in BROKEN_CALLERS for check in broken.caught_by + broken.warned_by}
    assert proven == {rule.check_id for rule in RULES}
    names = [broken.name for broken in BROKEN_CALLERS]
    assert len(names) == len(set(names))


def test_should_rules_warn_and_must_rules_fail() -> None:
    levels = {rule.check_id: rule.level for rule in RULES}
    for broken in BROKEN_CALLERS:
        assert all(levels[check] == "MUST" for check in broken.caught_by), broken.name
        assert all(levels[check] == "SHOULD" for check in broken.warned_by), broken.name
