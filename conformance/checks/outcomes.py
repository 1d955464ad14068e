"""DC-2.15: a request valid by the contract does not end in an internal error.

The check is a sweep (the runner runs it after the others): it reads how every stream the suite
read in this run ended, and also runs a handful of valid boundary requests to their end.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Final

from conformance.client import SUBMIT_PATH
from conformance.context import Context
from conformance.model import Exchange
from conformance.outcomes import ErrorOutcome, invalid_request, unexpected_error, unexpected_status_error
from conformance.probe import StreamCapture
from conformance.registry import check
from conformance.verdicts import CheckFailed, CheckUnverified

#: valid requests at the edges of what DC-1.1 allows, each with a short label for the evidence
EDGE_REQUESTS: Final[tuple[tuple[str, dict[str, Any]], ...]] = (
    (
        "the smallest positive temperature with the largest seed",
        {"temperature": 5e-324, "seed": 2**63 - 1, "max_tokens": 4},
    ),
    ("a temperature of 0.001 with top_k at its maximum", {"temperature": 0.001, "top_k": 100_000, "max_tokens": 4}),
    (
        "the largest temperature with the smallest top_p and top_k 1",
        {"temperature": 100, "top_p": 5e-324, "top_k": 1, "seed": 0, "max_tokens": 4},
    ),
    (
        "four stop strings of 256 characters",
        {"stop": [letter * 256 for letter in "qxzj"], "temperature": 0.7, "seed": 1, "max_tokens": 4},
    ),
    ("a one-character prompt with max_tokens 1", {"prompt": "x", "max_tokens": 1}),
    (
        "a prompt with NUL, U+2028, NEL, CR LF, an emoji and `data: [DONE]`",
        {"prompt": "\x00 \u2028\x85 \r\n 🚀 data: [DONE]", "temperature": 0.7, "seed": 42, "max_tokens": 4},
    ),
)
#: findings shown in full (the rest are counted)
MAX_SHOWN: Final = 8
_JOB_STATUS_PATH = re.compile(re.escape(SUBMIT_PATH) + r"/([A-Za-z0-9_-]+)$")


@dataclass(frozen=True, slots=True)
class _Finding:
    job_id: str
    submit: Exchange
    outcome: ErrorOutcome
    where: str

    def line(self) -> str:
        return f"{self.submit.request_body} -> {self.where} ended with {self.outcome.describe()}"


def _submissions(exchanges: list[Exchange]) -> dict[str, Exchange]:
    """Accepted submissions (POST answered 202 with a job_id) by job id."""
    found: dict[str, Exchange] = {}
    for exchange in exchanges:
        if exchange.method != "POST" or exchange.status != 202 or not exchange.url.endswith(SUBMIT_PATH):
            continue
        try:
            job_id = json.loads(exchange.body_excerpt).get("job_id")
        except (ValueError, AttributeError):
            continue
        if isinstance(job_id, str):
            found[job_id] = exchange
    return found


def _job_id(capture: StreamCapture) -> str | None:
    for event in capture.protocol_events:
        if event.event == "started":
            try:
                job_id = json.loads(event.data).get("job_id")
            except (ValueError, AttributeError):
                return None
            return job_id if isinstance(job_id, str) else None
    return None


def _valid_body(submit: Exchange) -> bool:
    try:
        body = json.loads(submit.request_body or "")
    except ValueError:
        return False
    return not invalid_request(body)


def _ended(capture: StreamCapture) -> bool:
    return any(event.event in ("end", "error") for event in capture.protocol_events)


def _run_edge_requests(ctx: Context) -> tuple[dict[str, str], list[str]]:
    """Submit each edge request and read it to its end; (label by job id, notes on what did not run)."""
    labels: dict[str, str] = {}
    notes: list[str] = []
    for label, overrides in EDGE_REQUESTS:
        body = ctx.body(**overrides)
        response = ctx.probe.submit(body)
        if response.status_code != 202:
            notes.append(f"not run: {label}: the submit answered {response.status_code}")
            continue
        try:
            job_id = response.json()["job_id"]
            sse_url = ctx.resolve_stream(response)
        except (ValueError, KeyError, TypeError):
            notes.append(f"not run: {label}: the 202 body has no job_id/sse_url")
            continue
        capture = ctx.probe.stream(sse_url, max_duration_s=max(10.0, 2 * ctx.options.timeout_s))
        labels[str(job_id)] = label
        if not _ended(capture):
            notes.append(f"not verified: {label}: the stream ended without an end or error event")
    return labels, notes


def _sweep(ctx: Context, labels: dict[str, str]) -> tuple[list[_Finding], int, int]:
    """Findings over every stream and job status read so far; (findings, streams ended, unattributed)."""
    submissions = _submissions(list(ctx.probe.all_exchanges))
    findings: dict[str, _Finding] = {}
    ended = unattributed = 0
    for capture in list(ctx.probe.captures):
        if not _ended(capture):
            continue
        ended += 1
        outcome = unexpected_error(capture.events)
        if outcome is None:
            continue
        # a resumed stream has no `started` event: the job id is then in the stream's URL
        job_id = _job_id(capture) or next((known for known in submissions if known in capture.url), None)
        submit = submissions.get(job_id or "")
        if job_id is None or submit is None or not _valid_body(submit):
            unattributed += 1
            continue
        where = f"the stream {capture.url}" + (f" ({labels[job_id]})" if job_id in labels else "")
        findings.setdefault(job_id, _Finding(job_id, submit, outcome, where))
    for exchange in list(ctx.probe.all_exchanges):
        match = _JOB_STATUS_PATH.search(exchange.url)
        if exchange.method != "GET" or exchange.status != 200 or match is None or match.group(1) in findings:
            continue
        try:
            outcome = unexpected_status_error(json.loads(exchange.body_excerpt))
        except ValueError:
            continue
        submit = submissions.get(match.group(1))
        if outcome is not None and submit is not None and _valid_body(submit):
            findings[match.group(1)] = _Finding(match.group(1), submit, outcome, f"the job status {exchange.url}")
    return list(findings.values()), ended, unattributed


@check(
    "DC-STREAM-014",
    rule="DC-2.15",
    level="MUST",
    title="valid requests never end in an error other than a runtime limit (every stream of the run is swept)",
    area="stream",
    sweep=True,
)
def no_internal_errors(ctx: Context) -> str:
    """Sweeps every stream (and job status) the suite read in this run, plus a handful of valid boundary
    requests (the smallest positive temperature, the largest seed, top_k 100000, the smallest top_p, four
    256-character stop strings, a one-character prompt, control characters): none may end with an `error`
    whose code is not a runtime-limit code (`context_length_exceeded`, `shutdown`, `worker_lost`)."""
    labels, notes = _run_edge_requests(ctx)
    findings, ended, unattributed = _sweep(ctx, labels)
    if unattributed:
        notes.append(
            f"{unattributed} stream(s) ended in an error but could not be traced to a valid submission of this run"
        )
    if findings:
        # the evidence is the submissions that failed, not the boundary requests that went well
        ctx.probe.exchanges[:] = [finding.submit for finding in findings[:6]]
        lines = [finding.line() for finding in findings[:MAX_SHOWN]]
        if len(findings) > MAX_SHOWN:
            lines.append(f"... and {len(findings) - MAX_SHOWN} more")
        codes = sorted({finding.outcome.label for finding in findings})
        raise CheckFailed(
            f"{len(findings)} valid request(s) ended in an error that is not a runtime limit ({', '.join(codes)})",
            *lines,
            *notes,
        )
    if ended == 0:
        raise CheckUnverified(
            "no stream was read to its end in this run; " + "; ".join(notes or ["nothing to sweep"]),
            "a worker whose streams end with [DONE] (see DC-STREAM-007)",
        )
    return (
        f"{ended} streams read to their end, {len(labels)} of {len(EDGE_REQUESTS)} boundary requests among them: "
        "no internal error" + (f" ({'; '.join(notes)})" if notes else "")
    )
