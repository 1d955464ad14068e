"""The phases of a fuzz run: boundary cases, generated bodies, random job ids, stateful link following.

Each phase sends through the `FuzzSession`, which tallies what came back per check. schemathesis
and hypothesis are imported inside the phases only: importing this module has no side effects.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import httpx

from conformance.client import resolve
from conformance.fuzz.boundary import run_coverage
from conformance.fuzz.evidence import exchange_from_response
from conformance.fuzz.session import ACCEPTANCE_CHECKS, FuzzSession
from conformance.fuzz.tally import TRANSPORT, Note
from conformance.probe import Probe

__all__ = ["config_dict", "fuzz_phases", "hypothesis_settings"]

_JOB_ROUTES: Final = (
    ("/v1/inference/{job_id}", "GET"),
    ("/v1/inference/{job_id}", "DELETE"),
    ("/v1/inference/{job_id}/stream", "GET"),
)
_CONFORMANCE_CHECKS: Final = (
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
)
_STATEFUL_CHECKS: Final = ("use_after_free", "ensure_resource_availability")
#: the boundary run may take this long even when the soft budget is shorter (it runs first)
_BOUNDARY_MIN_S: Final = 120.0
#: pseudo-check name of a random job id that was not answered 404
_UNKNOWN_JOB: Final = "unknown_job_not_found"
_STREAM_TEMPLATE: Final = "/v1/inference/{job_id}/stream"


def config_dict(base_url: str, token: str | None, timeout_s: float, seed: int | None) -> dict[str, Any]:
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


def hypothesis_settings(max_examples: int, *, step_count: int | None = None) -> Any:
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
    session: FuzzSession,
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
    checks = ACCEPTANCE_CHECKS + _CONFORMANCE_CHECKS

    def test(case: Any) -> None:
        if not session.time_left():
            return
        response = session.call(check_id_for(TRANSPORT), case)
        if response is None:
            return
        session.validate(check_id_for, case, response, checks)
        if extra is not None:
            extra(case, response)

    wrapped = hypothesis.given(case=strategy)(test)
    wrapped = hypothesis_settings(examples)(wrapped)
    if seed is not None:
        wrapped = hypothesis.seed(seed)(wrapped)
    wrapped()


def _unknown_job_check(session: FuzzSession, *, negative: bool) -> Callable[[Any, Any], None]:
    allowed = {401, 404} | ({400} if negative else set())

    def check(case: Any, response: Any) -> None:
        if response.status_code in allowed:
            return
        expected = ", ".join(str(status) for status in sorted(allowed))
        failure = Note(
            "Unknown job id not answered with 404",
            f"A random job id must answer 404 (DC-2.9, DC-3.3); expected one of {expected}, got {response.status_code}",
        )
        session.record_failure(
            "DC-FUZZ-002",
            _UNKNOWN_JOB,
            case=case,
            status=response.status_code,
            failure=failure,
            ex=exchange_from_response(response, case, session.base_url),
        )

    return check


def _run_stateful(session: FuzzSession, schema: Any, examples: int, seed: int | None) -> None:
    import hypothesis
    from hypothesis.errors import Unsatisfiable

    base = schema.as_state_machine()
    checks = ACCEPTANCE_CHECKS + _CONFORMANCE_CHECKS + _STATEFUL_CHECKS
    tally = session.tallies["DC-FUZZ-003"]

    class _TransportFailed(Exception):
        pass

    class DualcallMachine(base):  # type: ignore[misc, valid-type]
        def setup(self) -> None:
            tally.scenarios += 1

        def call(self, case: Any, **kwargs: Any) -> Any:
            if not session.time_left():
                hypothesis.reject()
            response = session.call("DC-FUZZ-003", case)
            if response is None:
                raise _TransportFailed(str(case.operation.label))
            return response

        def validate_response(self, response: Any, case: Any, additional_checks: Any = None, **kwargs: Any) -> None:
            session.validate(
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
        machine.run(settings=hypothesis_settings(examples, step_count=5))
    except _TransportFailed:
        tally.notes.append("the stateful run stopped at the first request that got no response")
    except Unsatisfiable:
        pass  # every scenario hit the time budget


@dataclass(frozen=True, slots=True)
class _StreamShape:
    #: where a job's ``sse_url`` resolves, when that is not the reference layout
    layout: str | None = None
    #: the stream stayed open after ``data: [DONE]`` (DC-2.7, judged by DC-STREAM-007)
    held_open: bool = False


def _stream_shape(probe: Probe) -> _StreamShape:
    """How a 1-token job's stream is served: its layout, and whether the worker closes it after [DONE]."""
    try:
        answer = probe.submit({"prompt": "layout probe", "max_tokens": 1})
        body = answer.json() if answer.status_code == 202 else None
        if not isinstance(body, dict) or not isinstance(body.get("job_id"), str):
            return _StreamShape()
        resolved = resolve(probe.submit_url, str(body.get("sse_url", "")))
        capture = probe.stream(resolved, await_close=True, max_duration_s=probe.timeout_s)
        probe.request("DELETE", f"{probe.submit_url}/{body['job_id']}")
    except (httpx.HTTPError, ValueError):
        return _StreamShape()
    reference = probe.base_url + _STREAM_TEMPLATE.replace("{job_id}", body["job_id"])
    return _StreamShape(
        layout=None if resolved == reference else resolved,
        held_open=capture.done_seen and not capture.closed_after_done,
    )


def _run_boundary(
    session: FuzzSession, base_url: str, *, token: str | None, timeout_s: float, seed: int | None
) -> None:
    """The coverage phase's deterministic boundary cases for submit (`conformance.fuzz.boundary`)."""
    import openapi

    checks: dict[str, dict[str, Any]] = dict(config_dict(base_url, token, timeout_s, seed)["checks"])
    checks.update({name: {} for name in _CONFORMANCE_CHECKS})
    result = run_coverage(
        openapi.DOCUMENT_PATH,
        base_url,
        checks=checks,
        token=token,
        timeout_s=timeout_s,
        seed=seed,
        # its own floor: on a loaded machine the CLI's start alone takes a while, and 107 requests more
        time_limit_s=max(_BOUNDARY_MIN_S, session.deadline - time.monotonic()),
    )
    if result.problem is not None:
        raise RuntimeError(result.problem)
    transport_error = result.errors[0] if result.errors else "no response"
    for case in result.cases:
        session.accept_boundary(case, transport_error)


def _always_fuzz_002(_check: str) -> str:
    return "DC-FUZZ-002"


def fuzz_phases(
    session: FuzzSession,
    probe: Probe,
    *,
    max_examples: int,
    seed: int | None,
    max_tokens_cap: int | None,
    reachable: bool,
) -> None:
    """Every phase in turn; ``probe`` (the stream reader's) serves the bridge's own few requests."""
    base_url, token, timeout_s = probe.base_url, probe.token, probe.timeout_s
    session.progress("fuzz: loading schemathesis")
    import schemathesis
    from schemathesis import GenerationMode
    from schemathesis.config import SchemathesisConfig

    import openapi

    config = SchemathesisConfig.from_dict(config_dict(base_url, token, timeout_s, seed))
    schema = schemathesis.openapi.from_path(openapi.DOCUMENT_PATH, config=config)

    submit = schema["/v1/inference"]["POST"]

    session.max_tokens_cap = max_tokens_cap
    if reachable:  # an unreachable target is diagnosed by the first generated request
        session.progress("fuzz: deterministic boundary cases of every submit field (schemathesis coverage phase)")
        boundary_started = time.monotonic()
        session.guard(
            ("DC-FUZZ-001", "DC-FUZZ-002"),
            "boundary-case phase",
            functools.partial(_run_boundary, session, base_url, token=token, timeout_s=timeout_s, seed=seed),
        )
        # The generated phases keep their whole budget: a slow boundary run must not starve them.
        session.deadline += time.monotonic() - boundary_started

    def submit_check_id(name: str) -> str:
        return "DC-FUZZ-001" if name in (*ACCEPTANCE_CHECKS, TRANSPORT) else "DC-FUZZ-002"

    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
        session.progress(f"fuzz: {max_examples} {mode.value} submit bodies")
        session.guard(
            ("DC-FUZZ-001", "DC-FUZZ-002"),
            f"{mode.value} submit fuzzing",
            functools.partial(
                _fuzz_operation, session, submit, mode, examples=max_examples, seed=seed, check_id_for=submit_check_id
            ),
        )
    # Every submit response was validated for DC-FUZZ-002 as well.
    session.tallies["DC-FUZZ-002"].requests += session.tallies["DC-FUZZ-001"].requests
    session.tallies["DC-FUZZ-002"].operations |= session.tallies["DC-FUZZ-001"].operations
    if session.halted is not None:
        return

    examples = max(1, max_examples // 5)
    for path, method in _JOB_ROUTES:
        operation = schema[path][method]
        modes = [GenerationMode.POSITIVE]
        if path.endswith("/stream"):
            modes.append(GenerationMode.NEGATIVE)  # a malformed Last-Event-ID
        for mode in modes:
            session.progress(f"fuzz: {examples} {mode.value} {method} {path} with random job ids")
            session.guard(
                ("DC-FUZZ-002",),
                f"{mode.value} fuzzing of {method} {path}",
                functools.partial(
                    _fuzz_operation,
                    session,
                    operation,
                    mode,
                    examples=examples,
                    seed=seed,
                    check_id_for=_always_fuzz_002,
                    extra=_unknown_job_check(session, negative=mode == GenerationMode.NEGATIVE),
                ),
            )

    stateful_schema: Any = schema
    shape = _stream_shape(probe)
    if shape.layout is not None:
        # DC-1.7: streams may live anywhere sse_url points; the document's stream link names the reference layout
        stateful_schema = schema.exclude(path=_STREAM_TEMPLATE)
        session.tallies["DC-FUZZ-003"].notes.append(
            f"this worker serves streams at {shape.layout}, not the reference layout: the stateful phase does not "
            "follow the document's stream link (the stream itself is checked by the DC-STREAM checks)"
        )
    elif shape.held_open:
        # schemathesis reads a stream until the server closes it: every read would wait out the request
        # timeout, and jobs would expire meanwhile (one defect, DC-STREAM-007's, not a cascade of 404s)
        stateful_schema = schema.exclude(path=_STREAM_TEMPLATE)
        session.tallies["DC-FUZZ-003"].notes.append(
            "this worker keeps a stream open after [DONE] (see DC-STREAM-007): the stateful phase does not "
            "follow the stream link"
        )
    session.progress(f"fuzz: {max_examples} stateful scenarios following submit's links")
    session.guard(
        ("DC-FUZZ-003",), "stateful link fuzzing", lambda: _run_stateful(session, stateful_schema, max_examples, seed)
    )
