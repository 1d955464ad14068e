"""DC-4: job lifetime (TTL reclaim, disconnects)."""

from __future__ import annotations

import time

from conformance.checks import CheckFailed, CheckSkipped, check
from conformance.context import Context


def _ttl(ctx: Context) -> float:
    health = ctx.health() or {}
    ttl = health.get("job_ttl_s")
    if not isinstance(ttl, int | float) or ttl <= 0:
        raise CheckSkipped("the worker does not advertise job_ttl_s in /health")
    if ttl > ctx.options.ttl_budget_s:
        raise CheckSkipped(
            f"job_ttl_s is {ttl:g}s, longer than --ttl-budget {ctx.options.ttl_budget_s:g}s; "
            "run the worker with a short TTL to check reclaim"
        )
    return float(ttl)


def _wait_for_404(ctx: Context, url: str, ttl: float) -> float:
    """Poll until the URL answers 404; returns seconds waited. Allows the TTL plus a sweep margin."""
    deadline = time.monotonic() + ttl * 2 + 2
    started = time.monotonic()
    time.sleep(ttl)
    while True:
        response = ctx.probe.request("GET", url)
        if response.status_code == 404:
            return time.monotonic() - started
        if time.monotonic() > deadline:
            raise CheckFailed(f"still {response.status_code} {time.monotonic() - started:.1f}s later (TTL {ttl:g}s)")
        time.sleep(min(0.5, ttl / 2))


@check(
    "DC-LIFE-001",
    rule="DC-4.1",
    level="MUST",
    title="a job nobody attaches to is reclaimed after the advertised TTL",
    area="lifetime",
)
def unattached_reclaimed(ctx: Context) -> str:
    ttl = _ttl(ctx)
    job = ctx.submit(ctx.body(max_tokens=4))
    waited = _wait_for_404(ctx, job.status_url, ttl)
    return f"404 {waited:.1f}s after submit (TTL {ttl:g}s)"


@check(
    "DC-LIFE-002",
    rule="DC-4.2",
    level="MUST",
    title="a finished job replays within the TTL and is reclaimed after it",
    area="lifetime",
)
def finished_reclaimed(ctx: Context) -> str:
    ttl = _ttl(ctx)
    job = ctx.submit(ctx.body(max_tokens=4))
    ctx.stream_of(job)
    replay = ctx.probe.stream(job.sse_url)
    if replay.status not in (200, 409) or (replay.status == 200 and not replay.done_seen):
        raise CheckFailed(f"a finished job did not replay right after it ended (status {replay.status})")
    waited = _wait_for_404(ctx, job.status_url, ttl)
    return f"replayed, then 404 {waited:.1f}s later (TTL {ttl:g}s)"


@check(
    "DC-LIFE-003",
    rule="DC-4.3",
    level="MUST",
    title="a reader dropping mid-stream disturbs no other reader and the worker keeps serving",
    area="lifetime",
)
def disconnect_harmless(ctx: Context) -> str:
    job = ctx.submit(ctx.body(max_tokens=min(256, ctx.max_tokens_cap), temperature=0.7, seed=11))
    for _ in range(5):
        dropped = ctx.probe.stream(job.sse_url, stop_after_events=3)
        if dropped.status != 200:
            raise CheckFailed(f"GET sse_url answered {dropped.status}")
    survivor = ctx.stream_of(job)
    if not survivor.done_seen:
        raise CheckFailed("after 5 readers dropped, a full reader did not get the complete stream", f"{survivor.error}")
    fresh = ctx.submit(ctx.body(max_tokens=4))
    after = ctx.stream_of(fresh)
    if not after.done_seen:
        raise CheckFailed("a new job did not complete after readers dropped")
    health = ctx.probe.request("GET", ctx.base_url + "/health", auth=False)
    if health.status_code != 200:
        raise CheckFailed(f"/health answered {health.status_code} after readers dropped")
    return "5 dropped readers; the full reader, a new job and /health are fine"
