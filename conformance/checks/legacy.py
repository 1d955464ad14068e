"""The legacy detector: recognises the direct-SSE shape and says so by name, with the fix.

The legacy shape (see the incident report behind openapi/SPEC.md): ``POST /v1/inference``
with a client-chosen ``job_id`` answers ``200 text/event-stream`` itself, with plain
``data: <token>`` lines, narration events and ``data: [DONE]``.
"""

from __future__ import annotations

import json

from conformance.context import PROMPT, Context
from conformance.model import Diagnosis
from conformance.probe import StreamCapture
from conformance.registry import check
from conformance.verdicts import CheckFailed

LEGACY_NAME = "legacy direct-SSE worker"
LEGACY_FIXES = [
    "Make POST /v1/inference create a job and answer at once: 202 Accepted, "
    '{"job_id": "<server-generated>", "sse_url": "/v1/inference/<job_id>/stream"} and a Location header (DC-1.2).',
    "Generate job ids on the server (>=122 random bits, e.g. secrets.token_urlsafe(16)) and reject a client "
    "`job_id` with 422 (DC-1.3, DC-1.4).",
    "Serve the tokens from GET /v1/inference/{job_id}/stream: events `started`, `token` {index, text}, `end`, "
    "each with an id: line and one line of JSON data, then `data: [DONE]` (DC-2.x).",
    "Add GET and DELETE /v1/inference/{job_id} (status, cancel) and keep finished jobs for replay for a TTL "
    "(DC-3, DC-4). Clients then follow sse_url instead of reading the POST body.",
]


def _describe_stream(capture: StreamCapture) -> list[str]:
    observations = [
        f"POST /v1/inference answered {capture.status} {capture.content_type}: "
        "the token stream itself, with no job hand-off"
    ]
    events = capture.events
    plain = [event for event in events if event.data != "[DONE]" and not _is_json(event.data)]
    # show a token line rather than a narration line when there is one
    plain.sort(key=lambda event: event.event != "message")
    narration = sorted({event.event for event in events if event.event not in ("message", "token")})
    if plain:
        observations.append(f"{len(plain)} event(s) carry raw text in data: (e.g. {plain[0].data[:40]!r}), not JSON")
    if narration:
        observations.append(f"non-contract event types: {', '.join(narration)}")
    if not any(event.id for event in events):
        observations.append("no event carries an id: line, so a dropped stream cannot be resumed")
    if any(event.data == "[DONE]" for event in events):
        observations.append("the stream ends with data: [DONE] directly after the tokens")
    return observations


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


@check(
    "DC-LEGACY-001",
    rule="DC-1.2",
    level="MUST",
    title="not the legacy direct-SSE shape: POST never answers with the event stream",
    area="legacy",
)
def legacy_shape(ctx: Context) -> str:
    """Probe POST with a legacy client's body (client job_id) and with a dual-call body."""
    legacy_body = {"job_id": "dualcall-legacy-probe-001", "prompt": PROMPT, "max_tokens": 8}
    observations: list[str] = []
    for label, body in (("legacy-shaped", legacy_body), ("dual-call", {"prompt": PROMPT, "max_tokens": 8})):
        capture = ctx.probe.stream(
            ctx.probe.submit_url,
            method="POST",
            content=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            stop_after_events=32,
        )
        if "text/event-stream" in capture.content_type:
            if not observations:
                observations = _describe_stream(capture)
            if label == "legacy-shaped" and (capture.status or 0) < 300:
                observations.append(f"a client-chosen job_id ({legacy_body['job_id']!r}) was accepted")
    if observations:
        ctx.diagnoses.append(
            Diagnosis(
                name=LEGACY_NAME,
                summary="This worker uses the legacy direct-SSE shape: POST /v1/inference streams the tokens "
                "itself and the client picks the job id. The dual-call contract needs two calls: POST returns "
                "{job_id, sse_url} at once, then GET sse_url streams the events.",
                observations=observations,
                fixes=LEGACY_FIXES,
            )
        )
        raise CheckFailed("legacy direct-SSE shape: POST /v1/inference answered with the event stream", *observations)
    return "POST answers with a job hand-off, not a stream"
