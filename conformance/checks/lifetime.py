"""DC-4: job lifetime (TTL reclaim, disconnects)."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from typing import Any

from conformance.context import Context, Job
from conformance.probe import StreamCapture
from conformance.registry import check
from conformance.verdicts import CheckFailed

#: readers that drop mid-stream in DC-LIFE-003
DROPPED_READERS = 5
#: events a dropping reader reads before it hangs up
EVENTS_BEFORE_DROP = 3
#: how long a worker that refuses concurrent readers (409, DC-2.10) gets to notice a dropped one
REATTACH_WINDOW_S = 5.0


def _poll_until_gone(ctx: Context, url: str, ttl: float) -> tuple[float, str | None]:
    """Poll the status URL until 404; returns (seconds waited, the last state seen before).

    Allows the TTL plus a sweep margin; still there after that is a failure.
    """
    started = time.monotonic()
    deadline = started + ttl * 2 + 2
    last_state: str | None = None
    while True:
        response = ctx.probe.request("GET", url)
        if response.status_code == 404:
            return time.monotonic() - started, last_state
        with contextlib.suppress(ValueError, AttributeError):
            last_state = response.json().get("state", last_state)
        if time.monotonic() > deadline:
            raise CheckFailed(
                f"still {response.status_code} (state {last_state!r}) {time.monotonic() - started:.1f}s after "
                f"submit, although job_ttl_s is {ttl:g}"
            )
        time.sleep(min(0.25, ttl / 4))


@check(
    "DC-LIFE-001",
    rule="DC-4.1",
    level="MUST",
    title="a job nobody attaches to is reclaimed after the advertised TTL, even while it is still generating",
    area="lifetime",
)
def unattached_reclaimed(ctx: Context) -> str:
    """The longest job the advertised cap allows, never read: it must be gone within the TTL plus a margin."""
    ttl = ctx.ttl()
    job = ctx.submit(ctx.body(max_tokens=ctx.max_tokens_cap, temperature=0.7, seed=13))
    waited, last_state = _poll_until_gone(ctx, job.status_url, ttl)
    when = "while still " + last_state if last_state in ("queued", "running") else f"after it ended ({last_state})"
    return f"404 {waited:.1f}s after submit (TTL {ttl:g}s), reclaimed {when}"


@check(
    "DC-LIFE-002",
    rule="DC-4.2",
    level="MUST",
    title="a finished job replays within the TTL and is reclaimed after it",
    area="lifetime",
)
def finished_reclaimed(ctx: Context) -> str:
    ttl = ctx.ttl()
    job = ctx.submit(ctx.body(max_tokens=4))
    ctx.stream_of(job)
    replay = ctx.probe.stream(job.sse_url)
    if replay.status not in (200, 409) or (replay.status == 200 and not replay.done_seen):
        raise CheckFailed(f"a finished job did not replay right after it ended (status {replay.status})")
    waited, _ = _poll_until_gone(ctx, job.status_url, ttl)
    return f"replayed, then 404 {waited:.1f}s later (TTL {ttl:g}s)"


def _terminal(capture: StreamCapture) -> tuple[str, dict[str, Any]]:
    final = capture.final_event()
    if final is None or final.event not in ("end", "error"):
        return "", {}
    try:
        data = json.loads(final.data)
    except ValueError:
        data = {}
    return final.event, data if isinstance(data, dict) else {}


def _expect_intact(ctx: Context, job: Job, capture: StreamCapture, who: str) -> None:
    """The reader that stayed got the whole job, ended normally, not cancelled by someone else's disconnect."""
    ctx.judge_stall(job, capture)
    shown = [capture.exchange] if capture.exchange is not None else None  # this read, not the dropped ones
    if capture.status != 200:
        raise CheckFailed(f"{who} got {capture.status} instead of the stream", exchanges=shown)
    if not capture.done_seen:
        raise CheckFailed(
            f"{who} did not get the complete stream after other readers dropped",
            f"{capture.error}",
            exchanges=shown,
        )
    event, data = _terminal(capture)
    if event == "error" or data.get("stop_reason") == "cancelled":
        raise CheckFailed(
            f"{who} got {event} {json.dumps(data)} after another reader disconnected: one reader's disconnect "
            "ended the job for the others",
            exchanges=shown,
        )


@check(
    "DC-LIFE-003",
    rule="DC-4.3",
    level="MUST",
    title="a reader dropping mid-stream disturbs no other reader and the worker keeps serving",
    area="lifetime",
)
def disconnect_harmless(ctx: Context) -> str:
    """Readers drop mid-stream while another reads; the reader that stays, the next job and /health are fine."""
    job = ctx.submit(ctx.body(max_tokens=min(256, ctx.max_tokens_cap), temperature=0.7, seed=11))
    survivor: list[StreamCapture] = []
    reader = threading.Thread(target=lambda: survivor.append(ctx.probe.stream(job.sse_url)), daemon=True)
    reader.start()
    dropped = 0
    refused = False
    while dropped < DROPPED_READERS:
        capture = ctx.probe.stream(job.sse_url, stop_after_events=EVENTS_BEFORE_DROP)
        if capture.status == 409:  # DC-2.10 lets a worker refuse a second reader
            refused = True
            break
        if capture.status != 200:
            raise CheckFailed(
                f"GET sse_url of a job being read answered {capture.status}, expected 200 or 409",
                f"read ended: {capture.error or 'connection closed'}",
            )
        dropped += 1
    reader.join()
    staying = survivor[0]
    if staying.status == 409 and dropped:
        # the readers race to attach: a dropping reader held the stream first, and a worker with one
        # reader per job (DC-2.10) rightly refused the other; the reattach test below judges that worker
        refused = True
    else:
        _expect_intact(ctx, job, staying, "the reader that stayed")
    if refused:
        dropped = _drop_then_reattach(ctx)
    fresh = ctx.submit(ctx.body(max_tokens=8))
    after = ctx.stream_of(fresh)
    if not after.done_seen or _terminal(after)[0] != "end":
        raise CheckFailed(
            "a new job did not complete normally after readers dropped",
            f"{after.error}",
            exchanges=[exchange for exchange in (fresh.exchange, after.exchange) if exchange is not None],
        )
    health = ctx.probe.request("GET", ctx.base_url + "/health", auth=False)
    if health.status_code != 200:
        raise CheckFailed(f"/health answered {health.status_code} after readers dropped")
    mode = " (second readers refused with 409; each dropped before the next attached)" if refused else ""
    return f"{dropped} dropped readers{mode}; the reader that stayed, a new job and /health are fine"


def _drop_then_reattach(ctx: Context) -> int:
    """For a worker with one reader per job: a reader drops, the next one attaches and gets the whole job."""
    job = ctx.submit(ctx.body(max_tokens=min(256, ctx.max_tokens_cap), temperature=0.7, seed=12))
    first = ctx.probe.stream(job.sse_url, stop_after_events=EVENTS_BEFORE_DROP)
    if first.status != 200:
        raise CheckFailed(f"the only reader of a fresh job got {first.status}")
    deadline = time.monotonic() + REATTACH_WINDOW_S
    while True:
        second = ctx.probe.stream(job.sse_url)
        if second.status != 409 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    if second.status == 409:
        raise CheckFailed(
            f"{REATTACH_WINDOW_S:g} s after the only reader disconnected, a new reader is still refused with 409"
        )
    _expect_intact(ctx, job, second, "the reader that attached after the drop")
    return 1
