"""The caller rules (openapi/SPEC.md, section DC-C) as a registry: data plus one grading function each.

A grading function looks at one scenario run — the requests the adversarial worker recorded
and what the caller reported — and returns findings: ``pass`` with what was seen, ``fail`` with
the evidence, or ``unverified`` when this run could not show the rule either way. The report
(``conformance.callers.grade``) folds the findings of all runs into one check result per rule.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Literal

from conformance.callers.record import Hit, ScenarioRun, ScriptedJob
from conformance.callers.scenarios import ERROR_CODE, ERROR_MESSAGE, SCENARIOS
from conformance.model import Level

Verdict = Literal["pass", "fail", "unverified"]

#: the most submits the suite accepts against a worker that answers 503 to every one
SUBMIT_LIMIT = 10
#: the most reconnects without a new event the suite accepts against a dead stream
RESUME_LIMIT = 10
#: clock slack when comparing a retry's delay with Retry-After
RETRY_SLACK_S = 0.05


@dataclass(frozen=True, slots=True)
class Finding:
    scenario: str
    verdict: Verdict
    message: str
    hits: tuple[Hit, ...] = ()


@dataclass(frozen=True, slots=True)
class CallerRule:
    check_id: str
    rule: str
    level: Level
    title: str
    #: why it matters and what to change, for the diagnosis of a caller that breaks it
    fix: str
    grade: Callable[[ScenarioRun], list[Finding]] = field(repr=False)

    @property
    def scenarios(self) -> tuple[str, ...]:
        """The scenarios built to test this rule (every scenario may add evidence)."""
        return tuple(scenario.name for scenario in SCENARIOS if self.rule in scenario.rules)


# --- helpers ------------------------------------------------------------------------------


def _finding(run: ScenarioRun, verdict: Verdict, message: str, *hits: Hit) -> Finding:
    return Finding(run.scenario.name, verdict, message, tuple(hits))


def _reported(run: ScenarioRun) -> Finding | None:
    """An ``unverified`` finding when the caller's outcome is unknown, else None."""
    outcome = run.outcome
    if outcome is None or outcome.succeeded is None:
        return _finding(run, "unverified", "the caller's result is unknown (only its requests were observed)")
    return None


@functools.cache
def request_fields() -> frozenset[str]:
    """The fields of InferenceRequest in the contract document; anything else in a submit body breaks DC-C-1."""
    import openapi

    return frozenset(openapi.load_document()["components"]["schemas"]["InferenceRequest"]["properties"])


def _final_delivered(run: ScenarioRun, job: ScriptedJob) -> bool:
    return any(hit.final_delivered for hit in run.streams(job))


def describe_mismatch(expected: str, got: str) -> str:
    """Where and how a reported completion differs from the expected one."""
    at = next((i for i, (a, b) in enumerate(zip(expected, got, strict=False)) if a != b), min(len(expected), len(got)))
    lines = [
        f"reported {len(got)} characters, expected {len(expected)}; first difference at character {at}: "
        f"expected {expected[max(0, at - 8) : at + 16]!r}, got {got[max(0, at - 8) : at + 16]!r}"
    ]
    if "\ufffd" in got:
        lines.append("U+FFFD in the text: bytes were decoded per network read, or a cut character was kept")
    elif got and expected.startswith(got):
        lines.append(f"truncated: the last {len(expected) - len(got)} characters are missing (a lost resume?)")
    elif got.startswith(expected[:at]) and len(got) > len(expected):
        lines.append("longer than the completion: tokens duplicated, or the data of other events kept")
    if "thinking" in got:
        lines.append("contains the text of the unknown `narration` event")
    return "; ".join(lines)


# --- DC-C-1 ------------------------------------------------------------------------------


def _no_job_id(run: ScenarioRun) -> list[Finding]:
    findings = []
    for hit in run.of_kind("submit"):
        try:
            body = json.loads(hit.body or "")
        except ValueError:
            findings.append(_finding(run, "fail", f"the submit body is not JSON: {(hit.body or '')[:80]!r}", hit))
            continue
        if not isinstance(body, dict):
            findings.append(_finding(run, "fail", "the submit body is not a JSON object", hit))
        elif "job_id" in body:
            findings.append(
                _finding(run, "fail", f"the submit body carries job_id {body['job_id']!r}: the server assigns ids", hit)
            )
        elif extra := sorted(set(body) - request_fields()):
            findings.append(_finding(run, "fail", f"the submit body carries unknown field(s) {', '.join(extra)}", hit))
        else:
            findings.append(_finding(run, "pass", f"submit body fields: {', '.join(sorted(body))}"))
    return findings


# --- DC-C-2 ------------------------------------------------------------------------------


def _follows_sse_url(run: ScenarioRun) -> list[Finding]:
    findings = []
    for job in run.jobs:
        stray = [hit for hit in run.hits if hit.job_id == job.job_id and hit.kind in ("built-stream", "wrong-stream")]
        opened = run.streams(job)
        for hit in stray:
            what = "built the stream path itself" if hit.kind == "built-stream" else "requested the wrong URL"
            findings.append(
                _finding(
                    run,
                    "fail",
                    f"{what}: GET {hit.url} — sse_url {job.sse_url!r} resolves to {job.stream_url}",
                    hit,
                )
            )
        if not stray and not opened:
            findings.append(_never_opened(run, job))
        elif opened and not stray and job.scenario.sse_url != "default":
            findings.append(_finding(run, "pass", f"followed sse_url {job.sse_url!r} to {job.stream_url}"))
    return findings


def _never_opened(run: ScenarioRun, job: ScriptedJob) -> Finding:
    """A completion without a stream is the legacy habit; a failure before streaming is another rule's."""
    outcome = run.outcome
    if outcome is None or not outcome.succeeded:
        summary = outcome.summary() if outcome else "no result"
        return _finding(run, "unverified", f"the caller stopped before opening sse_url ({summary})")
    submit = [hit for hit in run.of_kind("submit") if hit.job_id == job.job_id]
    return _finding(
        run,
        "fail",
        f"reported a completion without ever opening sse_url {job.stream_url}: it read the POST response as "
        "the stream (the legacy shape)",
        *submit,
    )


# --- DC-C-3 ------------------------------------------------------------------------------


def _retry_after(run: ScenarioRun) -> list[Finding]:
    scenario = run.scenario
    if scenario.busy_submits == 0:
        return []
    submits = run.of_kind("submit")
    findings = []
    for before, after in pairwise(submits):
        if before.status != 503 or before.answered_at is None:
            continue
        gap = after.at - before.answered_at
        if gap < scenario.retry_after_s - RETRY_SLACK_S:
            findings.append(
                _finding(
                    run,
                    "fail",
                    f"submitted again {gap:.3f}s after a 503 that said Retry-After: {scenario.retry_after_s}",
                    before,
                    after,
                )
            )
    outcome = run.outcome
    accepted = [hit for hit in submits if hit.status == 202]
    if len(submits) > SUBMIT_LIMIT:
        findings.append(
            _finding(
                run,
                "fail",
                f"{len(submits)} submits to a worker that answers 503 every time: attempts are not bounded "
                f"(the suite accepts at most {SUBMIT_LIMIT})",
                submits[-1],
            )
        )
    elif outcome is not None and outcome.timed_out and not accepted:
        findings.append(_finding(run, "fail", f"still retrying after {outcome.duration_s:.1f}s: not bounded"))
    elif outcome is not None and outcome.succeeded and not accepted:
        findings.append(
            _finding(run, "fail", f"reported a completion although no submit was accepted ({len(submits)} x 503)")
        )
    if any(finding.verdict == "fail" for finding in findings):
        return findings
    if not submits:
        return [_finding(run, "unverified", "the caller never submitted")]
    retries = len(submits) - 1
    if retries == 0:
        return [_finding(run, "pass", "gave up at the first 503 without retrying (allowed)")]
    gaps = [after.at - (before.answered_at or before.at) for before, after in pairwise(submits) if before.status == 503]
    shortest = min(gaps) if gaps else 0.0
    return [
        _finding(
            run,
            "pass",
            f"{retries} retr{'y' if retries == 1 else 'ies'}, the soonest {shortest:.2f}s after a 503 with "
            f"Retry-After: {scenario.retry_after_s}" + ("" if accepted else "; then gave up"),
        )
    ]


# --- DC-C-4 ------------------------------------------------------------------------------


def _resumes(run: ScenarioRun) -> list[Finding]:
    findings = []
    for job in run.jobs:
        connections = run.streams(job)
        for index, connection in enumerate(connections):
            if not connection.cut:
                continue
            expected = connection.last_complete_id
            following = connections[index + 1] if index + 1 < len(connections) else None
            if following is None:
                if connection.final_delivered or (run.scenario.cut == "every-attempt" and index > 0):
                    continue  # the outcome is known, or a dead stream was given up after resuming: both fine
                findings.append(
                    _finding(
                        run,
                        "fail",
                        f"did not reconnect after the stream was cut {connection.cut_where} "
                        f"(a resume needs Last-Event-ID: {expected})",
                        connection,
                    )
                )
                continue
            sent = following.last_event_id
            if sent is None:
                findings.append(
                    _finding(
                        run,
                        "fail",
                        f"reconnected after the cut {connection.cut_where} without Last-Event-ID "
                        f"(expected Last-Event-ID: {expected}); the worker replays from the start",
                        connection,
                        following,
                    )
                )
            elif sent.strip() != str(expected):
                half = " — the id of the event that was cut in half" if sent.strip() == str(expected + 1) else ""
                findings.append(
                    _finding(
                        run,
                        "fail",
                        f"resumed with Last-Event-ID: {sent}{half}; the last complete event was {expected}",
                        connection,
                        following,
                    )
                )
            else:
                findings.append(
                    _finding(run, "pass", f"resumed with Last-Event-ID: {expected} after a cut {connection.cut_where}")
                )
        if run.scenario.cut == "every-attempt":
            findings += _dead_stream_bound(run, connections)
    return findings


def _dead_stream_bound(run: ScenarioRun, connections: list[Hit]) -> list[Finding]:
    """The bound on reconnects without progress: over the suite's limit, or still reconnecting at the end."""
    reconnects = len(connections) - 1
    if reconnects > RESUME_LIMIT:
        return [
            _finding(
                run,
                "fail",
                f"{reconnects} reconnects to a stream that never progressed: not bounded "
                f"(the suite accepts at most {RESUME_LIMIT})",
                connections[-1],
            )
        ]
    outcome = run.outcome
    if outcome is not None and outcome.timed_out and reconnects > 0:
        retry = run.scenario.retry_ms
        return [
            _finding(
                run,
                "fail",
                f"still reconnecting to a stream that never progressed after {outcome.duration_s:.1f}s "
                f"({reconnects} reconnects"
                + (f", although every connection said `retry: {retry}`" if retry else "")
                + "): not bounded within the scenario's time",
                connections[-1],
            )
        ]
    return []


# --- DC-C-5 ------------------------------------------------------------------------------


def _text_findings(run: ScenarioRun, what: str) -> list[Finding]:
    expected = run.scenario.expected_text
    if expected is None or not run.jobs:
        return []
    unknown = _reported(run)
    if unknown:
        return [unknown]
    outcome = run.outcome
    assert outcome is not None
    delivered = any(_final_delivered(run, job) for job in run.jobs)
    if outcome.succeeded:
        got = outcome.text or ""
        if got == expected:
            return [_finding(run, "pass", f"reported exactly the {len(expected)}-character completion{what}")]
        return [_finding(run, "fail", describe_mismatch(expected, got))]
    if delivered:
        return [_finding(run, "fail", f"{outcome.summary()} although the whole stream up to `end` was delivered{what}")]
    return [_finding(run, "unverified", f"the caller never received `end` ({outcome.summary()})")]


def _reassembles(run: ScenarioRun) -> list[Finding]:
    if "DC-C-8" in run.scenario.rules:  # those scenarios are DC-C-8's text checks
        return []
    return _text_findings(run, "")


# --- DC-C-6 ------------------------------------------------------------------------------


def _stops_on_204(run: ScenarioRun) -> list[Finding]:
    findings = []
    for job in run.jobs:
        connections = run.streams(job)
        no_content = next((i for i, hit in enumerate(connections) if hit.status == 204), None)
        if no_content is None:
            continue
        later = connections[no_content + 1 :]
        if later:
            findings.append(
                _finding(
                    run,
                    "fail",
                    f"reconnected {len(later)} time(s) after the resume answered 204 No Content",
                    connections[no_content],
                    *later[:2],
                )
            )
        else:
            findings.append(_finding(run, "pass", "stopped after the resume answered 204 No Content"))
    if not findings and run.scenario.cut == "before-done" and run.jobs:
        findings.append(
            _finding(run, "unverified", "the caller did not resume after `end`, so no 204 was served (allowed)")
        )
    return findings


# --- DC-C-7 ------------------------------------------------------------------------------


def _error_is_failure(run: ScenarioRun) -> list[Finding]:
    if run.scenario.finish != "error" or not run.jobs:
        return []
    if not any(_final_delivered(run, job) for job in run.jobs):
        return [_finding(run, "unverified", "the `error` event was never delivered to the caller")]
    unknown = _reported(run)
    if unknown:
        return [unknown]
    outcome = run.outcome
    assert outcome is not None
    if outcome.succeeded:
        return [
            _finding(
                run,
                "fail",
                f"reported a completion ({(outcome.text or '')[:60]!r}) for a job that ended with `error` {ERROR_CODE}",
            )
        ]
    said = f"{outcome.error or ''}\n{outcome.stderr}"
    if ERROR_CODE not in said and ERROR_MESSAGE not in said:
        return [
            _finding(
                run,
                "fail",
                f"reported failure without the error's code ({ERROR_CODE}) or message: {outcome.summary()}",
            )
        ]
    return [_finding(run, "pass", f"reported the failure with the error's code or message: {outcome.summary()}")]


# --- DC-C-8 ------------------------------------------------------------------------------


def _ignores_unknown(run: ScenarioRun) -> list[Finding]:
    """Text checks as DC-C-5, but any failure counts: nothing else in these scenarios is in the way."""
    if "DC-C-8" not in run.scenario.rules or not run.jobs:
        return []
    what = "comments, retry: fields and CRLF" if run.scenario.awkward_framing else "unknown events and fields"
    findings = _text_findings(run, f" despite {what}")
    outcome = run.outcome
    if [finding.verdict for finding in findings] == ["unverified"] and outcome is not None and not outcome.succeeded:
        return [_finding(run, "fail", f"{outcome.summary()} on a stream with {what}")]
    return findings


# --- DC-C-9 ------------------------------------------------------------------------------


def _cancels(run: ScenarioRun) -> list[Finding]:
    findings = []
    outcome = run.outcome
    for job in run.jobs:
        if _final_delivered(run, job):
            continue
        deletes = [hit for hit in run.of_kind("cancel") if hit.job_id == job.job_id]
        connections = run.streams(job)
        seen = max((hit.last_complete_id for hit in connections), default=0)
        if deletes:
            findings.append(
                _finding(
                    run, "pass", f"cancelled the abandoned job with DELETE after {len(connections)} stream attempt(s)"
                )
            )
        elif outcome is None or outcome.succeeded is None or outcome.timed_out or outcome.stopped:
            findings.append(_finding(run, "unverified", "the caller did not finish on its own"))
        else:
            findings.append(
                _finding(
                    run,
                    "fail",
                    f"gave up on job {job.job_id} (last event delivered: {seen} of {job.final_id}) without DELETE; "
                    f"then {outcome.summary()}",
                    *connections[-1:],
                )
            )
    return findings


# --- DC-C-10 -----------------------------------------------------------------------------


def _closes_at_done(run: ScenarioRun) -> list[Finding]:
    delay = run.scenario.close_delay_s
    if not delay:
        return []
    findings = []
    for job in run.jobs:
        done = [hit for hit in run.streams(job) if hit.done_at is not None]
        if not done:
            findings.append(_finding(run, "unverified", "[DONE] was never delivered"))
            continue
        hit = done[-1]
        assert hit.done_at is not None
        if hit.disconnected_at is not None and hit.disconnected_at - hit.done_at < delay - 0.1:
            after = max(0.0, hit.disconnected_at - hit.done_at)
            findings.append(_finding(run, "pass", f"closed the connection {after * 1000:.0f} ms after [DONE]"))
        else:
            findings.append(
                _finding(
                    run, "fail", f"kept the connection open {delay:g}s after [DONE], until the worker closed it", hit
                )
            )
    return findings


# --- DC-C-11 -----------------------------------------------------------------------------


def _patient(run: ScenarioRun) -> list[Finding]:
    delay = run.scenario.first_token_delay_s
    if not delay or not run.jobs:
        return []
    submits = [hit for hit in run.of_kind("submit") if hit.status == 202]
    if len(submits) > 1:
        return [
            _finding(run, "fail", f"submitted the job {len(submits)} times instead of waiting or resuming", *submits)
        ]
    job = run.jobs[0]
    connections = run.streams(job)
    if _final_delivered(run, job):
        how = f" (resumed {len(connections) - 1} time(s) meanwhile)" if len(connections) > 1 else ""
        return [_finding(run, "pass", f"waited {delay:g}s for the first token{how}")]
    unknown = _reported(run)
    if unknown:
        return [unknown]
    gave_up = max((hit.disconnected_at or 0.0) for hit in connections) if connections else 0.0
    outcome = run.outcome
    assert outcome is not None
    return [
        _finding(
            run,
            "fail",
            f"gave up at {gave_up:.1f}s after {len(connections)} connection(s); the first token came at {delay:g}s, "
            f"within the keep-alive interval of {run.scenario.keepalive_s:g}s that /health advertised; "
            f"{outcome.summary()}",
            *connections[-1:],
        )
    ]


RULES: tuple[CallerRule, ...] = (
    CallerRule(
        "DC-CALLER-001",
        "DC-C-1",
        "MUST",
        "sends no job_id (only InferenceRequest fields) in the submit body",
        "Drop job_id from the submit body; the worker generates the id and answers it in the 202 (DC-1.3). "
        "A conforming worker rejects a client job_id with 422 (DC-1.4).",
        _no_job_id,
    ),
    CallerRule(
        "DC-CALLER-002",
        "DC-C-2",
        "MUST",
        "follows sse_url resolved per RFC 3986 (absolute, relative, query) and never builds the stream path",
        "Open the stream at urljoin(<POST URL>, sse_url) — e.g. httpx.URL(post_url).join(sse_url) — keeping host, "
        "port and query; never format /v1/inference/{job_id}/stream yourself, and never read the POST response as "
        "the stream (DC-1.7).",
        _follows_sse_url,
    ),
    CallerRule(
        "DC-CALLER-003",
        "DC-C-3",
        "MUST",
        "retries 503 only after Retry-After, a bounded number of times",
        "On 503, sleep at least Retry-After seconds before the next submit, stop after a fixed number of attempts "
        "(e.g. 5) and report the failure (DC-1.6).",
        _retry_after,
    ),
    CallerRule(
        "DC-CALLER-004",
        "DC-C-4",
        "MUST",
        "resumes a cut stream at sse_url with Last-Event-ID of the last complete event, a bounded number of times",
        "When the stream ends before end/error, reconnect to the same sse_url with Last-Event-ID set to the id of "
        "the last event you received complete (an SSE parser dispatches only at the blank line), and give up after "
        "a few reconnects without a new event (DC-2.11).",
        _resumes,
    ),
    CallerRule(
        "DC-CALLER-005",
        "DC-C-5",
        "MUST",
        "reassembles exactly the full text, and never reports a partial text or a failure instead",
        "Concatenate token texts in index order, each once, decoding UTF-8 across reads (an incremental decoder, "
        "or an SSE library); report the text only after `end`.",
        _reassembles,
    ),
    CallerRule(
        "DC-CALLER-006",
        "DC-C-6",
        "MUST",
        "stops reconnecting when a resume answers 204 No Content",
        "Treat 204 on the stream as the end of the job: stop reconnecting and use the events you have (DC-2.12).",
        _stops_on_204,
    ),
    CallerRule(
        "DC-CALLER-007",
        "DC-C-7",
        "MUST",
        "reports an `error` event as a failure naming the error, never as a completion",
        "On `event: error`, raise or return a failure carrying data.code and data.message; do not return the "
        "tokens received so far as the answer.",
        _error_is_failure,
    ),
    CallerRule(
        "DC-CALLER-008",
        "DC-C-8",
        "MUST",
        "ignores comments, retry: fields, unknown event types and unknown JSON fields",
        "Use a WHATWG-conforming SSE parser; dispatch on the event type and skip types you do not know; read only "
        "the JSON fields you need and ignore the rest (DC-1.8).",
        _ignores_unknown,
    ),
    CallerRule(
        "DC-CALLER-009",
        "DC-C-9",
        "MUST",
        "cancels with DELETE a job it abandons before end/error",
        "Wrap the stream in try/finally: when you give up before end/error, send DELETE /v1/inference/{job_id} "
        "(or status_url) before reporting the failure (DC-3.2).",
        _cancels,
    ),
    CallerRule(
        "DC-CALLER-010",
        "DC-C-10",
        "SHOULD",
        "closes the stream at data: [DONE] instead of waiting for the worker to close it",
        "Stop reading at data: [DONE] and close the response (leave the `with` block) instead of reading to EOF.",
        _closes_at_done,
    ),
    CallerRule(
        "DC-CALLER-011",
        "DC-C-11",
        "SHOULD",
        "waits for a slow first token (or resumes), never gives up or resubmits early",
        "Use a stream read timeout of at least the keep-alive interval (keepalive_s in /health, 15 s by default; "
        "a timeout longer than that is fine) or resume on a read timeout; never submit the job a second time.",
        _patient,
    ),
)

RULE_BY_ID: dict[str, CallerRule] = {rule.check_id: rule for rule in RULES}
