"""Prometheus metrics of a worker: the registry's counters and gauges, and latency histograms.

Each registry gets its own ``CollectorRegistry`` (never prometheus_client's global one), so
several apps in one process (tests, benchmarks) do not share or collide. prometheus_client
writes the exposition at scrape time; while serving, a token event costs one ``bisect`` and two
additions (:class:`LatencyHistogram`), not a lock and a bucket loop: everything runs on the
event loop's one thread.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Final, Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from workers.engines.base import Engine

#: the classic text format, which every Prometheus version scrapes (generate_latest writes it)
MEDIA_TYPE: Final = "text/plain; version=0.0.4"  # Litestar appends "; charset=utf-8"

_COUNTER_HELP: Final = {
    "jobs_submitted": "Jobs accepted by POST /v1/inference.",
    "jobs_completed": "Jobs that ended with an end event.",
    "jobs_failed": "Jobs that ended with an error event.",
    "jobs_cancelled": "Jobs cancelled by DELETE.",
    "jobs_reclaimed": "Jobs reclaimed by the TTL sweeper.",
    "jobs_rejected_queue_full": "Submissions answered 503 because the queue was full.",
    "stream_readers": "Stream readers attached since start.",
    "jobs_lost_declared": "Jobs of a silent replica this replica ended with worker_lost (Redis registry).",
}

#: seconds; from a fast mock on loopback to a large model behind a long queue
TTFT_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TOKEN_INTERVAL_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
DURATION_BUCKETS: Final = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


class LatencyHistogram:
    """Bucket counts and a sum, as Prometheus histograms count them (``le``: value <= bound)."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = (*bounds, math.inf)
        self.counts = [0] * len(self.bounds)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.total += seconds

    def cumulative(self) -> list[tuple[str, float]]:
        running = 0
        buckets = []
        for bound, count in zip(self.bounds, self.counts, strict=True):
            running += count
            buckets.append(("+Inf" if bound == math.inf else repr(bound), float(running)))
        return buckets


class CountedRegistry(Protocol):
    """What the exposition reads of a job registry (in-process or Redis)."""

    @property
    def engine(self) -> Engine: ...
    @property
    def counters(self) -> dict[str, int]: ...
    @property
    def active(self) -> int: ...
    @property
    def queued(self) -> int: ...
    @property
    def open_readers(self) -> int: ...
    def __len__(self) -> int: ...


def _tasks() -> int:
    try:
        return len(asyncio.all_tasks())
    except RuntimeError:  # no running loop: rendered outside the server
        return 0


class _RegistryCollector(Collector):
    """The job registry's counters, gauges and histograms, read when /metrics is scraped."""

    def __init__(self, jobs: CountedRegistry, metrics: JobMetrics) -> None:
        self._jobs = jobs
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        jobs = self._jobs
        for name, value in jobs.counters.items():
            yield CounterMetricFamily(f"dualcall_{name}", _COUNTER_HELP.get(name, name), value=value)
        gauges = (
            ("dualcall_jobs_active", "Jobs generating now.", jobs.active),
            ("dualcall_jobs_queued", "Jobs waiting for a generation slot.", jobs.queued),
            ("dualcall_jobs_retained", "Jobs held for streaming or replay.", len(jobs)),
            ("dualcall_stream_readers_open", "Stream readers attached now.", jobs.open_readers),
            (
                "dualcall_event_loop_tasks",
                "asyncio tasks alive (jobs, connections, sweeper): a leak grows it.",
                _tasks(),
            ),
            ("dualcall_engine_up", "1 while the engine can serve.", int(jobs.engine.health().ok)),
        )
        for metric, help_text, gauge in gauges:
            yield GaugeMetricFamily(metric, help_text, value=gauge)
        metrics = self._metrics
        for name, help_text, histogram in (
            (
                "dualcall_time_to_first_token_seconds",
                "Seconds from submit (202) to the job's first token event; includes time queued.",
                metrics.time_to_first_token,
            ),
            (
                "dualcall_token_interval_seconds",
                "Seconds between consecutive token events of a job.",
                metrics.token_interval,
            ),
        ):
            yield HistogramMetricFamily(name, help_text, buckets=histogram.cumulative(), sum_value=histogram.total)
        durations = HistogramMetricFamily(
            "dualcall_stream_duration_seconds",
            "Seconds from submit (202) to the job's final event, by final state.",
            labels=("state",),
        )
        for state, histogram in sorted(metrics.stream_duration.items()):
            durations.add_metric([state], histogram.cumulative(), histogram.total)
        yield durations


class JobMetrics:
    """Latency histograms of one app's jobs, and the exposition of everything its registry counts.

    Made by `workers.app.create_app` and handed to the registry backend, which `bind`s its counters
    and gauges; the job lifecycle fills the histograms the same way on every backend.
    """

    def __init__(self) -> None:
        self.time_to_first_token = LatencyHistogram(TTFT_BUCKETS)
        self.token_interval = LatencyHistogram(TOKEN_INTERVAL_BUCKETS)
        self.stream_duration: dict[str, LatencyHistogram] = {}
        self.registry = CollectorRegistry(auto_describe=False)

    def bind(self, jobs: CountedRegistry) -> None:
        """Expose ``jobs``' counters and gauges next to the histograms (once per metrics object)."""
        self.registry.register(_RegistryCollector(jobs, self))

    def timer(self, submitted_mono: float, clock: Callable[[], float] = time.monotonic) -> StreamTimer:
        return StreamTimer(self, submitted_mono, clock)

    def job_finished(self, state: str, submitted_mono: float, finished_mono: float) -> None:
        histogram = self.stream_duration.get(state)
        if histogram is None:
            histogram = self.stream_duration[state] = LatencyHistogram(DURATION_BUCKETS)
        histogram.observe(finished_mono - submitted_mono)

    def render(self) -> bytes:
        exposition: bytes = generate_latest(self.registry)
        return exposition


class StreamTimer:
    """Times one job's token events: the first feeds TTFT, each later one the interval histogram."""

    __slots__ = ("_clock", "_last", "_metrics", "_submitted")

    def __init__(self, metrics: JobMetrics, submitted_mono: float, clock: Callable[[], float]) -> None:
        self._metrics = metrics
        self._submitted = submitted_mono
        self._clock = clock
        self._last: float | None = None

    def token(self) -> None:
        now = self._clock()
        if self._last is None:
            self._metrics.time_to_first_token.observe(now - self._submitted)
        else:
            self._metrics.token_interval.observe(now - self._last)
        self._last = now
