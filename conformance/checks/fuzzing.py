"""The fuzz checks: one schemathesis run (`conformance.fuzz`) per conformance run, four verdicts.

The first fuzz check that runs starts the fuzz run; the others report their part of it.
"""

from __future__ import annotations

from conformance.context import Context
from conformance.fuzz import FuzzVerdict
from conformance.fuzz.run import fuzz_target
from conformance.registry import check
from conformance.verdicts import CheckFailed, CheckUnverified, Passed, SuiteBroke


def _verdict(ctx: Context, check_id: str) -> FuzzVerdict:
    if ctx.fuzz_verdicts is None and ctx.stuck is not None:
        # every fuzzed job would wait on a worker that stopped: one defect, reported once, in bounded time
        raise CheckUnverified(f"not run: {ctx.stuck}", "a worker that keeps making progress (see the failure)")
    if ctx.fuzz_verdicts is None:
        verdicts = fuzz_target(ctx, max_examples=ctx.fuzz.max_examples, seed=ctx.fuzz.seed, on_progress=ctx.on_progress)
        ctx.fuzz_verdicts = {verdict.id: verdict for verdict in verdicts}
    return ctx.fuzz_verdicts[check_id]


def _report(ctx: Context, check_id: str) -> Passed:
    verdict = _verdict(ctx, check_id)
    if verdict.outcome == "failed":
        raise CheckFailed(verdict.message, *verdict.details, exchanges=verdict.exchanges)
    if verdict.outcome == "unverified":
        raise CheckUnverified(verdict.message, verdict.how_to_verify)
    if verdict.outcome == "error":
        raise SuiteBroke(verdict.message, *verdict.details, trace=verdict.traceback)
    return Passed(verdict.message, verdict.details)


@check(
    "DC-FUZZ-001",
    rule="DC-1.5",
    level="MUST",
    title="Fuzzed submit bodies get 202 or a documented 4xx problem, never 5xx",
    area="fuzz",
    seeded=True,
)
def fuzzed_submissions(ctx: Context) -> Passed:
    """schemathesis sends the deterministic boundary cases of every InferenceRequest field (smallest and
    largest valid values, min-1, max+1, null, wrong types) and generated valid and invalid bodies: valid
    bodies must be accepted (202, or 503 when the queue is full; a max_tokens above the advertised cap may
    also get 422), invalid ones rejected with a documented 4xx problem, and no body may cause a 5xx (checks
    not_a_server_error, positive_data_acceptance, negative_data_rejection)."""
    return _report(ctx, "DC-FUZZ-001")


@check(
    "DC-FUZZ-002",
    rule="DC-5.3",
    level="MUST",
    title="Every fuzzed response matches its documented schema, status and headers",
    area="fuzz",
    seeded=True,
)
def fuzzed_responses(ctx: Context) -> Passed:
    """Every response to a fuzzed submit, and to status, cancel and stream with random job ids (which must
    answer 404), is checked against the contract: documented status code, content type, required headers
    and body schema; event streams are validated event by event against itemSchema."""
    return _report(ctx, "DC-FUZZ-002")


@check(
    "DC-FUZZ-003",
    rule="DC-1.7",
    level="MUST",
    title="Following submit's links (stream, status, cancel) statefully finds no failure",
    area="fuzz",
    seeded=True,
)
def fuzzed_links(ctx: Context) -> Passed:
    """schemathesis' state machine submits jobs and follows the submit response's OpenAPI links with the
    returned job_id, checking every response plus use_after_free and ensure_resource_availability."""
    return _report(ctx, "DC-FUZZ-003")


@check(
    "DC-FUZZ-004",
    rule="DC-2.15",
    level="MUST",
    title="Valid fuzzed and boundary requests run to completion without an internal error",
    area="fuzz",
    seeded=True,
)
def fuzzed_jobs_complete(ctx: Context) -> Passed:
    """Every job the worker accepted for a valid body during fuzzing (boundary cases, generated bodies, stateful
    scenarios) is read to its end with the suite's strict reader, each read with a deadline: none may end
    in an error event whose code is not a runtime-limit code (context_length_exceeded, shutdown, worker_lost)."""
    return _report(ctx, "DC-FUZZ-004")
