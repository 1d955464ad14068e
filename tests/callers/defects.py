"""The catalogue of deliberately broken callers: the toy caller with ONE defect each.

Every entry models a bug a real orchestrator could ship and names the caller checks that MUST
fail because of it (``caught_by``), or warn for a SHOULD rule (``warned_by``). ``scenarios`` are
the ones the defect is run against (the rule's own scenarios; one is enough for DC-C-1).
Every other check run on those scenarios must pass or be not verified: one defect, one verdict.
"""

from __future__ import annotations

from dataclasses import dataclass

from callers.toy import Knobs


@dataclass(frozen=True, slots=True)
class BrokenCaller:
    name: str
    description: str
    knobs: Knobs
    scenarios: tuple[str, ...]
    caught_by: tuple[str, ...] = ()
    warned_by: tuple[str, ...] = ()
    #: run as a command (``python -m callers.toy``), which the suite can stop; a thread cannot be stopped
    as_command: bool = False
    timeout_s: float = 15.0
    #: words the failing check's findings must contain (the evidence names what went wrong)
    evidence: str = ""


CUTS = ("cut-mid-event", "cut-mid-utf8", "dead-stream")

BROKEN_CALLERS: tuple[BrokenCaller, ...] = (
    BrokenCaller(
        "sends-job-id",
        "keeps the legacy client's job_id in the submit body",
        Knobs(send_job_id=True),
        ("keepalive",),
        caught_by=("DC-CALLER-001",),
    ),
    BrokenCaller(
        "builds-stream-path",
        "formats {submit_url}/{job_id}/stream instead of following sse_url",
        Knobs(build_stream_path=True),
        ("absolute-sse-url", "relative-sse-url-query"),
        caught_by=("DC-CALLER-002",),
    ),
    BrokenCaller(
        "concatenates-sse-url",
        "appends sse_url to the base URL as a string instead of resolving it (RFC 3986)",
        Knobs(concat_sse_url=True),
        ("relative-sse-url-query",),
        caught_by=("DC-CALLER-002",),
    ),
    BrokenCaller(
        "ignores-retry-after",
        "retries a 503 at once, without waiting for Retry-After",
        Knobs(wait_retry_after=False),
        ("retry-after",),
        caught_by=("DC-CALLER-003",),
    ),
    BrokenCaller(
        "retries-without-bound",
        "honours Retry-After but retries (almost) forever",
        Knobs(max_submits=25),
        ("busy",),
        caught_by=("DC-CALLER-003",),
    ),
    BrokenCaller(
        "no-resume",
        "treats a dropped connection as the end of the job and gives up (but cancels it)",
        Knobs(resume=False),
        CUTS,
        caught_by=("DC-CALLER-004",),
    ),
    BrokenCaller(
        "resume-without-last-event-id",
        "reconnects without Last-Event-ID and de-duplicates the replay by index",
        Knobs(send_last_event_id=False),
        ("cut-mid-event", "cut-mid-utf8"),
        caught_by=("DC-CALLER-004",),
    ),
    BrokenCaller(
        "resume-from-partial-event",
        "takes Last-Event-ID from the id: line of the event that was cut in half, so that token is lost",
        Knobs(id_from_partial_event=True),
        ("cut-mid-event",),
        caught_by=("DC-CALLER-004", "DC-CALLER-005"),
    ),
    BrokenCaller(
        "resumes-without-bound",
        "reconnects to a dead stream 15 times before giving up",
        Knobs(max_resumes=15),
        ("dead-stream",),
        caught_by=("DC-CALLER-004",),
    ),
    BrokenCaller(
        "never-gives-up",
        "reconnects to a dead stream forever, as soon as its `retry:` field says (an EventSource left alone)",
        Knobs(max_resumes=None, honour_retry_field=True),
        ("dead-stream",),
        caught_by=("DC-CALLER-004",),
        as_command=True,
        evidence="reconnects to a stream that never progressed: not bounded",
    ),
    BrokenCaller(
        "never-gives-up-slowly",
        "reconnects to a dead stream forever, 3 s apart (an EventSource's default delay, ignoring `retry:`)",
        Knobs(max_resumes=None, reconnect_delay_s=3.0),
        ("dead-stream",),
        caught_by=("DC-CALLER-004",),
        as_command=True,
        timeout_s=8.0,
        evidence="still reconnecting to a stream that never progressed after",
    ),
    BrokenCaller(
        "strips-tokens",
        "strips the whitespace of every token text",
        Knobs(strip_tokens=True),
        ("cut-mid-event",),
        caught_by=("DC-CALLER-005",),
    ),
    BrokenCaller(
        "ignores-204",
        "treats 204 No Content on a resume as a dropped connection and reconnects",
        Knobs(stop_on_204=False),
        ("done-204",),
        caught_by=("DC-CALLER-006",),
    ),
    BrokenCaller(
        "error-as-completion",
        "returns the tokens received so far when the stream ends with `error`",
        Knobs(error_is_failure=False),
        ("error-event",),
        caught_by=("DC-CALLER-007",),
    ),
    BrokenCaller(
        "error-without-details",
        "reports a failed generation without the error's code or message",
        Knobs(error_details=False),
        ("error-event",),
        caught_by=("DC-CALLER-007",),
    ),
    BrokenCaller(
        "fails-on-unknown-event",
        "raises on an event type it does not know",
        Knobs(skip_unknown_events=False),
        ("unknown-events",),
        caught_by=("DC-CALLER-008",),
    ),
    BrokenCaller(
        "rejects-unknown-fields",
        "rejects JSON fields it does not know, in the submit answer and in events",
        Knobs(strict_fields=True),
        ("unknown-events",),
        caught_by=("DC-CALLER-008",),
    ),
    BrokenCaller(
        "data-needs-a-space",
        "splits lines by hand and only reads `data: ` with a space",
        Knobs(data_needs_space=True),
        ("keepalive",),
        caught_by=("DC-CALLER-008",),
    ),
    BrokenCaller(
        "never-cancels",
        "gives up on a dead stream without DELETE, leaving the job to the TTL",
        Knobs(cancel_on_abandon=False),
        ("dead-stream",),
        caught_by=("DC-CALLER-009",),
    ),
    BrokenCaller(
        "reads-to-eof",
        "keeps reading after [DONE] until the worker closes the connection",
        Knobs(close_at_done=False),
        ("late-close",),
        warned_by=("DC-CALLER-010",),
    ),
    BrokenCaller(
        "impatient",
        "gives up (and cancels) after 3 s without data, less than the keep-alive interval /health advertises",
        Knobs(read_timeout_s=3.0, resume_on_timeout=False),
        ("slow-first-token",),
        warned_by=("DC-CALLER-011",),
        evidence="within the keep-alive interval of 5s that /health advertised",
    ),
)
