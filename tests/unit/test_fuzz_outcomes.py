"""DC-2.15 building blocks: judging how a job ended, the boundary-case bridge, the stream reader.

No worker process here: the stream reader runs against respx-mocked httpx, the CLI bridge's
report parser against a hand-written NDJSON report in the shape schemathesis 4 writes.
"""

from __future__ import annotations

import base64
import json
import re
import tomllib
from collections.abc import Iterator

import httpx
import pytest
import respx

from conformance.contract import max_tokens_limit, runtime_limit_codes
from conformance.fuzz import MAX_FUZZ_TOKENS, clamp_max_tokens, clamp_or_reject
from conformance.fuzz.boundary import config_toml, parse_report
from conformance.fuzz.streams import AcceptedJob, StreamReader
from conformance.model import Exchange
from conformance.outcomes import invalid_request, unexpected_error, unexpected_status_error
from conformance.sse import parse_stream
from openapi import SPEC_PATH

BASE = "http://worker.test:8000"
JOB = "Xk3J9q0Zr8WbT2mYv5nHcA"


def _stream(terminal: str, data: dict[str, object]) -> bytes:
    return (
        f'id: 1\nevent: started\ndata: {{"job_id":"{JOB}"}}\n\n'
        'id: 2\nevent: token\ndata: {"index":0,"text":"Hi"}\n\n'
        f"id: 3\nevent: {terminal}\ndata: {json.dumps(data)}\n\n"
        "data: [DONE]\n\n"
    ).encode()


# -- the rule's codes: one list in the document, the same list in SPEC.md -------------------------------------


def test_runtime_limit_codes_match_the_spec() -> None:
    text = SPEC_PATH.read_text(encoding="utf-8")
    section = text[text.index("### DC-2.15") : text.index("## DC-3")]
    listed = set(re.findall(r"^- `([a-z_]+)`", section, re.MULTILINE))
    assert (
        listed
        == runtime_limit_codes()
        == {"context_length_exceeded", "shutdown", "worker_lost", "registry_unavailable", "upstream_error"}
    )


# -- judging one stream ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("code", sorted(runtime_limit_codes()))
def test_runtime_limit_codes_are_allowed(code: str) -> None:
    events, _ = parse_stream(_stream("error", {"code": code, "message": "limit"}))
    assert unexpected_error(events) is None


def test_end_is_not_an_error() -> None:
    events, _ = parse_stream(_stream("end", {"tokens_out": 1, "stop_reason": "max_tokens"}))
    assert unexpected_error(events) is None


@pytest.mark.parametrize(
    ("data", "code"),
    [
        ({"code": "internal_error", "message": "the engine failed unexpectedly"}, "internal_error"),
        ({"code": "engine_error", "message": "x"}, "engine_error"),
        ({"message": "no code at all"}, None),
        ({"code": 7, "message": "a number"}, None),
    ],
)
def test_other_error_codes_are_flagged(data: dict[str, object], code: str | None) -> None:
    events, _ = parse_stream(_stream("error", data))
    outcome = unexpected_error(events)
    assert outcome is not None and outcome.code == code
    assert "context_length_exceeded" in outcome.describe()
    assert json.loads(outcome.data) == data


def test_unparseable_error_data_is_flagged() -> None:
    raw = f'id: 1\nevent: started\ndata: {{"job_id":"{JOB}"}}\n\nid: 2\nevent: error\ndata: oops\n\ndata: [DONE]\n\n'
    events, _ = parse_stream(raw.encode())
    outcome = unexpected_error(events)
    assert outcome is not None and outcome.code is None and outcome.label == "no code"


def test_job_status_errors() -> None:
    failed = {"state": "failed", "error": {"code": "internal_error", "message": "boom"}}
    assert unexpected_status_error(failed) is not None
    assert unexpected_status_error({"state": "failed", "error": {"code": "shutdown", "message": "bye"}}) is None
    assert unexpected_status_error({"state": "completed", "error": None}) is None


def test_valid_request_is_judged_by_the_contract() -> None:
    assert invalid_request({"prompt": "x", "temperature": 5e-324, "seed": 2**63 - 1, "top_p": 5e-324}) == []
    assert invalid_request({"prompt": "x", "max_tokens": None})
    assert invalid_request({"prompt": "x", "seed": 2**63})
    assert invalid_request({"prompt": "x", "job_id": "mine"})


# -- DC-1.1: clamp or reject between the advertised cap and the contract's maximum -----------------------------


@pytest.mark.parametrize(
    ("max_tokens", "status", "cap", "allowed"),
    [
        (100, 422, 16, True),
        (4096, 422, 16, True),
        (4097, 422, 16, False),  # above the contract: must be rejected, and a 422 is no excuse needed
        (16, 422, 16, False),  # within the cap: a valid value must be accepted
        (100, 500, 16, False),
        (100, 422, None, False),  # cap unknown: nothing to excuse
        (True, 422, 0, False),
    ],
)
def testclamp_or_reject(max_tokens: object, status: int, cap: int | None, allowed: bool) -> None:
    assert max_tokens_limit() == 4096
    assert clamp_or_reject({"prompt": "x", "max_tokens": max_tokens}, status, cap) is allowed


class _Case:
    def __init__(self, body: object) -> None:
        self.body = body


@pytest.mark.parametrize(
    ("sent", "expected"),
    [(4096, MAX_FUZZ_TOKENS), (17, MAX_FUZZ_TOKENS), (16, 16), (1, 1), (4097, 4097), (0, 0), (2.5, 2.5), ("x", "x")],
)
def test_generated_max_tokens_stay_small(sent: object, expected: object) -> None:
    """Generated bodies never ask an engine for thousands of tokens; out-of-range values stay (negative data)."""
    case = _Case({"prompt": "x", "max_tokens": sent})
    clamp_max_tokens(case)
    assert case.body == {"prompt": "x", "max_tokens": expected}


# -- the schemathesis CLI bridge -------------------------------------------------------------------------------


def test_config_toml_keeps_the_token_out_of_the_file() -> None:
    checks = {"not_a_server_error": {"expected-statuses": ["2xx", "4xx", "503"]}, "status_code_conformance": {}}
    text = config_toml(checks, with_token=True)
    parsed = tomllib.loads(text)
    assert parsed["checks"] == checks
    assert parsed["headers"] == {"Authorization": "Bearer ${DUALCALL_FUZZ_TOKEN}"}
    assert "headers" not in tomllib.loads(config_toml(checks, with_token=False))


def _b64(data: bytes) -> dict[str, str]:
    return {"$base64": base64.b64encode(data).decode()}


def test_parse_report_reads_cases_checks_and_interactions() -> None:
    body = {"prompt": "0", "seed": 9223372036854775807}
    recorder = {
        "label": "POST /v1/inference",
        "cases": {
            "a": {
                "value": {
                    "method": "POST",
                    "path": "/v1/inference",
                    "body": body,
                    "meta": {
                        "generation": {"mode": "positive"},
                        "phase": {"name": "coverage", "data": {"description": "Maximum value for 'seed'"}},
                    },
                }
            },
            "b": {"value": {"method": "POST", "path": "/v1/inference", "meta": {"generation": {"mode": "negative"}}}},
        },
        "checks": {
            "a": [
                {
                    "name": "not_a_server_error",
                    "status": "failure",
                    "failure_info": {"failure": {"title": "Server error", "message": "500"}},
                },
                {"name": "positive_data_acceptance", "status": "success"},
            ]
        },
        "interactions": {
            "a": {
                "request": {
                    "method": "POST",
                    "uri": BASE + "/v1/inference",
                    "headers": {"Authorization": ["Bearer s3cret"]},
                    "body": _b64(json.dumps(body).encode()),
                },
                "response": {
                    "status_code": 500,
                    "headers": {"content-type": ["text/plain"]},
                    "content": _b64(b"boom"),
                    "elapsed": 0.01,
                },
            }
        },
    }
    lines = [
        json.dumps({"Initialize": {"seed": 0}}),
        json.dumps({"NonFatalError": {"value": {"type": "ConnectionError", "message": "refused"}}}),
        json.dumps({"ScenarioFinished": {"status": "failure", "recorder": recorder}}),
        "not json",
    ]
    run = parse_report(lines)
    assert run.errors == ["refused"]
    first, second = run.cases
    assert first.positive and first.has_body and first.body == body
    assert first.description == "Maximum value for 'seed'"
    assert first.failures == [("not_a_server_error", "Server error", "500")]
    assert first.request["body"] == json.dumps(body).encode()
    assert first.response is not None and first.response["status"] == 500 and first.response["content"] == b"boom"
    assert not second.positive and not second.has_body and second.response is None and second.failures == []


# -- the stream reader -----------------------------------------------------------------------------------------


@pytest.fixture
def router() -> Iterator[respx.MockRouter]:
    with respx.mock(base_url=BASE, assert_all_called=False) as mock:
        yield mock


def _job(job_id: str = JOB, *, resubmit: bool = False) -> AcceptedJob:
    submit = Exchange(method="POST", url=BASE + "/v1/inference", request_body='{"prompt": "x"}', status=202)
    return AcceptedJob(job_id, f"/v1/inference/{job_id}/stream", {"prompt": "x"}, submit, "boundary", resubmit)


def _sse(content: bytes) -> httpx.Response:
    return httpx.Response(
        200, content=content, headers={"content-type": "text/event-stream", "cache-control": "no-cache"}
    )


def test_reader_flags_an_internal_error(router: respx.MockRouter) -> None:
    router.get(f"/v1/inference/{JOB}/stream").mock(
        return_value=_sse(_stream("error", {"code": "internal_error", "message": "boom"}))
    )
    reader = StreamReader(BASE, token=None, timeout_s=5)
    reader.add(_job())
    reader.add(_job())  # the same job twice is read once
    summary = reader.finish(5)
    reader.close()
    (result,) = summary.results
    assert result.ended and result.outcome is not None and result.outcome.code == "internal_error"
    assert summary.ended_by_source() == {"boundary": 1}


def test_reader_submits_a_reclaimed_boundary_job_again(router: respx.MockRouter) -> None:
    fresh = "Fr3shJobIdAAAAAAAAAAAA"
    router.get(f"/v1/inference/{JOB}/stream").mock(return_value=httpx.Response(404))
    submit = router.post("/v1/inference").mock(
        return_value=httpx.Response(202, json={"job_id": fresh, "sse_url": f"/v1/inference/{fresh}/stream"})
    )
    router.get(f"/v1/inference/{fresh}/stream").mock(
        return_value=_sse(_stream("end", {"tokens_out": 1, "stop_reason": "max_tokens"}))
    )
    reader = StreamReader(BASE, token="t0ken", timeout_s=5)
    reader.add(_job(resubmit=True))
    (result,) = reader.finish(5).results
    reader.close()
    assert result.ended and result.outcome is None and result.resubmitted == fresh
    assert json.loads(submit.calls.last.request.content) == {"prompt": "x"}
    assert submit.calls.last.request.headers["authorization"] == "Bearer t0ken"


def test_reader_reports_a_gone_job_without_resubmitting(router: respx.MockRouter) -> None:
    router.get(f"/v1/inference/{JOB}/stream").mock(return_value=httpx.Response(404))
    submit = router.post("/v1/inference")
    reader = StreamReader(BASE, token=None, timeout_s=5)
    reader.add(_job(resubmit=False))
    summary = reader.finish(5)
    reader.close()
    (result,) = summary.results
    assert not result.ended and result.outcome is None and not submit.called
    assert any("answered 404" in note for note in summary.notes())
