"""The gate's first duty: a conforming worker is never failed, whatever its speed, cap or shape.

The suite runs repeatedly against fast conforming workers: the mock at zero token delay with
``max_tokens_cap`` 1, 16, 256 and 4096, with auth on and the token given, and every conforming
variant of the broken-worker catalogue (absolute and path-relative ``sse_url``, CR and CRLF
framing, no charset, ``no-store``, 409 for a second reader, a stream path other than the
default), each with a different fuzz seed. Any failed or warning check, or a suite error, is a defect of the suite.

By default (CI) the mock configurations run twice each, the first run with fuzzing; the variants
run once each in ``test_broken_workers.py``. ``DUALCALL_REPEAT=N`` runs every configuration,
variants included, N times. A one-in-twenty flake needs ~60 runs per configuration to show with
95 % confidence: run ``DUALCALL_REPEAT=60 pytest tests/integration/test_no_false_failures.py``
before changing a check.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from broken_workers.defects import AUTH_TOKEN, VARIANTS
from workerproc import WorkerProcess

from conformance.context import Options
from conformance.model import CheckResult
from conformance.probe import Probe
from conformance.runner import RunConfig, run

pytestmark = pytest.mark.slow

REPEAT_SET = "DUALCALL_REPEAT" in os.environ
REPEAT = int(os.environ.get("DUALCALL_REPEAT", "2"))
SERVE = Path(__file__).resolve().parents[1] / "broken_workers" / "serve.py"
#: zero token delay: the fastest worker the mock can be; a short TTL and keep-alive so nothing is left unobserved
FAST = ("--token-delay-ms", "0", "--ttl-s", "2", "--keepalive-s", "1")
OPTIONS = Options(timeout_s=5, ttl_budget_s=4)
#: configurations run at once (each run is mostly waiting on the worker and on TTLs)
PARALLEL = 4
FUZZ_EXAMPLES = 8
#: hypothesis compiles code while generating, and CPython's AST compiler is not safe across threads
#: ("SystemError: AST constructor recursion depth mismatch"): fuzzing runs one at a time
FUZZ_LOCK = threading.Lock()


@dataclass(frozen=True, slots=True)
class Config:
    name: str
    args: tuple[str, ...]
    variant: str | None = None
    token: str | None = None


CONFIGS: tuple[Config, ...] = (
    *(Config(f"mock-cap-{cap}", (*FAST, "--max-tokens-cap", str(cap))) for cap in (1, 16, 256, 4096)),
    Config("mock-auth", (*FAST, "--max-tokens-cap", "64", "--auth-token", AUTH_TOKEN), token=AUTH_TOKEN),
    *(
        Config(f"variant-{name}", (*FAST, "--max-tokens-cap", "64"), variant=name)
        for name in sorted(VARIANTS)
        if REPEAT_SET
    ),
)


class VariantWorker(WorkerProcess):
    """`serve.py VARIANT` instead of `python -m workers mock`."""

    def __init__(self, variant: str, *args: str) -> None:
        super().__init__("mock", *args, start_timeout_s=60.0)
        self.variant = variant

    @property
    def command(self) -> list[str]:
        return [sys.executable, str(SERVE), self.variant, "--port", "0", *self.args]


@dataclass
class Outcome:
    config: Config
    runs: int = 0
    bad: list[str] = field(default_factory=list)
    unverified: set[str] = field(default_factory=set)
    error: str | None = None


def _describe(run_index: int, result: CheckResult) -> str:
    lines = [f"run {run_index}: {result.id} {result.outcome} — {result.message}", *result.details[:4]]
    lines += [f"    {e.method} {e.url} -> {e.status} {e.body_excerpt[:160]!r}" for e in result.exchanges[-2:]]
    return "\n".join(lines)


def _exercise(config: Config) -> Outcome:
    outcome = Outcome(config)
    worker = (
        VariantWorker(config.variant, *config.args)
        if config.variant
        else WorkerProcess("mock", *config.args, start_timeout_s=60.0)
    )
    try:
        with worker:
            options = Options(OPTIONS.timeout_s, OPTIONS.ttl_budget_s, token=config.token)
            for index in range(REPEAT):
                fuzz = index == 0 and config.variant != "other-stream-path"
                run_config = RunConfig(
                    target=worker.url,
                    options=options,
                    fuzz=fuzz,
                    max_examples=FUZZ_EXAMPLES,
                    seed=1000 + 17 * index + len(config.name),
                )
                if fuzz:
                    with FUZZ_LOCK:
                        report = run(run_config)
                else:
                    report = run(run_config)
                outcome.runs += 1
                outcome.bad += [
                    _describe(index, r) for r in report.results if r.outcome in ("failed", "warning", "error")
                ]
                outcome.unverified |= {r.id for r in report.results if r.outcome == "unverified"}
    except Exception as exc:  # reported by the test, with the worker's output
        outcome.error = f"{type(exc).__name__}: {exc}\n{worker.output()[-2000:]}"
    return outcome


@pytest.fixture(scope="module")
def outcomes() -> Iterator[dict[str, Outcome]]:
    with ThreadPoolExecutor(max_workers=PARALLEL, thread_name_prefix="no-false-failures") as pool:
        results = {outcome.config.name: outcome for outcome in pool.map(_exercise, CONFIGS)}
    runs = sum(outcome.runs for outcome in results.values())
    failures = sum(len(outcome.bad) for outcome in results.values())
    print(f"\n{runs} suite runs against {len(CONFIGS)} conforming configurations: {failures} false failures")
    for outcome in results.values():
        for line in outcome.bad:
            print(f"  {outcome.config.name}: {line.splitlines()[0]}")
    yield results


@pytest.mark.parametrize("name", [config.name for config in CONFIGS])
def test_conforming_worker_is_never_failed(name: str, outcomes: dict[str, Outcome]) -> None:
    outcome = outcomes[name]
    assert outcome.error is None, outcome.error
    assert outcome.runs == REPEAT
    assert not outcome.bad, f"{name}: the suite failed a conforming worker:\n" + "\n".join(outcome.bad)


def test_auth_and_ttl_leave_nothing_unverified_but_what_speed_hides(outcomes: dict[str, Outcome]) -> None:
    """With auth on, a short TTL and keep-alive, only checks that need a slow job may stay unverified."""
    speed_bound = {"DC-JOB-002", "DC-SUBMIT-011", "DC-SUBMIT-012", "DC-STREAM-013"}
    assert outcomes["mock-auth"].unverified <= speed_bound, sorted(outcomes["mock-auth"].unverified)


def test_one_reader_worker_is_not_failed_when_the_staying_reader_attaches_late(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """DC-LIFE-003's staying reader reads in a thread. A scheduler that runs that thread only once a
    dropping reader holds the stream must not turn the worker's rightful 409 for whichever reader
    came second (DC-2.10) into a failure."""
    stream = Probe.stream
    main_reader_attached = threading.Event()
    threaded_reads: list[str] = []

    def scheduled_late(self: Probe, url: str, **kwargs: Any) -> Any:
        if threading.current_thread() is threading.main_thread():
            if kwargs.get("on_event") is None:

                def attached(_capture: object, _event: object) -> bool:
                    main_reader_attached.set()
                    return False

                kwargs["on_event"] = attached
        elif not threaded_reads:
            threaded_reads.append(url)
            main_reader_attached.wait(2.0)  # bounded: the read goes ahead even if no other reader attaches
        return stream(self, url, **kwargs)

    monkeypatch.setattr(Probe, "stream", scheduled_late)
    # 256 tokens at 10 ms: the job is still running while the droppers try to attach
    args = ("--token-delay-ms", "10", "--ttl-s", "2", "--keepalive-s", "1", "--max-tokens-cap", "256")
    with VariantWorker("one-reader-409", *args) as worker:
        report = run(RunConfig(target=worker.url, options=OPTIONS, only=frozenset({"DC-LIFE-003"}), fuzz=False))
    assert threaded_reads, "the staying reader was expected to read in a thread"
    (result,) = report.results
    assert result.outcome == "passed", _describe(0, result)
    assert "409" in result.message, result.message
