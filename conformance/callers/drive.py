"""Drive a caller through the scenarios: a command line (stdout is its text) or a Python function.

``{submit_url}``, ``{base_url}``, ``{prompt}`` and ``{scenario}`` in a command are replaced per
scenario (after splitting it like a shell would, so no quoting is needed). Exit status 0 with
the text on stdout is a completion (one trailing newline, as ``print`` adds, is dropped); any
other status is a failure, with stderr kept as evidence. A function gets a :class:`CallerTarget`
and returns the text, or raises for a failure.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Protocol

from conformance.callers.arena import ArenaServer
from conformance.callers.grade import build_report
from conformance.callers.record import CallerOutcome, CallerTarget, ScenarioRun
from conformance.callers.rules import RESUME_LIMIT, SUBMIT_LIMIT
from conformance.callers.scenarios import SCENARIOS, Scenario
from conformance.model import Report, Threshold

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "PROMPT",
    "Caller",
    "CallerTarget",
    "CallerUsageError",
    "CommandCaller",
    "FunctionCaller",
    "run_callers",
    "select",
    "verdict_already_clear",
]

PLACEHOLDERS = ("{submit_url}", "{base_url}", "{prompt}", "{scenario}")
DEFAULT_TIMEOUT_S = 20.0
PROMPT = "Say hello to the adversarial worker."
_STDERR_CHARS = 2000
_POLL_S = 0.05


ShouldStop = Callable[[], str | None]


class CallerUsageError(ValueError):
    """The caller command cannot be run (one line for the CLI)."""


class CommandCaller:
    def __init__(self, template: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        try:
            self.argv = shlex.split(template)
        except ValueError as exc:
            raise CallerUsageError(f"cannot split the caller command: {exc}") from None
        if not self.argv:
            raise CallerUsageError("the caller command is empty")
        if not any(mark in template for mark in ("{submit_url}", "{base_url}")):
            raise CallerUsageError(
                "the caller command needs {submit_url} or {base_url}, e.g. 'python my.py {submit_url} {prompt}'"
            )
        if shutil.which(self.argv[0]) is None:
            raise CallerUsageError(f"the caller command {self.argv[0]!r} is not an executable on PATH")
        self.template = template
        self.timeout_s = timeout_s

    @property
    def label(self) -> str:
        return self.template

    def __call__(self, target: CallerTarget, should_stop: ShouldStop) -> CallerOutcome:
        values = {
            "{submit_url}": target.submit_url,
            "{base_url}": target.base_url,
            "{prompt}": target.prompt,
            "{scenario}": target.scenario,
        }
        argv = []
        for template_part in self.argv:
            part = template_part
            for mark, value in values.items():
                part = part.replace(mark, value)
            argv.append(part)
        env = dict(os.environ, PYTHONIOENCODING="utf-8", PYTHONUTF8="1")
        started = time.monotonic()
        try:
            process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        except OSError as exc:
            return CallerOutcome(succeeded=False, error=f"cannot start the caller: {exc}")
        stopped = None
        timed_out = False
        while True:
            try:
                out, err = process.communicate(timeout=_POLL_S)
                break
            except subprocess.TimeoutExpired:
                stopped = should_stop()
                timed_out = time.monotonic() - started > self.timeout_s
                if stopped or timed_out:
                    process.kill()
                    out, err = process.communicate()
                    break
        text = out.decode("utf-8", "replace")
        text = text.removesuffix("\n")
        return CallerOutcome(
            succeeded=process.returncode == 0 and not stopped and not timed_out,
            text=text,
            exit_code=process.returncode,
            stderr=err.decode("utf-8", "replace")[-_STDERR_CHARS:],
            timed_out=timed_out and not stopped,
            stopped=stopped,
            duration_s=time.monotonic() - started,
        )


class FunctionCaller:
    """A Python function ``(CallerTarget) -> str`` run in a thread (it cannot be killed: keep it bounded)."""

    def __init__(self, func: Callable[[CallerTarget], str], *, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.func = func
        self.timeout_s = timeout_s

    @property
    def label(self) -> str:
        return f"{getattr(self.func, '__module__', '?')}.{getattr(self.func, '__qualname__', repr(self.func))}"

    def __call__(self, target: CallerTarget, should_stop: ShouldStop) -> CallerOutcome:
        box: dict[str, object] = {}

        def call() -> None:
            try:
                box["text"] = self.func(target)
            except BaseException as exc:  # the caller's failure is the evidence
                box["error"] = f"{type(exc).__name__}: {exc}"

        started = time.monotonic()
        worker = threading.Thread(target=call, name=f"caller-{target.scenario}", daemon=True)
        worker.start()
        worker.join(self.timeout_s)
        duration = time.monotonic() - started
        if worker.is_alive():
            return CallerOutcome(succeeded=False, timed_out=True, duration_s=duration, error="timed out")
        if "error" in box:
            return CallerOutcome(succeeded=False, error=str(box["error"]), duration_s=duration)
        text = box.get("text")
        if not isinstance(text, str):
            return CallerOutcome(succeeded=False, error=f"the caller returned {type(text).__name__}, not str")
        return CallerOutcome(succeeded=True, text=text, duration_s=duration)


class Caller(Protocol):
    """What ``run_callers`` drives: a command, a function, or anything that reports a CallerOutcome."""

    @property
    def label(self) -> str: ...

    def __call__(self, target: CallerTarget, should_stop: ShouldStop) -> CallerOutcome: ...


def verdict_already_clear(run: ScenarioRun) -> str | None:
    """Stop a caller early when it has already shown an unbounded retry or resume loop."""
    submits = len(run.of_kind("submit"))
    if submits > SUBMIT_LIMIT:
        return f"{submits} submits: more than the suite's bound of {SUBMIT_LIMIT}"
    streams = len(run.of_kind("stream"))
    if run.scenario.cut == "every-attempt" and streams > RESUME_LIMIT + 1:
        return f"{streams} connections to a dead stream: more than the suite's bound of {RESUME_LIMIT} reconnects"
    return None


def select(names: Sequence[str] | None) -> list[Scenario]:
    if not names:
        return list(SCENARIOS)
    known = {scenario.name: scenario for scenario in SCENARIOS}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise CallerUsageError(f"unknown scenario(s): {', '.join(unknown)} (known: {', '.join(known)})")
    return [known[name] for name in names]


def run_callers(
    caller: Caller,
    *,
    scenarios: Sequence[Scenario] | None = None,
    threshold: Threshold = "must",
    on_scenario: Callable[[ScenarioRun], None] | None = None,
    server: ArenaServer | None = None,
    jobs: int = 1,
    require_all: bool = False,
) -> Report:
    """Run *caller* once per scenario against the adversarial worker and grade it.

    ``jobs`` scenarios run at once: runs are isolated by their URL token, and the grading's
    timing checks (Retry-After, close after [DONE]) only get more lenient under load. With
    ``jobs=1`` they run one after the other in the calling thread, so a caller bound to its
    thread (a browser driven by Playwright) can be graded.
    """
    started_at = datetime.now(UTC)
    clock = time.monotonic()
    owned = server is None
    arena_server = server or ArenaServer()
    if owned:
        arena_server.start()

    def play(scenario: Scenario) -> ScenarioRun:
        run = arena_server.arena.new_run(scenario)
        target = CallerTarget(scenario.name, run.base_url, run.submit_url, PROMPT)
        run.outcome = caller(target, lambda: verdict_already_clear(run))
        arena_server.settle(run)
        if on_scenario is not None:
            on_scenario(run)
        return run

    try:
        if jobs <= 1:
            runs = [play(scenario) for scenario in scenarios or SCENARIOS]
        else:
            with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="scenario") as pool:
                runs = list(pool.map(play, scenarios or SCENARIOS))
    finally:
        if owned:
            arena_server.stop()
    return build_report(
        runs,
        target=f"caller: {caller.label}",
        command=caller.template if isinstance(caller, CommandCaller) else None,
        threshold=threshold,
        started_at=started_at,
        duration_s=time.monotonic() - clock,
        adversary=arena_server.arena.base_url,
        require_all=require_all,
    )
