"""pytest fixtures that hand the adversarial worker to a caller's own tests, and grade afterwards.

Registered by the dualcall pytest plugin, so they are available wherever dualcall is installed::

    def test_my_orchestrator(dualcall_caller):
        dualcall_caller.check(lambda target: my_orchestrator.run(target.submit_url, target.prompt))

``dualcall_caller`` is parametrized over every scenario (one test each); pick some with
``@pytest.mark.parametrize("dualcall_caller", ["cut-mid-event"], indirect=True)``. A test that
drives its caller itself reports the result with ``dualcall_caller.grade(text=...)`` or
``grade(error=exc)``; a test that does neither is graded on the wire alone at teardown. A broken
MUST rule fails the test with the diagnosis; a broken SHOULD rule is a warning (with
``--dualcall-level should``: a failure).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import pytest

from conformance.callers.scenarios import SCENARIO_BY_NAME, SCENARIOS

if TYPE_CHECKING:
    from conformance.callers.arena import ArenaServer
    from conformance.callers.drive import CallerTarget
    from conformance.callers.record import CallerOutcome
    from conformance.callers.scenarios import Scenario
    from conformance.model import Report, Threshold


class CallerScenario:
    """One scenario, served for one test: its URLs, its expected text, and the grading."""

    def __init__(self, server: ArenaServer, scenario: Scenario, threshold: Threshold) -> None:
        self.scenario = scenario
        self.threshold: Threshold = threshold
        self.report: Report | None = None
        self._server = server
        self._run = server.arena.new_run(scenario)

    @property
    def name(self) -> str:
        return self.scenario.name

    @property
    def base_url(self) -> str:
        return self._run.base_url

    @property
    def submit_url(self) -> str:
        return self._run.submit_url

    @property
    def prompt(self) -> str:
        from conformance.callers.drive import PROMPT

        return PROMPT

    @property
    def expected_text(self) -> str | None:
        """The completion a conforming caller reports; None where it must report a failure."""
        return self.scenario.expected_text

    @property
    def target(self) -> CallerTarget:
        from conformance.callers.drive import PROMPT, CallerTarget

        return CallerTarget(self.name, self.base_url, self.submit_url, PROMPT)

    def check(self, caller: Callable[[CallerTarget], str], *, timeout_s: float = 20.0) -> Report:
        """Run *caller* (returns the text, raises for a failure) against this scenario and grade it."""
        from conformance.callers.drive import FunctionCaller, verdict_already_clear

        outcome = FunctionCaller(caller, timeout_s=timeout_s)(self.target, lambda: verdict_already_clear(self._run))
        return self._grade(outcome)

    def grade(self, *, text: str | None = None, error: BaseException | str | None = None) -> Report:
        """Grade a caller the test ran itself: its text, or the error it reported."""
        from conformance.callers.record import CallerOutcome

        return self._grade(
            CallerOutcome(succeeded=error is None, text=text, error=None if error is None else str(error))
        )

    def _grade(self, outcome: CallerOutcome) -> Report:
        from conformance.callers.grade import build_report

        if self.report is not None:
            raise RuntimeError(f"scenario {self.name} was graded already")
        self._run.outcome = outcome
        self._server.settle(self._run)
        self.report = report = build_report(
            [self._run], target=f"caller test, scenario {self.name}", threshold=self.threshold
        )
        for result in report.results:
            if result.outcome == "warning":
                warnings.warn(
                    pytest.PytestWarning(f"{result.id} [{result.rule} {result.level}] {result.message}"), stacklevel=2
                )
        failed = [result for result in report.results if result.outcome == "failed"]
        if failed:
            lines = [f"caller broke {len(failed)} rule(s) in scenario {self.name} ({self.scenario.title}):"]
            for result in failed:
                lines.append(f"{result.id} [{result.rule} {result.level}] {result.title}")
                lines += [f"  {detail}" for detail in result.details if "FAIL:" in detail]
            lines += [f"fix ({diagnosis.name}): {fix}" for diagnosis in report.diagnoses for fix in diagnosis.fixes]
            pytest.fail("\n".join(lines), pytrace=False)
        return report

    def finish(self) -> None:
        """Teardown: a scenario nobody graded is graded on what the worker saw."""
        if self.report is None:
            from conformance.callers.record import CallerOutcome

            self._grade(CallerOutcome(succeeded=None))


@pytest.fixture(scope="session")
def dualcall_adversary() -> Iterator[ArenaServer]:
    """The adversarial worker on two loopback ports, shared by the session."""
    from conformance.callers.arena import ArenaServer

    with ArenaServer() as server:
        yield server


@pytest.fixture(params=[scenario.name for scenario in SCENARIOS])
def dualcall_caller(request: pytest.FixtureRequest, dualcall_adversary: ArenaServer) -> Iterator[CallerScenario]:
    """One adversarial scenario per test: its URLs for the caller under test, graded afterwards."""
    name = str(request.param)
    if name not in SCENARIO_BY_NAME:
        raise pytest.UsageError(f"dualcall_caller: unknown scenario {name!r} (known: {', '.join(SCENARIO_BY_NAME)})")
    level = request.config.getoption("--dualcall-level", default="must")
    handle = CallerScenario(dualcall_adversary, SCENARIO_BY_NAME[name], "should" if level == "should" else "must")
    yield handle
    handle.finish()
