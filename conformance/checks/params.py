"""DC-2.13 / DC-2.14: generation parameters."""

from __future__ import annotations

import json
from typing import Any

from conformance.context import Context, event_data
from conformance.model import Exchange
from conformance.registry import check
from conformance.verdicts import CheckFailed, CheckUnverified


def _completion(ctx: Context, **overrides: object) -> tuple[str, dict[str, object], list[Exchange]]:
    """The text and end event of one job, and its submit and stream exchanges (the evidence if it breaks a rule)."""
    job = ctx.submit(ctx.body(**overrides))
    capture = ctx.stream_of(job)
    shown = [exchange for exchange in (job.exchange, capture.exchange) if exchange is not None]
    ends = event_data(capture, "end")
    if not ends:
        errors = event_data(capture, "error")
        raise CheckFailed(
            f"the job did not end with an end event ({errors[0] if errors else 'no terminal event'})", exchanges=shown
        )
    return "".join(capture.token_texts()), ends[0], shown


@check("DC-PARAM-001", rule="DC-2.13", level="MUST", title="max_tokens is honoured", area="params")
def max_tokens_honoured(ctx: Context) -> str:
    _, end, shown = _completion(ctx, max_tokens=5)
    tokens_out = end.get("tokens_out")
    if not isinstance(tokens_out, int) or tokens_out > 5:
        raise CheckFailed(f"max_tokens 5 produced tokens_out {tokens_out!r}", exchanges=shown)
    if tokens_out == 5 and end.get("stop_reason") != "max_tokens":
        raise CheckFailed(
            f"5 of 5 tokens generated but stop_reason is {end.get('stop_reason')!r}, not 'max_tokens'",
            exchanges=shown,
        )
    return f"tokens_out {tokens_out}, stop_reason {end.get('stop_reason')}"


@check(
    "DC-PARAM-002",
    rule="DC-2.13",
    level="MUST",
    title="stop strings end generation before the stop string, with stop_reason `stop`",
    area="params",
)
def stop_honoured(ctx: Context) -> str:
    """Greedy text is generated once; a piece of its middle becomes the stop string of a second run."""
    text, _, calibration = _completion(ctx, max_tokens=48)
    candidates = [text[i : i + 3] for i in range(len(text) // 3, len(text) - 3)]
    stop = next((piece for piece in candidates if piece.strip() and piece in text[len(text) // 3 :]), None)
    if not stop:
        raise CheckUnverified(
            f"the greedy completion is too short to pick a stop string from ({text!r})",
            "a worker whose greedy completion of the probe prompt is at least a few characters long",
        )
    expected = text[: text.index(stop)]
    stopped, end, shown = _completion(ctx, max_tokens=48, stop=[stop])
    # the exchanges that carried `stop` broke the rule; the calibration run (without it) comes after them
    shown += calibration
    if stop in stopped:
        raise CheckFailed(f"the text contains the stop string {stop!r}", f"text: {stopped!r}", exchanges=shown)
    if end.get("stop_reason") != "stop":
        raise CheckFailed(
            f"stop string {stop!r} occurred but stop_reason is {end.get('stop_reason')!r}", exchanges=shown
        )
    if stopped != expected:
        raise CheckFailed(
            f"with stop {stop!r} the text is not the greedy text cut before the stop string",
            f"expected: {expected!r}",
            f"received: {stopped!r}",
            exchanges=shown,
        )
    return f"stopped before {stop!r} after {len(stopped)} characters"


@check(
    "DC-PARAM-003",
    rule="DC-2.14",
    level="SHOULD",
    title="the same prompt, parameters and seed give the same tokens (MUST when /health says deterministic)",
    area="params",
    level_for=lambda ctx: "MUST" if ctx.deterministic else "SHOULD",
)
def deterministic(ctx: Context) -> str:
    runs: list[tuple[str, dict[str, Any]]] = [
        ("seeded sampling", {"temperature": 0.8, "top_p": 0.9, "top_k": 20, "seed": 1234, "max_tokens": 32}),
        ("greedy", {"temperature": 0, "max_tokens": 32}),
    ]
    for label, params in runs:
        first, _, before = _completion(ctx, **params)
        second, _, after = _completion(ctx, **params)
        if first != second:
            raise CheckFailed(
                f"{label}: the same request gave different texts",
                f"parameters: {json.dumps(params)}",
                f"first:  {first[:120]!r}",
                f"second: {second[:120]!r}",
                exchanges=after + before,
            )
    return "seeded and greedy runs repeat exactly"
