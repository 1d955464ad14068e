"""The legacy direct-SSE worker (negative control) behaves the way openapi/SPEC.md describes the forbidden shape."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from workerproc import WorkerProcess

from conformance.sse import parse_stream
from workers.engines.base import GenerationRequest
from workers.engines.mock import MockEngine

pytestmark = pytest.mark.slow


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10.0) as http:
        yield http


def test_post_answers_with_the_stream_itself(client: httpx.Client, legacy_worker: WorkerProcess) -> None:
    body = {"job_id": "test-job-001", "prompt": "What is the capital of France?", "max_tokens": 5}
    response = client.post(legacy_worker.url + "/v1/inference", json=body)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert "location" not in response.headers
    assert b"\ndata: [DONE]\n\n" in response.content
    assert response.content.endswith(b"data: [DONE]\n\n")
    events, _issues = parse_stream(response.content)
    narration = [e for e in events if e.event == "narration"]
    assert narration
    # the client-chosen job id is accepted and echoed: the defect this worker models
    assert any("test-job-001" in e.data for e in narration)
    # raw `data:` lines, no ids, no JSON
    assert not any(e.has_id_field for e in events)
    assert b'"index"' not in response.content
    raw_lines = [line for line in response.content.split(b"\n") if line.startswith(b"data:")]
    assert len(raw_lines) >= 5
    assert events[-1].data == "[DONE]"


def test_raw_tokens_break_framing(client: httpx.Client, legacy_worker: WorkerProcess) -> None:
    """Tokens with newlines or `[DONE]` travel raw, so the text does not round-trip."""
    body = {"job_id": "test-job-002", "prompt": "tricky", "max_tokens": 64, "temperature": 1.0, "seed": 1}
    response = client.post(legacy_worker.url + "/v1/inference", json=body)
    assert response.status_code == 200
    events, _ = parse_stream(response.content)
    message_text = "".join(e.data for e in events if e.event == "message" and e.data != "[DONE]")
    expected = "".join(MockEngine().tokens(GenerationRequest(prompt="tricky", max_tokens=64, temperature=1.0, seed=1)))
    assert message_text != expected


def test_no_job_resource_and_no_health_contract(client: httpx.Client, legacy_worker: WorkerProcess) -> None:
    assert client.get(legacy_worker.url + "/v1/inference/test-job-001/stream").status_code == 404
    health = client.get(legacy_worker.url + "/health")
    assert health.status_code == 200
    assert "contract_version" not in health.json()
    assert "Dualcall-Contract-Version" not in health.headers
