"""Unit tests of the reference client (`conformance.client`) against respx-mocked httpx.

No real network: every test runs inside a respx router that refuses unmocked requests, so a
client that built a URL itself instead of following ``sse_url``/``status_url`` fails loudly.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import respx

from conformance.client import (
    DEFAULT_BACKOFF,
    AsyncDualCallClient,
    Backoff,
    Completion,
    DualCallClient,
    DualCallError,
    End,
    ErrorEvent,
    GenerationFailed,
    ProblemError,
    ProtocolError,
    Started,
    StreamEnded,
    Submission,
    Token,
    resolve,
    retry_after_seconds,
)

BASE = "http://worker.test:8000"
POST_URL = BASE + "/v1/inference"
JOB = "Xk3J9q0Zr8WbT2mYv5nHcA"
SSE = "text/event-stream; charset=utf-8"

#: the hostile vocabulary the mock worker uses: line breaks, CR, SSE field syntax, [DONE], emoji, CJK
HOSTILE = ["Hello", "\n", "line\r\nbreak", "data: [DONE]", "[DONE]", ": comment", "👩‍💻🚀", "漢字", "\r", " id: 9"]


# ------------------------------------------------------------------------------------ helpers


def frame(event_id: int, event: str, data: dict[str, Any]) -> str:
    return f"id: {event_id}\nevent: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


def stream_frames(texts: list[str], *, job_id: str = JOB, stop_reason: str = "max_tokens") -> list[str]:
    """Frames 1..N of a complete job: started, one token per text, end (no [DONE])."""
    frames = [frame(1, "started", {"job_id": job_id})]
    frames += [frame(2 + index, "token", {"index": index, "text": text}) for index, text in enumerate(texts)]
    frames.append(frame(2 + len(texts), "end", {"tokens_out": len(texts), "stop_reason": stop_reason}))
    return frames


DONE = "data: [DONE]\n\n"


def sse_response(body: str, *, status: int = 200) -> httpx.Response:
    return httpx.Response(status, headers={"content-type": SSE}, content=body.encode())


def accepted(job_id: str = JOB, *, sse_url: str | None = None, status_url: str | None = None) -> httpx.Response:
    body: dict[str, str] = {"job_id": job_id, "sse_url": sse_url or f"/v1/inference/{job_id}/stream"}
    if status_url is not None:
        body["status_url"] = status_url
    return httpx.Response(202, json=body, headers={"location": body["sse_url"]})


def problem(status: int, title: str, detail: str) -> httpx.Response:
    return httpx.Response(
        status,
        headers={"content-type": "application/problem+json"},
        content=json.dumps({"type": "about:blank", "title": title, "status": status, "detail": detail}).encode(),
    )


def chunked(data: bytes, size: int = 1) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def achunked(data: bytes, size: int = 1) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


class DropAfter(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A response body that delivers ``data`` and then fails like a dropped TCP connection."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __iter__(self) -> Iterator[bytes]:
        yield self.data
        raise httpx.ReadError("connection reset by peer")

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.data
        raise httpx.ReadError("connection reset by peer")


@pytest.fixture
def router() -> Iterator[respx.MockRouter]:
    """respx router: any request without a route raises instead of touching the network."""
    with respx.mock(assert_all_mocked=True, assert_all_called=False) as mock:
        yield mock


def submission(sse_url: str | None = None, status_url: str | None = None) -> Submission:
    return Submission(
        job_id=JOB,
        sse_url=sse_url or f"{BASE}/v1/inference/{JOB}/stream",
        status_url=status_url or f"{BASE}/v1/inference/{JOB}",
    )


# ------------------------------------------------------------------------------------ resolve


@pytest.mark.parametrize(
    "reference,expected",
    [
        (f"/v1/inference/{JOB}/stream", f"{BASE}/v1/inference/{JOB}/stream"),
        (f"{JOB}/stream", f"{BASE}/v1/{JOB}/stream"),  # RFC 3986: relative to the POST URL's directory
        (f"inference/{JOB}/stream", f"{BASE}/v1/inference/{JOB}/stream"),
        (f"../streams/{JOB}", f"{BASE}/streams/{JOB}"),
        ("http://replica-2.internal:9000/streams/abc", "http://replica-2.internal:9000/streams/abc"),
        ("//cdn.example:8443/s/abc", "http://cdn.example:8443/s/abc"),
        ("https://secure.example/s/abc?sig=1", "https://secure.example/s/abc?sig=1"),
    ],
)
def test_resolve_follows_rfc3986(reference: str, expected: str) -> None:
    assert resolve(POST_URL, reference) == expected


# ------------------------------------------------------------------------------------ submit


def test_submit_resolves_relative_sse_url_and_defaults_status_url(router: respx.MockRouter) -> None:
    post = router.post(POST_URL).mock(return_value=accepted())
    with DualCallClient(BASE + "/") as client:
        job = client.submit("Hello", max_tokens=8, temperature=0, top_p=None)
    assert job == Submission(JOB, f"{BASE}/v1/inference/{JOB}/stream", f"{BASE}/v1/inference/{JOB}")
    sent = json.loads(post.calls.last.request.content)
    assert sent == {"prompt": "Hello", "max_tokens": 8, "temperature": 0}  # None params are left out
    assert "job_id" not in sent  # the client never invents a job id


def test_submit_uses_status_url_when_given(router: respx.MockRouter) -> None:
    router.post(POST_URL).mock(
        return_value=accepted(sse_url="/streams/s-1", status_url="http://control.internal/jobs/j-1")
    )
    with DualCallClient(BASE) as client:
        job = client.submit("Hi")
    assert job.sse_url == f"{BASE}/streams/s-1"
    assert job.status_url == "http://control.internal/jobs/j-1"


def test_events_follow_absolute_sse_url_on_another_host(router: respx.MockRouter) -> None:
    """The stream lives on another host and path: the client must go there, not to a path it builds."""
    remote = "http://replica-2.internal:9000/streams/abc"
    router.post(POST_URL).mock(return_value=accepted(sse_url=remote))
    built = router.get(f"{BASE}/v1/inference/{JOB}/stream").mock(return_value=sse_response(DONE))
    stream = router.get(remote).mock(return_value=sse_response("".join(stream_frames(["a", "b"])) + DONE))
    with DualCallClient(BASE) as client:
        job = client.submit("Hello")
        assert job.sse_url == remote
        events = list(client.events(job))
    assert stream.call_count == 1
    assert built.call_count == 0
    assert [type(event) for event in events] == [Started, Token, Token, End]
    request = stream.calls.last.request
    assert request.url.host == "replica-2.internal"
    assert request.url.port == 9000
    assert request.headers["accept"] == "text/event-stream"
    assert "last-event-id" not in request.headers


def test_submit_to_a_legacy_direct_sse_worker_raises_protocol_error(router: respx.MockRouter) -> None:
    legacy_body = "event: narration\ndata: Starting inference\n\ndata: Hello\n\ndata: [DONE]\n\n"
    router.post(POST_URL).mock(return_value=sse_response(legacy_body, status=200))
    with DualCallClient(BASE) as client, pytest.raises(ProtocolError) as caught:
        client.submit("Hello")
    message = str(caught.value)
    assert "legacy direct-SSE" in message
    assert "event stream" in message


def test_submit_422_problem_raises_problem_error(router: respx.MockRouter) -> None:
    router.post(POST_URL).mock(return_value=problem(422, "Unprocessable Content", "max_tokens must be >= 1"))
    with DualCallClient(BASE) as client, pytest.raises(ProblemError) as caught:
        client.submit("Hello", max_tokens=0)
    assert caught.value.status == 422
    assert caught.value.problem["detail"] == "max_tokens must be >= 1"
    assert "422" in str(caught.value)
    assert "max_tokens must be >= 1" in str(caught.value)


def test_submit_non_json_error_body_still_raises_problem_error(router: respx.MockRouter) -> None:
    router.post(POST_URL).mock(return_value=httpx.Response(503, text="upstream overloaded"))
    with DualCallClient(BASE) as client, pytest.raises(ProblemError) as caught:
        client.submit("Hello")
    assert caught.value.status == 503
    assert "upstream overloaded" in caught.value.problem["detail"]


@pytest.mark.parametrize(
    "body",
    [
        {"job_id": JOB},
        {"sse_url": "/x"},
        {"job_id": 7, "sse_url": "/x"},
        ["not", "an", "object"],
    ],
)
def test_submit_202_without_job_id_and_sse_url_is_a_protocol_error(router: respx.MockRouter, body: Any) -> None:
    router.post(POST_URL).mock(return_value=httpx.Response(202, json=body))
    with DualCallClient(BASE) as client, pytest.raises(ProtocolError):
        client.submit("Hello")


def test_token_is_sent_as_bearer(router: respx.MockRouter) -> None:
    post = router.post(POST_URL).mock(return_value=accepted())
    with DualCallClient(BASE, token="s3cret") as client:
        client.submit("Hello")
    assert post.calls.last.request.headers["authorization"] == "Bearer s3cret"


# ------------------------------------------------------------------------------------ events


def test_events_are_typed_and_done_ends_iteration(router: respx.MockRouter) -> None:
    body = "".join(stream_frames(["Hel", "lo"])) + DONE + frame(99, "token", {"index": 9, "text": "after DONE"})
    router.get(submission().sse_url).mock(return_value=sse_response(body))
    with DualCallClient(BASE) as client:
        events = list(client.events(submission()))
    assert events == [
        Started(1, JOB),
        Token(2, 0, "Hel"),
        Token(3, 1, "lo"),
        End(4, 2, "max_tokens"),
    ]


def test_error_event_is_typed(router: respx.MockRouter) -> None:
    body = frame(1, "started", {"job_id": JOB}) + frame(2, "error", {"code": "engine_failed", "message": "OOM"}) + DONE
    router.get(submission().sse_url).mock(return_value=sse_response(body))
    with DualCallClient(BASE) as client:
        events = list(client.events(submission()))
    assert events == [Started(1, JOB), ErrorEvent(2, "engine_failed", "OOM")]


def test_comments_and_keepalives_are_ignored(router: respx.MockRouter) -> None:
    frames = stream_frames(["x"])
    body = ": keepalive\n\n" + frames[0] + ": ping\n\n" + "".join(frames[1:]) + DONE
    router.get(submission().sse_url).mock(return_value=sse_response(body))
    with DualCallClient(BASE) as client:
        assert [type(event) for event in client.events(submission())] == [Started, Token, End]


@pytest.mark.parametrize(
    "bad_frame",
    [
        "id: 1\nevent: token\ndata: not json\n\n",
        'id: 1\nevent: token\ndata: {"index": 0}\n\n',
        'id: one\nevent: started\ndata: {"job_id": "x"}\n\n',
    ],
)
def test_off_contract_events_raise_protocol_error(router: respx.MockRouter, bad_frame: str) -> None:
    router.get(submission().sse_url).mock(return_value=sse_response(bad_frame + DONE))
    with DualCallClient(BASE) as client, pytest.raises(ProtocolError):
        list(client.events(submission()))


def test_unknown_event_types_are_skipped(router: respx.MockRouter) -> None:
    """DC-C-8: new event types (even with a `text` field, even untyped `message` events) are ignored."""
    body = (
        frame(1, "started", {"job_id": JOB})
        + frame(2, "narration", {"text": "thinking"})
        + 'id: 3\ndata: {"text": "untyped"}\n\n'
        + frame(4, "token", {"index": 0, "text": "x"})
        + frame(5, "end", {"tokens_out": 1, "stop_reason": "eos"})
    )
    router.get(submission().sse_url).mock(return_value=sse_response(body + DONE))
    with DualCallClient(BASE) as client:
        events = list(client.events(submission()))
    assert [type(event) for event in events] == [Started, Token, End]
    assert [event.id for event in events] == [1, 4, 5]


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 4096])
def test_hostile_token_texts_round_trip_exactly(router: respx.MockRouter, chunk_size: int) -> None:
    """\\n, \\r\\n, `data: [DONE]`, `[DONE]`, emoji: all inside JSON, split at any byte (even inside UTF-8)."""
    body = ("".join(stream_frames(HOSTILE)) + DONE).encode()
    router.get(submission().sse_url).mock(
        side_effect=lambda request: httpx.Response(
            200, headers={"content-type": SSE}, content=chunked(body, chunk_size)
        )
    )
    with DualCallClient(BASE) as client:
        events = list(client.events(submission()))
    tokens = [event for event in events if isinstance(event, Token)]
    assert [token.text for token in tokens] == HOSTILE
    assert [token.index for token in tokens] == list(range(len(HOSTILE)))
    assert isinstance(events[-1], End)


def test_hostile_texts_survive_ascii_escaped_json(router: respx.MockRouter) -> None:
    """A worker may escape non-ASCII (\\ud83d\\udc69...) instead of sending UTF-8; same text comes out."""
    frames = [
        f"id: {2 + i}\nevent: token\ndata: {json.dumps({'index': i, 'text': t})}\n\n" for i, t in enumerate(HOSTILE)
    ]
    router.get(submission().sse_url).mock(return_value=sse_response("".join(frames) + DONE))
    with DualCallClient(BASE) as client:
        assert [e.text for e in client.events(submission()) if isinstance(e, Token)] == HOSTILE


def test_stream_204_ends_iteration_cleanly(router: respx.MockRouter) -> None:
    route = router.get(submission().sse_url).mock(return_value=httpx.Response(204))
    with DualCallClient(BASE) as client:
        assert list(client.events(submission(), last_event_id=4)) == []
    assert route.calls.last.request.headers["last-event-id"] == "4"


def test_stream_404_problem_raises_problem_error(router: respx.MockRouter) -> None:
    router.get(submission().sse_url).mock(return_value=problem(404, "Not Found", f"no job {JOB}"))
    with DualCallClient(BASE) as client, pytest.raises(ProblemError) as caught:
        list(client.events(submission()))
    assert caught.value.status == 404
    assert JOB in caught.value.problem["detail"]


def test_stream_200_that_is_not_an_event_stream_is_a_protocol_error(router: respx.MockRouter) -> None:
    """A 200 JSON body where the stream should be is off-contract; it is not a dropped connection to retry."""
    route = router.get(submission().sse_url).mock(return_value=httpx.Response(200, json={"tokens": ["a"]}))
    with DualCallClient(BASE, max_resumes=3) as client, pytest.raises(ProtocolError) as caught:
        list(client.events(submission()))
    assert "text/event-stream" in str(caught.value)
    assert route.call_count == 1


# ------------------------------------------------------------------------------------ resume


def test_resume_after_clean_close_sends_last_event_id_and_yields_each_event_once(router: respx.MockRouter) -> None:
    frames = stream_frames(["a", "b", "c", "d"])  # ids 1..6
    route = router.get(submission().sse_url).mock(
        side_effect=[sse_response("".join(frames[:3])), sse_response("".join(frames[3:]) + DONE)]
    )
    with DualCallClient(BASE) as client:
        events = list(client.events(submission()))
    assert route.call_count == 2
    first, second = (call.request for call in route.calls)
    assert "last-event-id" not in first.headers
    assert second.headers["last-event-id"] == "3"
    assert [event.id for event in events] == [1, 2, 3, 4, 5, 6]
    assert "".join(e.text for e in events if isinstance(e, Token)) == "abcd"


def test_resume_after_transport_error_mid_stream(router: respx.MockRouter) -> None:
    frames = stream_frames(["a", "b", "c"])  # ids 1..5
    partial = ("".join(frames[:3]) + "id: 4\nevent: tok").encode()  # cut inside event 4: it must not count
    route = router.get(submission().sse_url).mock(
        side_effect=[
            httpx.Response(200, headers={"content-type": SSE}, stream=DropAfter(partial)),
            sse_response("".join(frames[3:]) + DONE),
        ]
    )
    with DualCallClient(BASE) as client:
        events = list(client.events(submission()))
    assert route.calls[1].request.headers["last-event-id"] == "3"
    assert [event.id for event in events] == [1, 2, 3, 4, 5]


def test_resume_that_answers_204_after_the_final_event_ends_cleanly(router: respx.MockRouter) -> None:
    frames = stream_frames(["a"])  # the connection drops after `end` but before [DONE]
    route = router.get(submission().sse_url).mock(side_effect=[sse_response("".join(frames)), httpx.Response(204)])
    with DualCallClient(BASE) as client:
        events = list(client.events(submission()))
    assert route.calls[1].request.headers["last-event-id"] == "3"
    assert events == [Started(1, JOB), Token(2, 0, "a"), End(3, 1, "max_tokens")]


def test_resume_is_bounded_by_max_resumes(router: respx.MockRouter) -> None:
    frames = stream_frames(["a", "b"])
    responses = [sse_response(frames[0])] + [sse_response(": still nothing\n\n") for _ in range(10)]
    route = router.get(submission().sse_url).mock(side_effect=responses)
    seen: list[int] = []
    with DualCallClient(BASE, max_resumes=2) as client, pytest.raises(StreamEnded) as caught:
        seen.extend(event.id for event in client.events(submission()))
    assert seen == [1]
    assert route.call_count == 3  # the first attempt + 2 resumes
    assert [call.request.headers.get("last-event-id") for call in route.calls] == [None, "1", "1"]
    assert "[DONE]" in str(caught.value)


def test_connect_errors_are_bounded_too(router: respx.MockRouter) -> None:
    route = router.get(submission().sse_url).mock(side_effect=httpx.ConnectError("refused"))
    with DualCallClient(BASE, max_resumes=1) as client, pytest.raises(StreamEnded) as caught:
        list(client.events(submission()))
    assert route.call_count == 2
    assert "refused" in str(caught.value)


# ------------------------------------------------------------------------------------ status, cancel, generate


def test_status_and_cancel_use_status_url(router: respx.MockRouter) -> None:
    status_url = "http://control.internal/jobs/j-1"
    router.post(POST_URL).mock(return_value=accepted(status_url=status_url))
    get = router.get(status_url).mock(return_value=httpx.Response(200, json={"job_id": JOB, "state": "running"}))
    delete = router.delete(status_url).mock(
        return_value=httpx.Response(202, json={"job_id": JOB, "state": "cancelled"})
    )
    with DualCallClient(BASE) as client:
        job = client.submit("Hello")
        assert client.status(job)["state"] == "running"
        assert client.cancel(job) == {"job_id": JOB, "state": "cancelled"}
    assert get.call_count == 1
    assert delete.call_count == 1
    assert delete.calls.last.request.method == "DELETE"


def test_cancel_defaults_to_the_job_resource_and_accepts_204(router: respx.MockRouter) -> None:
    router.post(POST_URL).mock(return_value=accepted())
    delete = router.delete(f"{BASE}/v1/inference/{JOB}").mock(return_value=httpx.Response(204))
    with DualCallClient(BASE) as client:
        assert client.cancel(client.submit("Hello")) is None
    assert delete.call_count == 1


def test_cancel_of_unknown_job_raises_problem_error(router: respx.MockRouter) -> None:
    router.delete(f"{BASE}/v1/inference/{JOB}").mock(return_value=problem(404, "Not Found", "no such job"))
    with DualCallClient(BASE) as client, pytest.raises(ProblemError) as caught:
        client.cancel(submission())
    assert caught.value.status == 404


def test_generate_assembles_text_tokens_out_and_stop_reason(router: respx.MockRouter) -> None:
    router.post(POST_URL).mock(return_value=accepted())
    router.get(submission().sse_url).mock(
        return_value=sse_response("".join(stream_frames(HOSTILE, stop_reason="stop")) + DONE)
    )
    with DualCallClient(BASE) as client:
        completion = client.generate("Hello", max_tokens=32, temperature=0)
    assert isinstance(completion, Completion)
    assert completion.job_id == JOB
    assert completion.text == "".join(HOSTILE)
    assert completion.tokens_out == len(HOSTILE)
    assert completion.stop_reason == "stop"
    assert completion.error is None
    assert len(completion.events) == len(HOSTILE) + 2


def test_generate_reports_an_error_event(router: respx.MockRouter) -> None:
    router.post(POST_URL).mock(return_value=accepted())
    body = (
        frame(1, "started", {"job_id": JOB})
        + frame(2, "token", {"index": 0, "text": "par"})
        + frame(3, "error", {"code": "shutdown", "message": "worker stopping"})
        + DONE
    )
    router.get(submission().sse_url).mock(return_value=sse_response(body))
    delete = router.delete(f"{BASE}/v1/inference/{JOB}").mock(return_value=httpx.Response(204))
    with DualCallClient(BASE) as client, pytest.raises(GenerationFailed) as caught:
        client.generate("Hello")
    failure = caught.value
    assert isinstance(failure, DualCallError)
    assert (failure.code, failure.message, failure.partial_text) == ("shutdown", "worker stopping", "par")
    assert str(failure) == "generation failed: shutdown: worker stopping"
    assert failure.error == failure.completion.error == ErrorEvent(3, "shutdown", "worker stopping")
    assert failure.completion.stop_reason is None and failure.completion.tokens_out == 0
    assert delete.call_count == 0  # the job ended: there is nothing to cancel


@pytest.mark.asyncio
async def test_async_generate_raises_on_an_error_event(router: respx.MockRouter) -> None:
    router.post(POST_URL).mock(return_value=accepted())
    body = frame(1, "started", {"job_id": JOB}) + frame(2, "error", {"code": "oom", "message": "out of memory"}) + DONE
    router.get(submission().sse_url).mock(return_value=sse_response(body))
    async with AsyncDualCallClient(BASE) as client:
        with pytest.raises(GenerationFailed, match="oom: out of memory") as caught:
            await client.generate("Hello")
    assert caught.value.partial_text == ""


def test_caller_owned_http_client_is_used_and_not_closed(router: respx.MockRouter) -> None:
    router.post(POST_URL).mock(return_value=accepted())
    http = httpx.Client(headers={"x-trace": "t-1"})
    with DualCallClient(BASE, http=http) as client:
        client.submit("Hello")
    assert not http.is_closed
    assert router.calls.last.request.headers["x-trace"] == "t-1"
    http.close()


# ------------------------------------------------------------------------------------ async client


@pytest.mark.asyncio
async def test_async_submit_follows_absolute_sse_url_and_generates(router: respx.MockRouter) -> None:
    remote = "http://replica-2.internal:9000/streams/abc"
    router.post(POST_URL).mock(return_value=accepted(sse_url=remote))
    built = router.get(f"{BASE}/v1/inference/{JOB}/stream").mock(return_value=sse_response(DONE))
    stream = router.get(remote).mock(return_value=sse_response("".join(stream_frames(HOSTILE)) + DONE))
    async with AsyncDualCallClient(BASE) as client:
        completion = await client.generate("Hello", max_tokens=len(HOSTILE))
    assert stream.call_count == 1
    assert built.call_count == 0
    assert completion.text == "".join(HOSTILE)
    assert completion.tokens_out == len(HOSTILE)
    assert completion.stop_reason == "max_tokens"


@pytest.mark.asyncio
async def test_async_submit_status_url_default_and_explicit(router: respx.MockRouter) -> None:
    router.post(POST_URL).mock(side_effect=[accepted(), accepted(status_url="/jobs/j-2")])
    async with AsyncDualCallClient(BASE) as client:
        first = await client.submit("a")
        second = await client.submit("b")
    assert first.status_url == f"{BASE}/v1/inference/{JOB}"
    assert second.status_url == f"{BASE}/jobs/j-2"


@pytest.mark.asyncio
async def test_async_legacy_post_raises_protocol_error(router: respx.MockRouter) -> None:
    router.post(POST_URL).mock(return_value=sse_response("data: Hello\n\ndata: [DONE]\n\n"))
    async with AsyncDualCallClient(BASE) as client:
        with pytest.raises(ProtocolError, match="legacy direct-SSE"):
            await client.submit("Hello")


@pytest.mark.asyncio
async def test_async_422_problem(router: respx.MockRouter) -> None:
    router.post(POST_URL).mock(return_value=problem(422, "Unprocessable Content", "prompt must not be empty"))
    async with AsyncDualCallClient(BASE) as client:
        with pytest.raises(ProblemError) as caught:
            await client.submit("")
    assert caught.value.status == 422
    assert caught.value.problem["detail"] == "prompt must not be empty"


@pytest.mark.asyncio
async def test_async_hostile_texts_round_trip_byte_by_byte(router: respx.MockRouter) -> None:
    body = ("".join(stream_frames(HOSTILE)) + DONE).encode()
    router.get(submission().sse_url).mock(
        side_effect=lambda request: httpx.Response(200, headers={"content-type": SSE}, content=achunked(body))
    )
    async with AsyncDualCallClient(BASE) as client:
        events = [event async for event in client.events(submission())]
    assert [e.text for e in events if isinstance(e, Token)] == HOSTILE


@pytest.mark.asyncio
async def test_async_keepalive_comments_between_events_are_ignored(router: respx.MockRouter) -> None:
    frames = stream_frames(["x", "y"])
    body = frames[0] + ": keepalive\n\n" + frames[1] + ": keepalive\n\n" + "".join(frames[2:]) + DONE
    router.get(submission().sse_url).mock(return_value=sse_response(body))
    async with AsyncDualCallClient(BASE) as client:
        events = [event async for event in client.events(submission())]
    assert [event.id for event in events] == [1, 2, 3, 4]


@pytest.mark.asyncio
async def test_async_resume_sends_last_event_id_and_yields_each_event_once(router: respx.MockRouter) -> None:
    frames = stream_frames(["a", "b", "c", "d"])
    partial = "".join(frames[:3]).encode()
    route = router.get(submission().sse_url).mock(
        side_effect=[
            httpx.Response(200, headers={"content-type": SSE}, stream=DropAfter(partial)),
            sse_response("".join(frames[3:]) + DONE),
        ]
    )
    async with AsyncDualCallClient(BASE) as client:
        events = [event async for event in client.events(submission())]
    assert route.call_count == 2
    assert "last-event-id" not in route.calls[0].request.headers
    assert route.calls[1].request.headers["last-event-id"] == "3"
    assert [event.id for event in events] == [1, 2, 3, 4, 5, 6]


@pytest.mark.asyncio
async def test_async_resume_is_bounded(router: respx.MockRouter) -> None:
    route = router.get(submission().sse_url).mock(
        side_effect=[sse_response(frame(1, "started", {"job_id": JOB}))] + [sse_response("") for _ in range(5)]
    )
    async with AsyncDualCallClient(BASE, max_resumes=1) as client:
        with pytest.raises(StreamEnded):
            async for _ in client.events(submission()):
                pass
    assert route.call_count == 2


@pytest.mark.asyncio
async def test_async_204_and_cancel(router: respx.MockRouter) -> None:
    router.get(submission().sse_url).mock(return_value=httpx.Response(204))
    delete = router.delete(submission().status_url).mock(return_value=httpx.Response(202, json={"state": "cancelled"}))
    get = router.get(submission().status_url).mock(return_value=httpx.Response(200, json={"state": "cancelled"}))
    async with AsyncDualCallClient(BASE) as client:
        assert [event async for event in client.events(submission())] == []
        assert await client.cancel(submission()) == {"state": "cancelled"}
        assert (await client.status(submission()))["state"] == "cancelled"
    assert delete.call_count == 1
    assert get.call_count == 1


@pytest.mark.asyncio
async def test_async_stream_200_that_is_not_an_event_stream_is_a_protocol_error(router: respx.MockRouter) -> None:
    route = router.get(submission().sse_url).mock(return_value=httpx.Response(200, json={"tokens": []}))
    async with AsyncDualCallClient(BASE) as client:
        with pytest.raises(ProtocolError):
            _ = [event async for event in client.events(submission())]
    assert route.call_count == 1


# ------------------------------------------------------------------------------------ error bodies


@pytest.mark.parametrize(
    "response,expected",
    [
        (httpx.Response(400, json={"error": "prompt too long"}), '400 Bad Request: \'{"error":"prompt too long"}\''),
        (httpx.Response(502, content=b""), "502 Bad Gateway (empty body)"),
        (httpx.Response(500, text="<html>nginx: upstream died</html>"), "500 Internal Server Error: '<html>nginx"),
        (httpx.Response(400, json=["a", "list"]), '400 Bad Request: \'["a","list"]\''),
    ],
)
def test_non_problem_error_keeps_status_and_body_excerpt(
    router: respx.MockRouter, response: httpx.Response, expected: str
) -> None:
    router.post(POST_URL).mock(return_value=response)
    with DualCallClient(BASE) as client, pytest.raises(ProblemError) as caught:
        client.submit("Hello")
    assert caught.value.status == response.status_code
    assert str(caught.value).startswith(expected)
    assert caught.value.body == response.text
    assert caught.value.problem == {"detail": response.text}


def test_problem_error_message_uses_title_and_detail(router: respx.MockRouter) -> None:
    router.post(POST_URL).mock(return_value=problem(415, "Unsupported Media Type", "send JSON"))
    with DualCallClient(BASE) as client, pytest.raises(ProblemError) as caught:
        client.submit("Hello")
    assert str(caught.value) == "415 Unsupported Media Type: send JSON"


def test_long_error_body_is_cut_with_a_short_marker(router: respx.MockRouter) -> None:
    router.post(POST_URL).mock(return_value=httpx.Response(500, text="x" * 5000))
    with DualCallClient(BASE) as client, pytest.raises(ProblemError) as caught:
        client.submit("Hello")
    assert caught.value.body == "x" * 300 + "… (+4700 chars)"
    assert len(str(caught.value)) < 400


# ------------------------------------------------------------------------------------ backoff and Retry-After


def test_backoff_grows_exponentially_is_capped_and_jittered() -> None:
    backoff = Backoff(initial_s=0.5, factor=2.0, max_s=3.0, jitter=0.5)
    assert [backoff.ceiling(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    delays = [backoff.delay(4) for _ in range(200)]
    assert all(1.5 <= delay <= 3.0 for delay in delays)
    assert len(set(delays)) > 100  # jittered, not one fixed value


def test_resume_waits_with_backoff_between_reconnects(router: respx.MockRouter) -> None:
    responses = [sse_response(frame(1, "started", {"job_id": JOB}))] + [sse_response("") for _ in range(5)]
    route = router.get(submission().sse_url).mock(side_effect=responses)
    slept: list[float] = []
    backoff = Backoff(initial_s=0.2, factor=2.0, max_s=0.5, jitter=0.5)
    client = DualCallClient(BASE, max_resumes=3, backoff=backoff, sleep=slept.append)
    with client, pytest.raises(StreamEnded):
        list(client.events(submission()))
    assert route.call_count == 4  # the first connection + 3 reconnects without progress
    assert len(slept) == 3
    for delay, ceiling in zip(slept, (0.2, 0.4, 0.5), strict=True):
        assert ceiling / 2 <= delay <= ceiling


def test_reconnects_that_make_progress_do_not_use_up_max_resumes(router: respx.MockRouter) -> None:
    frames = stream_frames(["a", "b", "c"])  # ids 1..5, one per connection, then [DONE]
    responses = [sse_response(single) for single in frames] + [sse_response(DONE)]
    route = router.get(submission().sse_url).mock(side_effect=responses)
    slept: list[float] = []
    with DualCallClient(BASE, max_resumes=1, sleep=slept.append) as client:
        events = list(client.events(submission()))
    assert [event.id for event in events] == [1, 2, 3, 4, 5]
    assert route.call_count == 6
    assert [call.request.headers.get("last-event-id") for call in route.calls] == [None, "1", "2", "3", "4", "5"]
    assert all(delay <= DEFAULT_BACKOFF.initial_s for delay in slept)  # the counter restarts after progress


def queue_full(retry_after: str | None) -> httpx.Response:
    response = problem(503, "Service Unavailable", "The job queue is full; retry later.")
    if retry_after is not None:
        response.headers["Retry-After"] = retry_after
    return response


def test_submit_503_honours_retry_after_then_succeeds(router: respx.MockRouter) -> None:
    route = router.post(POST_URL).mock(side_effect=[queue_full("2"), queue_full("1"), accepted()])
    slept: list[float] = []
    with DualCallClient(BASE, sleep=slept.append) as client:
        job = client.submit("Hello")
    assert job.job_id == JOB
    assert route.call_count == 3
    assert slept == [2.0, 1.0]


def test_submit_503_retries_are_bounded(router: respx.MockRouter) -> None:
    route = router.post(POST_URL).mock(side_effect=[queue_full("1") for _ in range(10)])
    slept: list[float] = []
    with DualCallClient(BASE, submit_retries=2, sleep=slept.append) as client, pytest.raises(ProblemError) as caught:
        client.submit("Hello")
    assert route.call_count == 3
    assert slept == [1.0, 1.0]
    assert caught.value.status == 503
    assert caught.value.retry_after_s == 1.0


def test_submit_503_with_a_retry_after_beyond_the_limit_is_not_waited_for(router: respx.MockRouter) -> None:
    route = router.post(POST_URL).mock(side_effect=[queue_full("120"), accepted()])
    slept: list[float] = []
    with (
        DualCallClient(BASE, max_retry_after_s=30, sleep=slept.append) as client,
        pytest.raises(ProblemError) as caught,
    ):
        client.submit("Hello")
    assert route.call_count == 1
    assert slept == []
    assert caught.value.retry_after_s == 120.0


def test_submit_503_without_retry_after_backs_off(router: respx.MockRouter) -> None:
    route = router.post(POST_URL).mock(side_effect=[queue_full(None), accepted()])
    slept: list[float] = []
    with DualCallClient(BASE, backoff=Backoff(initial_s=0.4), sleep=slept.append) as client:
        client.submit("Hello")
    assert route.call_count == 2
    assert len(slept) == 1
    assert 0.2 <= slept[0] <= 0.4


@pytest.mark.parametrize("status", [400, 401, 413, 422, 500])
def test_other_errors_are_never_retried(router: respx.MockRouter, status: int) -> None:
    route = router.post(POST_URL).mock(return_value=problem(status, "No", "no"))
    slept: list[float] = []
    with DualCallClient(BASE, sleep=slept.append) as client, pytest.raises(ProblemError):
        client.submit("Hello")
    assert route.call_count == 1
    assert slept == []


def test_retry_after_http_date_and_invalid_values() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert retry_after_seconds(httpx.Headers({"Retry-After": "Thu, 01 Jan 2026 12:00:07 GMT"}), now=now) == 7.0
    assert retry_after_seconds(httpx.Headers({"Retry-After": "Thu, 01 Jan 2026 11:00:00 GMT"}), now=now) == 0.0
    assert retry_after_seconds(httpx.Headers({"Retry-After": "soon"}), now=now) is None
    assert retry_after_seconds(httpx.Headers({"Retry-After": "-3"}), now=now) is None
    assert retry_after_seconds(httpx.Headers({}), now=now) is None


@pytest.mark.asyncio
async def test_async_submit_503_honours_retry_after_and_is_bounded(router: respx.MockRouter) -> None:
    route = router.post(POST_URL).mock(side_effect=[queue_full("3"), accepted(), queue_full("1"), queue_full("1")])
    slept: list[float] = []

    async def record(delay: float) -> None:
        slept.append(delay)

    async with AsyncDualCallClient(BASE, submit_retries=1, sleep=record) as client:
        job = await client.submit("Hello")
        assert job.job_id == JOB
        with pytest.raises(ProblemError):
            await client.submit("again")
    assert route.call_count == 4
    assert slept == [3.0, 1.0]


@pytest.mark.asyncio
async def test_async_resume_waits_with_backoff(router: respx.MockRouter) -> None:
    frames = stream_frames(["a"])
    route = router.get(submission().sse_url).mock(
        side_effect=[sse_response(frames[0]), sse_response(""), sse_response("".join(frames[1:]) + DONE)]
    )
    slept: list[float] = []

    async def record(delay: float) -> None:
        slept.append(delay)

    backoff = Backoff(initial_s=1.0, factor=3.0, max_s=10.0, jitter=0.0)
    async with AsyncDualCallClient(BASE, max_resumes=2, backoff=backoff, sleep=record) as client:
        events = [event async for event in client.events(submission())]
    assert [event.id for event in events] == [1, 2, 3]
    assert route.call_count == 3
    assert slept == [1.0, 3.0]  # no jitter: exactly the ceilings of attempts 1 and 2
