"""``python -m benchmarks`` — SSE delivery throughput of the worker core, side by side in one run.

Measures, against the mock engine with no per-token delay (so the core, not the engine, is the
bottleneck):

* ``core``: events/s the registry publishes and one in-process reader consumes (no HTTP);
* ``http-1``: events/s one HTTP reader receives over loopback, and time to first event;
* ``http-8``: events/s summed over 8 concurrent HTTP readers of one job (replay fan-out).

Ratios are computed within the same run, because absolute numbers on a shared 2-core
machine are noisy. Results go to stdout and ``--json PATH``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from conformance.sse import SSEParser
from workers.config import WorkerSettings
from workers.engines.base import GenerationRequest
from workers.engines.mock import MockEngine
from workers.registry import JobRegistry
from workers.testing import WorkerProcess


async def _core_once(tokens: int) -> tuple[float, int]:
    registry = JobRegistry(MockEngine(), WorkerSettings(max_tokens_cap=tokens))
    registry.start()
    started = time.perf_counter()
    job = registry.submit(GenerationRequest(prompt="benchmark", max_tokens=tokens, temperature=0))
    events = 0
    async for block in registry.open_stream(job.id, None):
        events += block.count(b"\n\n")
    elapsed = time.perf_counter() - started
    await registry.close()
    return elapsed, events


def core(tokens: int) -> tuple[float, int]:
    return asyncio.run(_core_once(tokens))


def http_read(url: str, sse_url: str, results: list[tuple[float, float, int]]) -> None:
    parser = SSEParser()
    events = 0
    first: float | None = None
    started = time.perf_counter()
    with httpx.stream("GET", url + sse_url, timeout=60) as response:
        for chunk in response.iter_raw():
            new = parser.feed(chunk)
            if new and first is None:
                first = time.perf_counter() - started
            events += len(new)
    results.append((time.perf_counter() - started, first or 0.0, events))


def http_run(url: str, tokens: int, readers: int) -> tuple[float, float, int]:
    submitted = httpx.post(
        url + "/v1/inference", json={"prompt": "benchmark", "max_tokens": tokens, "temperature": 0}, timeout=30
    ).json()
    results: list[tuple[float, float, int]] = []
    threads = [threading.Thread(target=http_read, args=(url, submitted["sse_url"], results)) for _ in range(readers)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    wall = time.perf_counter() - started
    return wall, statistics.median(first for _, first, _ in results), sum(events for _, _, events in results)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=4096, help="tokens per job (default: 4096)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per scenario; the median is reported (default: 3)")
    parser.add_argument("--json", type=Path, help="write the results as JSON")
    args = parser.parse_args()

    rows: dict[str, dict[str, Any]] = {}
    core_runs = [core(args.tokens) for _ in range(args.repeats)]
    core_s = statistics.median(elapsed for elapsed, _ in core_runs)
    rows["core"] = {"events": core_runs[0][1], "seconds": core_s, "events_per_s": core_runs[0][1] / core_s}
    with WorkerProcess("mock", "--max-tokens-cap", str(args.tokens), "--token-delay-ms", "0") as worker:
        http_run(worker.url, 64, 1)  # warm-up
        for label, readers in (("http-1", 1), ("http-8", 8)):
            runs = [http_run(worker.url, args.tokens, readers) for _ in range(args.repeats)]
            wall = statistics.median(run[0] for run in runs)
            rows[label] = {
                "events": runs[0][2],
                "seconds": wall,
                "events_per_s": runs[0][2] / wall,
                "first_event_ms": statistics.median(run[1] for run in runs) * 1000,
            }
    print(f"SSE delivery, mock engine, {args.tokens} tokens per job, median of {args.repeats}")
    print(f"{'scenario':<8} {'events':>7} {'seconds':>8} {'events/s':>10} {'vs core':>8} {'first event':>12}")
    for label, row in rows.items():
        ratio = row["events_per_s"] / rows["core"]["events_per_s"]
        first = f"{row['first_event_ms']:.1f} ms" if "first_event_ms" in row else "-"
        rate = row["events_per_s"]
        print(f"{label:<8} {row['events']:>7} {row['seconds']:>8.3f} {rate:>10.0f} {ratio:>7.2f}x {first:>12}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
