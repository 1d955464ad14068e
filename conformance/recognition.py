"""Know what the suite is talking to, before any check: a dual-call worker, or something else.

One small submission (``max_tokens`` 1) tells the shapes apart: ``202`` is a dual-call worker; an
event stream answered by POST itself is the legacy direct-SSE shape; a ``404``/``405``/``501``
means no dual-call route at all, and then ``GET /v1/models`` or the server's OpenAPI document
tell an OpenAI-compatible server from anything else. Against a target that has no dual-call route the
checks are meaningless (every one would only repeat the same 404): the run reports them as
unverified, says once what the target is and how to fix it, and fails.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final, Literal

import httpx

from conformance.context import Context
from conformance.model import Diagnosis
from conformance.probe import StreamCapture

__all__ = [
    "GATEWAY_FIX",
    "LEGACY_FIXES",
    "LEGACY_NAME",
    "Recognition",
    "describe_legacy_stream",
    "legacy_diagnosis",
    "recognise",
]

TargetKind = Literal["dual-call worker", "legacy direct-SSE worker", "OpenAI-compatible server", "no dual-call route"]

GATEWAY_FIX: Final = (
    "an OpenAI-compatible server: put `dualcall-worker gateway --upstream URL --upstream-api openai-chat` "
    "in front of it, and point the gate at the gateway"
)
LEGACY_NAME: Final = "legacy direct-SSE worker"
LEGACY_FIXES: Final = [
    "Make POST /v1/inference create a job and answer at once: 202 Accepted, "
    '{"job_id": "<server-generated>", "sse_url": "/v1/inference/<job_id>/stream"} and a Location header (DC-1.2).',
    "Generate job ids on the server (>=122 random bits, e.g. secrets.token_urlsafe(16)) and reject a client "
    "`job_id` with 422 (DC-1.3, DC-1.4).",
    "Serve the tokens from GET /v1/inference/{job_id}/stream: events `started`, `token` {index, text}, `end`, "
    "each with an id: line and one line of JSON data, then `data: [DONE]` (DC-2.x).",
    "Add GET and DELETE /v1/inference/{job_id} (status, cancel) and keep finished jobs for replay for a TTL "
    "(DC-3, DC-4). Clients then follow sse_url instead of reading the POST body.",
]
_OPENAI_PATHS: Final = ("/v1/chat/completions", "/v1/completions", "/v1/models")
#: answers to the submission that say the route is not there (501: a server that has no POST at all)
NOT_SERVED: Final = frozenset({404, 405, 501})
_PROBE_BODY: Final = {"prompt": "dualcall target recognition", "max_tokens": 1}


@dataclass(frozen=True, slots=True)
class Recognition:
    kind: TargetKind
    #: what the suite saw, and what to change (None for a dual-call worker)
    diagnosis: Diagnosis | None = None
    #: the checks are meaningless against this target: they are reported unverified, not run
    stops_checks: bool = False

    @property
    def reason(self) -> str:
        """Why a check was not run (for its unverified result)."""
        summary = self.diagnosis.summary if self.diagnosis else self.kind
        return f"not run: the target is not a dual-call worker ({self.kind}): {summary}"


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def describe_legacy_stream(capture: StreamCapture) -> list[str]:
    """What the event stream a POST answered shows about the legacy shape."""
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


def legacy_diagnosis(observations: list[str]) -> Diagnosis:
    return Diagnosis(
        name=LEGACY_NAME,
        summary="This worker uses the legacy direct-SSE shape: POST /v1/inference streams the tokens "
        "itself and the client picks the job id. The dual-call contract needs two calls: POST returns "
        "{job_id, sse_url} at once, then GET sse_url streams the events.",
        observations=observations,
        fixes=list(LEGACY_FIXES),
    )


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _openai_evidence(ctx: Context) -> list[str]:
    """What shows an OpenAI-compatible API: /v1/models answering a model list, or its OpenAPI document."""
    evidence: list[str] = []
    try:
        models = ctx.probe.request("GET", ctx.base_url + "/v1/models")
        body = _json(models)
        if models.status_code == 200 and isinstance(body, dict) and isinstance(body.get("data"), list):
            names = [str(item.get("id")) for item in body["data"][:3] if isinstance(item, dict)]
            evidence.append(f"GET /v1/models answered 200 with a model list ({', '.join(names) or 'empty'})")
        document = ctx.probe.request("GET", ctx.base_url + "/openapi.json", auth=False)
        paths = (_json(document) or {}).get("paths") if document.status_code == 200 else None
        if isinstance(paths, dict):
            served = [path for path in _OPENAI_PATHS if path in paths]
            if served:
                evidence.append(f"its OpenAPI document (/openapi.json) has {', '.join(served)}")
    except (httpx.HTTPError, AttributeError):
        pass
    return evidence


def _cancel(ctx: Context, capture: StreamCapture) -> None:
    """The probe job of a dual-call worker is cancelled at once (best effort)."""
    try:
        job_id = json.loads(capture.raw).get("job_id")
        if isinstance(job_id, str) and job_id:
            ctx.probe.request("DELETE", ctx.job_url(job_id))
    except (ValueError, AttributeError, httpx.HTTPError):
        pass


def recognise(ctx: Context) -> Recognition:
    """What the target is (a few requests; never raises for what the target answers)."""
    try:
        capture = ctx.probe.stream(
            ctx.probe.submit_url,
            method="POST",
            content=json.dumps(_PROBE_BODY).encode(),
            headers={"Content-Type": "application/json"},
            stop_after_events=32,
            max_duration_s=ctx.options.timeout_s,
        )
    except httpx.HTTPError:
        return Recognition("dual-call worker")  # the checks say what is wrong with the submission
    if capture.status == 202:
        _cancel(ctx, capture)
        return Recognition("dual-call worker")
    if capture.status is not None and capture.status < 300 and "text/event-stream" in capture.content_type:
        return Recognition("legacy direct-SSE worker", legacy_diagnosis(describe_legacy_stream(capture)))
    if capture.status not in NOT_SERVED:
        return Recognition("dual-call worker")  # the route is there; the checks judge its answers
    answered = f"POST {ctx.probe.submit_url} answered {capture.status}"
    evidence = _openai_evidence(ctx)
    if evidence:
        return Recognition(
            "OpenAI-compatible server",
            Diagnosis(
                name="OpenAI-compatible server, not a dual-call worker",
                summary=f"{ctx.base_url} serves an OpenAI-compatible API, not the dual-call contract: {answered}.",
                observations=[answered, *evidence],
                fixes=[f"This is {GATEWAY_FIX}."],
            ),
            stops_checks=True,
        )
    return Recognition(
        "no dual-call route",
        Diagnosis(
            name="not a dual-call worker",
            summary=f"nothing at {ctx.base_url} serves the dual-call contract: {answered}.",
            observations=[answered],
            fixes=[
                "Check the URL: the gate needs the base URL of a dual-call worker (the one whose "
                "POST /v1/inference answers 202 {job_id, sse_url}).",
                f"If it is {GATEWAY_FIX}.",
            ],
        ),
        stops_checks=True,
    )
