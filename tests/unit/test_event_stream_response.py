"""`sse.EventStreamResponse`: the head through the app's send, the body past its wrappers, [DONE] ends it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from workers import sse


async def _blocks(*blocks: bytes) -> AsyncIterator[bytes]:
    for block in blocks:
        yield block


def _run(blocks: tuple[bytes, ...], scope: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    app_sent: list[dict[str, Any]] = []
    body_sent: list[dict[str, Any]] = []

    async def app_send(message: dict[str, Any]) -> None:
        app_sent.append(message)

    async def body_send(message: dict[str, Any]) -> None:
        body_sent.append(message)

    async def receive() -> dict[str, Any]:
        await asyncio.Event().wait()  # the client never leaves
        return {}

    if scope.get("with_body_send"):
        scope = {sse.BODY_SEND: body_send}
    asyncio.run(sse.EventStreamResponse(_blocks(*blocks), [])(scope, receive, app_send))
    return app_sent, body_sent


def test_the_block_with_done_ends_the_response_in_one_write() -> None:
    events = b"id: 1\nevent: started\ndata: {}\n\n"
    last = b'id: 2\nevent: end\ndata: {"tokens_out":0}\n\n' + sse.DONE
    app_sent, body_sent = _run((events, last), {"with_body_send": True})
    assert [message["type"] for message in app_sent] == ["http.response.start"]
    assert body_sent == [
        {"type": "http.response.body", "body": events, "more_body": True},
        {"type": "http.response.body", "body": last, "more_body": False},
    ]


def test_a_stream_that_ends_without_done_is_closed_with_an_empty_write() -> None:
    keepalive = sse.KEEPALIVE
    app_sent, body_sent = _run((keepalive,), {})
    assert body_sent == []  # no body send in the scope: everything through the app's send
    assert app_sent[1:] == [
        {"type": "http.response.body", "body": keepalive, "more_body": True},
        {"type": "http.response.body", "body": b"", "more_body": False},
    ]
