"""Server-Sent Events encoding, written once for every engine.

Each event is ``id``, ``event`` and one line of JSON ``data``; msgspec escapes every control
character inside JSON strings, so token text can never break the framing.
"""

from __future__ import annotations

from typing import Final

import msgspec

DONE: Final = b"data: [DONE]\n\n"
KEEPALIVE: Final = b": keep-alive\n\n"
#: Litestar appends ``; charset=utf-8`` to text media types itself
MEDIA_TYPE: Final = "text/event-stream"

_encode_json = msgspec.json.Encoder().encode


def encode_event(event_id: int, event: str, payload: object) -> bytes:
    """One complete event block, terminated by the blank line that dispatches it."""
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (event_id, event.encode("ascii"), _encode_json(payload))
