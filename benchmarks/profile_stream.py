"""``python -m benchmarks.profile_stream`` — CPU per streamed event, in process, without sockets.

Drives the worker app (Litestar, registry, mock engine) and the bare-ASGI baseline directly as ASGI
apps with an in-memory ``send``: no kernel, no client, so what is left is the Python cost of the
hot path (engine chunk -> registry publish -> reader wake-up -> stream write). ``--profile PATH``
writes a cProfile of the worker's runs (read it with ``python -m pstats PATH``).

Compare two trees by running it under each (``PYTHONPATH=<old tree> python -m benchmarks.profile_stream``):
it prints one JSON line per app.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

from benchmarks import baseline

ASGIApp = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


async def _drive(app: ASGIApp, method: str, path: str, body: bytes = b"") -> tuple[int, bytes, int]:
    """One request; returns (status, first 4 KiB of the body, event count)."""
    status = 0
    head = bytearray()
    events = 0
    sent = False
    complete = asyncio.Event()

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await complete.wait()  # like uvicorn: a disconnect is reported once the response is complete
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status, events
        if message["type"] == "http.response.start":
            status = message["status"]
            return
        chunk = message.get("body", b"")
        events += chunk.count(b"\n\n")
        if len(head) < 4096:
            head.extend(chunk)
        if not message.get("more_body", False):
            complete.set()

    route, _, query = path.partition("?")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": route,
        "raw_path": route.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [(b"host", b"bench"), (b"content-type", b"application/json")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 2),
        "state": {},
    }
    await app(scope, receive, send)
    return status, bytes(head), events


async def _started_worker() -> ASGIApp:
    from workers.app import create_app
    from workers.config import WorkerSettings
    from workers.engines.mock import MockEngine

    app = create_app(MockEngine(), WorkerSettings())
    messages: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    await messages.put({"type": "lifespan.startup"})
    ready = asyncio.Event()

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "lifespan.startup.complete":
            ready.set()

    asyncio.get_running_loop().create_task(
        app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, messages.get, send)
    )  # type: ignore[arg-type]
    await asyncio.wait_for(ready.wait(), 30)
    return app  # type: ignore[return-value]


async def _one_worker_job(app: ASGIApp, tokens: int) -> int:
    body = json.dumps({"prompt": baseline.PROMPT, "max_tokens": tokens, "temperature": 0}).encode()
    status, head, _ = await _drive(app, "POST", "/v1/inference", body)
    if status != 202:
        raise RuntimeError(f"submit answered {status}: {head[:200]!r}")
    _, _, events = await _drive(app, "GET", json.loads(head)["sse_url"])
    return events


async def _started_legacy() -> ASGIApp:
    from workers.legacy import create_legacy_app

    return create_legacy_app()  # type: ignore[return-value]


async def _one_legacy_job(app: ASGIApp, tokens: int) -> int:
    body = json.dumps({"job_id": "bench", "prompt": baseline.PROMPT, "max_tokens": tokens, "temperature": 0}).encode()
    _, _, events = await _drive(app, "POST", "/v1/inference", body)
    return events


async def _one_bare_job(tokens: int) -> int:
    _, _, events = await _drive(baseline.app, "GET", f"/stream?tokens={tokens}")  # type: ignore[arg-type]
    return events


async def measure(which: str, tokens: int, repeats: int, profile: str | None, jobs: int = 1) -> dict[str, Any]:
    """CPU per event of ``which`` (one job of ``tokens`` per repeat), or per job with ``jobs`` > 1."""
    app = await (_started_worker() if which == "worker" else _started_legacy()) if which != "bare" else None

    async def one() -> int:
        if which == "worker":
            return await _one_worker_job(app, tokens)  # type: ignore[arg-type]
        if which == "legacy":
            return await _one_legacy_job(app, tokens)  # type: ignore[arg-type]
        return await _one_bare_job(tokens)

    for _ in range(max(1, jobs // 10)):
        await one()  # warm-up: imports, caches
    profiler = cProfile.Profile() if profile else None
    per_unit = []
    for _ in range(repeats):
        if profiler:
            profiler.enable()
        started = time.process_time()
        events = 0
        for _ in range(jobs):
            events += await one()
        per_unit.append((time.process_time() - started) / (jobs if jobs > 1 else events) * 1e6)
        if profiler:
            profiler.disable()
    if profiler and profile:
        profiler.dump_stats(profile)
    unit = "cpu_us_per_job" if jobs > 1 else "cpu_us_per_event"
    return {"app": which, "tokens": tokens, "jobs": jobs, unit: statistics.median(per_unit), "runs": per_unit}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile_stream", description=__doc__)
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--app", choices=("worker", "bare", "legacy", "both"), default="both")
    parser.add_argument(
        "--jobs", type=int, default=1, help="jobs per repeat; > 1 reports CPU per job (the hand-off: try --tokens 8)"
    )
    parser.add_argument("--profile", metavar="PATH", help="write a cProfile of the worker runs to PATH")
    args = parser.parse_args()
    both = ("worker", "legacy") if args.jobs > 1 else ("worker", "bare")
    for which in both if args.app == "both" else (args.app,):
        profile = args.profile if which == "worker" else None
        result = asyncio.run(measure(which, args.tokens, args.repeats, profile, args.jobs))
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
