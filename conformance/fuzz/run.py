"""One fuzz run from start to verdicts: budget, phases, stream reads, clean-up. Never raises."""

from __future__ import annotations

import contextlib
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable
from typing import Final

import httpx

from conformance.context import Context, Options
from conformance.fuzz.evidence import describe_error
from conformance.fuzz.phases import fuzz_phases
from conformance.fuzz.session import FUZZ_CHECK_IDS, SUBMIT, FuzzSession
from conformance.fuzz.streams import ReadSummary, StreamReader, body_text
from conformance.fuzz.tally import Finding, FuzzVerdict, Tally
from conformance.probe import Probe

__all__ = ["fuzz_target", "run_fuzz"]

#: seconds the stream reads get after the last fuzzed request
_READ_GRACE_S: Final = 15.0


def fuzz_target(
    ctx: Context,
    *,
    max_examples: int,
    seed: int | None,
    on_progress: Callable[[str], None] | None = None,
) -> list[FuzzVerdict]:
    """Fuzz the worker of ``ctx``; one verdict per fuzz check, in `FUZZ_CHECK_IDS` order.

    The worker's /health (its ``max_tokens_cap`` lets a 422 for a larger ``max_tokens`` pass,
    DC-1.1) comes from the context. The bridge's own requests (stream reads, the stream-layout
    probe, cancelling) go through a new `Probe` for the same target, so they never mix with the
    evidence of the other checks. Hypothesis keeps its cache in a temporary directory: the run
    leaves no files behind.
    """
    from hypothesis.configuration import set_hypothesis_home_dir

    with tempfile.TemporaryDirectory(prefix="dualcall-hypothesis-") as scratch:
        set_hypothesis_home_dir(scratch)
        try:
            return _fuzz(ctx, max_examples=max_examples, seed=seed, on_progress=on_progress)
        finally:
            set_hypothesis_home_dir(None)


def run_fuzz(
    base_url: str,
    *,
    token: str | None = None,
    max_examples: int = 25,
    timeout_s: float = 10.0,
    seed: int | None = 0,
    on_progress: Callable[[str], None] | None = None,
) -> list[FuzzVerdict]:
    """Fuzz the worker at ``base_url`` on its own (outside a conformance run); one verdict per fuzz check.

    The deterministic boundary cases of submit come first (their number depends only on the schema:
    107 with schemathesis 4.32). ``max_examples`` scales the other phases: that many positive and that
    many negative submit bodies, a fifth of it for each job route with random ids, and that many
    stateful scenarios of at most five steps. Jobs accepted for valid bodies are read to their end
    meanwhile (at most :data:`~conformance.fuzz.streams.MAX_READ_JOBS`). ``seed`` makes generation
    reproducible (``None``: random). Never raises.

    Wall time is bounded: the boundary run is stopped after 120 s or the soft budget (30 s + 2 s per
    example), whichever is longer; the other phases send no request once their own soft budget is
    spent; the stream reads get 15 s more plus one read's deadline (``max(5, timeout_s)``);
    cancelling the accepted jobs takes at most 5 s. With the default 25 examples: at most about
    120 + 80 + 15 + 10 + 5 = 230 s against a worker that never answers, 20 to 40 s against the mock.
    """
    ctx = Context(Probe(base_url, token=token, timeout_s=timeout_s), Options(timeout_s=timeout_s, token=token))
    try:
        return fuzz_target(ctx, max_examples=max_examples, seed=seed, on_progress=on_progress)
    finally:
        ctx.probe.close()


def _reachable(ctx: Context) -> bool:
    """Whether the target answers HTTP at all (an unreachable one is diagnosed by the first fuzzed request)."""
    if ctx.health() is not None:
        return True
    try:
        ctx.probe.request("GET", ctx.base_url + "/health", auth=False)
    except httpx.HTTPError:
        return False
    return True


def _fuzz(
    ctx: Context,
    *,
    max_examples: int,
    seed: int | None,
    on_progress: Callable[[str], None] | None,
) -> list[FuzzVerdict]:
    started = time.monotonic()
    max_examples = max(1, int(max_examples))
    # A soft budget: once spent, no further request is sent (streams are cut at ``timeout_s`` by schemathesis).
    budget_s = 30.0 + 2.0 * max_examples
    base_url, timeout_s = ctx.base_url, ctx.options.timeout_s
    session = FuzzSession(base_url, timeout_s=timeout_s, deadline=started + budget_s, on_progress=on_progress)
    summary: ReadSummary | None = None
    reader = StreamReader(base_url, token=ctx.probe.token, timeout_s=timeout_s)
    session.reader = reader
    try:
        fuzz_phases(
            session,
            reader.probe,
            max_examples=max_examples,
            seed=seed,
            max_tokens_cap=ctx.advertised_cap,
            reachable=_reachable(ctx),
        )
    except Exception as exc:  # outside any phase: loading schemathesis or the contract, the suite's own
        reason = f"the suite could not fuzz {base_url}: {describe_error(exc)}"
        trace = traceback.format_exc()
        for tally in session.tallies.values():
            tally.broke(reason, trace)
    finally:
        summary = _finish_reads(session)
        with contextlib.suppress(Exception):
            session.cancel_created_jobs()
        reader.close()

    if session.responses == 0 and session.connection_failures:
        reason = f"fuzzing could not reach {base_url}: {session.unreachable_reason or 'connection failed'}"
        for tally in session.tallies.values():
            tally.aborted = reason
            for finding in tally.findings.values():
                finding.count = 1  # the same refused connection, not a finding per request
    elif session.halted is not None:
        for tally in session.tallies.values():
            tally.aborted = tally.aborted or session.halted
    if session.out_of_time:
        note = f"time budget of {budget_s:.0f} s spent: later examples were not sent"
        for tally in session.tallies.values():
            tally.notes.append(note)

    t1, t2, t3, t4 = (session.tallies[check_id] for check_id in FUZZ_CHECK_IDS)
    # Loading schemathesis and the contract, and cleaning up, count toward the first check.
    t1.seconds += max(0.0, time.monotonic() - started - t1.seconds - t2.seconds - t3.seconds - t4.seconds)
    linked = sorted(t3.operations - {SUBMIT})
    if not t3.aborted and t3.suite_error is None and not t3.findings and not linked:
        t3.unobserved = (
            "no link was followed: no fuzzed submit answered 202 with a job_id "
            "that the stream/status/cancel links could use"
        )
    if session.unserved(SUBMIT):
        # a 404/405 for every submission is no evidence about the contract's request rules
        answered = ", ".join(str(status) for status in sorted(session.statuses[SUBMIT]))
        reason = f"every fuzzed {SUBMIT} was answered {answered}: the worker does not serve the operation"
        for tally in (t1, t4):
            tally.unobserved = reason
        if all(session.unserved(operation) for operation in session.statuses):
            t2.unobserved = t3.unobserved = f"every fuzzed request was answered 404/405 ({reason})"
    return [
        t1.verdict(
            "DC-FUZZ-001",
            f"{t1.requests} fuzzed submit requests ({session.boundary_cases} deterministic boundary cases; "
            f"{t1.requests - session.negative_submits} valid, {session.negative_submits} invalid in all), no finding",
        ),
        t2.verdict("DC-FUZZ-002", f"{t2.requests} fuzzed requests across {len(t2.operations)} operations, no finding"),
        t3.verdict(
            "DC-FUZZ-003",
            f"{t3.requests} requests in {t3.scenarios} stateful scenarios following submit's links "
            f"to {', '.join(linked) or 'nothing'}, no finding",
        ),
        _reads_verdict(t4, summary),
    ]


def _finish_reads(session: FuzzSession) -> ReadSummary | None:
    """Wait (bounded) for the stream reads and turn them into DC-FUZZ-004 findings. Never raises."""
    if session.reader is None:
        return None
    tally = session.tallies["DC-FUZZ-004"]
    started = time.monotonic()
    session.progress("fuzz: reading the accepted jobs' streams to their end")
    try:
        summary = session.reader.finish(_READ_GRACE_S)
    except Exception as exc:
        reason = f"the suite could not read the accepted jobs' streams: {describe_error(exc)}"
        tally.broke(reason, traceback.format_exc())
        return None
    finally:
        tally.seconds += time.monotonic() - started
    for result in summary.results:
        tally.requests += 1
        tally.operations.add(result.job.source)
        if result.resubmitted is not None:
            session.created_jobs.append(result.resubmitted)
        if result.outcome is None:
            continue
        message = (
            f"{result.outcome.describe()}; {result.job.source} body: {body_text(result.job.body)}; "
            f"stream: {result.stream_url}"
        )
        tally.add(
            Finding(
                f"error_event[{result.outcome.label}]",
                f"{SUBMIT} ({result.job.source} body)",
                202,
                "a valid request ended in an error that is not a runtime limit (DC-2.15)",
                message,
                result.job.submit,
            )
        )
    tally.notes.extend(summary.notes())
    return summary


def _reads_verdict(tally: Tally, summary: ReadSummary | None) -> FuzzVerdict:
    ended = summary.ended_by_source() if summary is not None else Counter[str]()
    total = sum(ended.values())
    if tally.aborted is None and tally.suite_error is None and not tally.findings and total == 0:
        notes = "; ".join(tally.notes) or "no fuzzed submission with a valid body was accepted with 202"
        message = f"no accepted valid submission was read to its end ({notes})"
        return FuzzVerdict(
            "DC-FUZZ-004",
            "unverified",
            message,
            how_to_verify="a worker that accepts valid fuzzed submissions with 202 and streams them",
            seconds=tally.seconds,
        )
    breakdown = ", ".join(f"{count} {source}" for source, count in sorted(ended.items()))
    return tally.verdict(
        "DC-FUZZ-004",
        f"{total} jobs accepted for valid bodies read to their end ({breakdown}); none ended in an internal error",
    )
