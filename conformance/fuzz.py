"""The fuzzing bridge: schemathesis drives the contract document against a worker.

Three checks come out of one run:

* ``DC-FUZZ-001`` — submit (``POST /v1/inference``) gets the deterministic boundary cases of
  schemathesis' coverage phase (every field's smallest and largest valid value, min-1, max+1,
  ``null``, wrong types; see `conformance.fuzz_boundary`) and positive and negative bodies generated
  from the contract's ``InferenceRequest`` schema; valid ones must be accepted (202, or 503 when
  the queue is full), invalid ones rejected with a documented 4xx, and nothing may answer 5xx.
  A ``max_tokens`` between the worker's advertised ``max_tokens_cap`` and the contract's maximum
  may be clamped or rejected with 422 (DC-1.1).
* ``DC-FUZZ-002`` — every fuzzed response (submit, and status/cancel/stream with random job
  ids, which must answer 404) matches its documented status, content type, headers and schema;
  event streams are validated event by event against ``itemSchema``.
* ``DC-FUZZ-003`` — schemathesis' state machine follows submit's OpenAPI links (``stream``,
  ``status``, ``cancel``) with the returned ``job_id`` and runs the same checks plus the stateful
  ones (``use_after_free``, ``ensure_resource_availability``) on every step.
* ``DC-FUZZ-004`` — every job accepted for a valid body (boundary, generated or stateful) is read
  to its end (`conformance.fuzz_streams`): none may end in an ``error`` whose code is not a
  runtime-limit code (DC-2.15).

Generated ``max_tokens`` are clamped to :data:`MAX_FUZZ_TOKENS` so that a real engine is never
asked for thousands of tokens (the boundary cases keep theirs: that is what they test), and jobs
accepted while fuzzing are cancelled again once their streams are read.

schemathesis and hypothesis are imported inside :func:`run_fuzz` only: importing this module is
cheap and has no side effects.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from conformance.contract import max_tokens_limit
from conformance.fuzz_boundary import BoundaryCase, run_coverage
from conformance.fuzz_streams import AcceptedJob, ReadSummary, StreamReader, body_text
from conformance.model import EXCERPT_BYTES, CheckResult, CheckSpec, Exchange
from conformance.outcomes import invalid_request

__all__ = ["FUZZ_CHECKS", "MAX_FUZZ_TOKENS", "run_fuzz"]

FUZZ_CHECKS: tuple[CheckSpec, ...] = (
    CheckSpec(
        "DC-FUZZ-001",
        "DC-1.5",
        "MUST",
        "Fuzzed submit bodies get 202 or a documented 4xx problem, never 5xx",
        "fuzz",
        "schemathesis sends the deterministic boundary cases of every InferenceRequest field (smallest and "
        "largest valid values, min-1, max+1, null, wrong types) and generated valid and invalid bodies: valid "
        "bodies must be accepted (202, or 503 when the queue is full; a max_tokens above the advertised cap may "
        "also get 422), invalid ones rejected with a documented 4xx problem, and no body may cause a 5xx (checks "
        "not_a_server_error, positive_data_acceptance, negative_data_rejection).",
    ),
    CheckSpec(
        "DC-FUZZ-002",
        "DC-5.3",
        "MUST",
        "Every fuzzed response matches its documented schema, status and headers",
        "fuzz",
        "Every response to a fuzzed submit, and to status, cancel and stream with random job ids (which must "
        "answer 404), is checked against the contract: documented status code, content type, required headers "
        "and body schema; event streams are validated event by event against itemSchema.",
    ),
    CheckSpec(
        "DC-FUZZ-003",
        "DC-1.7",
        "MUST",
        "Following submit's links (stream, status, cancel) statefully finds no failure",
        "fuzz",
        "schemathesis' state machine submits jobs and follows the submit response's OpenAPI links with the "
        "returned job_id, checking every response plus use_after_free and ensure_resource_availability.",
    ),
    CheckSpec(
        "DC-FUZZ-004",
        "DC-2.15",
        "MUST",
        "Valid fuzzed and boundary requests run to completion without an internal error",
        "fuzz",
        "Every job the worker accepted for a valid body during fuzzing (boundary cases, generated bodies, stateful "
        "scenarios) is read to its end with the suite's strict reader, each read with a deadline: none may end "
        "in an error event whose code is not a runtime-limit code (context_length_exceeded, shutdown, worker_lost).",
    ),
)

#: upper bound on any generated ``max_tokens`` that the schema allows
MAX_FUZZ_TOKENS = 16
#: fuzzed responses between two progress reports
PROGRESS_EVERY = 10
#: exchanges kept per result (one per distinct finding)
MAX_EXCHANGES = 5
#: detail lines kept per result
MAX_DETAILS = 20

_SUBMIT = "POST /v1/inference"
_JOB_ROUTES = (
    ("/v1/inference/{job_id}", "GET"),
    ("/v1/inference/{job_id}", "DELETE"),
    ("/v1/inference/{job_id}/stream", "GET"),
)
_ACCEPTANCE_CHECKS = ("not_a_server_error", "positive_data_acceptance", "negative_data_rejection")
_CONFORMANCE_CHECKS = (
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
)
_STATEFUL_CHECKS = ("use_after_free", "ensure_resource_availability")
_FUZZ_SOURCES = {"DC-FUZZ-001": "generated", "DC-FUZZ-003": "stateful"}
#: seconds the stream reads get after the last fuzzed request
_READ_GRACE_S = 15.0
#: the boundary run may take this long even when the soft budget is shorter (it runs first)
_BOUNDARY_MIN_S = 120.0
#: pseudo-check names for what the bridge itself finds
_UNKNOWN_JOB = "unknown_job_not_found"
_TRANSPORT = "transport_error"
_INTERNAL = "schemathesis_error"
#: requests in a row without a response after which the run stops (the target is down or hangs)
_MAX_CONSECUTIVE_FAILURES = 3
_MASKED_TOKEN = "Bearer <redacted>"
_NOISE_HEADERS = {"x-schemathesis-testcaseid"}


def _config_dict(base_url: str, token: str | None, timeout_s: float, seed: int | None) -> dict[str, Any]:
    config: dict[str, Any] = {
        "base-url": base_url.rstrip("/"),
        "request-timeout": timeout_s,
        "checks": {
            # 503 is the documented "queue full" answer of submit; other 5xx stay server errors.
            "not_a_server_error": {"expected-statuses": ["2xx", "3xx", "4xx", "503"]},
            # Valid data: accepted, or the documented refusals that do not blame the data.
            "positive_data_acceptance": {"expected-statuses": ["2xx", "401", "404", "409", "503"]},
            # Invalid data: a documented 4xx (DC-1.5), never a 2xx or a 5xx.
            "negative_data_rejection": {"expected-statuses": ["400", "401", "404", "409", "413", "415", "422"]},
        },
    }
    if token:
        config["headers"] = {"Authorization": f"Bearer {token}"}
    if seed is not None:
        config["seed"] = seed
    return config


@dataclass(frozen=True, slots=True)
class _Note:
    """A finding of the bridge itself, shaped like a schemathesis ``Failure``."""

    title: str
    message: str


@dataclass(slots=True)
class _Finding:
    check: str
    operation: str
    status: int | None
    title: str
    message: str
    exchange: Exchange
    count: int = 1

    def line(self, index: int) -> str:
        status = "no response" if self.status is None else str(self.status)
        text = " ".join(self.message.split())
        if len(text) > 400:
            text = text[:397] + "..."
        times = f" ({self.count}x)" if self.count > 1 else ""
        evidence = f" (exchange {index} in the report)" if index <= MAX_EXCHANGES else ""
        return (
            f"{self.check}: {self.operation} -> {status}{times}: {self.title}"
            + (f" — {text}" if text else "")
            + evidence
        )


@dataclass(slots=True)
class _Tally:
    """What one check id saw: request counts and distinct findings."""

    requests: int = 0
    operations: set[str] = field(default_factory=set)
    findings: dict[tuple[str, str, int | None], _Finding] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    aborted: str | None = None
    seconds: float = 0.0
    scenarios: int = 0

    def add(self, finding: _Finding) -> None:
        key = (finding.check, finding.operation, finding.status)
        seen = self.findings.get(key)
        if seen is None:
            self.findings[key] = finding
        else:
            seen.count += 1


def _text(data: object) -> str | None:
    if data is None:
        return None
    # NUL stays a NUL: Exchange.curl() pipes such a body through printf, so the line still runs as printed
    return bytes(data).decode("utf-8", "backslashreplace") if isinstance(data, bytes | bytearray) else str(data)


def _request_headers(headers: object) -> dict[str, str]:
    result: dict[str, str] = {}
    items = headers.items() if isinstance(headers, dict) or hasattr(headers, "items") else []
    for name, value in items:
        key = str(name)
        if key.lower() in _NOISE_HEADERS:
            continue
        result[key] = _MASKED_TOKEN if key.lower() == "authorization" else str(value)
    return result


def _response_headers(headers: object) -> dict[str, str]:
    result: dict[str, str] = {}
    items = headers.items() if hasattr(headers, "items") else []
    for name, value in items:
        result[str(name)] = ", ".join(str(v) for v in value) if isinstance(value, list | tuple) else str(value)
    return result


def _exchange_from_request(request: Any, *, fallback_method: str, fallback_url: str) -> Exchange:
    if request is None:
        return Exchange(method=fallback_method, url=fallback_url)
    return Exchange(
        method=str(getattr(request, "method", None) or fallback_method),
        url=str(getattr(request, "url", None) or fallback_url),
        request_headers=_request_headers(getattr(request, "headers", {})),
        request_body=_text(getattr(request, "body", None)),
    )


def _exchange_from_response(response: Any, case: Any, base_url: str) -> Exchange:
    exchange = _exchange_from_request(
        getattr(response, "request", None),
        fallback_method=str(case.method).upper(),
        fallback_url=base_url.rstrip("/") + str(case.formatted_path),
    )
    content = bytes(getattr(response, "content", b"") or b"")
    exchange.status = int(response.status_code)
    exchange.response_headers = _response_headers(getattr(response, "headers", {}))
    exchange.body_excerpt = content[:EXCERPT_BYTES].decode("utf-8", "replace")
    exchange.body_truncated = len(content) > EXCERPT_BYTES
    elapsed = getattr(response, "elapsed", None)
    if isinstance(elapsed, int | float):
        exchange.elapsed_ms = round(float(elapsed) * 1000, 1)
    return exchange


def _exchange_from_error(exc: BaseException, case: Any, base_url: str) -> Exchange:
    exchange = _exchange_from_request(
        getattr(exc, "request", None),
        fallback_method=str(case.method).upper(),
        fallback_url=base_url.rstrip("/") + str(case.formatted_path),
    )
    exchange.error = _describe_error(exc)
    return exchange


def _exchange_from_record(case: BoundaryCase) -> Exchange:
    """The evidence of a boundary case, from the request and response the CLI recorded."""
    request, response = case.request, case.response or {}
    exchange = Exchange(
        method=str(request.get("method") or case.method),
        url=str(request.get("uri") or case.path),
        request_headers=_request_headers(_response_headers(request.get("headers") or {})),
        request_body=_text(request.get("body")),
    )
    if case.response is not None:
        content = bytes(response.get("content") or b"")
        exchange.status = int(response.get("status", 0))
        exchange.response_headers = _response_headers(response.get("headers") or {})
        exchange.body_excerpt = content[:EXCERPT_BYTES].decode("utf-8", "replace")
        exchange.body_truncated = len(content) > EXCERPT_BYTES
        elapsed = response.get("elapsed")
        if isinstance(elapsed, int | float):
            exchange.elapsed_ms = round(float(elapsed) * 1000, 1)
    return exchange


def _describe_error(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if len(text) > 300:
        text = text[:297] + "..."
    return f"{type(exc).__name__}: {text}"


def _clamp_max_tokens(case: Any) -> None:
    """Keep in-range ``max_tokens`` at or below :data:`MAX_FUZZ_TOKENS`; out-of-range values stay (negative data)."""
    body = getattr(case, "body", None)
    if not isinstance(body, dict):
        return
    value = body.get("max_tokens")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return
    if isinstance(value, float) and not value.is_integer():
        return
    if MAX_FUZZ_TOKENS < value <= max_tokens_limit():
        body["max_tokens"] = MAX_FUZZ_TOKENS


def _clamp_or_reject(body: Any, status: int, cap: int | None) -> bool:
    """A 422 for a ``max_tokens`` between the worker's advertised cap and the contract's maximum.

    DC-1.1 lets a worker clamp such a value to its cap; rejecting it is not a failure either.
    """
    if status != 422 or cap is None or not isinstance(body, dict):
        return False
    value = body.get("max_tokens")
    return isinstance(value, int) and not isinstance(value, bool) and cap < value <= max_tokens_limit()


def _result(spec: CheckSpec, tally: _Tally, clean_message: str) -> CheckResult:
    findings = list(tally.findings.values())
    details = [finding.line(index) for index, finding in enumerate(findings[:MAX_DETAILS], start=1)]
    if len(findings) > MAX_DETAILS:
        details.append(f"... and {len(findings) - MAX_DETAILS} more distinct findings")
    details.extend(tally.notes)
    exchanges = [finding.exchange for finding in findings[:MAX_EXCHANGES]]
    duration = tally.seconds
    if tally.aborted is not None:
        message = tally.aborted
        if any(finding.check != _TRANSPORT for finding in findings):
            message += f"; {len(findings)} distinct finding(s) before that"
        return CheckResult(spec.id, spec.rule, spec.level, spec.title, "failed", message, exchanges, details, duration)
    if findings:
        checks = sorted({finding.check for finding in findings})
        occurrences = sum(finding.count for finding in findings)
        message = (
            f"{len(findings)} distinct finding(s) ({occurrences} occurrences) in {tally.requests} fuzzed "
            f"requests: {', '.join(checks)}"
        )
        return CheckResult(spec.id, spec.rule, spec.level, spec.title, "failed", message, exchanges, details, duration)
    return CheckResult(spec.id, spec.rule, spec.level, spec.title, "passed", clean_message, [], details, duration)


class _Run:
    """State shared by the phases of one fuzz run."""

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
        self.tallies: dict[str, _Tally] = {spec.id: _Tally() for spec in FUZZ_CHECKS}
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

    def guard(self, check_ids: tuple[str, ...], phase: str, action: Callable[[], None]) -> None:
        """Run one phase; an error of schemathesis or hypothesis fails only the checks that phase feeds.

        The phase's time counts toward the first of ``check_ids``.
        """
        started = time.monotonic()
        try:
            action()
        except Exception as exc:
            reason = f"schemathesis could not run the {phase}: {_describe_error(exc)}"
            for check_id in check_ids:
                tally = self.tallies[check_id]
                tally.aborted = tally.aborted or reason
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
        self.tallies[check_id].add(_Finding(check, operation, status, title, message, ex))

    def record_failure_for(self, check: str, operation: str, failure: _Note, ex: Exchange) -> None:
        self.tallies["DC-FUZZ-001"].add(_Finding(check, operation, None, failure.title, failure.message, ex))

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
            if name == "positive_data_acceptance" and _clamp_or_reject(
                getattr(case, "body", None), response.status_code, self.max_tokens_cap
            ):
                continue
            function = CHECKS.get_one(name)
            try:
                case.validate_response(
                    response, checks=[function], transport_kwargs=transport_kwargs, recorder=recorder
                )
            except FailureGroup as group:
                exchange = exchange or _exchange_from_response(response, case, self.base_url)
                for failure in group.exceptions:
                    self.record_failure(
                        check_id_for(name), name, case=case, status=response.status_code, failure=failure, ex=exchange
                    )
            except Exception as exc:
                exchange = exchange or _exchange_from_response(response, case, self.base_url)
                note = _Note(f"schemathesis could not run {name}", _describe_error(exc))
                self.record_failure(
                    check_id_for(name), _INTERNAL, case=case, status=response.status_code, failure=note, ex=exchange
                )

    def call(self, check_id: str, case: Any) -> Any | None:
        """Send ``case``; a transport failure becomes a finding and ``None``."""
        _clamp_max_tokens(case)
        try:
            response = case.call(timeout=self.timeout_s)
        except Exception as exc:
            self.tallies[check_id].requests += 1
            self.tallies[check_id].operations.add(str(case.operation.label))
            if _is_connection_failure(exc):
                self.connection_failures += 1
                self.unreachable_reason = self.unreachable_reason or _connection_reason(exc)
            self.consecutive_failures += 1
            if self.consecutive_failures >= _MAX_CONSECUTIVE_FAILURES:
                self.halted = (
                    f"fuzzing stopped after {self.consecutive_failures} requests in a row got no response "
                    f"(last: {_connection_reason(exc)})"
                )
            note = _Note("Request failed", _describe_error(exc))
            exchange = _exchange_from_error(exc, case, self.base_url)
            self.record_failure(check_id, _TRANSPORT, case=case, status=None, failure=note, ex=exchange)
            return None
        self.responses += 1
        if self.responses % PROGRESS_EVERY == 0:
            scenarios = self.tallies["DC-FUZZ-003"].scenarios
            self.progress(f"fuzz: {self.responses} requests, {scenarios} stateful scenarios")
        self.consecutive_failures = 0
        self.tallies[check_id].requests += 1
        if check_id == "DC-FUZZ-001" and _is_negative(case):
            self.negative_submits += 1
        self.tallies[check_id].operations.add(str(case.operation.label))
        self._remember_job(case, response, check_id)
        return response

    def _remember_job(self, case: Any, response: Any, check_id: str) -> None:
        if str(case.operation.label) != _SUBMIT or response.status_code != 202:
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
        exchange = _exchange_from_response(response, case, self.base_url)
        self.reader.add(AcceptedJob(job_id, sse_url, body, exchange, source))

    def accept_boundary(self, case: BoundaryCase, transport_error: str) -> None:
        """Findings, counts and accepted jobs of one coverage case (see :func:`_run_boundary`)."""
        tally = self.tallies["DC-FUZZ-001"]
        tally.requests += 1
        if case.label == _SUBMIT:  # not the undocumented methods the phase also tries on the path
            tally.operations.add(case.label)
        self.boundary_cases += 1
        if case.response is None:
            note = _Note("Request failed", transport_error)
            self.record_failure_for(_TRANSPORT, case.label, note, _exchange_from_record(case))
            return
        self.responses += 1
        if not case.positive:
            self.negative_submits += 1
        status = int(case.response["status"])
        exchange = _exchange_from_record(case)
        for name, title, message in case.failures:
            if name == "positive_data_acceptance" and _clamp_or_reject(case.body, status, self.max_tokens_cap):
                continue
            check_id = "DC-FUZZ-001" if name in _ACCEPTANCE_CHECKS else "DC-FUZZ-002"
            detail = f"{message} (boundary case: {case.description})" if case.description else message
            self.tallies[check_id].add(_Finding(name, case.label, status, title, detail, exchange))
        if case.label != _SUBMIT or status != 202:
            return
        try:
            data = json.loads(case.response["content"])
            job_id, sse_url = str(data["job_id"]), str(data["sse_url"])
        except (ValueError, KeyError, TypeError):
            return
        self.created_jobs.append(job_id)
        if self.reader is not None and case.has_body and not invalid_request(case.body):
            self.reader.add(AcceptedJob(job_id, sse_url, case.body, exchange, "boundary", resubmit_when_gone=True))


def _is_negative(case: Any) -> bool:
    generation = getattr(getattr(case, "meta", None), "generation", None)
    return bool(getattr(getattr(generation, "mode", None), "is_negative", False))


def _is_connection_failure(exc: BaseException) -> bool:
    import requests

    return isinstance(exc, requests.exceptions.ConnectionError) and not isinstance(exc, requests.exceptions.ReadTimeout)


_ERRNO_REASON = re.compile(r"\[Errno -?\d+\] ([^'\")]+)")


def _connection_reason(exc: BaseException) -> str:
    """The root cause of a connection error in a few words, e.g. ``connection refused``."""
    text = str(exc)
    match = _ERRNO_REASON.search(text)
    if match:
        return match.group(1).strip().rstrip(".").lower()
    if "Name or service not known" in text or "nodename nor servname" in text:
        return "host name not found"
    if "read timed out" in text.lower():
        return "no response within the request timeout"
    if "timed out" in text.lower():
        return "connection timed out"
    return _describe_error(exc)


def _hypothesis_settings(max_examples: int, *, step_count: int | None = None) -> Any:
    import hypothesis

    kwargs: dict[str, Any] = {}
    if step_count is not None:
        kwargs["stateful_step_count"] = step_count
    return hypothesis.settings(
        max_examples=max(1, max_examples),
        deadline=None,
        database=None,
        derandomize=False,
        print_blob=False,
        report_multiple_bugs=False,
        verbosity=hypothesis.Verbosity.quiet,
        phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
        suppress_health_check=list(hypothesis.HealthCheck),
        **kwargs,
    )


def _fuzz_operation(
    run: _Run,
    operation: Any,
    mode: Any,
    *,
    examples: int,
    seed: int | None,
    check_id_for: Callable[[str], str],
    extra: Callable[[Any, Any], None] | None = None,
) -> None:
    import hypothesis

    strategy = operation.as_strategy(generation_mode=mode)
    checks = _ACCEPTANCE_CHECKS + _CONFORMANCE_CHECKS

    def test(case: Any) -> None:
        if not run.time_left():
            return
        response = run.call(check_id_for(_TRANSPORT), case)
        if response is None:
            return
        run.validate(check_id_for, case, response, checks)
        if extra is not None:
            extra(case, response)

    wrapped = hypothesis.given(case=strategy)(test)
    wrapped = _hypothesis_settings(examples)(wrapped)
    if seed is not None:
        wrapped = hypothesis.seed(seed)(wrapped)
    wrapped()


def _unknown_job_check(run: _Run, *, negative: bool) -> Callable[[Any, Any], None]:
    allowed = {401, 404} | ({400} if negative else set())

    def check(case: Any, response: Any) -> None:
        if response.status_code in allowed:
            return
        expected = ", ".join(str(status) for status in sorted(allowed))
        failure = _Note(
            "Unknown job id not answered with 404",
            f"A random job id must answer 404 (DC-2.9, DC-3.3); expected one of {expected}, got {response.status_code}",
        )
        run.record_failure(
            "DC-FUZZ-002",
            _UNKNOWN_JOB,
            case=case,
            status=response.status_code,
            failure=failure,
            ex=_exchange_from_response(response, case, run.base_url),
        )

    return check


def _run_stateful(run: _Run, schema: Any, examples: int, seed: int | None) -> None:
    import hypothesis
    from hypothesis.errors import Unsatisfiable

    base = schema.as_state_machine()
    checks = _ACCEPTANCE_CHECKS + _CONFORMANCE_CHECKS + _STATEFUL_CHECKS
    tally = run.tallies["DC-FUZZ-003"]

    class _TransportFailed(Exception):
        pass

    class DualcallMachine(base):  # type: ignore[misc, valid-type]
        def setup(self) -> None:
            tally.scenarios += 1

        def call(self, case: Any, **kwargs: Any) -> Any:
            if not run.time_left():
                hypothesis.reject()
            response = run.call("DC-FUZZ-003", case)
            if response is None:
                raise _TransportFailed(str(case.operation.label))
            return response

        def validate_response(self, response: Any, case: Any, additional_checks: Any = None, **kwargs: Any) -> None:
            run.validate(
                lambda _name: "DC-FUZZ-003",
                case,
                response,
                checks,
                transport_kwargs=kwargs or None,
                recorder=self.recorder,
            )

    machine: Any = DualcallMachine
    if seed is not None:
        machine = hypothesis.seed(seed)(machine)
    try:
        machine.run(settings=_hypothesis_settings(examples, step_count=5))
    except _TransportFailed:
        tally.notes.append("the stateful run stopped at the first request that got no response")
    except Unsatisfiable:
        pass  # every scenario hit the time budget


def _cancel_created_jobs(run: _Run, token: str | None) -> None:
    """Best effort: cancel the jobs fuzzing created so a real engine does not keep generating them."""
    job_ids = list(dict.fromkeys(run.created_jobs))
    if not job_ids:
        return
    from concurrent.futures import ThreadPoolExecutor

    import requests

    headers = {"Connection": "close"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    deadline = time.monotonic() + 5.0

    def cancel(job_id: str) -> None:
        if time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                requests.delete(
                    f"{run.base_url}/v1/inference/{job_id}", headers=headers, timeout=min(2.0, run.timeout_s)
                )

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(cancel, job_ids))


def run_fuzz(
    base_url: str,
    *,
    token: str | None = None,
    max_examples: int = 25,
    timeout_s: float = 10.0,
    seed: int | None = 0,
    on_progress: Callable[[str], None] | None = None,
) -> list[CheckResult]:
    """Fuzz the worker at ``base_url`` with schemathesis; one :class:`CheckResult` per :data:`FUZZ_CHECKS` entry.

    The deterministic boundary cases of submit come first (their number depends only on the schema:
    107 with schemathesis 4.32). ``max_examples`` scales the other phases: that many positive and that
    many negative submit bodies, a fifth of it for each job route with random ids, and that many
    stateful scenarios of at most five steps. Jobs accepted for valid bodies are read to their end
    meanwhile (at most :data:`~conformance.fuzz_streams.MAX_READ_JOBS`). ``seed`` makes generation
    reproducible (``None``: random). Never raises.

    Wall time is bounded: the boundary run is stopped after 120 s or the soft budget (30 s + 2 s per
    example), whichever is longer; the other phases send no request once their own soft budget is
    spent; the stream reads get 15 s more plus one read's deadline (``max(5, timeout_s)``);
    cancelling the accepted jobs takes at most 5 s. With the default 25 examples: at most about
    120 + 80 + 15 + 10 + 5 = 230 s against a worker that never answers, 20 to 40 s against the mock.
    """
    started = time.monotonic()
    max_examples = max(1, int(max_examples))
    # A soft budget: once spent, no further request is sent (streams are cut at ``timeout_s`` by schemathesis).
    budget_s = 30.0 + 2.0 * max_examples
    run = _Run(base_url, timeout_s=timeout_s, deadline=started + budget_s, on_progress=on_progress)
    specs = {spec.id: spec for spec in FUZZ_CHECKS}
    summary: ReadSummary | None = None
    try:
        run.reader = StreamReader(base_url, token=token, timeout_s=timeout_s)
        _fuzz(run, base_url, token=token, max_examples=max_examples, timeout_s=timeout_s, seed=seed)
    except Exception as exc:
        reason = f"schemathesis could not fuzz {base_url}: {_describe_error(exc)}"
        for tally in run.tallies.values():
            tally.aborted = tally.aborted or reason
    finally:
        summary = _finish_reads(run)
        with contextlib.suppress(Exception):
            _cancel_created_jobs(run, token)

    if run.responses == 0 and run.connection_failures:
        reason = f"fuzzing could not reach {base_url}: {run.unreachable_reason or 'connection failed'}"
        for tally in run.tallies.values():
            tally.aborted = reason
            for finding in tally.findings.values():
                finding.count = 1  # the same refused connection, not a finding per request
    elif run.halted is not None:
        for tally in run.tallies.values():
            tally.aborted = tally.aborted or run.halted
    if run.out_of_time:
        note = f"time budget of {budget_s:.0f} s spent: later examples were not sent"
        for tally in run.tallies.values():
            tally.notes.append(note)

    t1, t2, t3, t4 = (run.tallies[spec.id] for spec in FUZZ_CHECKS)
    # Loading schemathesis and the contract, and cleaning up, count toward the first check.
    t1.seconds += max(0.0, time.monotonic() - started - t1.seconds - t2.seconds - t3.seconds - t4.seconds)
    linked = sorted(t3.operations - {_SUBMIT})
    if not t3.aborted and not t3.findings and not linked:
        t3.aborted = (
            "no link was followed: no fuzzed submit answered 202 with a job_id "
            "that the stream/status/cancel links could use"
        )
    return [
        _result(
            specs["DC-FUZZ-001"],
            t1,
            f"{t1.requests} fuzzed submit requests ({run.boundary_cases} deterministic boundary cases; "
            f"{t1.requests - run.negative_submits} valid, {run.negative_submits} invalid in all), no finding",
        ),
        _result(
            specs["DC-FUZZ-002"],
            t2,
            f"{t2.requests} fuzzed requests across {len(t2.operations)} operations, no finding",
        ),
        _result(
            specs["DC-FUZZ-003"],
            t3,
            f"{t3.requests} requests in {t3.scenarios} stateful scenarios following submit's links "
            f"to {', '.join(linked) or 'nothing'}, no finding",
        ),
        _reads_result(specs["DC-FUZZ-004"], t4, summary),
    ]


def _finish_reads(run: _Run) -> ReadSummary | None:
    """Wait (bounded) for the stream reads and turn them into DC-FUZZ-004 findings. Never raises."""
    if run.reader is None:
        return None
    tally = run.tallies["DC-FUZZ-004"]
    started = time.monotonic()
    run.progress("fuzz: reading the accepted jobs' streams to their end")
    try:
        summary = run.reader.finish(_READ_GRACE_S)
    except Exception as exc:
        tally.aborted = f"the streams of the accepted jobs could not be read: {_describe_error(exc)}"
        return None
    finally:
        tally.seconds += time.monotonic() - started
    for result in summary.results:
        tally.requests += 1
        tally.operations.add(result.job.source)
        if result.resubmitted is not None:
            run.created_jobs.append(result.resubmitted)
        if result.outcome is None:
            continue
        message = (
            f"{result.outcome.describe()}; {result.job.source} body: {body_text(result.job.body)}; "
            f"stream: {result.stream_url}"
        )
        tally.add(
            _Finding(
                f"error_event[{result.outcome.label}]",
                f"{_SUBMIT} ({result.job.source} body)",
                202,
                "a valid request ended in an error that is not a runtime limit (DC-2.15)",
                message,
                result.job.submit,
            )
        )
    tally.notes.extend(summary.notes())
    return summary


def _reads_result(spec: CheckSpec, tally: _Tally, summary: ReadSummary | None) -> CheckResult:
    ended = summary.ended_by_source() if summary is not None else Counter[str]()
    total = sum(ended.values())
    if tally.aborted is None and not tally.findings and total == 0:
        notes = "; ".join(tally.notes) or "no fuzzed submission with a valid body was accepted with 202"
        message = f"no accepted valid submission was read to its end ({notes})"
        return CheckResult(
            spec.id,
            spec.rule,
            spec.level,
            spec.title,
            "unverified",
            message,
            duration_s=tally.seconds,
            how_to_verify="a worker that accepts valid fuzzed submissions with 202 and streams them",
        )
    breakdown = ", ".join(f"{count} {source}" for source, count in sorted(ended.items()))
    return _result(
        spec,
        tally,
        f"{total} jobs accepted for valid bodies read to their end ({breakdown}); none ended in an internal error",
    )


_STREAM_TEMPLATE = "/v1/inference/{job_id}/stream"


def _stream_layout(base_url: str, token: str | None, timeout_s: float) -> str | None:
    """Where a 1-token job's ``sse_url`` resolves, when that is not the reference layout (else None)."""
    import httpx

    submit_url = base_url.rstrip("/") + "/v1/inference"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with httpx.Client(timeout=min(timeout_s, 10.0), headers=headers) as http:
            answer = http.post(submit_url, json={"prompt": "layout probe", "max_tokens": 1})
            body = answer.json() if answer.status_code == 202 else None
            if not isinstance(body, dict) or not isinstance(body.get("job_id"), str):
                return None
            http.delete(f"{submit_url}/{body['job_id']}")
            resolved = str(httpx.URL(submit_url).join(str(body.get("sse_url", ""))))
    except (httpx.HTTPError, ValueError):
        return None
    reference = base_url.rstrip("/") + _STREAM_TEMPLATE.replace("{job_id}", body["job_id"])
    return None if resolved == reference else resolved


def _advertised_cap(base_url: str, timeout_s: float) -> tuple[int | None, bool]:
    """(the worker's ``max_tokens_cap`` from /health, or None; whether the target answered HTTP at all)."""
    import httpx

    try:
        response = httpx.get(base_url.rstrip("/") + "/health", timeout=min(timeout_s, 10.0))
    except httpx.HTTPError:
        return None, False
    try:
        cap = response.json().get("max_tokens_cap")
    except (ValueError, AttributeError):
        return None, True
    return (cap if isinstance(cap, int) and not isinstance(cap, bool) and cap > 0 else None), True


def _run_boundary(run: _Run, base_url: str, *, token: str | None, timeout_s: float, seed: int | None) -> None:
    """The coverage phase's deterministic boundary cases for submit (`conformance.fuzz_boundary`)."""
    import openapi

    checks: dict[str, dict[str, Any]] = dict(_config_dict(base_url, token, timeout_s, seed)["checks"])
    checks.update({name: {} for name in _CONFORMANCE_CHECKS})
    result = run_coverage(
        openapi.DOCUMENT_PATH,
        base_url,
        checks=checks,
        token=token,
        timeout_s=timeout_s,
        seed=seed,
        # its own floor: on a loaded machine the CLI's start alone takes a while, and 107 requests more
        time_limit_s=max(_BOUNDARY_MIN_S, run.deadline - time.monotonic()),
    )
    if result.problem is not None:
        raise RuntimeError(result.problem)
    transport_error = result.errors[0] if result.errors else "no response"
    for case in result.cases:
        run.accept_boundary(case, transport_error)


def _always_fuzz_002(_check: str) -> str:
    return "DC-FUZZ-002"


def _fuzz(
    run: _Run, base_url: str, *, token: str | None, max_examples: int, timeout_s: float, seed: int | None
) -> None:
    run.progress("fuzz: loading schemathesis")
    import schemathesis
    from schemathesis import GenerationMode
    from schemathesis.config import SchemathesisConfig

    import openapi

    config = SchemathesisConfig.from_dict(_config_dict(base_url, token, timeout_s, seed))
    schema = schemathesis.openapi.from_path(openapi.DOCUMENT_PATH, config=config)

    submit = schema["/v1/inference"]["POST"]

    run.max_tokens_cap, reachable = _advertised_cap(base_url, timeout_s)
    if reachable:  # an unreachable target is diagnosed by the first generated request
        run.progress("fuzz: deterministic boundary cases of every submit field (schemathesis coverage phase)")
        boundary_started = time.monotonic()
        run.guard(
            ("DC-FUZZ-001", "DC-FUZZ-002"),
            "boundary-case phase",
            functools.partial(_run_boundary, run, base_url, token=token, timeout_s=timeout_s, seed=seed),
        )
        # The generated phases keep their whole budget: a slow boundary run must not starve them.
        run.deadline += time.monotonic() - boundary_started

    def submit_check_id(name: str) -> str:
        return "DC-FUZZ-001" if name in (*_ACCEPTANCE_CHECKS, _TRANSPORT) else "DC-FUZZ-002"

    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
        run.progress(f"fuzz: {max_examples} {mode.value} submit bodies")
        run.guard(
            ("DC-FUZZ-001", "DC-FUZZ-002"),
            f"{mode.value} submit fuzzing",
            functools.partial(
                _fuzz_operation, run, submit, mode, examples=max_examples, seed=seed, check_id_for=submit_check_id
            ),
        )
    # Every submit response was validated for DC-FUZZ-002 as well.
    run.tallies["DC-FUZZ-002"].requests += run.tallies["DC-FUZZ-001"].requests
    run.tallies["DC-FUZZ-002"].operations |= run.tallies["DC-FUZZ-001"].operations
    if run.halted is not None:
        return

    examples = max(1, max_examples // 5)
    for path, method in _JOB_ROUTES:
        operation = schema[path][method]
        modes = [GenerationMode.POSITIVE]
        if path.endswith("/stream"):
            modes.append(GenerationMode.NEGATIVE)  # a malformed Last-Event-ID
        for mode in modes:
            run.progress(f"fuzz: {examples} {mode.value} {method} {path} with random job ids")
            run.guard(
                ("DC-FUZZ-002",),
                f"{mode.value} fuzzing of {method} {path}",
                functools.partial(
                    _fuzz_operation,
                    run,
                    operation,
                    mode,
                    examples=examples,
                    seed=seed,
                    check_id_for=_always_fuzz_002,
                    extra=_unknown_job_check(run, negative=mode == GenerationMode.NEGATIVE),
                ),
            )

    stateful_schema: Any = schema
    layout = _stream_layout(base_url, token, timeout_s)
    if layout is not None:
        # DC-1.7: streams may live anywhere sse_url points; the document's stream link names the reference layout
        stateful_schema = schema.exclude(path=_STREAM_TEMPLATE)
        run.tallies["DC-FUZZ-003"].notes.append(
            f"this worker serves streams at {layout}, not the reference layout: the stateful phase does not "
            "follow the document's stream link (the stream itself is checked by the DC-STREAM checks)"
        )
    run.progress(f"fuzz: {max_examples} stateful scenarios following submit's links")
    run.guard(
        ("DC-FUZZ-003",), "stateful link fuzzing", lambda: _run_stateful(run, stateful_schema, max_examples, seed)
    )
