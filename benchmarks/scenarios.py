"""The scenarios: each runs its subject and its baseline in alternating order, trial after trial.

Every figure is the median of the trials with min and max; its ratio is taken against the
baseline's median from the same run (absolute numbers on a shared machine move a lot; the ratio
of two things measured side by side moves much less).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from benchmarks import loadgen
from benchmarks import servers as processes
from benchmarks.servers import START_TIMEOUT_S, BaselineProcess, cpu_s, rss_kib
from workers.testing import WorkerProcess

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Mode:
    name: str
    trials: int
    handoff_jobs: dict[int, int]  # concurrency -> jobs per trial
    handoff_tokens: int
    live_tokens: int
    live64_tokens: int
    replay_tokens: int
    replay_readers: tuple[int, ...]
    idle_streams: int
    memory_trials: int
    suite_fuzz: bool
    suite_trials: int


QUICK = Mode(
    name="quick",
    trials=3,
    handoff_jobs={1: 40, 8: 64, 64: 128},
    handoff_tokens=8,
    live_tokens=2048,
    live64_tokens=128,
    replay_tokens=1024,
    replay_readers=(1, 16, 256),
    idle_streams=1000,
    memory_trials=1,
    suite_fuzz=False,
    suite_trials=1,
)
FULL = Mode(
    name="full",
    trials=7,
    handoff_jobs={1: 300, 8: 400, 64: 1024},
    handoff_tokens=8,
    live_tokens=4096,
    live64_tokens=512,
    replay_tokens=4096,
    replay_readers=(1, 4, 16, 64, 256),
    idle_streams=1000,
    memory_trials=3,
    suite_fuzz=True,
    suite_trials=3,
)


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def alternate(trials: int, names: tuple[str, str]) -> Iterator[tuple[int, str]]:
    """(trial, name) pairs, the order flipped every trial so neither side always goes first."""
    for trial in range(trials):
        for name in names if trial % 2 == 0 else names[::-1]:
            yield trial, name


@dataclass
class Servers:
    worker: WorkerProcess
    legacy: WorkerProcess
    bare: BaselineProcess


def worker_for_load() -> WorkerProcess:
    # slots and queue large enough that no scenario queues: the hand-off, not the queue, is measured
    return processes.worker("--concurrency", "64", "--queue-limit", "1024", "--ttl-s", "600")


# -- the load generator's own ceiling ----------------------------------------------------------------------


def ceiling(servers: Servers, pool: loadgen.ClientPool, mode: Mode, progress: Progress) -> dict[str, Any]:
    """Events/s one client process takes in when the server only writes pre-encoded bytes."""
    rates = []
    pool.run("streams", servers.bare.url, "get", 1, mode.replay_tokens, f"/replay?tokens={mode.replay_tokens}")
    for _ in range(mode.trials):
        (part,) = pool.run(
            "streams", servers.bare.url, "get", 1, mode.replay_tokens, f"/replay?tokens={mode.replay_tokens}"
        )
        rates.append(part["events"] / (part["end"] - part["start"]))
        progress("client ceiling")
    return {"events_per_s": summary(rates)}


# -- hand-off: dual-call vs legacy -------------------------------------------------------------------------


def handoff(servers: Servers, pool: loadgen.ClientPool, mode: Mode, progress: Progress) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    for concurrency, jobs in mode.handoff_jobs.items():
        per_user = max(1, jobs // concurrency)
        samples: dict[str, dict[str, list[float]]] = {
            name: {"p50": [], "p99": [], "jobs_per_s": [], "busy": [], "server_cpu_ms_per_job": []}
            for name in ("dual", "legacy")
        }
        for _, name in alternate(mode.trials, ("dual", "legacy")):
            server = servers.worker if name == "dual" else servers.legacy
            cpu_before = _cpu(server)
            parts = pool.run("handoff", server.url, name, concurrency, per_user, mode.handoff_tokens)
            ttft = [value for part in parts for value in part["ttft_s"]]
            samples[name]["server_cpu_ms_per_job"].append((_cpu(server) - cpu_before) / len(ttft) * 1000)
            wall = max(part["end"] for part in parts) - min(part["start"] for part in parts)
            samples[name]["p50"].append(percentile(ttft, 0.5) * 1000)
            samples[name]["p99"].append(percentile(ttft, 0.99) * 1000)
            samples[name]["jobs_per_s"].append(len(ttft) / wall)
            samples[name]["busy"].append(loadgen.client_busy(parts))
            progress(f"hand-off c={concurrency}")
        row = {name: {key: summary(values) for key, values in data.items()} for name, data in samples.items()}
        dual, legacy = row["dual"], row["legacy"]
        row["ttft_p50_overhead_ms"] = dual["p50"]["median"] - legacy["p50"]["median"]
        row["ttft_p50_ratio"] = dual["p50"]["median"] / legacy["p50"]["median"]
        row["jobs_per_s_ratio"] = dual["jobs_per_s"]["median"] / legacy["jobs_per_s"]["median"]
        row["jobs_per_trial"] = per_user * concurrency
        rows[str(concurrency)] = row
    return {"tokens_per_job": mode.handoff_tokens, "by_concurrency": rows}


# -- live streams: worker vs bare ASGI ---------------------------------------------------------------------


def _cpu(process: WorkerProcess) -> float:
    assert process.proc is not None
    return cpu_s(process.proc.pid)


def _stream_rates(
    servers: Servers, pool: loadgen.ClientPool, mode: Mode, *, count: int, tokens: int, label: str, progress: Progress
) -> dict[str, Any]:
    samples: dict[str, dict[str, list[float]]] = {
        name: {"events_per_s": [], "busy": [], "server_cpu_us_per_event": []} for name in ("dual", "bare")
    }
    for _, name in alternate(mode.trials, ("dual", "bare")):
        server = servers.worker if name == "dual" else servers.bare
        cpu_before = _cpu(server)
        parts = pool.run("streams", server.url, name, count, tokens)
        events = sum(part["events"] for part in parts)
        samples[name]["server_cpu_us_per_event"].append((_cpu(server) - cpu_before) / events * 1e6)
        wall = max(part["end"] for part in parts) - min(part["start"] for part in parts)
        samples[name]["events_per_s"].append(events / wall)
        samples[name]["busy"].append(loadgen.client_busy(parts))
        progress(label)
    row: dict[str, Any] = {
        name: {key: summary(values) for key, values in data.items()} for name, data in samples.items()
    }
    row["ratio"] = row["dual"]["events_per_s"]["median"] / row["bare"]["events_per_s"]["median"]
    row["cpu_ratio"] = (
        row["bare"]["server_cpu_us_per_event"]["median"] / row["dual"]["server_cpu_us_per_event"]["median"]
    )
    row["streams"] = count
    row["tokens_per_stream"] = tokens
    # what the worker adds per event, in server CPU time (steadier than wall time on a shared machine)
    row["added_cpu_us_per_event"] = (
        row["dual"]["server_cpu_us_per_event"]["median"] - row["bare"]["server_cpu_us_per_event"]["median"]
    )
    return row


def live(
    servers: Servers, pool: loadgen.ClientPool, single: loadgen.ClientPool, mode: Mode, progress: Progress
) -> dict[str, Any]:
    return {
        "1": _stream_rates(
            servers, single, mode, count=1, tokens=mode.live_tokens, label="live stream x1", progress=progress
        ),
        "64": _stream_rates(
            servers, pool, mode, count=64, tokens=mode.live64_tokens, label="live streams x64", progress=progress
        ),
    }


# -- replay fan-out ----------------------------------------------------------------------------------------


def replay(servers: Servers, pool: loadgen.ClientPool, mode: Mode, progress: Progress) -> dict[str, Any]:
    job_path = asyncio.run(loadgen.finished_job(servers.worker.url, mode.replay_tokens))
    paths = {"dual": job_path, "bare": f"/replay?tokens={mode.replay_tokens}"}
    rows: dict[str, Any] = {}
    for readers in mode.replay_readers:
        samples: dict[str, dict[str, list[float]]] = {
            name: {"events_per_s": [], "busy": []} for name in ("dual", "bare")
        }
        for _, name in alternate(mode.trials, ("dual", "bare")):
            url = servers.worker.url if name == "dual" else servers.bare.url
            parts = pool.run("streams", url, "get", readers, mode.replay_tokens, paths[name])
            events = sum(part["events"] for part in parts)
            wall = max(part["end"] for part in parts) - min(part["start"] for part in parts)
            samples[name]["events_per_s"].append(events / wall)
            samples[name]["busy"].append(loadgen.client_busy(parts))
            progress(f"replay x{readers}")
        row: dict[str, Any] = {n: {k: summary(v) for k, v in data.items()} for n, data in samples.items()}
        row["ratio"] = row["dual"]["events_per_s"]["median"] / row["bare"]["events_per_s"]["median"]
        rows[str(readers)] = row
    return {"tokens": mode.replay_tokens, "by_readers": rows}


# -- memory per idle open stream ---------------------------------------------------------------------------

_WARM_STREAMS = 10


def _memory_worker(streams: int) -> tuple[float, float]:
    """KiB of worker RSS per idle open stream of a queued job, and RSS with them open (MiB)."""
    with WorkerProcess(
        "mock",
        "--concurrency", "1",
        "--queue-limit", str(streams + _WARM_STREAMS + 8),
        "--token-delay-ms", "600000",  # the one running job holds the only slot: every other job queues
        "--keepalive-s", "600",
        "--ttl-s", "600",
        start_timeout_s=START_TIMEOUT_S,
    ) as worker:  # fmt: skip
        assert worker.proc is not None
        pid = worker.proc.pid
        paths = asyncio.run(loadgen.submit_jobs(worker.url, streams + _WARM_STREAMS + 1, 8))[1:]
        asyncio.run(loadgen.hold_idle_streams(worker.url, paths[:_WARM_STREAMS], lambda: 0, 0.1))  # warm-up
        time.sleep(0.3)
        before = rss_kib(pid)
        after = asyncio.run(loadgen.hold_idle_streams(worker.url, paths[_WARM_STREAMS:], lambda: rss_kib(pid), 1.0))
        return (after - before) / streams, after / 1024


def _memory_bare(streams: int) -> tuple[float, float]:
    with BaselineProcess() as bare:
        assert bare.proc is not None
        pid = bare.proc.pid
        asyncio.run(loadgen.hold_idle_streams(bare.url, ["/idle"] * _WARM_STREAMS, lambda: 0, 0.1))
        time.sleep(0.3)
        before = rss_kib(pid)
        after = asyncio.run(loadgen.hold_idle_streams(bare.url, ["/idle"] * streams, lambda: rss_kib(pid), 1.0))
        return (after - before) / streams, after / 1024


def memory(mode: Mode, progress: Progress) -> dict[str, Any]:
    samples: dict[str, dict[str, list[float]]] = {
        name: {"kib_per_stream": [], "rss_mib": []} for name in ("dual", "bare")
    }
    for _, name in alternate(mode.memory_trials, ("dual", "bare")):
        per_stream, rss = (_memory_worker if name == "dual" else _memory_bare)(mode.idle_streams)
        samples[name]["kib_per_stream"].append(per_stream)
        samples[name]["rss_mib"].append(rss)
        progress("memory")
    row: dict[str, Any] = {n: {k: summary(v) for k, v in data.items()} for n, data in samples.items()}
    row["ratio"] = row["dual"]["kib_per_stream"]["median"] / max(row["bare"]["kib_per_stream"]["median"], 1e-9)
    row["streams"] = mode.idle_streams
    return row


# -- the conformance suite's wall time ---------------------------------------------------------------------

SUITE_GOAL_S = 30.0


def suite(mode: Mode, progress: Progress) -> dict[str, Any]:
    """`conformance.runner.run` against the mock, as the selftest runs it; its baseline is the 30 s goal."""
    from conformance.runner import RunConfig, run

    seconds = []
    passed = True
    for _ in range(mode.suite_trials):
        with WorkerProcess(
            "mock", "--ttl-s", "2", "--keepalive-s", "1", "--token-delay-ms", "1", start_timeout_s=START_TIMEOUT_S
        ) as worker:
            started = time.perf_counter()
            report = run(RunConfig(target=worker.url, fuzz=mode.suite_fuzz))
            seconds.append(time.perf_counter() - started)
            passed = passed and not any(result.outcome == "failed" for result in report.results)
        progress("suite")
    return {
        "fuzz": mode.suite_fuzz,
        "seconds": summary(seconds),
        "passed": passed,
        "goal_s": SUITE_GOAL_S,
        "ratio": statistics.median(seconds) / SUITE_GOAL_S,
    }
