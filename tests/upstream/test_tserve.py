"""What the gateway relies on, checked on the real server: if a new transformers release changes
one of these, docs/gateway.md's quirks table and these tests change together."""

from __future__ import annotations

import json

import httpx
from tserve import TransformersServe


def _stream(server: TransformersServe, path: str, body: dict[str, object]) -> list[str]:
    with (
        httpx.Client(timeout=60.0) as client,
        client.stream("POST", server.url + path, json={"model": server.model, "stream": True, **body}) as response,
    ):
        assert response.status_code == 200, response.read()
        return [line for line in response.iter_lines() if line]


def test_serves_the_tiny_model(tserve: TransformersServe) -> None:
    models = httpx.get(tserve.url + "/v1/models", timeout=10.0).json()
    assert [entry["id"] for entry in models["data"]] == [tserve.model]


def test_chat_stream_has_no_done_line(tserve: TransformersServe) -> None:
    lines = _stream(tserve, "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
    assert lines and all(line.startswith("data: {") for line in lines)
    last = json.loads(lines[-1].removeprefix("data: "))
    assert last["choices"][0]["finish_reason"] == "length"


def test_completions_stream_has_no_done_line(tserve: TransformersServe) -> None:
    lines = _stream(tserve, "/v1/completions", {"prompt": "hi", "max_tokens": 3})
    assert lines and "data: [DONE]" not in lines


def test_top_k_is_refused(tserve: TransformersServe) -> None:
    body = {"model": tserve.model, "messages": [{"role": "user", "content": "hi"}], "top_k": 5, "stream": True}
    response = httpx.post(tserve.url + "/v1/chat/completions", json=body, timeout=30.0)
    assert 400 <= response.status_code < 500
    assert "top_k" in response.text
