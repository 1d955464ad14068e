"""DC-5.6: hostile request bodies get a 4xx answer, never a 5xx, a dropped connection or a hang.

The bodies are small (the largest is 100 kB), so a worker with a low body limit may answer 413;
anything below 500 passes DC-ROB-001. A body that a worker accepts (duplicate keys are valid JSON)
creates a job that its TTL reclaims.
"""

from __future__ import annotations

from typing import Final

import httpx

from conformance.checks.problems import problem_defects
from conformance.context import Context
from conformance.registry import check
from conformance.verdicts import CheckFailed, CheckUnverified

#: deep enough to overflow a recursive decoder (Python's default recursion limit is 1000)
DEPTH: Final = 10_000

#: (what it is, body, Content-Type; "" sends none) — none of them is a valid job, except perhaps the duplicate keys
HOSTILE_BODIES: Final[tuple[tuple[str, bytes, str], ...]] = (
    ("invalid UTF-8 in a string", b'{"prompt":"\xff\xfe\xfd"}', "application/json"),
    ("invalid UTF-8 in a key", b'{"\xc0\xaf":"x"}', "application/json"),
    ("raw NUL inside a string", b'{"prompt":"a\x00b"}', "application/json"),
    ("raw NUL between tokens", b'{"prompt":\x00"a"}', "application/json"),
    ("control bytes", b'{"prompt":"\x01\x02\x1b[31m"}', "application/json"),
    ("lone surrogate escape", b'{"prompt":"\\udc00\\ud800"}', "application/json"),
    ("unterminated string", b'{"prompt":"abc', "application/json"),
    ("empty body", b"", "application/json"),
    ("JSON null", b"null", "application/json"),
    ("top-level array", b"[1,2,3]", "application/json"),
    ("integer with 5000 digits", b'{"prompt":"x","max_tokens":' + b"9" * 5000 + b"}", "application/json"),
    ("number 1e999", b'{"prompt":"x","temperature":1e999}', "application/json"),
    ("NaN literal", b'{"prompt":"x","temperature":NaN}', "application/json"),
    ("max_tokens of the wrong type", b'{"prompt":"x","max_tokens":{"a":[]}}', "application/json"),
    (
        "stop list of 20 000 strings",
        b'{"prompt":"x","stop":[' + b",".join([b'"s"'] * 20_000) + b"]}",
        "application/json",
    ),
    ("duplicate keys", b'{"prompt":"a","prompt":"b","max_tokens":1,"max_tokens":1}', "application/json"),
    ("UTF-16 body", '{"prompt":"x"}'.encode("utf-16"), "application/json"),
    ("charset=latin-1 with latin-1 bytes", '{"prompt":"café"}'.encode("latin-1"), "application/json; charset=latin-1"),
    (
        "multipart form",
        b'--B\r\nContent-Disposition: form-data; name="prompt"\r\n\r\nx\r\n--B--\r\n',
        "multipart/form-data; boundary=B",
    ),
    ("no content type", b'{"prompt":"x","max_tokens":1}', ""),
    ("1000 open brackets", b"[" * 1000, "application/json"),
)


def deep_bodies(depth: int = DEPTH) -> tuple[tuple[str, bytes], ...]:
    """JSON that nests ``depth`` levels: truncated, balanced, as objects, and inside a request field."""
    return (
        (f"{depth} open brackets", b"[" * depth),
        (f"arrays nested {depth} deep", b"[" * depth + b"]" * depth),
        (f"objects nested {depth} deep", b'{"a":' * depth + b"0" + b"}" * depth),
        (f"prompt nested {depth} deep", b'{"prompt":' + b"[" * depth + b"]" * depth + b"}"),
    )


def _post(ctx: Context, body: bytes, content_type: str) -> httpx.Response:
    headers = {"Content-Type": content_type} if content_type else {}
    return ctx.probe.request("POST", ctx.probe.submit_url, content=body, headers=headers)


@check(
    "DC-ROB-001",
    rule="DC-5.6",
    level="MUST",
    title="hostile request bodies get a 4xx answer, never a 5xx or a dropped connection",
    area="robustness",
)
def hostile_bodies(ctx: Context) -> str:
    """Sends malformed, oversized-in-parts and deeply nested bodies to the submit route; every answer must be < 500."""
    cases = list(HOSTILE_BODIES)
    cases += [(name, body, "application/json") for name, body in deep_bodies()]
    failures: list[str] = []
    statuses: dict[int, int] = {}
    for name, body, content_type in cases:
        try:
            response = _post(ctx, body, content_type)
        except httpx.HTTPError as exc:
            failures.append(f"{name}: no answer ({type(exc).__name__}: {exc})")
            continue
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        if response.status_code >= 500:
            failures.append(f"{name}: answered {response.status_code} {response.text[:120]!r}")
    if failures:
        raise CheckFailed(f"{len(failures)} of {len(cases)} hostile bodies got a 5xx or no answer", *failures[:8])
    if set(statuses) <= {404, 405}:
        raise CheckUnverified(
            f"every hostile body answered {', '.join(map(str, sorted(statuses)))}: the submit route is not served, "
            "so none of them reached a parser",
            "a dual-call submit (see DC-SUBMIT-001)",
        )
    health = ctx.probe.request("GET", ctx.base_url + "/health", auth=False)
    if health.status_code != 200:
        raise CheckFailed(f"after {len(cases)} hostile bodies, /health answered {health.status_code}")
    summary = ", ".join(f"{status}x{count}" for status, count in sorted(statuses.items()))
    return f"{len(cases)} hostile bodies, none answered 5xx ({summary}); /health still 200"


@check(
    "DC-ROB-002",
    rule="DC-5.6",
    level="MUST",
    title="deeply nested JSON is refused with a 400/413/422 problem, and the worker keeps serving",
    area="robustness",
)
def deep_json_refused(ctx: Context) -> str:
    """A request is a flat object: JSON nested 10 000 deep must be refused cleanly, not crash a recursive decoder."""
    for name, body in deep_bodies():
        try:
            response = _post(ctx, body, "application/json")
        except httpx.HTTPError as exc:
            raise CheckFailed(f"{name}: no answer ({type(exc).__name__}: {exc})") from None
        if response.status_code not in (400, 413, 422):
            raise CheckFailed(
                f"{name}: answered {response.status_code}, expected 400, 413 or 422", f"body: {response.text[:200]!r}"
            )
        defects = problem_defects(response.status_code, response.headers, response.text)
        if defects:
            raise CheckFailed(f"{name}: the {response.status_code} is not a proper problem: {'; '.join(defects)}")
    follow_up = ctx.probe.submit(ctx.body(max_tokens=2))
    if follow_up.status_code != 202:
        raise CheckFailed(f"after the deep bodies, a valid job answered {follow_up.status_code} instead of 202")
    return f"{len(deep_bodies())} bodies nested {DEPTH} deep refused with problems; the next job was accepted"
