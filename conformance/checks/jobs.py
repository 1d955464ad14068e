"""DC-3: the job resource (status and cancel)."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx

from conformance.checks.problems import expect_problem
from conformance.context import UNKNOWN_JOB_ID, Context, Job
from conformance.contract import schema_errors
from conformance.probe import StreamCapture
from conformance.registry import check
from conformance.verdicts import CheckFailed, CheckUnverified

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


def _long_job(ctx: Context, seed: int = 3) -> Job:
    """The longest job the worker's advertised cap allows: the best chance to catch it still generating."""
    return ctx.submit(ctx.body(max_tokens=ctx.max_tokens_cap, temperature=0.7, seed=seed))


#: jobs tried before DC-JOB-002 concludes that every job finishes before a DELETE can land
CANCEL_ATTEMPTS = 3
UNFINISHED = ("queued", "running")


def expect_settled_state(body: dict[str, Any], what: str) -> str:
    """DELETE answers the job's status once the cancel has taken effect: never still queued or running."""
    state = str(body.get("state"))
    if state in UNFINISHED:
        raise CheckFailed(
            f"DELETE of {what} answered state {state!r}: the JobStatus must show the cancel taking effect "
            "('cancelled', or 'completed'/'failed' when the job had already finished)",
            f"body: {json.dumps(body)[:300]}",
        )
    return state


@check(
    "DC-JOB-002",
    rule="DC-3.2",
    level="MUST",
    title="DELETE cancels a running job: 202 'cancelled', attached readers get end(cancelled) then [DONE]",
    area="job",
)
def cancel_running(ctx: Context) -> str:
    """A reader attaches to the longest job; DELETE goes out on its first event; both answers must agree.

    A job that finished before the DELETE landed (the answer says 'completed') proves nothing either
    way, so another job is tried; only when every attempt finished first is the rule unverified.
    """
    finished_first: list[str] = []
    failed_instead: list[str] = []
    for attempt in range(CANCEL_ATTEMPTS):
        job = _long_job(ctx, seed=3 + attempt)
        answers: list[httpx.Response] = []

        def cancel_on_first_event(
            capture: StreamCapture, event: Any, job: Job = job, answers: list[httpx.Response] = answers
        ) -> bool:
            if not answers:
                answers.append(ctx.probe.request("DELETE", job.status_url))
            return False

        started = time.perf_counter()
        capture = ctx.stream_of(job, on_event=cancel_on_first_event)
        if not answers:
            raise CheckFailed("the stream of a fresh job sent no event at all", f"read ended: {capture.error}")
        state = expect_settled_state(expect_cancel_answer(answers[0], "a running job"), "a running job")
        ends = [json.loads(e.data) for e in capture.protocol_events if e.event == "end"]
        tokens = sum(1 for e in capture.protocol_events if e.event == "token")
        reason = ends[-1].get("stop_reason") if ends else None
        if state != "cancelled":
            if reason == "cancelled":
                raise CheckFailed(f"the reader got end(cancelled) but DELETE answered state {state!r}")
            errors = [e.data for e in capture.protocol_events if e.event == "error"]
            if state == "failed" and errors:
                failed_instead.append(f"job {attempt + 1}: after {tokens} tokens, error {errors[-1][:200]}")
            else:
                finished_first.append(f"job {attempt + 1}: {tokens} tokens, DELETE answered {state!r}")
            continue
        if not ends:
            raise CheckFailed("the attached reader got no end event after DELETE", f"read ended: {capture.error}")
        if reason != "cancelled":
            raise CheckFailed(
                f"DELETE answered 'cancelled' but the attached reader got end with stop_reason {reason!r}",
                f"{tokens} tokens were streamed of max_tokens {job.body['max_tokens']}",
            )
        if not capture.done_seen:
            raise CheckFailed("the attached reader got no [DONE] after end(cancelled)")
        elapsed = time.perf_counter() - started
        return f"cancelled after {tokens} tokens; stream closed {elapsed:.2f}s after start"
    if len(failed_instead) == CANCEL_ATTEMPTS:
        # one job failing on its own just as it was cancelled is possible; every one of them is the cancel path
        raise CheckFailed(
            f"each of {CANCEL_ATTEMPTS} jobs cancelled right after it started answered DELETE with 'failed' and "
            "ended its reader's stream with an error event instead of end(cancelled)",
            *failed_instead,
        )
    raise CheckUnverified(
        f"each of {CANCEL_ATTEMPTS} jobs of max_tokens {ctx.max_tokens_cap} finished before its DELETE landed, "
        "so cancelling a running job could not be observed",
        "a worker whose longest job (max_tokens_cap) outlasts an HTTP round-trip, e.g. a slower token rate",
    ) from None


@check(
    "DC-JOB-003",
    rule="DC-3.2",
    level="MUST",
    title="after DELETE the job is gone: status, stream and DELETE answer 404",
    area="job",
)
def gone_after_delete(ctx: Context) -> str:
    """DELETE right after submit, before any reader attached: a settled state, then 404 everywhere."""
    job = _long_job(ctx)
    body = expect_cancel_answer(ctx.probe.request("DELETE", job.status_url), "a job just submitted")
    state = expect_settled_state(body, "a job just submitted")
    for method, url in (("GET", job.status_url), ("GET", job.sse_url), ("DELETE", job.status_url)):
        if method == "GET" and url == job.sse_url:
            capture = ctx.probe.stream(url, stop_after_events=1)
            if capture.status != 404:
                raise CheckFailed(f"GET sse_url after DELETE answered {capture.status}, expected 404")
            continue
        expect_problem(ctx.probe.request(method, url), 404)
    return f"DELETE answered {state!r}; status, stream and DELETE then answer 404"


@check("DC-JOB-004", rule="DC-3.2", level="MUST", title="DELETE of a finished job is not an error", area="job")
def delete_finished(ctx: Context) -> str:
    job = ctx.submit(ctx.body(max_tokens=4))
    capture = ctx.stream_of(job)
    if not capture.done_seen:
        raise CheckUnverified("the job's stream did not finish", "a stream that ends with [DONE] (see DC-STREAM-007)")
    body = expect_cancel_answer(ctx.probe.request("DELETE", job.status_url), "a finished job")
    if body.get("state") not in ("completed", "failed"):
        raise CheckFailed(
            f"DELETE of a job whose stream had ended answered state {body.get('state')!r}, "
            "expected its final state ('completed' or 'failed')"
        )
    return f"202 for a finished job (state {body.get('state')})"


@check(
    "DC-JOB-005", rule="DC-3.3", level="MUST", title="status and DELETE of an unknown id answer 404 problem", area="job"
)
def unknown_job(ctx: Context) -> str:
    """A 404 means "no such job" only from a worker whose job route answers for a real job."""
    job, _ = ctx.completed_reference()
    known = ctx.probe.request("GET", job.status_url)
    if known.status_code != 200:
        raise CheckUnverified(
            f"the status of a real job ({job.status_url}) answered {known.status_code}, so a 404 for an unknown "
            "id could not be told from a route the worker does not serve",
            "a worker whose GET /v1/inference/{job_id} answers 200 for a job it accepted (see DC-JOB-001)",
        )
    url = ctx.job_url(UNKNOWN_JOB_ID)
    expect_problem(ctx.probe.request("GET", url), 404)
    expect_problem(ctx.probe.request("DELETE", url), 404)
    return "404 problem+json for GET and DELETE of an unknown id (a real job's status answered 200)"


@check("DC-JOB-006", rule="DC-3.4", level="MUST", title="an unsupported method answers 405 with Allow", area="job")
def method_not_allowed(ctx: Context) -> str:
    ctx.completed_reference()  # a 404 from a worker that serves no job route says nothing about methods
    wrong: list[str] = []
    for method, url in (("PUT", ctx.job_url(UNKNOWN_JOB_ID)), ("GET", ctx.probe.submit_url)):
        response = ctx.probe.request(method, url)
        if response.status_code != 405:
            wrong.append(f"{method} {url} answered {response.status_code}, expected 405")
        elif not response.headers.get("allow"):
            wrong.append(f"{method} {url} answered 405 without an Allow header")
    if wrong:
        raise CheckFailed(wrong[0], *wrong[1:])
    return "405 with Allow"
