"""The legacy detector: recognises the direct-SSE shape and says so by name, with the fix.

The legacy shape (openapi/SPEC.md, "The legacy direct-SSE shape"): ``POST /v1/inference``
with a client-chosen ``job_id`` answers ``200 text/event-stream`` itself, with plain
``data: <token>`` lines, narration events and ``data: [DONE]``.
"""

from __future__ import annotations

import json

from conformance.context import PROMPT, Context
from conformance.recognition import LEGACY_NAME, describe_legacy_stream, legacy_diagnosis
from conformance.registry import check
from conformance.verdicts import CheckFailed, CheckUnverified


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
    handed_off: int | None = None
    for label, body in (("legacy-shaped", legacy_body), ("dual-call", {"prompt": PROMPT, "max_tokens": 8})):
        capture = ctx.probe.stream(
            ctx.probe.submit_url,
            method="POST",
            content=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            stop_after_events=32,
        )
        if label == "dual-call":
            handed_off = capture.status
        if "text/event-stream" in capture.content_type:
            if not observations:
                observations = describe_legacy_stream(capture)
            if label == "legacy-shaped" and (capture.status or 0) < 300:
                observations.append(f"a client-chosen job_id ({legacy_body['job_id']!r}) was accepted")
    if observations:
        # the check's fuller observations replace those of the target recognition
        ctx.diagnoses[:] = [diagnosis for diagnosis in ctx.diagnoses if diagnosis.name != LEGACY_NAME]
        ctx.diagnoses.insert(0, legacy_diagnosis(observations))
        raise CheckFailed("legacy direct-SSE shape: POST /v1/inference answered with the event stream", *observations)
    if handed_off != 202:
        raise CheckUnverified(
            f"POST /v1/inference answered {handed_off} to a dual-call body: neither a stream nor a job hand-off "
            "was observed",
            "a dual-call submit (see DC-SUBMIT-001)",
        )
    return "POST answers with a job hand-off (202), not a stream"
