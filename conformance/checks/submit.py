"""DC-1: submitting a job."""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx

from conformance.checks.problems import expect_problem
from conformance.context import Context
from conformance.registry import check
from conformance.verdicts import CheckFailed, CheckUnverified

_URL_SAFE = re.compile(r"^[A-Za-z0-9_-]+$")
_HEX = set("0123456789abcdefABCDEF")
#: ids sampled to estimate randomness
ID_SAMPLES = 8
MIN_RANDOM_BITS = 122
MAX_ID_LENGTH = 128
#: most jobs submitted while looking for the queue bound
QUEUE_PROBE_LIMIT = 160
#: submissions in flight at once while probing the queue bound
QUEUE_PROBE_PARALLEL = 8


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


@check(
    "DC-SUBMIT-001",
    rule="DC-1.2",
    level="MUST",
    title="POST /v1/inference answers 202 application/json {job_id, sse_url}",
    area="submit",
)
def submit_accepted(ctx: Context) -> str:
    """A valid job is accepted at once with a small JSON hand-off, not with the stream itself."""
    response = ctx.probe.submit(ctx.body())
    content_type = response.headers.get("content-type", "")
    if "text/event-stream" in content_type:
        raise CheckFailed(
            f"POST answered {response.status_code} {content_type}: the stream itself instead of a job hand-off "
            "(legacy direct-SSE shape)"
        )
    if response.status_code != 202:
        raise CheckFailed(f"POST answered {response.status_code}, expected 202 Accepted")
    if not content_type.startswith("application/json"):
        raise CheckFailed(f"202 body has Content-Type {content_type!r}, expected application/json")
    body = _json(response)
    if not isinstance(body, dict):
        raise CheckFailed("202 body is not a JSON object")
    missing = [name for name in ("job_id", "sse_url") if not isinstance(body.get(name), str) or not body.get(name)]
    if missing:
        raise CheckFailed(f"202 body lacks string field(s) {', '.join(missing)}")
    return f"202 with job_id and sse_url in {response.elapsed.total_seconds() * 1000:.0f} ms"


@check("DC-SUBMIT-002", rule="DC-1.2", level="MUST", title="Location header equals sse_url", area="submit")
def location_header(ctx: Context) -> str:
    job = ctx.submit()
    location = job.response.headers.get("location")
    sse_url = job.response.json()["sse_url"]
    if location is None:
        raise CheckFailed("202 response has no Location header", f"sse_url is {sse_url!r}")
    if location != sse_url:
        raise CheckFailed(f"Location {location!r} differs from sse_url {sse_url!r}")
    return f"Location: {location}"


def estimate_random_bits(ids: list[str]) -> float:
    """Bits that vary across samples: varying positions x bits per character of the alphabet."""
    width = min(len(job_id) for job_id in ids)
    varying = sum(1 for position in range(width) if len({job_id[position] for job_id in ids}) > 1)
    hexadecimal = all(set(job_id) <= _HEX | {"-"} for job_id in ids)
    return varying * (4.0 if hexadecimal else math.log2(64))


@check(
    "DC-SUBMIT-003",
    rule="DC-1.3",
    level="MUST",
    title="job ids are server-generated, unique, URL-safe and unguessable (>=122 random bits)",
    area="submit",
)
def unguessable_ids(ctx: Context) -> str:
    """Sampled ids must differ, use only [A-Za-z0-9_-], and vary in enough positions to hold 122 random bits."""
    ids = [ctx.submit().job_id for _ in range(ID_SAMPLES)]
    for job_id in ids:
        if not _URL_SAFE.match(job_id):
            raise CheckFailed(f"job_id {job_id!r} has characters outside [A-Za-z0-9_-]")
        if len(job_id) > MAX_ID_LENGTH:
            raise CheckFailed(f"job_id is {len(job_id)} characters long; the contract allows at most {MAX_ID_LENGTH}")
    if len(set(ids)) != len(ids):
        raise CheckFailed("the worker handed out the same job_id twice", f"ids: {ids}")
    if all(job_id.isdigit() for job_id in ids):
        raise CheckFailed("job ids are plain numbers: guessable", f"ids: {ids}")
    bits = estimate_random_bits(ids)
    if bits < MIN_RANDOM_BITS:
        raise CheckFailed(
            f"job ids look guessable: only ~{bits:.0f} bits vary across {len(ids)} ids (need >= {MIN_RANDOM_BITS})",
            f"ids: {ids}",
        )
    return f"{len(ids)} distinct ids, ~{bits:.0f} varying bits each"


@check(
    "DC-SUBMIT-004",
    rule="DC-1.4",
    level="MUST",
    title="a client-chosen job_id is rejected with 422 saying the server assigns ids",
    area="submit",
)
def client_job_id_rejected(ctx: Context) -> str:
    client_id = "client-chosen-job-001"
    response = ctx.probe.submit(ctx.body(job_id=client_id))
    body = _json(response)
    if response.status_code < 300 and isinstance(body, dict) and body.get("job_id") == client_id:
        raise CheckFailed(f"the worker honoured the client's job_id {client_id!r} (answered {response.status_code})")
    if response.status_code < 300 or "text/event-stream" in response.headers.get("content-type", ""):
        raise CheckFailed(f"a body with job_id was accepted ({response.status_code}); it must be rejected with 422")
    problem = expect_problem(response, 422)
    detail = f"{problem.get('detail', '')} {problem.get('title', '')}".lower()
    if "server" not in detail or not ("job_id" in detail or "job id" in detail):
        raise CheckFailed(
            "the 422 does not tell the client that the server assigns job ids",
            f"detail: {problem.get('detail')!r}",
        )
    return "422 explains that the server assigns job ids"


@check("DC-SUBMIT-005", rule="DC-1.4", level="MUST", title="an unknown field is rejected with 422", area="submit")
def unknown_field_rejected(ctx: Context) -> str:
    response = ctx.probe.submit(ctx.body(temprature=0.5))
    expect_problem(response, 422)
    return "422 for the misspelt field `temprature`"


@check("DC-SUBMIT-006", rule="DC-1.5", level="MUST", title="malformed JSON answers 400 problem", area="submit")
def malformed_json(ctx: Context) -> str:
    response = ctx.probe.request(
        "POST", ctx.probe.submit_url, content=b'{"prompt": "unterminated', headers={"Content-Type": "application/json"}
    )
    expect_problem(response, 400)
    return "400 problem+json"


@check("DC-SUBMIT-007", rule="DC-1.5", level="MUST", title="a non-JSON content type answers 415 problem", area="submit")
def wrong_content_type(ctx: Context) -> str:
    response = ctx.probe.request(
        "POST",
        ctx.probe.submit_url,
        content=b"prompt=hello",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    expect_problem(response, 415)
    return "415 problem+json"


INVALID_BODIES: tuple[tuple[str, Any], ...] = (
    ("prompt missing", {"max_tokens": 4}),
    ("prompt not a string", {"prompt": 42}),
    ("empty prompt", {"prompt": ""}),
    ("max_tokens 0", {"prompt": "x", "max_tokens": 0}),
    ("max_tokens not an integer", {"prompt": "x", "max_tokens": "ten"}),
    ("negative temperature", {"prompt": "x", "temperature": -1}),
    ("top_p 0", {"prompt": "x", "top_p": 0}),
    ("top_p above 1", {"prompt": "x", "top_p": 1.5}),
    ("negative top_k", {"prompt": "x", "top_k": -1}),
    ("seed not an integer", {"prompt": "x", "seed": "abc"}),
    ("five stop strings", {"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}),
    ("empty stop string", {"prompt": "x", "stop": [""]}),
    ("body is a list", ["prompt"]),
)


@check("DC-SUBMIT-008", rule="DC-1.5", level="MUST", title="invalid field values answer 422 problem", area="submit")
def invalid_values(ctx: Context) -> str:
    wrong: list[str] = []
    for label, body in INVALID_BODIES:
        response = ctx.probe.request("POST", ctx.probe.submit_url, json_body=body)
        try:
            expect_problem(response, 422)
        except CheckFailed as exc:
            wrong.append(f"{label}: {exc.message}")
    if wrong:
        raise CheckFailed(f"{len(wrong)} of {len(INVALID_BODIES)} invalid bodies were not answered 422", *wrong)
    return f"{len(INVALID_BODIES)} invalid bodies each answered 422"


@check("DC-SUBMIT-009", rule="DC-1.5", level="MUST", title="an oversized body answers 413 problem", area="submit")
def body_too_large(ctx: Context) -> str:
    size = 4 * 1024 * 1024
    payload = b'{"prompt": "' + b"a" * size + b'"}'
    response = ctx.probe.request(
        "POST", ctx.probe.submit_url, content=payload, headers={"Content-Type": "application/json"}
    )
    expect_problem(response, 413)
    return f"413 for a {size // (1024 * 1024)} MiB body"


#: (where, body): each carries a number literal JSON does not have (RFC 8259 §6), the class of DC-1.5's last sentence
NON_JSON_LITERALS: tuple[tuple[str, bytes], ...] = (
    ("temperature NaN", b'{"prompt": "x", "max_tokens": 1, "temperature": NaN}'),
    ("temperature Infinity", b'{"prompt": "x", "max_tokens": 1, "temperature": Infinity}'),
    ("top_p -Infinity", b'{"prompt": "x", "max_tokens": 1, "top_p": -Infinity}'),
    ("max_tokens Infinity", b'{"prompt": "x", "max_tokens": Infinity}'),
    ("seed NaN", b'{"prompt": "x", "max_tokens": 1, "seed": NaN}'),
    ("top_k -Infinity", b'{"prompt": "x", "max_tokens": 1, "top_k": -Infinity}'),
    ("NaN inside the stop list", b'{"prompt": "x", "max_tokens": 1, "stop": [NaN]}'),
)


@check(
    "DC-SUBMIT-013",
    rule="DC-1.5",
    level="MUST",
    title="NaN, Infinity and -Infinity (not JSON) are refused with a 400/422 problem, never accepted",
    area="submit",
)
def non_json_literals(ctx: Context) -> str:
    """A lenient parser (Python's json module, say) reads them as numbers; the contract says they are not JSON."""
    accepted: list[str] = []
    wrong: list[str] = []
    statuses: list[int] = []
    for label, body in NON_JSON_LITERALS:
        response = ctx.probe.request(
            "POST", ctx.probe.submit_url, content=body, headers={"Content-Type": "application/json"}
        )
        statuses.append(response.status_code)
        if response.status_code < 300:
            accepted.append(f"{label}: answered {response.status_code} {response.text[:120]!r}")
            job_id = (_json(response) or {}).get("job_id") if response.status_code == 202 else None
            if isinstance(job_id, str):
                ctx.probe.request("DELETE", ctx.job_url(job_id))
            continue
        if response.status_code not in (400, 422):
            wrong.append(f"{label}: answered {response.status_code}, expected 400 or 422")
            continue
        try:
            expect_problem(response, response.status_code)
        except CheckFailed as exc:
            wrong.append(f"{label}: {exc.message}")
    if accepted:
        raise CheckFailed(
            f"{len(accepted)} of {len(NON_JSON_LITERALS)} bodies with a number literal that is not JSON were accepted",
            *accepted,
            *wrong,
        )
    if set(statuses) <= {404, 405}:
        raise CheckUnverified(
            f"every body answered {statuses[0]}: the submit route is not served", "a dual-call submit (DC-SUBMIT-001)"
        )
    if wrong:
        raise CheckFailed(f"{len(wrong)} of {len(NON_JSON_LITERALS)} non-JSON bodies were not refused properly", *wrong)
    return f"{len(NON_JSON_LITERALS)} bodies with NaN/Infinity/-Infinity each refused ({sorted(set(statuses))})"


@check(
    "DC-SUBMIT-010",
    rule="DC-1.7",
    level="MUST",
    title="sse_url is a URI reference that resolves, against the POST URL, to the job's stream",
    area="submit",
)
def sse_url_resolves(ctx: Context) -> str:
    """Clients follow sse_url (relative or absolute, maybe on another host); it must lead to the stream."""
    job = ctx.submit()
    raw = job.response.json()["sse_url"]
    try:
        parsed = httpx.URL(job.sse_url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise CheckFailed(f"sse_url {raw!r} is not a valid URI reference: {exc}") from None
    if parsed.scheme not in ("http", "https"):
        raise CheckFailed(f"sse_url {raw!r} resolves to {job.sse_url!r}, not an http(s) URL")
    capture = ctx.stream_of(job)
    if "text/event-stream" not in capture.content_type:
        raise CheckFailed(f"sse_url {raw!r} resolved to {job.sse_url} which is not an event stream")
    kind = "absolute" if httpx.URL(raw).is_absolute_url else "relative"
    return f"{kind} reference {raw!r} -> {job.sse_url}"


#: submissions of each length compared by DC-SUBMIT-011
HANDOFF_TRIALS = 3
#: the long job's generation (server clock) must take this much longer than the 1-token job's ...
WAIT_EVIDENCE_MS = 50.0
#: ... and its POST must grow by at least this share of that: the POST tracks the generation
WAIT_TRACKING_SHARE = 0.5
#: without the job's own timestamps, only a POST this much slower than a 1-token POST is evidence
UNTIMED_EVIDENCE_MS = 1000.0
UNTIMED_EVIDENCE_RATIO = 5.0


@dataclass(frozen=True, slots=True)
class Handoff:
    """One timed submission: POST latency, and the job as its status described it right after the 202."""

    post_ms: float
    state: str | None
    #: finished_at - started_at by the worker's clock, when the status carries both
    generation_ms: float | None


def _timed_submit(ctx: Context, max_tokens: int, seed: int) -> Handoff:
    job = ctx.submit(ctx.body(max_tokens=max_tokens, temperature=0.7, seed=seed))
    post_ms = job.response.elapsed.total_seconds() * 1000
    body: Any = None
    try:
        response = ctx.probe.request("GET", job.status_url)
        body = response.json() if response.status_code == 200 else None
    except ValueError:
        pass
    finally:
        ctx.probe.request("DELETE", job.status_url)
    if not isinstance(body, dict):
        return Handoff(post_ms, None, None)
    state = body.get("state") if isinstance(body.get("state"), str) else None
    return Handoff(post_ms, state, _span_ms(body.get("started_at"), body.get("finished_at")))


def _span_ms(start: object, end: object) -> float | None:
    try:
        began = datetime.fromisoformat(str(start).replace("Z", "+00:00"))
        ended = datetime.fromisoformat(str(end).replace("Z", "+00:00"))
    except ValueError:
        return None
    return (ended - began).total_seconds() * 1000 if start and end else None


@check(
    "DC-SUBMIT-011",
    rule="DC-1.2",
    level="MUST",
    title="POST answers before generation finishes (the hand-off does not wait for tokens)",
    area="submit",
)
def answers_at_once(ctx: Context) -> str:
    """POST latency of the longest job against a 1-token job, and the long job's state right after the 202.

    A job still queued or running after its 202 proves the hand-off did not wait. Failing needs
    the opposite evidence: every long job had finished by then, generating it took measurably
    longer than a 1-token job (by the worker's own timestamps), and the POST grew with it. A
    noisy machine slows POSTs at random; only a POST that tracks the generation time is evidence.
    """
    cap = ctx.max_tokens_cap
    pairs: list[tuple[Handoff, Handoff]] = []
    for trial in range(HANDOFF_TRIALS):
        short = _timed_submit(ctx, 1, seed=50 + trial)
        long = _timed_submit(ctx, cap, seed=60 + trial)
        if long.state in ("queued", "running"):
            return f"202 after {long.post_ms:.0f} ms while the {cap}-token job was still {long.state}"
        pairs.append((short, long))
    post_growth = statistics.median(long.post_ms - short.post_ms for short, long in pairs)
    measured = (
        f"POST took {statistics.median(long.post_ms for _, long in pairs):.0f} ms (median) for a {cap}-token job, "
        f"{statistics.median(short.post_ms for short, _ in pairs):.0f} ms for a 1-token job"
    )
    spans = [(short.generation_ms, long.generation_ms) for short, long in pairs]
    if all(a is not None and b is not None for a, b in spans):
        generation_growth = statistics.median(b - a for a, b in spans if a is not None and b is not None)
        measured += f"; generating it took {generation_growth:.0f} ms longer (the worker's timestamps)"
        waited = generation_growth >= WAIT_EVIDENCE_MS and post_growth >= WAIT_TRACKING_SHARE * generation_growth
    else:
        short_p50 = statistics.median(short.post_ms for short, _ in pairs)
        waited = post_growth >= UNTIMED_EVIDENCE_MS and post_growth >= UNTIMED_EVIDENCE_RATIO * short_p50
    if waited:
        raise CheckFailed(
            f"the POST waited for generation: each {cap}-token job had already finished when its 202 arrived, "
            "and the POST grew with the time spent generating",
            measured,
            "per trial (long vs short POST): "
            + ", ".join(f"{long.post_ms:.0f} vs {short.post_ms:.0f} ms" for short, long in pairs),
        )
    raise CheckUnverified(
        f"each {cap}-token job had finished before its status could be read, and its POST did not grow with its "
        f"generation ({measured}): generation is too fast to tell whether the POST waits for it",
        "a worker whose longest job (max_tokens_cap) takes longer than an HTTP round-trip, e.g. a slower token rate",
    )


@dataclass(slots=True)
class Saturation:
    """Jobs accepted while filling the queue, and the first refusal (if the worker pushed back)."""

    accepted: list[httpx.Response]
    refusal: httpx.Response | None


@contextmanager
def saturated_queue(ctx: Context) -> Iterator[Saturation]:
    """Submit long jobs in parallel waves until the worker refuses one (bounded); cancel them all after."""
    body = ctx.body(max_tokens=ctx.max_tokens_cap, temperature=0.7, seed=9)
    result = Saturation(accepted=[], refusal=None)
    with ThreadPoolExecutor(QUEUE_PROBE_PARALLEL) as pool:
        try:
            while len(result.accepted) < QUEUE_PROBE_LIMIT and result.refusal is None:
                for response in pool.map(lambda _: ctx.probe.submit(body), range(QUEUE_PROBE_PARALLEL)):
                    if response.status_code == 202:
                        result.accepted.append(response)
                    elif result.refusal is None:
                        result.refusal = response
            kept = ctx.probe.exchanges[:1] + ctx.probe.exchanges[-1:]  # keep the evidence short
            ctx.probe.exchanges[:] = kept
            yield result
        finally:
            kept = list(ctx.probe.exchanges)
            list(pool.map(lambda response: ctx.probe.request("DELETE", ctx.resolve_status(response)), result.accepted))
            ctx.probe.exchanges[:] = kept


@check(
    "DC-SUBMIT-012",
    rule="DC-1.6",
    level="MUST",
    title="a full queue answers 503 problem with Retry-After",
    area="submit",
)
def queue_full(ctx: Context) -> str:
    """Long jobs are submitted until the worker pushes back (bounded), then all are cancelled."""
    with saturated_queue(ctx) as queue:
        if not queue.accepted:
            raise CheckUnverified(
                "needs dual-call submissions, but none was accepted", "a dual-call submit (see DC-SUBMIT-001)"
            )
        if queue.refusal is None:
            depth = (ctx.health(refresh=True) or {}).get("queue")
    if queue.refusal is None:
        queued, bound = (depth.get("queued"), depth.get("limit")) if isinstance(depth, dict) else (None, None)
        if isinstance(queued, int) and isinstance(bound, int) and queued > bound:
            raise CheckFailed(
                f"{len(queue.accepted)} jobs accepted and {queued} waiting, beyond the advertised queue limit "
                f"{bound}, without a 503"
            )
        raise CheckUnverified(
            f"no 503 after {len(queue.accepted)} jobs: the queue never filled (jobs finish faster than the probe "
            f"submits them, or the bound is above {QUEUE_PROBE_LIMIT})",
            f"a worker with a queue bound below {QUEUE_PROBE_LIMIT} whose jobs outlast the probe "
            "(a small --queue-limit, slower generation)",
        )
    problem = expect_problem(queue.refusal, 503)
    retry_after = queue.refusal.headers.get("retry-after", "")
    if not retry_after.strip().isdigit():
        raise CheckFailed(f"503 without a Retry-After header in seconds (got {retry_after!r})")
    return f"503 after {len(queue.accepted)} jobs, Retry-After: {retry_after} ({problem.get('detail', '')[:60]})"
