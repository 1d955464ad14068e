"""A check is only trusted once a deliberately broken worker proves it fails.

Each entry of `broken_workers.defects.DEFECTS` is the real mock worker with ONE defect injected,
served by `tests/broken_workers/serve.py` in its own process. For each defect the suite runs
only the checks meant to catch it (the runner shares context inside one run) and every one of
them must fail (a SHOULD check: warn). The unmodified mock, served by the same script, must
pass everything, and the catalogue must prove every check of the suite except the fuzzers.

All workers are started by one module fixture, a few at a time in threads, longest first.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from broken_workers.defects import AUTH_TOKEN, DEFECTS, VARIANTS, Defect
from workerproc import WorkerProcess

from conformance.context import Options
from conformance.model import CheckResult, Report
from conformance.runner import RunConfig, catalogue, run

pytestmark = pytest.mark.slow

SERVE = Path(__file__).resolve().parents[1] / "broken_workers" / "serve.py"
#: short TTL so the lifetime checks run; a small cap keeps DC-JOB-002's "long" job short
WORKER_FLAGS = (
    "--ttl-s",
    "2",
    "--token-delay-ms",
    "1",
    "--max-tokens-cap",
    "512",
    "--concurrency",
    "2",
    "--queue-limit",
    "16",
    "--keepalive-s",
    "1",
)
OPTIONS = Options(timeout_s=5, ttl_budget_s=4)
#: worker processes alive at once (the suite's client threads are mostly waiting on I/O)
PARALLEL = 6
BASELINE = "none"
BASELINE_AUTH = "none+auth"
#: how the runner reports a check that crashed instead of finding the defect
CRASH_MESSAGES = ("HTTP failure during the check", "the worker's answers broke the check")
#: checks that need a worker configured differently from the baseline run
AUTH_ONLY = frozenset({"DC-SVC-005"})
#: fuzz checks a defect may name: the runner then fuzzes with the default budget (25 examples, seed 0)
FUZZ_IDS = frozenset(spec.id for spec in catalogue() if spec.area == "fuzz")


class BrokenWorker(WorkerProcess):
    """`serve.py DEFECT` instead of `python -m workers mock`; same banner, health wait and stop."""

    def __init__(self, defect: str, *args: str) -> None:
        super().__init__("mock", *args, start_timeout_s=90.0)
        self.defect = defect

    @property
    def command(self) -> list[str]:
        return [sys.executable, str(SERVE), self.defect, "--port", "0", *WORKER_FLAGS, *self.args]


@dataclass
class Probed:
    """What one broken worker did under its checks."""

    name: str
    report: Report | None = None
    error: str | None = None
    output: str = ""
    seconds: float = 0.0
    results: dict[str, CheckResult] = field(default_factory=dict)


def _plan(name: str) -> tuple[str, tuple[str, ...], frozenset[str] | None, str | None]:
    """(defect served, worker flags, checks to run, suite token) for a catalogue entry or a baseline."""
    if name == BASELINE:
        return BASELINE, (), None, None
    if name == BASELINE_AUTH:
        return BASELINE, ("--auth-token", AUTH_TOKEN), AUTH_ONLY, AUTH_TOKEN
    if name in VARIANTS:
        return name, (), None, None
    entry = DEFECTS[name]
    checks = frozenset(entry.caught_by + entry.warned_by + entry.runs_with)
    return name, entry.worker_args, checks, entry.suite_token


def _cost(name: str) -> float:
    """Rough seconds a run takes, to start the long ones first."""
    if name == BASELINE or name in VARIANTS:
        return 20.0
    if name == BASELINE_AUTH:
        return 1.0
    entry = DEFECTS[name]
    return (
        1.0
        + (40.0 if FUZZ_IDS & set(entry.caught_by) else 0.0)
        + sum(7.0 for check in entry.caught_by if check.startswith("DC-LIFE-00") and check != "DC-LIFE-003")
        + (3.0 if name == "no-close-after-done" else 0.0)
    )


def _probe(name: str, started: list[WorkerProcess], lock: threading.Lock) -> Probed:
    served, args, only, token = _plan(name)
    probed = Probed(name)
    begin = time.perf_counter()
    worker = BrokenWorker(served, *args)
    with lock:
        started.append(worker)
    try:
        worker.start()
        options = Options(timeout_s=OPTIONS.timeout_s, ttl_budget_s=OPTIONS.ttl_budget_s, token=token)
        fuzz = only is not None and bool(only & FUZZ_IDS)
        probed.report = run(RunConfig(target=worker.url, options=options, only=only, fuzz=fuzz))
        probed.results = {result.id: result for result in probed.report.results}
    except Exception as exc:  # reported by the test of this defect, not by the fixture
        probed.error = f"{type(exc).__name__}: {exc}"
    finally:
        if worker.proc is not None and worker.returncode is None:
            worker.stop()
        probed.output = worker.output()[-3000:]
        probed.seconds = time.perf_counter() - begin
    return probed


def _selected(request: pytest.FixtureRequest) -> list[str]:
    """The defects (and baselines) the collected tests of this module need."""
    names: set[str] = set()
    for item in request.session.items:
        if getattr(item, "module", None) is not request.module:
            continue
        callspec = getattr(item, "callspec", None)
        if callspec is not None and "name" in callspec.params:
            names.add(callspec.params["name"])
        elif callspec is not None and "variant" in callspec.params:
            names.add(callspec.params["variant"])
        elif item.name == "test_unmodified_mock_passes_everything":
            names.add(BASELINE)
        elif item.name == "test_unmodified_mock_with_auth_passes_the_auth_check":
            names.add(BASELINE_AUTH)
    return sorted(names, key=_cost, reverse=True)


@pytest.fixture(scope="module")
def probed(request: pytest.FixtureRequest) -> Iterator[dict[str, Probed]]:
    started: list[WorkerProcess] = []
    lock = threading.Lock()
    names = _selected(request)
    begin = time.perf_counter()
    try:
        with ThreadPoolExecutor(max_workers=PARALLEL, thread_name_prefix="broken-worker") as pool:
            results = dict(zip(names, pool.map(lambda name: _probe(name, started, lock), names), strict=True))
        slowest = sorted(results.values(), key=lambda p: p.seconds, reverse=True)[:3]
        print(
            f"\n{len(names)} broken workers probed in {time.perf_counter() - begin:.1f}s; slowest: "
            + ", ".join(f"{p.name} {p.seconds:.1f}s" for p in slowest)
        )
        yield results
    finally:
        for worker in started:  # normally stopped already; never leave one behind
            if worker.proc is not None and worker.returncode is None:
                worker.stop()


def _describe(result: CheckResult | None, check_id: str) -> str:
    if result is None:
        return f"{check_id}: not run"
    lines = [f"{check_id}: {result.outcome} — {result.message}", *(f"    {line}" for line in result.details[:6])]
    for exchange in result.exchanges[-2:]:
        lines.append(f"    {exchange.method} {exchange.url} -> {exchange.status} {exchange.body_excerpt[:160]!r}")
    return "\n".join(lines)


# -- the catalogue itself ---------------------------------------------------------------------------


def test_catalogue_is_well_formed() -> None:
    specs = {spec.id: spec for spec in catalogue()}
    assert len(DEFECTS) >= 24
    for name, entry in DEFECTS.items():
        assert entry.name == name
        assert entry.description and "\n" not in entry.description, name
        assert entry.caught_by or entry.warned_by, f"{name} proves no check"
        for check_id in entry.caught_by + entry.warned_by + entry.runs_with:
            assert check_id in specs, f"{name}: unknown check {check_id}"
        for check_id in entry.warned_by:
            assert specs[check_id].level == "SHOULD", f"{name}: {check_id} is not a SHOULD check"


def test_catalogue_proves_every_check() -> None:
    """Every MUST check (and every SHOULD one) has a broken worker it fails; fuzzers are tested elsewhere."""
    specs = [spec for spec in catalogue() if spec.area != "fuzz"]
    failed_by = {check_id for entry in DEFECTS.values() for check_id in entry.caught_by}
    warned_by = {check_id for entry in DEFECTS.values() for check_id in entry.warned_by}
    unproven_must = sorted(spec.id for spec in specs if spec.level == "MUST" and spec.id not in failed_by)
    assert not unproven_must, f"MUST checks no broken worker proves: {unproven_must}"
    unproven = sorted(spec.id for spec in specs if spec.id not in failed_by | warned_by)
    assert not unproven, f"checks no broken worker proves: {unproven}"


# -- the proofs -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(DEFECTS))
def test_defect_is_caught(name: str, probed: dict[str, Probed]) -> None:
    entry: Defect = DEFECTS[name]
    result = probed[name]
    assert result.error is None, f"{name}: the run did not complete: {result.error}\n{result.output}"
    wrong: list[str] = []
    for check_id in entry.caught_by:
        if (check := result.results.get(check_id)) is None or check.outcome != "failed":
            wrong.append(_describe(check, check_id))
        elif check.message.startswith(CRASH_MESSAGES):
            wrong.append("caught only because the check crashed:\n" + _describe(check, check_id))
    for check_id in entry.warned_by:
        if (check := result.results.get(check_id)) is None or check.outcome != "warning":
            wrong.append(_describe(check, check_id))
    assert not wrong, (
        f"defect {name!r} ({entry.description}) was not caught as expected:\n"
        + "\n".join(wrong)
        + f"\n--- worker output ---\n{result.output}"
    )


def test_unmodified_mock_passes_everything(probed: dict[str, Probed]) -> None:
    """The control: `serve.py none` runs the same code path without a defect and passes every check."""
    result = probed[BASELINE]
    assert result.error is None, f"{result.error}\n{result.output}"
    bad = [_describe(check, check.id) for check in result.results.values() if check.outcome in ("failed", "warning")]
    assert not bad, "the unmodified mock did not pass:\n" + "\n".join(bad)
    unverified = {check.id for check in result.results.values() if check.outcome == "unverified"}
    assert unverified <= AUTH_ONLY, "the catalogue's worker flags should let every other check decide:\n" + "\n".join(
        _describe(result.results[check_id], check_id) for check_id in sorted(unverified - AUTH_ONLY)
    )
    expected = {spec.id for spec in catalogue() if spec.area != "fuzz"}
    assert set(result.results) == expected


def test_unmodified_mock_with_auth_passes_the_auth_check(probed: dict[str, Probed]) -> None:
    """The control for auth-not-enforced-on-stream: with auth on, the real worker passes DC-SVC-005."""
    result = probed[BASELINE_AUTH]
    assert result.error is None, f"{result.error}\n{result.output}"
    check = result.results.get("DC-SVC-005")
    assert check is not None and check.outcome == "passed", _describe(check, "DC-SVC-005")


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_conforming_variant_passes_everything(variant: str, probed: dict[str, Probed]) -> None:
    """Shapes the contract allows (sse_url forms, line endings, headers, 409 readers) must never be failed."""
    result = probed[variant]
    assert result.error is None, f"{result.error}\n{result.output}"
    bad = [_describe(check, check.id) for check in result.results.values() if check.outcome in ("failed", "warning")]
    assert not bad, f"the conforming variant {variant} ({VARIANTS[variant].description}) was failed:\n" + "\n".join(bad)
    assert result.results["DC-SUBMIT-010"].outcome == "passed"
