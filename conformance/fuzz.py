"""The fuzzing bridge: schemathesis drives the contract document against a worker.

Three checks come out of one run:

* ``DC-FUZZ-001`` — submit (``POST /v1/inference``) gets positive and negative bodies generated
  from the contract's ``InferenceRequest`` schema; valid ones must be accepted (202, or 503 when
  the queue is full), invalid ones rejected with a documented 4xx, and nothing may answer 5xx.
* ``DC-FUZZ-002`` — every fuzzed response (submit, and status/cancel/stream with random job
  ids, which must answer 404) matches its documented status, content type, headers and schema;
  event streams are validated event by event against ``itemSchema``.
* ``DC-FUZZ-003`` — schemathesis' state machine follows submit's OpenAPI links (``stream``,
  ``status``, ``cancel``) with the returned ``job_id`` and runs the same checks plus the stateful
  ones (``use_after_free``, ``ensure_resource_availability``) on every step.

Generated ``max_tokens`` are clamped to :data:`MAX_FUZZ_TOKENS` so that a real engine is never
asked for thousands of tokens, and jobs accepted while fuzzing are cancelled again.

schemathesis and hypothesis are imported inside :func:`run_fuzz` only: importing this module is
cheap and has no side effects.
"""

from __future__ import annotations

import contextlib
import functools
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from conformance.model import EXCERPT_BYTES, CheckResult, CheckSpec, Exchange

__all__ = ["FUZZ_CHECKS", "MAX_FUZZ_TOKENS", "run_fuzz"]

FUZZ_CHECKS: tuple[CheckSpec, ...] = (
    CheckSpec(
        "DC-FUZZ-001",
        "DC-1.5",
        "MUST",
        "Fuzzed submit bodies get 202 or a documented 4xx problem, never 5xx",
        "fuzz",
        "schemathesis generates valid and invalid submit bodies from the InferenceRequest schema: valid "
        "bodies must be accepted (202, or 503 when the queue is full), invalid ones rejected with a documented "
        "4xx problem, and no body may cause a 5xx (checks not_a_server_error, positive_data_acceptance, "
        "negative_data_rejection).",
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
)

#: upper bound on any generated ``max_tokens`` that the schema allows
MAX_FUZZ_TOKENS = 16
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
        reference = f"[{index}] " if index <= MAX_EXCHANGES else ""
        return f"{reference}{self.check}: {self.operation} -> {status}{times}: {self.title}" + (
            f" — {text}" if text else ""
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
    text = bytes(data).decode("utf-8", "backslashreplace") if isinstance(data, bytes | bytearray) else str(data)
    # An argv cannot carry NUL: spell it out so the curl line stays usable.
    return text.replace("\x00", "\\x00")


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
    if MAX_FUZZ_TOKENS < value <= 4096:
        body["max_tokens"] = MAX_FUZZ_TOKENS


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
        self.consecutive_failures = 0
        self.tallies[check_id].requests += 1
        if check_id == "DC-FUZZ-001" and _is_negative(case):
            self.negative_submits += 1
        self.tallies[check_id].operations.add(str(case.operation.label))
        self._remember_job(case, response)
        return response

    def _remember_job(self, case: Any, response: Any) -> None:
        if str(case.operation.label) != _SUBMIT or response.status_code != 202:
            return
        try:
            job_id = response.json().get("job_id")
        except Exception:
            return
        if isinstance(job_id, str) and job_id:
            self.created_jobs.append(job_id)


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

    ``max_examples`` scales every phase: that many positive and that many negative submit bodies,
    a fifth of it for each job route with random ids, and that many stateful scenarios of at most
    five steps. ``seed`` makes generation reproducible (``None``: random). Never raises.
    """
    started = time.monotonic()
    max_examples = max(1, int(max_examples))
    # A soft budget: once spent, no further request is sent (streams are cut at ``timeout_s`` by schemathesis).
    budget_s = 30.0 + 2.0 * max_examples
    run = _Run(base_url, timeout_s=timeout_s, deadline=started + budget_s, on_progress=on_progress)
    specs = {spec.id: spec for spec in FUZZ_CHECKS}
    try:
        _fuzz(run, base_url, token=token, max_examples=max_examples, timeout_s=timeout_s, seed=seed)
    except Exception as exc:
        reason = f"schemathesis could not fuzz {base_url}: {_describe_error(exc)}"
        for tally in run.tallies.values():
            tally.aborted = tally.aborted or reason
    finally:
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

    t1, t2, t3 = (run.tallies[spec.id] for spec in FUZZ_CHECKS)
    # Loading schemathesis and the contract, and cleaning up, count toward the first check.
    t1.seconds += max(0.0, time.monotonic() - started - t1.seconds - t2.seconds - t3.seconds)
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
            f"{t1.requests} fuzzed submit bodies ({t1.requests - run.negative_submits} positive, "
            f"{run.negative_submits} negative), no finding",
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
    ]


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

    run.progress(f"fuzz: {max_examples} stateful scenarios following submit's links")
    run.guard(("DC-FUZZ-003",), "stateful link fuzzing", lambda: _run_stateful(run, schema, max_examples, seed))
