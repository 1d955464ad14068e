"""DC-3: the job resource (status and cancel)."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx

from conformance.checks import CheckFailed, CheckSkipped, check
from conformance.checks.problems import expect_problem
from conformance.context import Context, Job
from conformance.contract import schema_errors
from conformance.probe import StreamCapture

STATES = {"queued", "running", "completed", "failed", "cancelled"}


def _status(ctx: Context, job: Job) -> dict[str, Any]:
    response = ctx.probe.request("GET", job.status_url)
    if response.status_code != 200:
        raise CheckFailed(f"GET {job.status_url} answered {response.status_code}, expected 200")
    try:
        body = response.json()
    except ValueError:
        raise CheckFailed("the status body is not JSON") from None
    if not isinstance(body, dict):
        raise CheckFailed("the status body is not a JSON object")
    return body


@check(
    "DC-JOB-001", rule="DC-3.1", level="MUST", title="GET /v1/inference/{job_id} reports the job's state", area="job"
)
def status_resource(ctx: Context) -> str:
    job, capture = ctx.completed_reference()
    body = _status(ctx, job)
    errors = schema_errors("JobStatus", body)
    if errors:
        raise CheckFailed(f"the status body does not match JobStatus: {errors[0]}", *errors[1:4])
    if body["job_id"] != job.job_id:
        raise CheckFailed(f"status names job {body['job_id']!r}, expected {job.job_id!r}")
    if body["state"] not in STATES:
        raise CheckFailed(f"state {body['state']!r} is not one of {sorted(STATES)}")
    end = next((json.loads(e.data) for e in capture.protocol_events if e.event == "end"), None)
    if end is not None:
        if body["state"] != "completed":
            raise CheckFailed(f"the stream ended normally but the job's state is {body['state']!r}, not 'completed'")
        if body["tokens_out"] != end.get("tokens_out"):
            raise CheckFailed(
                f"status tokens_out {body['tokens_out']} differs from end.tokens_out {end.get('tokens_out')}"
            )
    return f"state {body['state']}, tokens_out {body['tokens_out']}"


def expect_cancel_answer(answer: httpx.Response, what: str) -> dict[str, Any]:
    """DELETE answers 202 with the job's JobStatus (DC-3.2)."""
    if answer.status_code != 202:
        raise CheckFailed(f"DELETE of {what} answered {answer.status_code}, expected 202 with the job's status")
    try:
        body = answer.json()
    except ValueError:
        raise CheckFailed(f"DELETE of {what} answered 202 without a JSON JobStatus body") from None
    errors = schema_errors("JobStatus", body)
    if errors:
        raise CheckFailed(f"DELETE of {what} answered a body that is not a JobStatus: {errors[0]}", *errors[1:4])
    return body if isinstance(body, dict) else {}


def _long_job(ctx: Context) -> Job:
    return ctx.submit(ctx.body(max_tokens=ctx.max_tokens_cap, temperature=0.7, seed=3))


@check(
    "DC-JOB-002",
    rule="DC-3.2",
    level="MUST",
    title="DELETE cancels a running job: 202, readers get end(cancelled) then [DONE]",
    area="job",
)
def cancel_running(ctx: Context) -> str:
    job = _long_job(ctx)
    answers: list[httpx.Response] = []

    def cancel_after_first_token(capture: StreamCapture, event: Any) -> bool:
        if event.event == "token" and not answers:
            answers.append(ctx.probe.request("DELETE", job.status_url))
        return False

    started = time.perf_counter()
    capture = ctx.stream_of(job, on_event=cancel_after_first_token)
    if not answers:
        raise CheckSkipped("the stream sent no token event to cancel after")
    expect_cancel_answer(answers[0], "a running job")
    ends = [json.loads(e.data) for e in capture.protocol_events if e.event == "end"]
    tokens = sum(1 for e in capture.protocol_events if e.event == "token")
    if ends and ends[-1].get("stop_reason") != "cancelled":
        if ends[-1].get("stop_reason") == "max_tokens" and tokens < 8:
            raise CheckSkipped("the job finished before the cancel landed")
        raise CheckFailed(
            f"the attached reader got end with stop_reason {ends[-1].get('stop_reason')!r} after DELETE, "
            "expected 'cancelled'",
            f"{tokens} tokens were streamed of max_tokens {job.body['max_tokens']}",
        )
    if not ends:
        raise CheckFailed("the attached reader got no end event after DELETE", f"read ended: {capture.error}")
    if not capture.done_seen:
        raise CheckFailed("the attached reader got no [DONE] after end(cancelled)")
    elapsed = time.perf_counter() - started
    return f"cancelled after {tokens} tokens; stream closed {elapsed:.2f}s after start"


@check(
    "DC-JOB-003",
    rule="DC-3.2",
    level="MUST",
    title="after DELETE the job is gone: status, stream and DELETE answer 404",
    area="job",
)
def gone_after_delete(ctx: Context) -> str:
    job = _long_job(ctx)
    expect_cancel_answer(ctx.probe.request("DELETE", job.status_url), "a running job")
    for method, url in (("GET", job.status_url), ("GET", job.sse_url), ("DELETE", job.status_url)):
        if method == "GET" and url == job.sse_url:
            capture = ctx.probe.stream(url, stop_after_events=1)
            if capture.status != 404:
                raise CheckFailed(f"GET sse_url after DELETE answered {capture.status}, expected 404")
            continue
        expect_problem(ctx.probe.request(method, url), 404)
    return "status, stream and DELETE answer 404 after cancel"


@check("DC-JOB-004", rule="DC-3.2", level="MUST", title="DELETE of a finished job is not an error", area="job")
def delete_finished(ctx: Context) -> str:
    job = ctx.submit(ctx.body(max_tokens=4))
    capture = ctx.stream_of(job)
    if not capture.done_seen:
        raise CheckSkipped("the job's stream did not finish (see DC-STREAM-007)")
    body = expect_cancel_answer(ctx.probe.request("DELETE", job.status_url), "a finished job")
    return f"202 for a finished job (state {body.get('state')})"


@check(
    "DC-JOB-005", rule="DC-3.3", level="MUST", title="status and DELETE of an unknown id answer 404 problem", area="job"
)
def unknown_job(ctx: Context) -> str:
    url = ctx.job_url("dualcallUnknownJob0000000000")
    expect_problem(ctx.probe.request("GET", url), 404)
    expect_problem(ctx.probe.request("DELETE", url), 404)
    return "404 problem+json for GET and DELETE"


@check("DC-JOB-006", rule="DC-3.4", level="MUST", title="an unsupported method answers 405 with Allow", area="job")
def method_not_allowed(ctx: Context) -> str:
    wrong: list[str] = []
    for method, url in (("PUT", ctx.job_url("dualcallUnknownJob0000000000")), ("GET", ctx.probe.submit_url)):
        response = ctx.probe.request(method, url)
        if response.status_code != 405:
            wrong.append(f"{method} {url} answered {response.status_code}, expected 405")
        elif not response.headers.get("allow"):
            wrong.append(f"{method} {url} answered 405 without an Allow header")
    if wrong:
        raise CheckFailed(wrong[0], *wrong[1:])
    return "405 with Allow"
