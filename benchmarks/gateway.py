"""``python -m benchmarks.gateway`` — the gateway's cost: streams through it vs the same upstream direct.

The upstream is the project's ``legacy`` direct-SSE worker on the mock engine, with a per-token
delay (``--token-delay-ms``, default 1 ms: 1,000 tokens/s per stream, faster than most real models)
so that the upstream paces the stream the way a model does; ``0`` shows the gateway's ceiling at
mock speed instead. The same client code runs both paths, trial by trial in alternating order:

* direct: ``POST upstream/v1/inference`` and read its ``data:`` lines to ``[DONE]``;
* gateway: ``POST gateway/v1/inference`` (202), ``GET sse_url``, read ``token`` events to ``[DONE]``
  (``dualcall-worker gateway --upstream-api legacy`` in front of the same upstream).

Figures, at 1 and 16 concurrent streams: tokens/s (all streams together) and its ratio, time to
first token p50 (direct: from the POST; gateway: from the POST through the 202 and the GET) and the
gateway's overhead, and the gateway process's CPU time per token. The prompt is picked so that
the mock's first ``tokens`` tokens hold no ``[DONE]`` (which the legacy framing cannot carry), and
both paths must deliver the same number of token events per job (a token that is only a line
break is no event in the legacy framing, on either path).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
from httpx_sse import aconnect_sse

from benchmarks.catalogue import Pass, Scenario
from benchmarks.servers import START_TIMEOUT_S, cpu_s
from workers.engines.base import GenerationRequest
from workers.engines.mock import MockEngine
from workers.testing import WorkerProcess

GOALS = {"tokens_per_s_ratio": 0.95, "ttft_overhead_ms": 1.0}
CONCURRENCY = (1, 16)


@dataclass(frozen=True)
class Settings:
    trials: int = 5
    tokens: int = 200
    jobs_per_stream: int = 3
    token_delay_ms: float = 1.0


def clean_prompt(tokens: int, temperature: float = 1.0) -> str:
    """A prompt whose first ``tokens`` mock tokens contain no ``[DONE]`` (deterministic search)."""
    engine = MockEngine()
    for n in range(1_000_000):
        prompt = f"gateway benchmark {n}"
        drawn = engine.tokens(GenerationRequest(prompt, max_tokens=tokens, temperature=temperature, seed=0))
        if "[DONE]" not in drawn:
            return prompt
    raise RuntimeError("no clean prompt found")  # pragma: no cover - (32/33)**200 is about 1/500


@dataclass
class Stream:
    ttft_s: float
    tokens: int


async def _direct(client: httpx.AsyncClient, url: str, prompt: str, tokens: int) -> Stream:
    body = {"job_id": uuid.uuid4().hex, "prompt": prompt, "max_tokens": tokens, "temperature": 1.0, "seed": 0}
    started = time.perf_counter()
    first = 0.0
    count = 0
    async with aconnect_sse(client, "POST", url + "/v1/inference", json=body) as source:
        async for event in source.aiter_sse():
            if event.data == "[DONE]":
                break
            if event.event == "message" and event.data:
                count += 1
                first = first or time.perf_counter() - started
    return Stream(first, count)


async def _gateway(client: httpx.AsyncClient, url: str, prompt: str, tokens: int) -> Stream:
    body = {"prompt": prompt, "max_tokens": tokens, "temperature": 1.0, "seed": 0}
    started = time.perf_counter()
    first = 0.0
    count = 0
    submitted = await client.post(url + "/v1/inference", json=body)
    submitted.raise_for_status()
    async with aconnect_sse(client, "GET", url + submitted.json()["sse_url"]) as source:
        async for event in source.aiter_sse():
            if event.data == "[DONE]":
                break
            if event.event == "token":
                count += 1
                first = first or time.perf_counter() - started
            elif event.event == "error":
                raise RuntimeError(f"gateway job failed: {event.data}")
    return Stream(first, count)


async def _trial(path: str, url: str, concurrency: int, settings: Settings, prompt: str) -> tuple[list[Stream], float]:
    run = _direct if path == "direct" else _gateway
    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=120.0, limits=limits) as client:

        async def user() -> list[Stream]:
            return [await run(client, url, prompt, settings.tokens) for _ in range(settings.jobs_per_stream)]

        await run(client, url, prompt, 4)  # connections warm, nothing cold measured
        started = time.perf_counter()
        results = await asyncio.gather(*(user() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return [stream for streams in results for stream in streams], wall


def _summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def measure(settings: Settings) -> dict[str, Any]:
    prompt = clean_prompt(settings.tokens)
    delay = f"{settings.token_delay_ms:g}"
    results: dict[str, Any] = {
        "upstream": f"legacy worker, mock engine, --token-delay-ms {delay}",
        "tokens_per_stream": settings.tokens,
        "jobs_per_stream": settings.jobs_per_stream,
        "trials": settings.trials,
        "load_average_start": os.getloadavg()[0],
        "by_concurrency": {},
    }
    with (
        WorkerProcess("legacy", "--token-delay-ms", delay, start_timeout_s=START_TIMEOUT_S) as upstream,
        WorkerProcess(
            "gateway",
            "--upstream",
            upstream.url,
            "--upstream-api",
            "legacy",
            "--upstream-concurrency",
            "64",
            "--no-access-log",
            "--max-tokens-cap",
            str(max(4096, settings.tokens)),
            start_timeout_s=START_TIMEOUT_S,
        ) as gateway,
    ):
        assert gateway.proc is not None
        for concurrency in CONCURRENCY:
            samples: dict[str, list[float]] = {
                "direct_tps": [],
                "gateway_tps": [],
                "direct_ttft_ms": [],
                "gateway_ttft_ms": [],
                "gateway_cpu_us_per_token": [],
            }
            for trial in range(settings.trials):
                for path in ("direct", "gateway") if trial % 2 == 0 else ("gateway", "direct"):
                    url = upstream.url if path == "direct" else gateway.url
                    cpu_before = cpu_s(gateway.proc.pid)
                    streams, wall = asyncio.run(_trial(path, url, concurrency, settings, prompt))
                    tokens = sum(stream.tokens for stream in streams)
                    per_job = {stream.tokens for stream in streams}
                    reference = results.setdefault("events_per_job", min(per_job))
                    if per_job != {reference}:
                        raise RuntimeError(f"{path}: token events per job {sorted(per_job)}, not {reference} as before")
                    samples[f"{path}_tps"].append(tokens / wall)
                    samples[f"{path}_ttft_ms"].append(statistics.median(s.ttft_s for s in streams) * 1000)
                    if path == "gateway":
                        samples["gateway_cpu_us_per_token"].append(
                            (cpu_s(gateway.proc.pid) - cpu_before) / tokens * 1e6
                        )
                print(f"gateway benchmark: c={concurrency} trial {trial + 1}/{settings.trials}", file=sys.stderr)
            row: dict[str, Any] = {key: _summary(values) for key, values in samples.items()}
            row["tokens_per_s_ratio"] = row["gateway_tps"]["median"] / row["direct_tps"]["median"]
            row["ttft_p50_overhead_ms"] = row["gateway_ttft_ms"]["median"] - row["direct_ttft_ms"]["median"]
            results["by_concurrency"][str(concurrency)] = row
    results["load_average_end"] = os.getloadavg()[0]
    return results


def _spread(stat: dict[str, float], fmt: str = "{:.0f}") -> str:
    return f"{fmt.format(stat['median'])} ({fmt.format(stat['min'])}–{fmt.format(stat['max'])})"


def markdown(results: dict[str, Any]) -> str:
    lines = [
        f"Gateway vs direct, upstream: {results['upstream']}; {results['tokens_per_stream']} tokens per job "
        f"({results['events_per_job']} token events), {results['jobs_per_stream']} jobs per stream, "
        f"median (min–max) of {results['trials']} interleaved trials; "
        f"load average {results['load_average_start']:.1f} at start, {results['load_average_end']:.1f} at end.",
        "",
        "| streams | tokens/s direct | tokens/s gateway | ratio (goal ≥ 0.95) | TTFT p50 direct | "
        "TTFT p50 gateway | overhead (goal ≤ 1 ms) | gateway CPU per token |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for concurrency, row in results["by_concurrency"].items():
        lines.append(
            f"| {concurrency} | {_spread(row['direct_tps'])} | {_spread(row['gateway_tps'])} | "
            f"{row['tokens_per_s_ratio']:.3f} | {_spread(row['direct_ttft_ms'], '{:.2f}')} ms | "
            f"{_spread(row['gateway_ttft_ms'], '{:.2f}')} ms | {row['ttft_p50_overhead_ms']:+.2f} ms | "
            f"{_spread(row['gateway_cpu_us_per_token'])} µs |"
        )
    return "\n".join(lines) + "\n"


def _scenario(run: Pass) -> dict[str, Any]:
    """``python -m benchmarks --only gateway``: this benchmark as a scenario (it prints its own progress)."""
    results = measure(Settings(trials=max(5, run.mode.trials)))
    run.step("gateway")
    return results


SCENARIOS = (
    Scenario(
        "gateway",
        "tokens/s and TTFT through the gateway vs the same upstream streamed directly",
        _scenario,
        lambda mode: 1,
    ),
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gateway", description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=Settings.trials)
    parser.add_argument("--tokens", type=int, default=Settings.tokens, help="tokens per job")
    parser.add_argument("--jobs", type=int, default=Settings.jobs_per_stream, help="jobs per stream per trial")
    parser.add_argument("--token-delay-ms", type=float, default=Settings.token_delay_ms, help="upstream pace")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    if args.trials < 1 or args.tokens < 1 or args.jobs < 1 or args.token_delay_ms < 0:
        parser.error("--trials, --tokens and --jobs must be >= 1, --token-delay-ms >= 0")
    results = measure(Settings(args.trials, args.tokens, args.jobs, args.token_delay_ms))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(results, out, indent=2)
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
