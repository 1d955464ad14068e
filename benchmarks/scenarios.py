"""The scenarios: each runs its subject and its baseline in alternating order, trial after trial.

Every figure is the median of the trials with min and max; its ratio is taken against the
baseline's median from the same run (absolute numbers on a shared machine move a lot; the ratio
of two things measured side by side moves much less).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

from benchmarks import loadgen
from benchmarks.catalogue import (
    Mode,
    Pass,
    Progress,
    Scenario,
    ScenarioUnavailable,
    Servers,
    alternate,
    percentile,
    summary,
)
from benchmarks.servers import START_TIMEOUT_S, BaselineProcess, cpu_s, rss_kib
from workers.testing import WorkerProcess

# -- the load generator's own ceiling ----------------------------------------------------------------------


def ceiling(run: Pass) -> dict[str, Any]:
    """Events/s one client process takes in when the server only writes pre-encoded bytes."""
    servers, pool, mode, progress = run.servers, run.pool(1), run.mode, run.step
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


def handoff(run: Pass) -> dict[str, Any]:
    servers, pool, mode, progress = run.servers, run.pool(), run.mode, run.step
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
        row["server_cpu_ratio"] = dual["server_cpu_ms_per_job"]["median"] / legacy["server_cpu_ms_per_job"]["median"]
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


def live(run: Pass) -> dict[str, Any]:
    servers, pool, single, mode, progress = run.servers, run.pool(), run.pool(1), run.mode, run.step
    return {
        "1": _stream_rates(
            servers, single, mode, count=1, tokens=mode.live_tokens, label="live stream x1", progress=progress
        ),
        "64": _stream_rates(
            servers, pool, mode, count=64, tokens=mode.live64_tokens, label="live streams x64", progress=progress
        ),
    }


# -- replay fan-out ----------------------------------------------------------------------------------------


def replay(run: Pass) -> dict[str, Any]:
    servers, pool, mode, progress = run.servers, run.pool(), run.mode, run.step
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


def memory(run: Pass) -> dict[str, Any]:
    mode, progress = run.mode, run.step
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


#: what the suite imports beyond the worker's own dependencies (the `conformance` extra)
_SUITE_MODULES = ("jsonschema", "schemathesis", "hypothesis")


def _suite_installed(fuzz: bool) -> None:
    """Refuse to time a suite that cannot run: its own missing modules are no verdict on the worker."""
    import importlib.util

    needed = _SUITE_MODULES if fuzz else _SUITE_MODULES[:1]
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise ScenarioUnavailable(
            f"the conformance suite needs {', '.join(missing)}: pip install 'dualcall[conformance]' "
            "(the bench extra includes it)"
        )


def suite(run: Pass) -> dict[str, Any]:
    """`conformance.runner.run` against the mock, as the selftest runs it; its baseline is the 30 s goal.

    A failed check is named with its id and message, so a FAILED row says what failed.
    """
    from conformance.runner import RunConfig
    from conformance.runner import run as run_suite

    mode = run.mode
    _suite_installed(mode.suite_fuzz)
    seconds = []
    failed: list[str] = []
    for _ in range(mode.suite_trials):
        with WorkerProcess(
            "mock", "--ttl-s", "2", "--keepalive-s", "1", "--token-delay-ms", "1", start_timeout_s=START_TIMEOUT_S
        ) as worker:
            started = time.perf_counter()
            report = run_suite(RunConfig(target=worker.url, fuzz=mode.suite_fuzz))
            seconds.append(time.perf_counter() - started)
            failed += [f"{result.id}: {result.message}" for result in report.results if result.outcome == "failed"]
            # the suite's own errors are no verdict on the worker, but the timing of such a run is no figure either
            failed += [
                f"{result.id} (suite error): {result.message}" for result in report.results if result.outcome == "error"
            ]
        run.step("suite")
    return {
        "fuzz": mode.suite_fuzz,
        "seconds": summary(seconds),
        "passed": not failed,
        "failed_checks": sorted(set(failed)),
        "goal_s": SUITE_GOAL_S,
        "ratio": statistics.median(seconds) / SUITE_GOAL_S,
    }


SCENARIOS = (
    Scenario(
        "ceiling",
        "events/s one client process takes in (the load generator's own limit)",
        ceiling,
        lambda mode: mode.trials,
        shares_servers=True,
    ),
    Scenario(
        "handoff",
        "TTFT, jobs/s and server CPU per job: dual-call vs the legacy worker at 1, 8 and 64 clients",
        handoff,
        lambda mode: mode.trials * 2 * len(mode.handoff_jobs),
        shares_servers=True,
    ),
    Scenario(
        "live",
        "events/s and server CPU per event of 1 and 64 live streams vs a bare-ASGI app",
        live,
        lambda mode: mode.trials * 4,
        shares_servers=True,
    ),
    Scenario(
        "replay",
        "events/s of 1..256 readers of a finished job vs the bare app's pre-built body",
        replay,
        lambda mode: mode.trials * 2 * len(mode.replay_readers),
        shares_servers=True,
    ),
    Scenario(
        "memory", "RSS per idle open stream (1,000 streams of queued jobs)", memory, lambda mode: mode.memory_trials * 2
    ),
    Scenario("suite", "wall time of the conformance suite against the mock", suite, lambda mode: mode.suite_trials),
)
