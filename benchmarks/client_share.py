"""The client's share: what the reference client (``conformance.client``, httpx + httpx-sse) spends per job.

One client process runs jobs back to back against the shared dual-call worker, alternating trial by
trial between the reference client (``AsyncDualCallClient``: submit, then the typed events to
``[DONE]``) and the lean load generator (``benchmarks.client``: the same two requests, events only
counted). Each job's client CPU time is split at the submit's answer: the submit, and the second
request (the stream). The worker's CPU per job is measured too: it must not depend on the client.
"""

from __future__ import annotations

import time
from typing import Any

from benchmarks import loadgen
from benchmarks.catalogue import Pass, Scenario, alternate, percentile, summary
from benchmarks.servers import cpu_s

_WARM_JOBS = 5


async def reference_jobs(url: str, flavor: str, jobs: int, tokens: int) -> dict[str, Any]:
    """``jobs`` jobs with ``AsyncDualCallClient`` (``flavor`` is unused: one kind of job)."""
    from conformance.client import AsyncDualCallClient, Token

    submit_cpu: list[float] = []
    stream_cpu: list[float] = []
    ttft: list[float] = []
    async with AsyncDualCallClient(url) as client:
        for number in range(_WARM_JOBS + jobs):
            started, cpu = time.perf_counter(), time.process_time()
            job = await client.submit(loadgen.PROMPT, max_tokens=tokens, temperature=0)
            submitted = time.process_time()
            first = 0.0
            async for event in client.events(job):
                if not first and isinstance(event, Token):
                    first = time.perf_counter()
            if number >= _WARM_JOBS:
                submit_cpu.append(submitted - cpu)
                stream_cpu.append(time.process_time() - submitted)
                ttft.append(first - started)
    return {"submit_cpu_s": submit_cpu, "stream_cpu_s": stream_cpu, "ttft_s": ttft}


async def lean_jobs(url: str, flavor: str, jobs: int, tokens: int) -> dict[str, Any]:
    """The same jobs with the lean load generator's connection: POST, then GET on the same connection."""
    (connection,) = await loadgen._open(url, 1)
    submit_cpu: list[float] = []
    stream_cpu: list[float] = []
    ttft: list[float] = []
    try:
        for number in range(_WARM_JOBS + jobs):
            started, cpu = time.perf_counter(), time.process_time()
            submitted_result = await connection.request("POST", "/v1/inference", loadgen._submit_body(tokens))
            path = loadgen._sse_url(submitted_result)
            submitted = time.process_time()
            result = await connection.request("GET", path)
            if number >= _WARM_JOBS:
                submit_cpu.append(submitted - cpu)
                stream_cpu.append(time.process_time() - submitted)
                ttft.append(result.first_token_at - started)
    finally:
        connection.close()
    return {"submit_cpu_s": submit_cpu, "stream_cpu_s": stream_cpu, "ttft_s": ttft}


_ROUTINES = {"reference": "benchmarks.client_share:reference_jobs", "lean": "benchmarks.client_share:lean_jobs"}


def client_share(run: Pass) -> dict[str, Any]:
    mode, worker = run.mode, run.servers.worker
    pool = run.pool(1)
    assert worker.proc is not None
    samples: dict[str, dict[str, list[float]]] = {
        name: {"submit_cpu_us": [], "stream_cpu_us": [], "job_cpu_us": [], "ttft_p50_ms": [], "server_cpu_us": []}
        for name in _ROUTINES
    }
    for _, name in alternate(mode.trials, tuple(_ROUTINES)):
        server_before = cpu_s(worker.proc.pid)
        (part,) = pool.run(_ROUTINES[name], worker.url, "dual", mode.client_jobs, mode.handoff_tokens)
        jobs = len(part["ttft_s"])
        server = (cpu_s(worker.proc.pid) - server_before) / (jobs + _WARM_JOBS) * 1e6
        data = samples[name]
        data["submit_cpu_us"].append(sorted(part["submit_cpu_s"])[jobs // 2] * 1e6)
        data["stream_cpu_us"].append(sorted(part["stream_cpu_s"])[jobs // 2] * 1e6)
        data["job_cpu_us"].append(
            sorted(a + b for a, b in zip(part["submit_cpu_s"], part["stream_cpu_s"], strict=True))[jobs // 2] * 1e6
        )
        data["ttft_p50_ms"].append(percentile(part["ttft_s"], 0.5) * 1000)
        data["server_cpu_us"].append(server)
        run.step("client share")
    row: dict[str, Any] = {
        name: {key: summary(values) for key, values in data.items()} for name, data in samples.items()
    }
    reference, lean = row["reference"], row["lean"]
    row["tokens_per_job"] = mode.handoff_tokens
    row["stream_cpu_ratio"] = reference["stream_cpu_us"]["median"] / lean["stream_cpu_us"]["median"]
    row["job_cpu_ratio"] = reference["job_cpu_us"]["median"] / lean["job_cpu_us"]["median"]
    row["added_stream_cpu_us"] = reference["stream_cpu_us"]["median"] - lean["stream_cpu_us"]["median"]
    return row


SCENARIOS = (
    Scenario(
        "client",
        "the reference client's CPU per job and per second request, next to the lean load generator's",
        client_share,
        lambda mode: mode.trials * 2,
        shares_servers=True,
    ),
)
