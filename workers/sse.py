"""Server-Sent Events encoding, written once for every engine.

Each event is ``id``, ``event`` and one line of JSON ``data``; msgspec escapes every control
character inside JSON strings, so token text can never break the framing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any, Final

import msgspec

DONE: Final = b"data: [DONE]\n\n"
KEEPALIVE: Final = b": keep-alive\n\n"
#: Litestar appends ``; charset=utf-8`` to text media types itself; `EventStreamResponse` names it
MEDIA_TYPE: Final = "text/event-stream"
#: the scope key under which the app leaves the ``send`` it was called with, for event stream bodies
BODY_SEND: Final = "dualcall.body_send"
_CONTENT_TYPE: Final = (b"content-type", MEDIA_TYPE.encode() + b"; charset=utf-8")

_encode_json = msgspec.json.Encoder().encode


def encode_event(event_id: int, event: str, payload: object) -> bytes:
    """One complete event block, terminated by the blank line that dispatches it."""
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (event_id, event.encode("ascii"), _encode_json(payload))


def encode_token(event_id: int, index: int, text: str) -> bytes:
    """``encode_event(event_id, "token", TokenData(index=index, text=text))``, without building the struct.

    The one event per generated token: the JSON string is msgspec's encoding of ``text`` alone.
    """
    return b'id: %d\nevent: token\ndata: {"index":%d,"text":%s}\n\n' % (event_id, index, _encode_json(text))


class EventEncoder:
    """How a job's events become bytes: the seam every backend writes its log through.

    The default is the contract's framing (`encode_event`, `encode_token`, `DONE`, `KEEPALIVE`);
    a subclass passed to `workers.app.create_app` (``Seams.encoder``) changes the wire for tests.
    ``final`` is the last block of a job's log: its ``end``/``error`` event followed by ``[DONE]``.
    """

    __slots__ = ()

    #: the comment a reader sends when no event came for a keep-alive interval
    keepalive: bytes = KEEPALIVE

    def event(self, event_id: int, event: str, payload: object) -> bytes:
        return encode_event(event_id, event, payload)

    def token(self, event_id: int, index: int, text: str) -> bytes:
        return encode_token(event_id, index, text)

    def final(self, event_id: int, event: str, payload: object) -> bytes:
        return encode_event(event_id, event, payload) + DONE


#: the contract's encoding
SSE_ENCODER: Final = EventEncoder()


class EventStreamResponse:
    """A raw ASGI response for an event stream: the head, then each block of ``events`` as one write.

    Litestar's ``Stream`` does the same with an anyio task group, a message dict built per chunk
    and str/bytes checks; here the blocks are bytes already, so each token costs one ``send``.
    The head goes through the app's ``send`` (its wrappers add app-wide headers: the contract
    version); the body blocks go to the ``send`` the app was called with (``scope[BODY_SEND]``, when
    the app put it there), past wrappers that only ever act on the head. The block that ends with
    ``[DONE]`` is the last one and goes out as the response's end, one write instead of two.
    A client that goes away ends the stream: a watcher waits for ``http.disconnect`` and cancels
    the streaming task, which closes ``events`` (the reader leaves the job) and returns normally.
    """

    __slots__ = ("events", "headers")

    def __init__(self, events: AsyncIterator[bytes], headers: list[tuple[bytes, bytes]]) -> None:
        self.events = events
        self.headers = [_CONTENT_TYPE, *headers]

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.headers})
        send_body = scope.get(BODY_SEND, send)
        streaming = asyncio.current_task()
        assert streaming is not None
        state = {"open": True, "client_left": False}

        async def watch_disconnect() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            if state["open"]:
                state["client_left"] = True
                streaming.cancel()

        watcher = asyncio.get_running_loop().create_task(watch_disconnect())
        try:
            ended = False
            async with contextlib.aclosing(self.events) as events:  # type: ignore[type-var]
                async for block in events:
                    ended = block.endswith(DONE)
                    await send_body({"type": "http.response.body", "body": block, "more_body": not ended})
                    if ended:
                        break
            state["open"] = False
            if not ended:
                await send_body({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not state["client_left"]:
                raise
            streaming.uncancel()
        finally:
            state["open"] = False
            # not awaited: awaiting it here could swallow a cancellation meant for this task
            watcher.cancel()
