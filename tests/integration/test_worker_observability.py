"""Logs and /metrics of a real mock worker after real jobs.

Logs: one timestamped format for uvicorn's access/error lines and the core's own, the job id on
every line about a job, a JSON option, and no prompt or generated text at INFO.
Metrics: valid Prometheus text (parsed by prometheus_client's own parser) with the TTFT, token
interval and stream duration histograms next to the counters.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

import httpx
import pytest
from helpers import wait_until
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from conformance.client import Completion, DualCallClient, End, Token
from workers.testing import WorkerProcess

pytestmark = pytest.mark.slow

StartWorker = Callable[..., WorkerProcess]
PROMPT = "PROMPT-SENTINEL-d41d8c: please keep this out of the logs"
TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (DEBUG|INFO|WARNING|ERROR|CRITICAL) +[\w.]+ ")


def logs_when(worker: WorkerProcess, condition: Callable[[str], bool]) -> str:
    """The worker's log once ``condition`` holds for it."""
    wait_until(lambda: condition(worker.stderr), lambda: f"a log line; the worker printed:\n{worker.output()}")
    return worker.stderr


def run_job(client: DualCallClient, max_tokens: int) -> tuple[str, Completion]:
    job = client.submit(PROMPT, max_tokens=max_tokens, temperature=0.7, seed=3)
    events = list(client.events(job))
    assert client.status(job)["state"] in ("completed", "failed")
    tokens = sum(isinstance(event, Token) for event in events)
    text = "".join(event.text for event in events if isinstance(event, Token))
    end = next((event for event in events if isinstance(event, End)), None)
    completion = Completion(job.job_id, text, tokens, end.stop_reason if end else None, None, tuple(events))
    return job.job_id, completion


def test_text_logs_are_timestamped_carry_the_job_id_and_no_prompt_or_tokens(start_worker: StartWorker) -> None:
    worker = start_worker("mock", "--token-delay-ms", "1")
    with DualCallClient(worker.url) as client:
        job_id, completion = run_job(client, 24)
    assert len(completion.text) > 20
    logs = logs_when(worker, lambda text: text.count(job_id) >= 5)
    lines = [line for line in logs.splitlines() if line]
    for line in lines:
        assert TEXT_LINE.match(line), line  # uvicorn's own lines included
    about_job = [line for line in lines if job_id in line]
    assert all(f" job={job_id} " in line for line in about_job), about_job
    access = [line for line in about_job if " uvicorn.access " in line]
    assert any('"POST /v1/inference HTTP/1.1" 202' in line for line in access), access  # the submit names its job
    assert any(f'"GET /v1/inference/{job_id}/stream HTTP/1.1" 200' in line for line in access), access
    assert any(f'"GET /v1/inference/{job_id} HTTP/1.1" 200' in line for line in access), access
    assert any("workers.registry" in line and "job submitted" in line for line in about_job)
    assert any("workers.registry" in line and "job completed" in line for line in about_job)
    assert any(" uvicorn.error " in line for line in lines)  # uvicorn's start-up lines share the format
    assert "PROMPT-SENTINEL" not in logs
    assert completion.text not in logs


def test_json_logs_are_one_object_per_line_with_job_ids(start_worker: StartWorker) -> None:
    worker = start_worker("mock", "--log-format", "json", "--fail-after", "2")
    with DualCallClient(worker.url) as client:
        job_id, completion = run_job(client, 8)
    assert completion.stop_reason is None  # the engine failed after 2 tokens: an error event, no end
    logs = logs_when(worker, lambda text: text.count(job_id) >= 4)
    records = [json.loads(line) for line in logs.splitlines() if line]
    for record in records:
        assert {"ts", "level", "logger", "message"} <= record.keys(), record
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["ts"])
    about_job = [record for record in records if job_id in json.dumps(record)]
    assert all(record.get("job_id") == job_id for record in about_job), about_job
    submits = [r for r in about_job if r["logger"] == "uvicorn.access" and r["method"] == "POST"]
    assert len(submits) == 1
    assert submits[0]["path"] == "/v1/inference"
    assert submits[0]["status"] == 202
    failed = [r for r in about_job if r["logger"] == "workers.registry" and r["message"].startswith("job failed")]
    assert len(failed) == 1, about_job
    assert "error=simulated_failure" in failed[0]["message"]
    assert "PROMPT-SENTINEL" not in logs
    assert completion.text not in logs


def parse(exposition: str) -> dict[str, list[Sample]]:
    families = {family.name: family for family in text_string_to_metric_families(exposition)}
    for name in (
        "dualcall_time_to_first_token_seconds",
        "dualcall_token_interval_seconds",
        "dualcall_stream_duration_seconds",
    ):
        assert families[name].type == "histogram", families[name]
    for name in ("dualcall_jobs_submitted", "dualcall_jobs_completed", "dualcall_jobs_cancelled"):
        assert families[name].type == "counter"
    assert families["dualcall_jobs_active"].type == "gauge"
    return {name: family.samples for name, family in families.items()}


def value(samples: list[Sample], name: str, **labels: str) -> float:
    matches = [s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(matches) == 1, (name, labels, samples)
    return matches[0]


def assert_histogram_consistent(samples: list[Sample], name: str, **labels: str) -> None:
    buckets = [s for s in samples if s.name == name + "_bucket" and all(s.labels[k] == v for k, v in labels.items())]
    counts = [s.value for s in sorted(buckets, key=lambda s: float(s.labels["le"]))]
    assert counts == sorted(counts), counts  # cumulative
    assert buckets[-1].labels["le"] == "+Inf"
    assert counts[-1] == value(samples, name + "_count", **labels)
    assert value(samples, name + "_sum", **labels) > 0


def test_metrics_histograms_after_real_jobs(start_worker: StartWorker) -> None:
    worker = start_worker("mock", "--token-delay-ms", "2", "--no-access-log")
    token_events: list[int] = []
    with DualCallClient(worker.url) as client:
        for max_tokens in (3, 5, 8):
            _, completion = run_job(client, max_tokens)
            assert completion.stop_reason == "max_tokens"
            token_events.append(completion.tokens_out)
        long_job = client.submit(PROMPT, max_tokens=4000)
        for event in client.events(long_job):
            if isinstance(event, Token):
                client.cancel(long_job)
                break
        exposition = ""

        def cancelled_stream_counted() -> bool:
            nonlocal exposition
            response = httpx.get(worker.url + "/metrics")
            assert response.status_code == 200
            assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
            exposition = response.text
            return 'dualcall_stream_duration_seconds_count{state="cancelled"}' in exposition

        wait_until(cancelled_stream_counted, "the cancelled stream in the duration histogram")
    samples = parse(exposition)
    ttft = samples["dualcall_time_to_first_token_seconds"]
    interval = samples["dualcall_token_interval_seconds"]
    duration = samples["dualcall_stream_duration_seconds"]
    assert value(ttft, "dualcall_time_to_first_token_seconds_count") == 4  # 3 completed + the cancelled one
    completed_intervals = sum(count - 1 for count in token_events)
    assert value(interval, "dualcall_token_interval_seconds_count") >= completed_intervals
    assert value(duration, "dualcall_stream_duration_seconds_count", state="completed") == 3
    assert value(duration, "dualcall_stream_duration_seconds_count", state="cancelled") == 1
    assert_histogram_consistent(ttft, "dualcall_time_to_first_token_seconds")
    assert_histogram_consistent(interval, "dualcall_token_interval_seconds")
    assert_histogram_consistent(duration, "dualcall_stream_duration_seconds", state="completed")
    assert value(samples["dualcall_jobs_submitted"], "dualcall_jobs_submitted_total") == 4
    assert value(samples["dualcall_jobs_completed"], "dualcall_jobs_completed_total") == 3
    assert value(samples["dualcall_jobs_cancelled"], "dualcall_jobs_cancelled_total") == 1
    assert value(samples["dualcall_engine_up"], "dualcall_engine_up") == 1
    assert " uvicorn.access " not in worker.stderr  # --no-access-log
    assert "job completed" in worker.stderr
