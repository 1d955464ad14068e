"""DC-1.9 to DC-1.12: retry-safe submits with ``Idempotency-Key``.

Support is optional (DC-1.9) and advertised in /health (``idempotency_key: true``). For a worker
that advertises it these checks are MUST; for one that does not, the rules do not bind it: the
checks report what they could not observe as unverified at MAY level, which never fails a run,
``--require-all`` included.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import time
from typing import Any

import httpx

from conformance.checks.problems import expect_problem
from conformance.context import Context
from conformance.model import Level
from conformance.registry import check
from conformance.verdicts import CheckFailed, CheckUnverified

HEADER = "Idempotency-Key"
#: 503 answers (a busy queue) a keyed submit waits out before the check gives up observing
BUSY_RETRIES = 5
#: keys DC-1.12 calls malformed: empty, too long, not visible ASCII
MALFORMED_KEYS = {"empty": "", "256 characters": "k" * 256, "a space inside": "two words"}


def _advertised(ctx: Context) -> bool:
    return (ctx.health() or {}).get("idempotency_key") is True


def _level(ctx: Context) -> Level:
    return "MUST" if _advertised(ctx) else "MAY"


def _require_support(ctx: Context) -> None:
    if not _advertised(ctx):
        raise CheckUnverified(
            "the worker does not advertise `idempotency_key: true` in /health, so DC-1.10 to DC-1.12 do not bind it",
            "advertise `idempotency_key: true` in /health once submit honours Idempotency-Key (DC-1.9)",
        )


def new_key() -> str:
    return f"conformance-{secrets.token_hex(16)}"


def keyed_submit(ctx: Context, key: str, body: dict[str, Any] | bytes) -> httpx.Response:
    """POST ``body`` with ``key``; a 503 (no job created, key not taken) is retried after Retry-After."""
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {HEADER: key, "Content-Type": "application/json"}
    response = ctx.probe.request("POST", ctx.probe.submit_url, content=content, headers=headers)
    for _ in range(BUSY_RETRIES):
        if response.status_code != 503:
            break
        time.sleep(_retry_after(response))
        response = ctx.probe.request("POST", ctx.probe.submit_url, content=content, headers=headers)
    return response


def _retry_after(response: httpx.Response) -> float:
    value = response.headers.get("retry-after", "1")
    return min(float(value), 10.0) if value.isdigit() else 1.0


def _hand_off(response: httpx.Response, what: str) -> dict[str, Any]:
    """The 202 body of a keyed submit the worker must accept; unverified when the worker is too busy."""
    if response.status_code == 503:
        raise CheckUnverified(f"{what}: the worker stayed busy (503) through {BUSY_RETRIES} retries")
    if response.status_code != 202:
        raise CheckFailed(f"{what} answered {response.status_code}, expected 202", f"body: {response.text[:300]!r}")
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict) or not isinstance(body.get("job_id"), str):
        raise CheckFailed(f"{what}: the 202 body has no job_id", f"body: {response.text[:300]!r}")
    return body


def _cancel(ctx: Context, *job_ids: str) -> None:
    """Best effort: the jobs these checks create are never read; free the worker of them."""
    for job_id in job_ids:
        with contextlib.suppress(httpx.HTTPError):
            ctx.probe.request("DELETE", ctx.job_url(job_id))


@check(
    "DC-SUBMIT-014",
    rule="DC-1.10",
    level="MUST",
    title="the same Idempotency-Key and body answer the same job; another key makes a new one",
    area="submit",
    level_for=_level,
)
def same_key_same_job(ctx: Context) -> str:
    """Two submits with one key and equal bodies (members reordered, whitespace changed) answer one
    job_id, sse_url and Location; the same body with a fresh key is a new job."""
    _require_support(ctx)
    key = new_key()
    body = ctx.body(prompt=f"idempotent submit {key}")
    first_response = keyed_submit(ctx, key, body)
    first = _hand_off(first_response, "the first keyed submit")
    reordered = json.dumps(dict(reversed(list(body.items()))), indent=1).encode()
    again_response = keyed_submit(ctx, key, reordered)
    again = _hand_off(again_response, "the retry with the same key and body")
    fresh = _hand_off(keyed_submit(ctx, new_key(), body), "the same body with another key")
    _cancel(ctx, first["job_id"], fresh["job_id"])
    if again["job_id"] != first["job_id"]:
        raise CheckFailed(
            "the retry with the same key created another job",
            f"first job_id {first['job_id']!r}, retry {again['job_id']!r}",
        )
    if again.get("sse_url") != first.get("sse_url"):
        raise CheckFailed(f"the retry answered sse_url {again.get('sse_url')!r}, the first {first.get('sse_url')!r}")
    if again_response.headers.get("location") != first_response.headers.get("location"):
        raise CheckFailed("the retry's Location differs from the first answer's")
    if fresh["job_id"] == first["job_id"]:
        raise CheckFailed(
            "a submit with another key answered the first key's job: the worker deduplicates bodies, not keys"
        )
    return f"key {key[:20]}… answered job {first['job_id']} twice; another key made {fresh['job_id']}"


@check(
    "DC-SUBMIT-015",
    rule="DC-1.11",
    level="MUST",
    title="an Idempotency-Key reused with another body is 422 and leaves the first job",
    area="submit",
    level_for=_level,
)
def same_key_other_body(ctx: Context) -> str:
    """The same key with a different prompt answers a 422 problem that names the key; the key still
    answers its first job afterwards."""
    _require_support(ctx)
    key = new_key()
    body = ctx.body(prompt=f"first request {key}")
    first = _hand_off(keyed_submit(ctx, key, body), "the first keyed submit")
    other = keyed_submit(ctx, key, ctx.body(prompt=f"another request {key}"))
    if other.status_code == 202:
        _cancel(ctx, first["job_id"])
        answered = (
            other.json().get("job_id") if other.headers.get("content-type", "").startswith("application/json") else None
        )
        same = " (the first request's job)" if answered == first["job_id"] else ""
        raise CheckFailed(f"the reused key with another body was accepted{same}: job {answered!r}")
    problem = expect_problem(other, 422)
    if "key" not in str(problem.get("detail", "")).lower():
        raise CheckFailed(
            "the 422 detail does not say that the Idempotency-Key was used for another request",
            f"detail: {problem.get('detail')!r}",
        )
    again = _hand_off(keyed_submit(ctx, key, body), "the first body again with its key")
    _cancel(ctx, first["job_id"])
    if again["job_id"] != first["job_id"]:
        raise CheckFailed(
            "after the refused reuse, the key no longer answers its first job",
            f"first {first['job_id']!r}, now {again['job_id']!r}",
        )
    return f"422: {str(problem.get('detail'))[:80]}"


@check(
    "DC-SUBMIT-016",
    rule="DC-1.12",
    level="MUST",
    title="a malformed Idempotency-Key is 400 naming the header",
    area="submit",
    level_for=_level,
)
def malformed_key(ctx: Context) -> str:
    """Empty, 256 characters, and a key with a space each answer a 400 problem that names the header."""
    _require_support(ctx)
    for label, key in MALFORMED_KEYS.items():
        response = keyed_submit(ctx, key, ctx.body(prompt=f"malformed key {label}"))
        if response.status_code == 202:
            _cancel(ctx, str(response.json().get("job_id")))
            raise CheckFailed(f"a submit with an Idempotency-Key that is {label} was accepted (202)")
        problem = expect_problem(response, 400)
        if HEADER.lower() not in str(problem.get("detail", "")).lower():
            raise CheckFailed(
                f"the 400 for a key that is {label} does not name the Idempotency-Key header",
                f"detail: {problem.get('detail')!r}",
            )
    return f"400 for keys that are {', '.join(MALFORMED_KEYS)}"
