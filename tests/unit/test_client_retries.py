"""The reference client's retry-safe submits (Idempotency-Key, DC-1.9) and its resume after a stream 503.

respx-mocked httpx: no network; the recorded sleeps show what the client waited.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import respx

from conformance.client import (
    IDEMPOTENCY_HEADER,
    AsyncDualCallClient,
    Backoff,
    DualCallClient,
    ProblemError,
    StreamEnded,
    Submission,
    Token,
)

BASE = "http://worker.test:8000"
POST_URL = BASE + "/v1/inference"
JOB = "Xk3J9q0Zr8WbT2mYv5nHcA"
STREAM_URL = f"{BASE}/v1/inference/{JOB}/stream"
NO_JITTER = Backoff(initial_s=0.1, factor=2.0, max_s=5.0, jitter=0.0)


@pytest.fixture
def router() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_mocked=True, assert_all_called=False) as mock:
        yield mock


def accepted() -> httpx.Response:
    sse_url = f"/v1/inference/{JOB}/stream"
    return httpx.Response(202, json={"job_id": JOB, "sse_url": sse_url}, headers={"location": sse_url})


def problem(status: int, detail: str, **headers: str) -> httpx.Response:
    body = {"type": "about:blank", "title": "t", "status": status, "detail": detail}
    return httpx.Response(
        status, headers={"content-type": "application/problem+json", **headers}, content=json.dumps(body).encode()
    )


def keys(route: respx.Route) -> list[str | None]:
    return [call.request.headers.get(IDEMPOTENCY_HEADER) for call in route.calls]


def test_every_attempt_of_one_submit_carries_the_same_key(router: respx.MockRouter) -> None:
    route = router.post(POST_URL).mock(
        side_effect=[httpx.ConnectError("refused"), httpx.Response(502, text="bad gateway"), accepted()]
    )
    slept: list[float] = []
    with DualCallClient(BASE, backoff=NO_JITTER, sleep=slept.append) as client:
        assert client.submit("hi").job_id == JOB
    sent = keys(route)
    assert len(sent) == 3 and sent[0] and len(set(sent)) == 1
    assert slept == [0.1, 0.2]


def test_each_job_gets_its_own_key_and_a_given_key_is_used(router: respx.MockRouter) -> None:
    route = router.post(POST_URL).mock(return_value=accepted())
    with DualCallClient(BASE) as client:
        client.submit("a")
        client.submit("a")
        client.submit("a", idempotency_key="mine-1")
    first, second, given = keys(route)
    assert first and second and first != second
    assert given == "mine-1"


@pytest.mark.parametrize("failure", [httpx.ReadError("reset"), httpx.Response(504, text="gateway timeout")])
def test_without_keys_a_lost_answer_is_not_retried(router: respx.MockRouter, failure: Any) -> None:
    route = router.post(POST_URL).mock(side_effect=[failure, accepted()])
    client = DualCallClient(BASE, idempotency_keys=False, sleep=lambda _: None)
    with client, pytest.raises((httpx.ReadError, ProblemError)):
        client.submit("hi")
    assert keys(route) == [None]


def test_a_reused_key_422_is_not_retried(router: respx.MockRouter) -> None:
    route = router.post(POST_URL).mock(return_value=problem(422, "key already used for another request"))
    with DualCallClient(BASE, sleep=lambda _: None) as client, pytest.raises(ProblemError) as caught:
        client.submit("hi")
    assert caught.value.status == 422 and route.call_count == 1


def test_keyed_retries_of_lost_answers_are_bounded(router: respx.MockRouter) -> None:
    route = router.post(POST_URL).mock(side_effect=httpx.ReadError("reset"))
    with DualCallClient(BASE, submit_retries=2, sleep=lambda _: None) as client, pytest.raises(httpx.ReadError):
        client.submit("hi")
    assert route.call_count == 3


def _stream_body() -> bytes:
    frames = [
        f'id: 1\nevent: started\ndata: {{"job_id": "{JOB}"}}\n\n',
        'id: 2\nevent: token\ndata: {"index": 0, "text": "x"}\n\n',
        'id: 3\nevent: end\ndata: {"tokens_out": 1, "stop_reason": "max_tokens"}\n\n',
        "data: [DONE]\n\n",
    ]
    return "".join(frames).encode()


def _submission() -> Submission:
    return Submission(job_id=JOB, sse_url=STREAM_URL, status_url=f"{BASE}/v1/inference/{JOB}")


def test_a_stream_503_is_resumed_after_retry_after(router: respx.MockRouter) -> None:
    sse = httpx.Response(200, headers={"content-type": "text/event-stream"}, content=_stream_body())
    router.get(STREAM_URL).mock(side_effect=[problem(503, "draining", **{"Retry-After": "2"}), sse])
    slept: list[float] = []
    with DualCallClient(BASE, sleep=slept.append) as client:
        events = list(client.events(_submission()))
    assert [event.text for event in events if isinstance(event, Token)] == ["x"]
    assert slept == [2.0]


def test_a_stream_503_with_a_retry_after_beyond_the_limit_is_the_error(router: respx.MockRouter) -> None:
    router.get(STREAM_URL).mock(return_value=problem(503, "draining", **{"Retry-After": "600"}))
    client = DualCallClient(BASE, max_retry_after_s=30, sleep=lambda _: None)
    with client, pytest.raises(ProblemError) as caught:
        list(client.events(_submission()))
    assert caught.value.status == 503


@pytest.mark.asyncio
async def test_async_keyed_submit_and_stream_503(router: respx.MockRouter) -> None:
    route = router.post(POST_URL).mock(side_effect=[httpx.RemoteProtocolError("cut"), accepted()])
    sse = httpx.Response(200, headers={"content-type": "text/event-stream"}, content=_stream_body())
    router.get(STREAM_URL).mock(side_effect=[problem(503, "busy", **{"Retry-After": "1"}), sse])
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    async with AsyncDualCallClient(BASE, backoff=NO_JITTER, sleep=sleep) as client:
        result = await client.generate("hi")
    assert result.text == "x"
    sent = keys(route)
    assert len(sent) == 2 and sent[0] == sent[1]
    assert slept == [0.1, 1.0]


def test_a_gateway_502_on_the_stream_is_resumed_after_the_backoff(router: respx.MockRouter) -> None:
    sse = httpx.Response(200, headers={"content-type": "text/event-stream"}, content=_stream_body())
    router.get(STREAM_URL).mock(side_effect=[httpx.Response(502, text="<html>Bad Gateway</html>"), sse])
    slept: list[float] = []
    with DualCallClient(BASE, backoff=NO_JITTER, sleep=slept.append) as client:
        events = list(client.events(_submission()))
    assert [event.text for event in events if isinstance(event, Token)] == ["x"]
    assert slept == [0.1]


def test_stream_gateway_errors_are_bounded_by_max_resumes(router: respx.MockRouter) -> None:
    route = router.get(STREAM_URL).mock(return_value=httpx.Response(504, text="gateway timeout"))
    client = DualCallClient(BASE, max_resumes=2, sleep=lambda _: None)
    with client, pytest.raises(StreamEnded):
        list(client.events(_submission()))
    assert route.call_count == 3
