"""The gateway engine against respx-mocked upstreams: the request and stream mapping, the sloppy
streams real servers send, the faults, and cancellation reaching the upstream.

No network: a respx router refuses any request without a route.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import respx

from workers.__main__ import build_parser
from workers.engines.base import Chunk, EngineError, GenerationRequest
from workers.engines.gateway import CONTEXT_LENGTH_EXCEEDED, UPSTREAM_ERROR, GatewayEngine
from workers.engines.upstream.apis import UpstreamApi
from workers.engines.upstream.cli import UPSTREAM_TOKEN_ENV, gateway_engine

UP = "http://upstream.test:8000"
SSE = {"content-type": "text/event-stream"}
pytestmark = pytest.mark.asyncio


@pytest.fixture
def router() -> Iterator[respx.MockRouter]:
    with respx.mock(base_url=UP, assert_all_mocked=True, assert_all_called=False) as mock:
        mock.get("/v1/models").respond(200, json={"object": "list", "data": [{"id": "tiny"}, {"id": "other"}]})
        mock.get("/health").respond(200, json={"status": "ok"})
        yield mock


async def started(api: UpstreamApi = "openai-chat", **options: Any) -> GatewayEngine:
    engine = GatewayEngine(UP, api, probe_interval_s=3600, **options)
    await engine.start()
    return engine


def chat(content: str | None = None, finish: str | None = None, **choice: Any) -> bytes:
    delta = {} if content is None else {"content": content}
    event = {
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, **choice}],
    }
    return b"data: " + json.dumps(event).encode() + b"\n\n"


def usage(completion_tokens: int) -> bytes:
    event = {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": completion_tokens}}
    return b"data: " + json.dumps(event).encode() + b"\n\n"


async def collect(engine: GatewayEngine, request: GenerationRequest) -> list[Chunk]:
    return [chunk async for chunk in engine.generate(request)]


def texts(chunks: list[Chunk]) -> str:
    return "".join(chunk.text for chunk in chunks)


# -- request mapping ----------------------------------------------------------------------------


async def test_chat_request_carries_the_job_parameters(router: respx.MockRouter) -> None:
    route = router.post("/v1/chat/completions").respond(200, headers=SSE, content=chat("hi", "length") + usage(1))
    engine = await started()
    request = GenerationRequest("say hi", max_tokens=5, temperature=0.5, top_p=0.9, top_k=7, seed=3, stop=("\n",))
    await collect(engine, request)
    body = json.loads(route.calls.last.request.content)
    assert body == {
        "model": "tiny",  # the first id of /v1/models
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "say hi"}],
        "max_tokens": 5,
        "temperature": 0.5,
        "top_p": 0.9,
        "seed": 3,
        "stop": ["\n"],
        "top_k": 7,
    }
    await engine.close()


async def test_completions_request_sends_the_prompt_and_a_pinned_model(router: respx.MockRouter) -> None:
    event = {"choices": [{"index": 0, "text": "x", "finish_reason": "length"}]}
    route = router.post("/v1/completions").respond(200, headers=SSE, content=f"data: {json.dumps(event)}\n\n")
    engine = await started("openai-completions", model="other")
    chunks = await collect(engine, GenerationRequest("p", max_tokens=1))
    body = json.loads(route.calls.last.request.content)
    assert (body["model"], body["prompt"]) == ("other", "p")
    assert "messages" not in body and "seed" not in body and "stop" not in body and "top_k" not in body
    assert texts(chunks) == "x" and chunks[-1].stop_reason == "max_tokens"
    await engine.close()


async def test_legacy_request_has_a_fresh_job_id_and_only_legacy_fields(router: respx.MockRouter) -> None:
    route = router.post("/v1/inference").respond(200, headers=SSE, content=b"data: a\n\ndata: [DONE]\n\n")
    engine = await started("legacy")
    request = GenerationRequest("p", max_tokens=4, top_k=5, seed=1, stop=("x",))
    await collect(engine, request)
    await collect(engine, request)
    first, second = (json.loads(call.request.content) for call in route.calls)
    assert set(first) == {"job_id", "prompt", "max_tokens", "temperature", "seed"}
    assert first["job_id"] != second["job_id"]
    assert engine.describe()["top_k"] == "dropped"
    await engine.close()


async def test_upstream_token_is_sent_as_bearer(router: respx.MockRouter) -> None:
    route = router.post("/v1/chat/completions").respond(200, headers=SSE, content=chat("a", "stop"))
    engine = await started(token="s3cret")
    await collect(engine, GenerationRequest("p", max_tokens=2))
    assert route.calls.last.request.headers["authorization"] == "Bearer s3cret"
    assert router.routes[0].calls.last.request.headers["authorization"] == "Bearer s3cret"  # the probe too
    await engine.close()


# -- top_k ------------------------------------------------------------------------------------------


def refuse_top_k(request: httpx.Request) -> httpx.Response:
    if "top_k" in json.loads(request.content):
        return httpx.Response(422, json={"detail": "Unexpected fields in the request: {'top_k'}"})
    return httpx.Response(200, headers=SSE, content=chat("ok", "length"))


async def test_auto_top_k_retries_without_it_once_refused_and_then_drops_it(router: respx.MockRouter) -> None:
    route = router.post("/v1/chat/completions").mock(side_effect=refuse_top_k)
    engine = await started()
    assert engine.describe()["top_k"] == "passed"
    request = GenerationRequest("p", max_tokens=1, top_k=4)
    assert texts(await collect(engine, request)) == "ok"
    assert engine.describe()["top_k"] == "dropped (the upstream refused it)"
    assert engine.health().extra["gateway"] == engine.describe()
    await collect(engine, request)
    assert ["top_k" in json.loads(call.request.content) for call in route.calls] == [True, False, False]
    await engine.close()


async def test_pass_top_k_reports_the_refusal_as_the_upstream_error(router: respx.MockRouter) -> None:
    router.post("/v1/chat/completions").mock(side_effect=refuse_top_k)
    engine = await started(top_k="pass")
    with pytest.raises(EngineError) as failed:
        await collect(engine, GenerationRequest("p", max_tokens=1, top_k=4))
    assert failed.value.code == UPSTREAM_ERROR
    assert "422" in failed.value.message and "top_k" in failed.value.message
    await engine.close()


async def test_drop_top_k_never_sends_it(router: respx.MockRouter) -> None:
    route = router.post("/v1/chat/completions").mock(side_effect=refuse_top_k)
    engine = await started(top_k="drop")
    await collect(engine, GenerationRequest("p", max_tokens=1, top_k=4))
    assert len(route.calls) == 1 and "top_k" not in json.loads(route.calls.last.request.content)
    await engine.close()


# -- stream mapping ---------------------------------------------------------------------------------


async def test_deltas_become_chunks_and_usage_completes_tokens_out(router: respx.MockRouter) -> None:
    stream = chat() + chat("Hel") + chat("lo wor") + chat("ld", "length") + usage(6)
    router.post("/v1/chat/completions").respond(200, headers=SSE, content=stream)
    engine = await started()
    chunks = await collect(engine, GenerationRequest("p", max_tokens=6))
    assert [(c.text, c.tokens, c.stop_reason) for c in chunks] == [
        ("Hel", 1, None),
        ("lo wor", 1, None),
        ("ld", 1, None),
        ("", 3, "max_tokens"),  # the role-only first delta is no chunk; usage counts 6 tokens in all
    ]
    await engine.close()


async def test_usage_never_counts_past_max_tokens(router: respx.MockRouter) -> None:
    router.post("/v1/chat/completions").respond(200, headers=SSE, content=chat("a", "length") + usage(50))
    engine = await started()
    chunks = await collect(engine, GenerationRequest("p", max_tokens=4))
    assert sum(chunk.tokens for chunk in chunks) == 4
    await engine.close()


@pytest.mark.parametrize(
    ("stop", "finish", "extra", "expected"),
    [
        (("END",), "stop", {}, "stop"),  # the stop string is still in the text (transformers serve)
        (("zzz",), "stop", {}, "eos"),  # finish "stop" without a stop string: the model ended
        ((), "stop", {}, "eos"),
        (("!",), "stop", {"stop_reason": "!"}, "stop"),  # removed from the text, named by the upstream (vLLM)
        ((), "length", {}, "max_tokens"),
        ((), "content_filter", {}, "eos"),
    ],
)
async def test_finish_reason_maps_to_stop_reason(
    router: respx.MockRouter, stop: tuple[str, ...], finish: str, extra: dict[str, Any], expected: str
) -> None:
    router.post("/v1/chat/completions").respond(
        200, headers=SSE, content=chat("The END") + chat(None, finish, **extra) + b"data: [DONE]\n\n"
    )
    engine = await started()
    chunks = await collect(engine, GenerationRequest("p", max_tokens=9, stop=stop))
    assert chunks[-1].stop_reason == expected
    await engine.close()


async def test_a_stream_without_done_ends_at_the_end_of_the_response(router: respx.MockRouter) -> None:
    router.post("/v1/chat/completions").respond(200, headers=SSE, content=chat("a") + chat("b"))
    engine = await started()
    chunks = await collect(engine, GenerationRequest("p", max_tokens=9))
    assert texts(chunks) == "ab" and all(chunk.stop_reason is None for chunk in chunks)  # the core says eos
    await engine.close()


async def test_keepalive_comments_crlf_and_utf8_split_across_reads(router: respx.MockRouter) -> None:
    payload = (
        b": keep-alive\r\n\r\n" + chat("caf\u00e9 \U0001f680").replace(b"\n", b"\r\n") + chat(None, "stop")
    ).replace(b"\\u00e9", "\u00e9".encode())
    cut = payload.index("\u00e9".encode()) + 1  # between the two bytes of é

    async def reads() -> AsyncIterator[bytes]:
        for part in (payload[:cut], payload[cut : cut + 3], payload[cut + 3 :]):
            yield part

    router.post("/v1/chat/completions").respond(200, headers=SSE, content=reads())
    engine = await started()
    chunks = await collect(engine, GenerationRequest("p", max_tokens=9))
    assert texts(chunks) == "caf\u00e9 \U0001f680"
    await engine.close()


async def test_legacy_stream_skips_named_events_and_ends_at_done(router: respx.MockRouter) -> None:
    stream = b"event: narration\ndata: Starting\n\ndata:  the\n\ndata: end\n\nevent: narration\ndata: done\n\n"
    router.post("/v1/inference").respond(200, headers=SSE, content=stream + b"data: [DONE]\n\ndata: late\n\n")
    engine = await started("legacy")
    chunks = await collect(engine, GenerationRequest("p", max_tokens=9))
    assert [chunk.text for chunk in chunks] == [" the", "end"]
    await engine.close()


# -- faults ---------------------------------------------------------------------------------------------


async def test_an_error_inside_the_stream_fails_the_job_as_upstream_error(router: respx.MockRouter) -> None:
    error = b'data: {"error": {"message": "CUDA out of memory", "code": 500}}\n\n'
    router.post("/v1/chat/completions").respond(200, headers=SSE, content=chat("a") + error)
    engine = await started()
    with pytest.raises(EngineError) as failed:
        await collect(engine, GenerationRequest("p", max_tokens=9))
    assert failed.value.code == UPSTREAM_ERROR and "CUDA out of memory" in failed.value.message
    await engine.close()


async def test_a_prompt_over_the_context_is_context_length_exceeded(router: respx.MockRouter) -> None:
    detail = "The prompt has 6012 tokens, but the model takes at most 2048, prompt and answer (`--max-model-len`)."
    router.post("/v1/chat/completions").respond(400, json={"detail": detail})
    engine = await started()
    with pytest.raises(EngineError) as failed:
        await collect(engine, GenerationRequest("p" * 9000, max_tokens=9))
    assert failed.value.code == CONTEXT_LENGTH_EXCEEDED and "2048" in failed.value.message
    await engine.close()


@pytest.mark.parametrize(
    ("status", "body", "words"),
    [
        (500, {"error": {"message": "boom"}}, ["500", "boom"]),
        (401, {"error": "bad key"}, ["401", "--upstream-token"]),
        (429, "slow down", ["429", "slow down"]),
        (400, {"error": {"message": "rate limit exceeded"}}, ["400", "rate limit"]),
    ],
)
async def test_other_upstream_answers_are_upstream_errors(
    router: respx.MockRouter, status: int, body: object, words: list[str]
) -> None:
    content = body if isinstance(body, str) else json.dumps(body)
    router.post("/v1/chat/completions").respond(status, content=content)
    engine = await started()
    with pytest.raises(EngineError) as failed:
        await collect(engine, GenerationRequest("p", max_tokens=9))
    assert failed.value.code == UPSTREAM_ERROR
    assert all(word in failed.value.message for word in words), failed.value.message
    await engine.close()


async def test_unreachable_upstream_fails_the_job_and_marks_health_down(router: respx.MockRouter) -> None:
    route = router.post("/v1/chat/completions").mock(side_effect=httpx.ConnectError("Connection refused"))
    engine = await started()
    assert engine.health().ok
    with pytest.raises(EngineError) as failed:
        await collect(engine, GenerationRequest("p", max_tokens=9))
    assert failed.value.code == UPSTREAM_ERROR
    health = engine.health()
    assert not health.ok and "Connection refused" in health.detail and UP.removeprefix("http://") in health.detail
    route.respond(200, headers=SSE, content=chat("a", "length"))
    assert await engine.probe() and engine.health().ok  # the next probe brings it back
    await engine.close()


async def test_a_stream_cut_mid_way_is_upstream_error(router: respx.MockRouter) -> None:
    async def cut() -> AsyncIterator[bytes]:
        yield chat("a")
        raise httpx.RemoteProtocolError("peer closed connection without sending complete message body")

    router.post("/v1/chat/completions").respond(200, headers=SSE, content=cut())
    engine = await started()
    seen: list[str] = []
    with pytest.raises(EngineError) as failed:
        async for chunk in engine.generate(GenerationRequest("p", max_tokens=9)):
            seen.append(chunk.text)
    assert seen == ["a"] and failed.value.code == UPSTREAM_ERROR
    assert not engine.health().ok
    await engine.close()


async def test_a_non_sse_answer_is_upstream_error(router: respx.MockRouter) -> None:
    router.post("/v1/chat/completions").respond(200, json={"choices": []})
    engine = await started()
    with pytest.raises(EngineError) as failed:
        await collect(engine, GenerationRequest("p", max_tokens=9))
    assert failed.value.code == UPSTREAM_ERROR and "text/event-stream" in failed.value.message
    await engine.close()


# -- probe and health -------------------------------------------------------------------------------


async def test_health_is_down_until_the_upstream_answers(router: respx.MockRouter) -> None:
    router.routes[0].mock(side_effect=httpx.ConnectError("Connection refused"))
    engine = await started()
    assert not engine.health().ok and "unreachable" in engine.health().detail
    router.routes[0].respond(401, json={"error": "no"})
    assert not await engine.probe() and "--upstream-token" in engine.health().detail
    router.routes[0].respond(200, json={"data": []})
    assert not await engine.probe() and "no model" in engine.health().detail
    router.routes[0].respond(200, json={"data": [{"id": "m"}]})
    assert await engine.probe() and engine.model == "m"
    await engine.close()
    assert not engine.health().ok


async def test_credentials_in_the_upstream_url_never_reach_health() -> None:
    engine = GatewayEngine("http://user:pw@upstream.test:8000/", "openai-chat")
    assert engine.describe()["upstream"] == "http://upstream.test:8000"
    assert "pw" not in engine.health().detail
    assert GatewayEngine("http://[::1]:8000", "legacy").describe()["upstream"] == "http://[::1]:8000"


# -- cancellation ---------------------------------------------------------------------------------------


class Watched(httpx.AsyncByteStream):
    """An endless upstream stream that records whether the client closed it."""

    def __init__(self) -> None:
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            yield chat("tok")

    async def aclose(self) -> None:
        self.closed = True


async def test_closing_the_iterator_closes_the_upstream_response(router: respx.MockRouter) -> None:
    stream = Watched()
    router.post("/v1/chat/completions").respond(200, headers=SSE, stream=stream)
    engine = await started()
    chunks = engine.generate(GenerationRequest("p", max_tokens=1000))
    assert (await anext(chunks)).text == "tok"
    assert not stream.closed
    await chunks.aclose()  # what the core does on DELETE, TTL reclaim and shutdown
    assert stream.closed
    await engine.close()


class Finite(httpx.AsyncByteStream):
    """An upstream stream that records whether the client read it to its end."""

    def __init__(self, *parts: bytes) -> None:
        self.parts = parts
        self.exhausted = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for part in self.parts:
            yield part
        self.exhausted = True


async def test_a_finished_upstream_response_is_read_to_its_end_for_reuse(router: respx.MockRouter) -> None:
    stream = Finite(chat("a"), chat(None, "length"), usage(1), b"data: [DONE]\n\n")
    router.post("/v1/chat/completions").respond(200, headers=SSE, stream=stream)
    engine = await started()
    chunks = await collect(engine, GenerationRequest("p", max_tokens=1))
    assert chunks[-1].stop_reason == "max_tokens"
    await engine.close()  # waits for the background read
    assert stream.exhausted  # read to the end, not dropped: the connection can serve the next job


async def test_an_upstream_silent_past_the_timeout_fails_the_job(router: respx.MockRouter) -> None:
    async def stalls() -> AsyncIterator[bytes]:
        yield chat("a")
        raise httpx.ReadTimeout("timed out")  # what httpx raises after --upstream-timeout-s of silence

    router.post("/v1/chat/completions").respond(200, headers=SSE, content=stalls())
    engine = await started(timeout_s=7.0)
    with pytest.raises(EngineError) as failed:
        await collect(engine, GenerationRequest("p", max_tokens=9))
    assert failed.value.code == UPSTREAM_ERROR and "7s" in failed.value.message
    router.routes[-1].mock(side_effect=httpx.ReadTimeout("timed out"))  # silent before its answer
    with pytest.raises(EngineError) as failed:
        await collect(engine, GenerationRequest("p", max_tokens=9))
    assert failed.value.code == UPSTREAM_ERROR and "did not answer within 7s" in failed.value.message
    assert engine.health().ok  # slow is not down
    router.routes[-1].mock(side_effect=httpx.ConnectTimeout("timed out"))  # a host that drops packets
    with pytest.raises(EngineError) as failed:
        await collect(engine, GenerationRequest("p", max_tokens=9))
    assert failed.value.code == UPSTREAM_ERROR and "unreachable" in failed.value.message
    assert not engine.health().ok
    await engine.close()


async def test_cli_options_build_the_engine_and_the_token_comes_from_the_environment(
    router: respx.MockRouter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(UPSTREAM_TOKEN_ENV, "from-env")
    args = build_parser().parse_args(
        ["gateway", "--upstream", UP + "/", "--upstream-api", "openai-completions", "--upstream-concurrency", "3"]
    )
    engine = gateway_engine(args)
    assert (engine.upstream, engine.api, engine.max_concurrency, engine.top_k_mode) == (
        UP,
        "openai-completions",
        3,
        "auto",
    )
    await engine.start()
    assert router.routes[0].calls.last.request.headers["authorization"] == "Bearer from-env"
    await engine.close()
