"""What the exllamav2 engine's thread bridge costs the event loop per token, on CPU stand-ins.

    python scripts/bridge_bench.py [--runs 5] [--tokens 256] [--engine-file PATH]

Runs the real exllamav2 0.3.2 dynamic generator with the CPU stand-ins of
tests/exllamav2_cpu/standins.py (needs the ``exllamav2-cpu`` tox env's packages). Each forward
step sleeps like a GPU step (GIL released): 1.3 ms for the tiny model (~770 tok/s, as measured
on an H100) and 7 ms for a 1.1B-like step (~140 tok/s). For each shape it reports medians of
``--runs`` runs of:

* raw      the generator alone, iterated in a thread (no bridge): tokens/s
* bridge   ``ExLlamaV2Engine.generate`` consumed on an asyncio loop: tokens/s, the ratio to raw,
           and the event loop thread's CPU time per token (``time.thread_time``), which is the
           bridge's cost to the loop and far less noisy than wall-clock ratios on a shared box

``--bridge-only`` replaces the generator by a backend that returns one token per ``iterate()``
after sleeping 1 ms (GIL released, like a GPU step; no model): the stream waits for every token,
as it does on a GPU, and what the loop spends per token is the bridge's cost alone.

``--engine-file`` loads another version of workers/engines/exllamav2.py (for a before/after).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the stand-ins: tests/exllamav2_cpu/standins.py

SHAPES = {"tiny": ("tiny", 1.3), "1.1B-step": ("small", 7.0)}


def load_engine_module(path: str | None) -> Any:
    if path is None:
        from workers.engines import exllamav2

        return exllamav2
    spec = importlib.util.spec_from_file_location("bench_engine", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def raw_run(backend: Any, request: Any) -> float:
    gen = backend.generator
    job = backend.make_job(request)
    gen.enqueue(job)
    tokens = 0
    first = end = 0.0
    while gen.num_remaining_jobs():
        for r in gen.iterate():
            if r.get("stage") == "streaming":
                if not first:
                    first = time.perf_counter()
                if r.get("eos"):
                    tokens = int(r.get("new_tokens", tokens))
        end = time.perf_counter()
    return tokens / (end - first)


async def bridge_run(engine: Any, request: Any) -> tuple[float, float]:
    loop_cpu0 = time.thread_time()
    tokens = 0
    first = 0.0
    async for chunk in engine.generate(request):
        if not first:
            first = time.perf_counter()
        tokens += chunk.tokens
    end = time.perf_counter()
    cpu_us = (time.thread_time() - loop_cpu0) * 1e6 / max(1, tokens)
    return tokens / (end - first), cpu_us


def bench(mod: Any, size: str, step_ms: float, runs: int, n_tokens: int) -> dict[str, Any]:
    from workers.engines.base import GenerationRequest
    from workers.tinymodel import build

    os.environ["DUALCALL_STANDIN_STEP_MS"] = str(step_ms)
    with tempfile.TemporaryDirectory() as tmp:
        build(Path(tmp) / size, size=size, seed=0)
        # two generators on the same checkpoint: the raw runs never share one with the bridge's thread
        backend = mod.ExLlamaV2Engine(Path(tmp) / size, max_seq_len=1024)._load()
        bridge_backend = mod.ExLlamaV2Engine(Path(tmp) / size, max_seq_len=1024)._load()
        request = GenerationRequest(
            prompt="The lighthouse keeper climbed the stairs and", max_tokens=n_tokens, temperature=0.0
        )
        raw: list[float] = []

        async def bridged() -> list[tuple[float, float]]:
            # raw and bridge runs alternate, so a change in the machine's load hits both alike
            eng = mod.ExLlamaV2Engine(Path(tmp) / size, generator_factory=lambda: bridge_backend)
            await eng.start()
            try:
                await bridge_run(eng, request)  # warm-up
                out = []
                for _ in range(runs):
                    raw.append(await asyncio.to_thread(raw_run, backend, request))
                    out.append(await bridge_run(eng, request))
                return out
            finally:
                await eng.close()

        results = asyncio.run(bridged())
    raw_tok_s = statistics.median(raw)
    bridge_tok_s = statistics.median(r[0] for r in results)
    return {
        "shape": size,
        "step_ms": step_ms,
        "runs": runs,
        "tokens": n_tokens,
        "raw_tok_s": round(raw_tok_s, 1),
        "bridge_tok_s": round(bridge_tok_s, 1),
        "ratio": round(bridge_tok_s / raw_tok_s, 3),
        "loop_cpu_us_per_token": round(statistics.median(r[1] for r in results), 1),
        "ratios_each_run": [round(r[0] / w, 3) for r, w in zip(results, raw, strict=True)],
    }


class InstantBackend:
    """One job, one token per iterate() after a GPU-like sleep, no work: only the bridge costs anything."""

    def __init__(self, step_s: float = 0.001) -> None:
        self.step_s = step_s
        self.jobs: list[list[Any]] = []

    def make_job(self, request: Any) -> list[Any]:
        return [request.max_tokens, 0]

    def enqueue(self, job: list[Any]) -> None:
        self.jobs.append(job)

    def iterate(self) -> list[dict[str, Any]]:
        if not self.jobs:
            return []
        time.sleep(self.step_s)
        job = self.jobs[0]
        job[1] += 1
        last = job[1] >= job[0]
        result: dict[str, Any] = {"stage": "streaming", "job": job, "eos": last, "text": "x", "token_ids": [1]}
        if last:
            result.update(eos_reason="max_new_tokens", new_tokens=job[0])
            self.jobs.pop(0)
        return [result]

    def num_remaining_jobs(self) -> int:
        return len(self.jobs)

    def holds(self, job: Any) -> bool:
        return any(j is job for j in self.jobs)

    def cancel(self, job: Any) -> None:
        self.jobs = [j for j in self.jobs if j is not job]


def bench_bridge_only(mod: Any, runs: int, n_tokens: int) -> dict[str, Any]:
    from workers.engines.base import GenerationRequest

    request = GenerationRequest(prompt="x", max_tokens=n_tokens, temperature=0.0)

    async def go() -> list[tuple[float, float]]:
        eng = mod.ExLlamaV2Engine("/nonexistent", generator_factory=InstantBackend)
        await eng.start()
        try:
            await bridge_run(eng, request)
            return [await bridge_run(eng, request) for _ in range(runs)]
        finally:
            await eng.close()

    results = asyncio.run(go())
    return {
        "shape": "bridge-only",
        "runs": runs,
        "tokens": n_tokens,
        "bridge_tok_s": round(statistics.median(r[0] for r in results)),
        "loop_cpu_us_per_token": round(statistics.median(r[1] for r in results), 1),
        "loop_cpu_us_each_run": [round(r[1], 1) for r in results],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--engine-file", default=None)
    ap.add_argument("--bridge-only", action="store_true", help="no generator: the bridge's own cost")
    ap.add_argument("--shapes", default=",".join(SHAPES), help=f"comma-separated, of {', '.join(SHAPES)}")
    args = ap.parse_args()
    mod = load_engine_module(args.engine_file)
    if args.bridge_only:
        print(json.dumps({"name": "bridge-only", **bench_bridge_only(mod, args.runs, args.tokens)}), flush=True)
        return 0
    from exllamav2_cpu import standins

    standins.install()
    for name in args.shapes.split(","):
        size, step_ms = SHAPES[name]
        print(json.dumps({"name": name, **bench(mod, size, step_ms, args.runs, args.tokens)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
