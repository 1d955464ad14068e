"""``python -m benchmarks`` — SSE delivery throughput of the worker core, side by side in one run.

Measures, against the mock engine with no per-token delay (so the core, not the engine, is the
bottleneck):

* ``core``: events/s the registry publishes and one in-process reader consumes (no HTTP);
* ``http-1``: events/s one HTTP reader receives over loopback, and time to first event;
* ``http-8``: events/s summed over 8 concurrent HTTP readers of one job (replay fan-out);
* ``soak``: many short jobs (half the readers drop mid-stream), then the TTL: retained jobs
  must return to 0 and the worker's RSS must stay flat.

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


def _metric(url: str, name: str) -> float:
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise LookupError(name)


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def soak(jobs: int, ttl_s: float) -> dict[str, Any]:
    """Many short jobs, half read to the end and half dropped after the first bytes; then the TTL.

    Memory must come back to where it was: retained jobs go to 0 and RSS stays flat.
    """
    with WorkerProcess("mock", "--ttl-s", str(ttl_s), "--token-delay-ms", "0") as worker, httpx.Client() as client:
        assert worker.proc is not None
        body = {"prompt": "soak", "max_tokens": 64, "temperature": 0.5}

        def wave(count: int) -> None:
            for number in range(count):
                sse_url = client.post(worker.url + "/v1/inference", json=body, timeout=10).json()["sse_url"]
                with client.stream("GET", worker.url + sse_url, timeout=10) as response:
                    for _ in response.iter_raw():
                        if number % 2:
                            break  # a reader that drops mid-stream

        wave(200)  # warm-up: imports, caches, allocator arenas
        time.sleep(ttl_s * 2 + 0.5)
        before = _rss_kib(worker.proc.pid)
        started = time.perf_counter()
        wave(jobs)
        elapsed = time.perf_counter() - started
        peak_retained = _metric(worker.url, "dualcall_jobs_retained")
        time.sleep(ttl_s * 2 + 0.5)
        return {
            "jobs": jobs,
            "seconds": elapsed,
            "jobs_per_s": jobs / elapsed,
            "retained_at_end_of_load": peak_retained,
            "retained_after_ttl": _metric(worker.url, "dualcall_jobs_retained"),
            "rss_before_kib": before,
            "rss_after_kib": _rss_kib(worker.proc.pid),
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=4096, help="tokens per job (default: 4096)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per scenario; the median is reported (default: 3)")
    parser.add_argument("--soak", type=int, default=2000, metavar="N", help="jobs in the soak run; 0 skips it")
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
    results: dict[str, Any] = {"delivery": rows}
    if args.soak:
        result = soak(args.soak, ttl_s=1.0)
        results["soak"] = result
        growth = (result["rss_after_kib"] - result["rss_before_kib"]) / 1024
        print(
            f"\nsoak: {result['jobs']} jobs ({result['jobs_per_s']:.0f}/s, half the readers dropped mid-stream); "
            f"jobs retained {result['retained_at_end_of_load']:.0f} -> {result['retained_after_ttl']:.0f} "
            "after the TTL; "
            f"RSS {result['rss_before_kib'] / 1024:.1f} -> {result['rss_after_kib'] / 1024:.1f} MiB ({growth:+.1f} MiB)"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
