"""Broken workers whose defect is about time and progress, and the number literals JSON does not have.

Each one was first met in an independent implementation: a single defect there made the gate
wait, cascade into unrelated failures, or pass what it never observed. Registered into the same
catalogue as `defects.py` (which imports this module at its end).
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncGenerator, Callable
from typing import Any

from workers.engines.base import Chunk, GenerationRequest
from workers.schemas import InferenceRequest

from .asgi import DONE, Middleware, Send, SSERewriter, is_stream, rewrite
from .defects import EngineWrapper, _engine, _on_mid_stream_disconnect, _wrap_decode, defect, variant

#: how long the held-open stream stays open after [DONE] (longer than any read of the suite)
HOLD_OPEN_S = 600.0


@defect(
    "held-open-after-done",
    "after [DONE] the stream stays open until the client hangs up (a keep-alive task that outlives the job)",
    caught_by=("DC-STREAM-007",),
)
def _held_open_after_done() -> Middleware:
    class HoldOpen(SSERewriter):
        async def finish(self, send: Send) -> None:
            if self.done_sent:
                await asyncio.sleep(HOLD_OPEN_S)
            await super().finish(send)

    return rewrite(is_stream, HoldOpen)


#: set once a reader hangs up mid-stream (disconnect-stalls-engine)
_engine_stalled = asyncio.Event()


@defect(
    "disconnect-stalls-engine",
    "after a reader hangs up mid-stream the engine takes no further job (nothing moves), while /health says ok",
    caught_by=("DC-LIFE-003",),
)
def _disconnect_stalls_engine() -> Middleware:
    class Stalled(EngineWrapper):
        async def generate(self, request: GenerationRequest) -> AsyncGenerator[Chunk, None]:
            if _engine_stalled.is_set():
                await asyncio.Event().wait()  # never set: every later job waits forever, /health stays ok
            async for chunk in self.inner.generate(request):
                yield chunk

    _engine(Stalled)
    return _on_mid_stream_disconnect(lambda _scope: _engine_stalled.set())


def _finite(value: Any) -> Any:
    """The body as a lenient worker sees it after clamping: a non-finite number becomes 1."""
    if isinstance(value, float) and not math.isfinite(value):
        return 1.0
    if isinstance(value, list):
        return [_finite(item) for item in value]
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    return value


@defect(
    "non-json-literals-accepted",
    "the submit body is parsed with Python's json module, which reads NaN/Infinity as numbers, then clamped",
    caught_by=("DC-SUBMIT-013",),
)
def _non_json_literals_accepted() -> None:
    def decode(original: Callable[[bytes], InferenceRequest], body: bytes) -> InferenceRequest:
        try:
            raw = json.loads(body)  # accepts NaN, Infinity, -Infinity: the bug
        except ValueError:
            return original(body)
        return original(json.dumps(_finite(raw)).encode())

    _wrap_decode(decode)


@variant(
    "stamped-deliveries",
    "every delivery of an event carries the time it was sent as an extra data member (DC-2.10 allows it)",
)
def _stamped_deliveries() -> Middleware:
    class Stamp(SSERewriter):
        def block(self, block: bytes) -> bytes:
            if block == DONE or not block.startswith(b"id:"):
                return block
            lines = block.split(b"\n")
            for index, line in enumerate(lines):
                if line.startswith(b"data: {") and line.endswith(b"}"):
                    stamp = json.dumps(time.time()).encode()
                    lines[index] = line[:-1] + b', "sent_at": ' + stamp + b"}"
            return b"\n".join(lines)

    return rewrite(is_stream, Stamp)
