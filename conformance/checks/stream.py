"""DC-2: the event stream behind sse_url."""

from __future__ import annotations

import json
import math
import threading

from conformance.checks.problems import expect_problem
from conformance.checks.submit import saturated_queue
from conformance.context import UNKNOWN_JOB_ID, Context
from conformance.contract import data_errors, defined_members
from conformance.probe import StreamCapture
from conformance.registry import check
from conformance.sse import CONTRACT_VIOLATIONS
from conformance.verdicts import CheckFailed, CheckUnverified

TRICKY = ("\n", "\r", "data:", "[DONE]", "id:", "event:", "\u2028", "\u0085")
#: framing the contract forbids; everything else the strict parser notes (CR or CRLF line ends, a BOM,
#: "data:" without a space, unknown fields) is valid SSE that every client handles, so it is allowed
#: a silence this many keep-alive intervals long (plus half a second) without a comment is a missing keep-alive
KEEPALIVE_SLACK = 1.5


def _delivered(event_type: str, data: str) -> str:
    """What DC-2.10 requires every reader to get of one event's data: the members the contract defines.

    Members the contract does not define (a delivery timestamp, say) may differ between readers,
    and so may the spelling of the JSON (key order, spaces); everything the contract defines may not.
    """
    defined = defined_members(event_type)
    try:
        payload = json.loads(data)
    except ValueError:
        return data
    if not defined or not isinstance(payload, dict):
        return data
    return json.dumps({key: value for key, value in payload.items() if key in defined}, sort_keys=True)


def sequence(capture: StreamCapture) -> list[tuple[str | None, str, str]]:
    """The events as DC-2.10 compares them between readers: id, type, and the data the contract defines."""
    return [
        (event.id if event.has_id_field else None, event.event, _delivered(event.event, event.data))
        for event in capture.events
    ]


def _first_difference(left: StreamCapture, right: StreamCapture) -> str:
    a, b = sequence(left), sequence(right)
    for position, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return f"event #{position + 1} differs: {x!r} vs {y!r}"
    return f"one reader got {len(a)} events, the other {len(b)}"


@check(
    "DC-STREAM-001",
    rule="DC-2.1",
    level="MUST",
    title="stream answers 200 text/event-stream (charset utf-8 if named) with Cache-Control: no-cache",
    area="stream",
)
def stream_headers(ctx: Context) -> str:
    _, capture = ctx.reference()
    if capture.status != 200:
        raise CheckFailed(f"GET sse_url answered {capture.status}, expected 200", f"body: {capture.excerpt(300)!r}")
    media_type, _, params = capture.content_type.partition(";")
    if media_type.strip().lower() != "text/event-stream":
        raise CheckFailed(f"Content-Type is {capture.content_type!r}, expected text/event-stream; charset=utf-8")
    charset = params.replace(" ", "").lower()
    if "charset=" in charset and "charset=utf-8" not in charset:
        raise CheckFailed(f"Content-Type names a charset other than utf-8: {capture.content_type!r}")
    cache_control = capture.headers.get("cache-control", "")
    if "no-cache" not in cache_control.lower() and "no-store" not in cache_control.lower():
        raise CheckFailed(f"Cache-Control is {cache_control or 'missing'!r}, expected no-cache")
    return f"{capture.content_type}, Cache-Control: {cache_control}"


@check(
    "DC-STREAM-002",
    rule="DC-2.2",
    level="MUST",
    title="every event carries an id: line; ids are consecutive integers from 1",
    area="stream",
)
def event_ids(ctx: Context) -> str:
    _, capture = ctx.completed_reference()
    expected = 1
    for event in capture.protocol_events:
        if not event.has_id_field:
            raise CheckFailed(f"a {event.event!r} event has no id: line", f"event bytes: {event.raw[:200]!r}")
        if event.id != str(expected):
            raise CheckFailed(
                f"event id {event.id!r} where {expected} was expected (ids must run 1, 2, 3, ...)",
                f"event bytes: {event.raw[:200]!r}",
            )
        expected += 1
    return f"ids 1..{expected - 1}"


@check(
    "DC-STREAM-003",
    rule="DC-2.3",
    level="MUST",
    title="each event's data is one line of UTF-8 JSON matching its event type's schema",
    area="stream",
)
def event_grammar(ctx: Context) -> str:
    _, capture = ctx.completed_reference()
    return _check_grammar(capture)


def _check_grammar(capture: StreamCapture) -> str:
    forbidden = [
        issue
        for issue in capture.issues
        if issue.code in CONTRACT_VIOLATIONS or (issue.code == "trailing-incomplete-event" and not capture.done_seen)
    ]
    if forbidden:
        first = forbidden[0]
        raise CheckFailed(
            f"stream framing the contract forbids: {first.message}",
            *(f"{issue.code} at byte {issue.offset}: {issue.excerpt!r}" for issue in forbidden[:5]),
        )
    for event in capture.protocol_events:
        if event.data_lines != 1:
            raise CheckFailed(
                f"a {event.event!r} event has {event.data_lines} data lines", f"bytes: {event.raw[:200]!r}"
            )
        try:
            payload = json.loads(event.data)
        except ValueError:
            raise CheckFailed(
                f"a {event.event!r} event's data is not JSON: {event.data[:80]!r}", f"bytes: {event.raw[:200]!r}"
            ) from None
        errors = data_errors(event.event, payload)
        if errors:
            raise CheckFailed(f"a {event.event!r} event does not match its schema: {errors[0]}", *errors[1:4])
    return f"{len(capture.protocol_events)} events, each one line of valid JSON"


@check(
    "DC-STREAM-004", rule="DC-2.4", level="MUST", title="the first event is `started` with the job_id", area="stream"
)
def started_first(ctx: Context) -> str:
    job, capture = ctx.completed_reference()
    first = capture.events[0]
    if first.event != "started":
        raise CheckFailed(f"the first event is {first.event!r}, not 'started'", f"bytes: {first.raw[:200]!r}")
    try:
        job_id = json.loads(first.data).get("job_id")
    except (ValueError, AttributeError):
        raise CheckFailed(f"the started event's data is not a JSON object: {first.data[:80]!r}") from None
    if job_id != job.job_id:
        raise CheckFailed(f"started names job {job_id!r}, but the job is {job.job_id!r}")
    return "started carries the job_id"


@check(
    "DC-STREAM-005",
    rule="DC-2.5",
    level="MUST",
    title="token events have indexes 0, 1, 2, ... without gaps",
    area="stream",
)
def token_indexes(ctx: Context) -> str:
    _, capture = ctx.completed_reference()
    indexes = []
    for event in capture.protocol_events:
        if event.event == "token":
            try:
                indexes.append(json.loads(event.data)["index"])
            except (ValueError, KeyError, TypeError):
                raise CheckFailed(f"a token event has no index: {event.data[:80]!r}") from None
    if indexes != list(range(len(indexes))):
        raise CheckFailed(
            f"token indexes are {indexes[:12]}{'...' if len(indexes) > 12 else ''}, expected 0, 1, 2, ..."
        )
    if not indexes:
        raise CheckFailed("the stream carried no token events for a 24-token request")
    return f"{len(indexes)} tokens, indexes 0..{len(indexes) - 1}"


@check(
    "DC-STREAM-006",
    rule="DC-2.6",
    level="MUST",
    title="exactly one end or error event, last before [DONE]; end.tokens_out >= token events",
    area="stream",
)
def terminal_event(ctx: Context) -> str:
    _, capture = ctx.completed_reference()
    return _check_terminal(capture)


def _check_terminal(capture: StreamCapture) -> str:
    events = capture.protocol_events
    terminals = [event for event in events if event.event in ("end", "error")]
    if len(terminals) != 1:
        raise CheckFailed(f"{len(terminals)} end/error events, expected exactly one")
    if events[-1] is not terminals[0]:
        raise CheckFailed(f"the {terminals[0].event!r} event is followed by a {events[-1].event!r} event")
    if terminals[0].event == "end":
        data = json.loads(terminals[0].data)
        tokens = sum(1 for event in events if event.event == "token")
        if not isinstance(data.get("tokens_out"), int) or data["tokens_out"] < tokens:
            raise CheckFailed(f"end.tokens_out is {data.get('tokens_out')!r} but {tokens} token events were sent")
        return f"end ({data.get('stop_reason')}, tokens_out {data['tokens_out']})"
    return "error event ends the stream"


@check(
    "DC-STREAM-007",
    rule="DC-2.7",
    level="MUST",
    title="`data: [DONE]` is last, then the server closes the connection",
    area="stream",
)
def done_then_close(ctx: Context) -> str:
    """Its own short job, read waiting for the close: the shared reference read ends at [DONE]."""
    job = ctx.submit(ctx.body(max_tokens=4))
    capture = ctx.probe.stream(job.sse_url, await_close=True)
    if capture.status != 200:
        raise CheckUnverified(
            f"GET sse_url answered {capture.status}, so [DONE] and the close could not be observed",
            "a stream that delivers events (see DC-STREAM-001)",
        )
    ctx.judge_stall(job, capture)
    if not capture.done_seen:
        raise CheckFailed(
            "the stream never sent data: [DONE]",
            f"last bytes: {capture.raw[-200:]!r}",
            f"read ended with: {capture.error or 'connection closed'}",
        )
    if capture.bytes_after_done.strip():
        raise CheckFailed(f"bytes after [DONE]: {capture.bytes_after_done[:120]!r}")
    if not capture.closed_after_done:
        raise CheckFailed("the connection stayed open after [DONE] (waited 2 s for the server to close it)")
    return "[DONE] then close"


@check(
    "DC-STREAM-008",
    rule="DC-2.5",
    level="MUST",
    title="text with line breaks, CR, `data:` or `[DONE]` travels inside JSON without breaking the frame",
    area="stream",
)
def tricky_text(ctx: Context) -> str:
    """A longer run (128 tokens) read strictly: every token is one JSON line, whatever its text."""
    job = ctx.submit(ctx.body(max_tokens=min(128, ctx.max_tokens_cap), temperature=1.0, seed=7))
    capture = ctx.stream_of(job)
    _check_grammar(capture)
    _check_terminal(capture)
    texts = capture.token_texts()
    seen = sorted({marker for text in texts for marker in TRICKY if marker in text})
    replay = ctx.stream_of(job)
    if replay.token_texts() != texts:
        raise CheckFailed(
            "a replay of the same job decoded to different token texts", _first_difference(capture, replay)
        )
    shown = ", ".join(repr(marker) for marker in seen) if seen else "none appeared in this run"
    return f"{len(texts)} tokens intact; tricky text seen: {shown}"


@check(
    "DC-STREAM-009",
    rule="DC-2.9",
    level="MUST",
    title="an unknown job id answers 404 problem, never an empty 200 stream",
    area="stream",
)
def unknown_stream(ctx: Context) -> str:
    """A 404 means "no such job" only from a worker whose stream route serves real jobs."""
    ctx.completed_reference()
    response = ctx.probe.request("GET", ctx.job_url(UNKNOWN_JOB_ID, "/stream"))
    expect_problem(response, 404)
    return "404 problem+json for an unknown id (a real job's stream answered 200)"


@check(
    "DC-STREAM-010",
    rule="DC-2.10",
    level="MUST",
    title="several readers of one job each get the same complete sequence (or 409)",
    area="stream",
)
def replay_identical(ctx: Context) -> str:
    """A reader after completion and two concurrent readers of a fresh job all see identical events."""
    job, first = ctx.completed_reference()
    again = ctx.probe.stream(job.sse_url)
    if again.status == 409:
        return "second reader refused with 409"
    if again.status != 200:
        raise CheckFailed(f"a second GET of a finished job answered {again.status}, expected 200 replay or 409")
    if sequence(again) != sequence(first):
        raise CheckFailed("a second reader got a different event sequence", _first_difference(first, again))
    fresh = ctx.submit(ctx.body(max_tokens=min(64, ctx.max_tokens_cap)))
    captures: list[StreamCapture] = []
    threads = [threading.Thread(target=lambda: captures.append(ctx.probe.stream(fresh.sse_url))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(ctx.options.timeout_s * 3)
    statuses = sorted(capture.status or 0 for capture in captures)
    if 409 in statuses:
        return "concurrent second reader refused with 409"
    if len(captures) != 2 or statuses != [200, 200]:
        raise CheckFailed(f"two concurrent readers got statuses {statuses}")
    if sequence(captures[0]) != sequence(captures[1]):
        raise CheckFailed(
            "two concurrent readers got different sequences (a split stream?)", _first_difference(*captures)
        )
    if not captures[0].done_seen:
        raise CheckFailed("concurrent readers did not receive the complete stream")
    return f"replay identical ({len(first.events)} events); two concurrent readers identical"


@check(
    "DC-STREAM-011",
    rule="DC-2.11",
    level="SHOULD",
    title="Last-Event-ID: k resumes with the event after k",
    area="stream",
)
def resume(ctx: Context) -> str:
    job, full = ctx.completed_reference()
    events = full.protocol_events
    if len(events) < 4:
        raise CheckUnverified(
            "the reference stream is too short to resume in the middle", "a max_tokens_cap of at least 2"
        )
    after = events[2]
    if not after.has_id_field or after.id is None:
        raise CheckFailed("events carry no ids, so a client cannot resume (see DC-STREAM-002)")
    resumed = ctx.probe.stream(job.sse_url, headers={"Last-Event-ID": after.id})
    if resumed.status != 200:
        raise CheckFailed(f"GET with Last-Event-ID: {after.id} answered {resumed.status}")
    expected = sequence(full)[3:]
    if sequence(resumed) != expected:
        got = sequence(resumed)
        first = got[0] if got else None
        raise CheckFailed(
            f"after Last-Event-ID: {after.id} the stream did not continue with event {int(after.id) + 1}",
            f"first event received: {first!r}",
            f"expected: {expected[0]!r}",
        )
    return f"resumed after id {after.id} with {len(expected)} events"


@check(
    "DC-STREAM-012",
    rule="DC-2.12",
    level="MUST",
    title="Last-Event-ID of the final event (or later) answers 204 No Content",
    area="stream",
)
def no_content_after_end(ctx: Context) -> str:
    """Tells a browser's EventSource to stop reconnecting once the job is over."""
    job, full = ctx.completed_reference()
    final = full.final_event()
    if final is None or not final.has_id_field or not (final.id or "").isdigit():
        raise CheckUnverified(
            "the reference stream's final event has no integer id, so no client can name it (see DC-STREAM-002)",
            "integer event ids (DC-2.2)",
        )
    last = int(final.id or 0)
    for resume_id, what in (
        (last, "the final event"),
        (last + 1, "one past the final event"),
        (last + 1000, "far past it"),
    ):
        capture = ctx.probe.stream(job.sse_url, headers={"Last-Event-ID": str(resume_id)}, stop_after_events=1)
        if capture.status != 204:
            raise CheckFailed(
                f"GET with Last-Event-ID: {resume_id} ({what}) answered {capture.status}, expected 204",
                f"body: {capture.excerpt(200)!r}",
            )
    return f"204 for Last-Event-ID {last}, {last + 1} and {last + 1000}"


@check(
    "DC-STREAM-013",
    rule="DC-2.8",
    level="SHOULD",
    title="an idle stream carries `: keep-alive` comments at the advertised interval",
    area="stream",
)
def keep_alive(ctx: Context) -> str:
    """A job held in a full queue has an idle stream: comments must arrive while it waits."""
    interval = (ctx.health() or {}).get("keepalive_s")
    if not isinstance(interval, int | float) or interval <= 0:
        raise CheckUnverified(
            "the worker does not advertise keepalive_s in /health", "advertise keepalive_s in /health (DC-5.1)"
        )
    if interval > ctx.options.ttl_budget_s:
        raise CheckUnverified(
            f"keepalive_s is {interval:g}s, longer than --ttl-budget {ctx.options.ttl_budget_s:g}s",
            f"start the worker with a keep-alive interval of at most {ctx.options.ttl_budget_s:g} s, "
            f"or pass --ttl-budget {math.ceil(interval) + 5}",
        )
    with saturated_queue(ctx) as queue:
        if queue.refusal is None or not queue.accepted:
            raise CheckUnverified(
                "could not fill the queue, so no stream could be made idle",
                "a worker whose queue fills within the probe (a small --queue-limit, or slower generation)",
            )
        waiting = queue.accepted[-1]
        capture = ctx.probe.stream(ctx.resolve_stream(waiting), max_duration_s=interval * (KEEPALIVE_SLACK + 0.5) + 1)
    if capture.status != 200:
        raise CheckFailed(f"the stream of a queued job answered {capture.status}")
    if capture.comments:
        return (
            f"{len(capture.comments)} comment(s) on a stream idle for {capture.elapsed_s:.1f}s (interval {interval:g}s)"
        )
    # the silence before the first event (or the whole read): only a gap well past the interval is evidence,
    # a timer firing a moment late on a busy worker is not
    silent_s = capture.first_event_s if capture.first_event_s is not None else capture.elapsed_s
    if silent_s < interval * KEEPALIVE_SLACK + 0.5:
        raise CheckUnverified(
            f"the queued job's stream was silent for only {silent_s:.1f}s before its job started "
            f"(keepalive_s {interval:g})",
            "a keep-alive interval shorter than the time a queued job waits",
        )
    raise CheckFailed(
        f"no comment line on a stream silent for {silent_s:.1f}s although keepalive_s is {interval:g}",
        f"received: {capture.excerpt(200)!r}",
    )
