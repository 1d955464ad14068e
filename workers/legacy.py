"""The negative control: a worker of the legacy direct-SSE shape that openapi/SPEC.md forbids.

``POST /v1/inference`` takes a client-chosen ``job_id`` and answers ``200 text/event-stream``
with narration events, raw ``data: <token>`` lines and ``data: [DONE]``. There is no job
registry, no second call, no status or cancel. The conformance suite must reject it.
Deliberately NOT built on the worker core: it is what teams shipped instead of the core.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from litestar import Litestar, Request, Response, get, post
from litestar.response import Stream

from workers.engines.base import GenerationRequest
from workers.engines.mock import MockEngine


def create_legacy_app(token_delay_s: float = 0.0) -> Litestar:
    engine = MockEngine(token_delay_s=token_delay_s)

    @post("/v1/inference", status_code=200)
    async def execute(request: Request[Any, Any, Any]) -> Response[Any]:
        try:
            payload = json.loads(await request.body())
        except ValueError:
            return Response({"error": "invalid json"}, status_code=400)
        if not isinstance(payload, dict) or "job_id" not in payload or "prompt" not in payload:
            return Response({"error": "job_id and prompt are required"}, status_code=400)
        job_id = str(payload["job_id"])
        generation = GenerationRequest(
            prompt=str(payload["prompt"]),
            max_tokens=int(payload.get("max_tokens", 50)),
            temperature=float(payload.get("temperature", 0.7)),
            seed=payload.get("seed"),
        )

        async def events() -> AsyncIterator[str]:
            yield f"event: narration\ndata: Starting inference (job {job_id})\n\n"
            async for chunk in engine.generate(generation):
                if chunk.text:
                    yield f"data: {chunk.text}\n\n"
            yield f"event: narration\ndata: Inference complete (job {job_id})\n\n"
            yield "data: [DONE]\n\n"
            await asyncio.sleep(0)

        return Stream(events(), media_type="text/event-stream")

    @get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return Litestar(route_handlers=[execute, health], openapi_config=None)
