"""workers.metrics: histogram bucketing as Prometheus defines it, and an exposition that
prometheus_client's own parser reads back (fresh, and after observations)."""

from __future__ import annotations

import math

from prometheus_client.parser import text_string_to_metric_families

from workers.config import WorkerSettings
from workers.engines.mock import MockEngine
from workers.metrics import JobMetrics, LatencyHistogram
from workers.registry.in_process import InProcessRegistry


def samples(metrics: JobMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = metrics.render().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_bucket_bounds_are_inclusive_and_cumulative() -> None:
    histogram = LatencyHistogram((0.1, 1.0))
    for seconds in (0.05, 0.1, 0.5, 1.0, 7.0):
        histogram.observe(seconds)
    assert histogram.cumulative() == [("0.1", 2.0), ("1.0", 4.0), ("+Inf", 5.0)]
    assert math.isclose(histogram.total, 8.65)


def test_fresh_registry_exposes_empty_histograms_and_counters() -> None:
    metrics = JobMetrics()
    metrics.bind(InProcessRegistry(MockEngine(), WorkerSettings(), metrics))
    found = samples(metrics)
    assert found[("dualcall_time_to_first_token_seconds_count", ())] == 0
    assert found[("dualcall_token_interval_seconds_bucket", (("le", "+Inf"),))] == 0
    assert found[("dualcall_jobs_submitted_total", ())] == 0
    assert found[("dualcall_engine_up", ())] == 1


def test_timer_feeds_ttft_once_then_intervals_and_durations_by_state() -> None:
    metrics = JobMetrics()
    metrics.bind(InProcessRegistry(MockEngine(), WorkerSettings(), metrics))
    timer = metrics.timer(submitted_mono=0.0)  # "submitted" long ago: TTFT lands in the +Inf bucket
    for _ in range(4):
        timer.token()
    found = samples(metrics)
    assert found[("dualcall_time_to_first_token_seconds_count", ())] == 1
    assert found[("dualcall_time_to_first_token_seconds_bucket", (("le", "60.0"),))] == 0
    assert found[("dualcall_token_interval_seconds_count", ())] == 3
    assert found[("dualcall_token_interval_seconds_bucket", (("le", "2.5"),))] == 3

    metrics.job_finished("completed", 10.0, 10.3)
    metrics.job_finished("failed", 10.0, 12.0)
    found = samples(metrics)
    assert found[("dualcall_stream_duration_seconds_bucket", (("le", "0.5"), ("state", "completed")))] == 1
    assert found[("dualcall_stream_duration_seconds_bucket", (("le", "1.0"), ("state", "failed")))] == 0
    assert found[("dualcall_stream_duration_seconds_count", (("state", "failed"),))] == 1
