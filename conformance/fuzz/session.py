"""One fuzz run's shared state: every phase sends through it, and it tallies what came back."""

from __future__ import annotations

import contextlib
import json
import time
import traceback
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final

from conformance.fuzz.boundary import BoundaryCase
from conformance.fuzz.cases import clamp_max_tokens, clamp_or_reject, is_negative
from conformance.fuzz.evidence import (
    connection_reason,
    describe_error,
    exchange_from_error,
    exchange_from_record,
    exchange_from_response,
    is_connection_failure,
)
from conformance.fuzz.streams import AcceptedJob, StreamReader
from conformance.fuzz.tally import TRANSPORT, Finding, Note, Tally
from conformance.model import Exchange
from conformance.outcomes import invalid_request

__all__ = ["ACCEPTANCE_CHECKS", "FUZZ_CHECK_IDS", "SUBMIT", "FuzzSession"]

#: the fuzz checks, in the order their verdicts are reported
FUZZ_CHECK_IDS: Final = ("DC-FUZZ-001", "DC-FUZZ-002", "DC-FUZZ-003", "DC-FUZZ-004")
SUBMIT: Final = "POST /v1/inference"
#: schemathesis checks that judge acceptance (DC-FUZZ-001); the others judge the response's shape (DC-FUZZ-002)
ACCEPTANCE_CHECKS: Final = ("not_a_server_error", "positive_data_acceptance", "negative_data_rejection")
#: fuzzed responses between two progress reports
PROGRESS_EVERY: Final = 10
#: requests in a row without a response after which the run stops (the target is down or hangs)
MAX_CONSECUTIVE_FAILURES: Final = 3
_FUZZ_SOURCES: Final = {"DC-FUZZ-001": "generated", "DC-FUZZ-003": "stateful"}
#: the statuses that say an operation is not served at all (on every request to it)
NOT_SERVED: Final = frozenset({404, 405})
#: how long cancelling the jobs fuzzing created may take
_CANCEL_BUDGET_S: Final = 5.0


def _attempt(action: Callable[[], None], phase: str) -> tuple[str, str] | None:
    """Run ``action``; what broke inside it (reason, traceback), or None."""
    try:
        action()
    except Exception as exc:
        return f"schemathesis broke in the {phase}: {describe_error(exc)}", traceback.format_exc()
    return None


class FuzzSession:
    """State shared by the phases of one fuzz run: tallies, budget, accepted jobs, the stream reader."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float,
        deadline: float,
        on_progress: Callable[[str], None] | None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.deadline = deadline
        self.on_progress = on_progress
        self.tallies: dict[str, Tally] = {check_id: Tally() for check_id in FUZZ_CHECK_IDS}
        self.out_of_time = False
        self.created_jobs: list[str] = []
        self.connection_failures = 0
        self.consecutive_failures = 0
        self.halted: str | None = None
        self.unreachable_reason: str | None = None
        self.responses = 0
        self.negative_submits = 0
        #: the worker's advertised ``max_tokens_cap`` (None: unknown)
        self.max_tokens_cap: int | None = None
        self.reader: StreamReader | None = None
        self.boundary_cases = 0
        #: status codes answered, per operation (``POST /v1/inference``: ...)
        self.statuses: dict[str, Counter[int]] = {}

    def unserved(self, operation: str) -> bool:
        """Every answer to ``operation`` was 404/405: the worker does not serve it, so nothing about it was observed."""
        seen = self.statuses.get(operation) or Counter[int]()
        return bool(seen) and set(seen) <= NOT_SERVED

    def guard(self, check_ids: tuple[str, ...], phase: str, action: Callable[[], None]) -> None:
        """Run one phase; an error of schemathesis, hypothesis or the interpreter is the suite's, not the worker's.

        A phase that breaks is run once more (some breakages are transient, such as CPython 3.11's
        race between threads building ASTs); if it breaks again, the checks it feeds report a suite
        error instead of a verdict they have no evidence for. The phase's time counts toward the
        first of ``check_ids``.
        """
        started = time.monotonic()
        try:
            broken = _attempt(action, phase)
            if broken is not None and self.time_left():
                reason, _trace = broken
                self.progress(f"fuzz: {reason}; running the phase again")
                for check_id in check_ids:
                    self.tallies[check_id].notes.append(f"{reason}; the phase was run again")
                broken = _attempt(action, phase)
            if broken is not None:
                for check_id in check_ids:
                    self.tallies[check_id].broke(*broken)
        finally:
            self.tallies[check_ids[0]].seconds += time.monotonic() - started

    def progress(self, text: str) -> None:
        if self.on_progress is not None:
            try:
                self.on_progress(text)
            except Exception:  # a broken progress callback must not break the run
                self.on_progress = None

    def time_left(self) -> bool:
        """Whether another request may be sent: time budget left, and the target still answers."""
        if self.halted is not None:
            return False
        if time.monotonic() >= self.deadline:
            self.out_of_time = True
            return False
        return True

    def record_failure(
        self, check_id: str, check: str, *, case: Any, status: int | None, failure: Any, ex: Exchange
    ) -> None:
        title = str(getattr(failure, "title", "") or type(failure).__name__)
        message = str(getattr(failure, "message", "") or "")
        operation = str(case.operation.label)
        self.tallies[check_id].add(Finding(check, operation, status, title, message, ex))

    def record_failure_for(self, check: str, operation: str, failure: Note, ex: Exchange) -> None:
        self.tallies["DC-FUZZ-001"].add(Finding(check, operation, None, failure.title, failure.message, ex))

    def validate(
        self,
        check_id_for: Callable[[str], str],
        case: Any,
        response: Any,
        checks: tuple[str, ...],
        *,
        transport_kwargs: dict[str, Any] | None = None,
        recorder: Any = None,
    ) -> None:
        """Run each named schemathesis check on its own, so every failure knows which check raised it."""
        from schemathesis.checks import CHECKS
        from schemathesis.core.failures import FailureGroup

        exchange: Exchange | None = None
        for name in checks:
            if name == "positive_data_acceptance" and clamp_or_reject(
                getattr(case, "body", None), response.status_code, self.max_tokens_cap
            ):
                continue
            function = CHECKS.get_one(name)
            try:
                case.validate_response(
                    response, checks=[function], transport_kwargs=transport_kwargs, recorder=recorder
                )
            except FailureGroup as group:
                exchange = exchange or exchange_from_response(response, case, self.base_url)
                for failure in group.exceptions:
                    self.record_failure(
                        check_id_for(name), name, case=case, status=response.status_code, failure=failure, ex=exchange
                    )
            except Exception as exc:  # the check itself broke: no evidence either way about this response
                reason = f"schemathesis' {name} check broke on a {response.status_code} response: {describe_error(exc)}"
                self.tallies[check_id_for(name)].broke(reason, traceback.format_exc())

    def call(self, check_id: str, case: Any) -> Any | None:
        """Send ``case``; a transport failure becomes a finding and ``None``."""
        clamp_max_tokens(case)
        try:
            response = case.call(timeout=self.timeout_s)
        except Exception as exc:
            self.tallies[check_id].requests += 1
            self.tallies[check_id].operations.add(str(case.operation.label))
            if is_connection_failure(exc):
                self.connection_failures += 1
                self.unreachable_reason = self.unreachable_reason or connection_reason(exc)
            self.consecutive_failures += 1
            if self.consecutive_failures >= MAX_CONSECUTIVE_FAILURES:
                self.halted = (
                    f"fuzzing stopped after {self.consecutive_failures} requests in a row got no response "
                    f"(last: {connection_reason(exc)})"
                )
            note = Note("Request failed", describe_error(exc))
            exchange = exchange_from_error(exc, case, self.base_url)
            self.record_failure(check_id, TRANSPORT, case=case, status=None, failure=note, ex=exchange)
            return None
        self.responses += 1
        self.statuses.setdefault(str(case.operation.label), Counter())[int(response.status_code)] += 1
        if self.responses % PROGRESS_EVERY == 0:
            scenarios = self.tallies["DC-FUZZ-003"].scenarios
            self.progress(f"fuzz: {self.responses} requests, {scenarios} stateful scenarios")
        self.consecutive_failures = 0
        self.tallies[check_id].requests += 1
        if check_id == "DC-FUZZ-001" and is_negative(case):
            self.negative_submits += 1
        self.tallies[check_id].operations.add(str(case.operation.label))
        self._remember_job(case, response, check_id)
        return response

    def _remember_job(self, case: Any, response: Any, check_id: str) -> None:
        if str(case.operation.label) != SUBMIT or response.status_code != 202:
            return
        try:
            data = response.json()
            job_id, sse_url = data.get("job_id"), data.get("sse_url")
        except Exception:
            return
        if not isinstance(job_id, str) or not job_id:
            return
        self.created_jobs.append(job_id)
        body = getattr(case, "body", None)
        if self.reader is None or not isinstance(sse_url, str) or invalid_request(body):
            return
        source = _FUZZ_SOURCES.get(check_id, "generated")
        exchange = exchange_from_response(response, case, self.base_url)
        self.reader.add(AcceptedJob(job_id, sse_url, body, exchange, source))

    def accept_boundary(self, case: BoundaryCase, transport_error: str) -> None:
        """Findings, counts and accepted jobs of one coverage case (see :func:`_run_boundary`)."""
        tally = self.tallies["DC-FUZZ-001"]
        tally.requests += 1
        if case.label == SUBMIT:  # not the undocumented methods the phase also tries on the path
            tally.operations.add(case.label)
        self.boundary_cases += 1
        if case.response is None:
            note = Note("Request failed", transport_error)
            self.record_failure_for(TRANSPORT, case.label, note, exchange_from_record(case))
            return
        self.responses += 1
        if not case.positive:
            self.negative_submits += 1
        status = int(case.response["status"])
        if case.label == SUBMIT:
            self.statuses.setdefault(SUBMIT, Counter())[status] += 1
        exchange = exchange_from_record(case)
        for name, title, message in case.failures:
            if name == "positive_data_acceptance" and clamp_or_reject(case.body, status, self.max_tokens_cap):
                continue
            check_id = "DC-FUZZ-001" if name in ACCEPTANCE_CHECKS else "DC-FUZZ-002"
            detail = f"{message} (boundary case: {case.description})" if case.description else message
            self.tallies[check_id].add(Finding(name, case.label, status, title, detail, exchange))
        if case.label != SUBMIT or status != 202:
            return
        try:
            data = json.loads(case.response["content"])
            job_id, sse_url = str(data["job_id"]), str(data["sse_url"])
        except (ValueError, KeyError, TypeError):
            return
        self.created_jobs.append(job_id)
        if self.reader is not None and case.has_body and not invalid_request(case.body):
            self.reader.add(AcceptedJob(job_id, sse_url, case.body, exchange, "boundary", resubmit_when_gone=True))

    def cancel_created_jobs(self) -> None:
        """Best effort: cancel the jobs fuzzing created so a real engine does not keep generating them."""
        job_ids = list(dict.fromkeys(self.created_jobs))
        if not job_ids or self.reader is None:
            return
        probe = self.reader.probe
        deadline = time.monotonic() + _CANCEL_BUDGET_S

        def cancel(job_id: str) -> None:
            if time.monotonic() < deadline:
                with contextlib.suppress(Exception):
                    probe.request(
                        "DELETE",
                        f"{probe.submit_url}/{job_id}",
                        headers={"Connection": "close"},
                        timeout_s=min(2.0, self.timeout_s),
                    )

        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(cancel, job_ids))
