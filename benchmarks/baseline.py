"""The bare-ASGI floor: the same SSE bytes from the same mock engine, with no framework and no registry.

``python -m benchmarks.baseline --port 0`` serves it under uvicorn exactly as the worker is served
(same socket setup, same HTTP implementation), so the only difference a benchmark sees is the
worker core: Litestar routing, the job registry, and the second call.

Routes (all GET):

* ``/stream?tokens=N`` runs `MockEngine` greedily (the prompt the benchmarks submit to the worker)
  and sends ``started``, one ``token`` event per chunk, ``end`` and ``[DONE]``, one send per event —
  byte for byte what the worker sends for that job, minus the job id;
* ``/replay?tokens=N`` sends those same events, pre-encoded once per N, in one write: the floor for
  replay fan-out and the load generator's own ceiling;
* ``/idle`` sends the response head and then waits for the client to go away: the floor for the
  memory of an open, idle stream;
* ``/health`` answers 200.
"""

from __future__ import annotations

import argparse
from typing import Any
from urllib.parse import parse_qs

import uvicorn

from workers import server, sse
from workers.engines.base import GenerationRequest
from workers.engines.mock import MockEngine
from workers.schemas import EndData, StartedData, TokenData

PROMPT = "benchmark"
_HEAD = {
    "type": "http.response.start",
    "status": 200,
    "headers": [
        (b"content-type", b"text/event-stream; charset=utf-8"),
        (b"cache-control", b"no-cache"),
        (b"x-accel-buffering", b"no"),
    ],
}
_engine = MockEngine()


def request_for(tokens: int) -> GenerationRequest:
    return GenerationRequest(prompt=PROMPT, max_tokens=tokens, temperature=0)


async def events_for(tokens: int) -> list[bytes]:
    """The encoded events of one job, as `/stream` sends them."""
    return [block async for block in _live_events(tokens)]


async def _live_events(tokens: int) -> Any:
    event_id = 1
    yield sse.encode_event(event_id, "started", StartedData(job_id="baseline"))
    index = 0
    produced = 0
    stop_reason = "max_tokens"
    async for chunk in _engine.generate(request_for(tokens)):
        produced += chunk.tokens
        if chunk.text:
            event_id += 1
            yield sse.encode_event(event_id, "token", TokenData(index=index, text=chunk.text))
            index += 1
        if chunk.stop_reason is not None:
            stop_reason = chunk.stop_reason
    event_id += 1
    yield sse.encode_event(event_id, "end", EndData(tokens_out=produced, stop_reason=stop_reason))  # type: ignore[arg-type]
    yield sse.DONE


_replay_bodies: dict[int, bytes] = {}


async def _replay_body(tokens: int) -> bytes:
    """The whole job, encoded once per size and then served as one write."""
    if tokens not in _replay_bodies:
        _replay_bodies[tokens] = b"".join(await events_for(tokens))
    return _replay_bodies[tokens]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (message := await receive())["type"] != "lifespan.shutdown":
            await send({"type": message["type"] + ".complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    path = scope["path"]
    tokens = int(parse_qs(scope["query_string"].decode()).get("tokens", ["64"])[0])
    if path == "/stream":
        await send(_HEAD)
        async for block in _live_events(tokens):
            await send({"type": "http.response.body", "body": block, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    elif path == "/replay":
        await send(_HEAD)
        await send({"type": "http.response.body", "body": await _replay_body(tokens), "more_body": False})
    elif path == "/idle":
        await send(_HEAD)
        while (await receive())["type"] != "http.disconnect":
            pass
    elif path == "/health":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok"})
    else:
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})


def main() -> int:
    parser = argparse.ArgumentParser(description="bare-ASGI SSE baseline for the benchmarks")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    sock = server.bind(args.host, args.port)
    print(f"bare-ASGI SSE baseline on {server.base_url(sock)}", flush=True)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
    uvicorn.Server(config).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
