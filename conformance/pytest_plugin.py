"""pytest plugin: ``pytest --dualcall-url URL`` runs the check catalogue as test items.

Registered through the ``pytest11`` entry point, so it is active wherever dualcall is
installed; it adds items only when ``--dualcall-url`` is given.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conformance.callers.pytest_fixtures import dualcall_adversary, dualcall_caller  # noqa: F401  (caller fixtures)
from conformance.model import CheckResult, CheckSpec

_STATE_KEY = pytest.StashKey[dict[str, Any]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("dualcall", "dualcall conformance")
    group.addoption("--dualcall-url", default=None, help="run the dualcall conformance checks against this worker URL")
    group.addoption(
        "--dualcall-token",
        default=os.environ.get("DUALCALL_TOKEN"),
        help="bearer token for the worker (default: $DUALCALL_TOKEN)",
    )
    group.addoption("--dualcall-level", choices=("must", "should"), default="must", help="what fails (default: must)")
    group.addoption("--dualcall-checks", default=None, help="comma-separated check ids to run")
    group.addoption("--dualcall-timeout", type=float, default=10.0, help="per-request timeout in seconds")
    group.addoption("--dualcall-no-fuzz", action="store_true", help="skip schemathesis fuzzing")
    group.addoption("--dualcall-max-examples", type=int, default=25, help="fuzz examples per operation")
    group.addoption(
        "--dualcall-ttl-budget",
        type=float,
        default=6.0,
        help="longest advertised job TTL the suite waits out to check reclaim (default: 6)",
    )
    group.addoption("--dualcall-seed", type=int, default=0, help="fuzzing seed (default: 0)")
    group.addoption(
        "--dualcall-require-all",
        action="store_true",
        help="an unverified MUST check fails instead of being skipped with its reason",
    )


class DualcallItem(pytest.Item):
    def __init__(self, *, spec: CheckSpec, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.spec = spec
        self.add_marker(pytest.mark.dualcall)

    def setup(self) -> None:
        """A check the suite itself broke on is an ERROR of the item (setup), never a failure of the worker."""
        result = _results(self.config).get(self.spec.id)
        if result is not None and result.outcome == "error":
            raise DualcallSuiteError(result)

    def runtest(self) -> None:
        result = _results(self.config).get(self.spec.id)
        if result is None:
            pytest.skip("not run (not selected, or fuzzing disabled)")
        assert result is not None
        if result.outcome == "unverified":
            reason = f"NOT VERIFIED: {result.message}" + (
                f" (to verify: {result.how_to_verify})" if result.how_to_verify else ""
            )
            if result.level == "MUST" and self.config.getoption("--dualcall-require-all"):
                pytest.fail(f"{result.id} [{result.rule} MUST] {reason}", pytrace=False)
            pytest.skip(reason)
        if result.outcome == "failed":
            raise DualcallCheckFailure(result)
        if result.outcome == "warning":
            # not self.warn(): that needs a line number, and a check item has none
            warnings.warn(
                pytest.PytestWarning(f"{result.id} [{result.rule} {result.level}] {result.message}"), stacklevel=1
            )

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        if isinstance(excinfo.value, DualcallCheckFailure):
            result = excinfo.value.result
            lines = [f"{result.id} [{result.rule} {result.level}] {result.title}", f"  {result.message}"]
            lines += [f"  {detail}" for detail in result.details]
            for exchange in result.exchanges[:3]:
                lines.append(f"  {exchange.method} {exchange.url} -> {exchange.status}")
                lines.append(f"    {exchange.curl()}")
            return "\n".join(lines)
        if isinstance(excinfo.value, DualcallSuiteError):
            result = excinfo.value.result
            return "\n".join([f"{result.id}: {result.message}", *result.details, result.traceback.rstrip()])
        return str(super().repr_failure(excinfo))

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, f"{self.spec.id} {self.spec.title}"


class DualcallSuiteError(Exception):
    """The suite broke while running a check (a bug in the suite, or its broken installation)."""

    def __init__(self, result: CheckResult) -> None:
        super().__init__(result.message)
        self.result = result


class DualcallCheckFailure(Exception):
    def __init__(self, result: CheckResult) -> None:
        super().__init__(result.message)
        self.result = result


class DualcallTargetItem(pytest.Item):
    """What the target is, said once: fails when it is not a dual-call worker (the checks are then skipped)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_marker(pytest.mark.dualcall)

    def runtest(self) -> None:
        _results(self.config)
        report = self.config.stash[_STATE_KEY]["report"]
        if report.target_unsupported:
            diagnosis = report.diagnoses[0] if report.diagnoses else None
            lines = [f"not a dual-call worker: {report.target_kind}"]
            if diagnosis is not None:
                lines += [diagnosis.summary, *(f"fix: {fix}" for fix in diagnosis.fixes)]
            pytest.fail("\n".join(lines), pytrace=False)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, "target recognition"


class DualcallCollector(pytest.Collector):
    def collect(self) -> Iterator[pytest.Item]:
        from conformance.runner import catalogue

        only = _selected(self.config)
        if only is None:  # a selection of checks is a debugging run: no extra item
            yield DualcallTargetItem.from_parent(self, name="target")
        for spec in catalogue():
            if only is None or spec.id in only:
                yield DualcallItem.from_parent(self, name=spec.id, spec=spec)


def _selected(config: pytest.Config) -> frozenset[str] | None:
    raw = config.getoption("--dualcall-checks")
    return frozenset(part.strip().upper() for part in raw.split(",") if part.strip()) if raw else None


def _results(config: pytest.Config) -> dict[str, CheckResult]:
    """Run the whole selection once (checks share state), on the first item that needs it."""
    state = config.stash.setdefault(_STATE_KEY, {})
    if "results" not in state:
        from conformance.context import Options
        from conformance.probe import TargetUnusable
        from conformance.runner import RunConfig, run

        run_config = RunConfig(
            target=str(config.getoption("--dualcall-url")).rstrip("/"),
            options=Options(
                timeout_s=config.getoption("--dualcall-timeout"),
                ttl_budget_s=config.getoption("--dualcall-ttl-budget"),
                token=config.getoption("--dualcall-token") or None,
            ),
            threshold=config.getoption("--dualcall-level"),
            only=_selected(config),
            fuzz=not config.getoption("--dualcall-no-fuzz"),
            max_examples=config.getoption("--dualcall-max-examples"),
            seed=config.getoption("--dualcall-seed"),
            require_all=config.getoption("--dualcall-require-all"),
        )
        if "unreachable" in state:  # the target went away after collection: fail fast, do not re-run
            pytest.fail(state["unreachable"], pytrace=False)
        try:
            report = run(run_config)
        except TargetUnusable as exc:
            state["unreachable"] = f"dualcall: {exc}"
            pytest.fail(state["unreachable"], pytrace=False)
        state["results"] = {result.id: result for result in report.results}
        state["report"] = report
    results: dict[str, CheckResult] = state["results"]
    return results


def _preflight(config: pytest.Config) -> None:
    """An unreachable or non-HTTP target is a usage error (exit 4), not one failure per check."""
    from conformance.probe import Probe, TargetUnusable
    from conformance.runner import preflight, unknown_ids

    unknown = unknown_ids(sorted(_selected(config) or ()))
    if unknown:
        raise pytest.UsageError(f"dualcall: unknown check id(s) in --dualcall-checks: {', '.join(unknown)}")

    probe = Probe(
        str(config.getoption("--dualcall-url")).rstrip("/"),
        token=config.getoption("--dualcall-token"),
        timeout_s=config.getoption("--dualcall-timeout"),
    )
    try:
        preflight(probe)
    except TargetUnusable as exc:
        raise pytest.UsageError(f"dualcall: {exc}") from None
    finally:
        probe.close()


def _require_conformance_extra() -> None:
    """A worker-only install loads this plugin too; running checks needs the conformance extra."""
    from conformance.extras import missing_extra_message

    missing = missing_extra_message()
    if missing:
        raise pytest.UsageError(f"dualcall: {missing}")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "dualcall: a dualcall conformance check")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.getoption("--dualcall-url"):
        return
    _require_conformance_extra()
    _preflight(config)
    collector = DualcallCollector.from_parent(session, name="dualcall-conformance")
    items[:0] = list(session.genitems(collector))  # genitems: reported, so "N tests collected" counts them
