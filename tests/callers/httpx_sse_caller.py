"""httpx-sse used the way its README shows, with nothing added: the naive third-party caller.

It follows ``sse_url``, dispatches on the event type, reports ``error`` as a failure and closes
at ``[DONE]`` — but it has no reconnect and no cancel, because httpx-sse has neither: a cut
stream is the end of the call. Graded, it must fail DC-C-4 (and DC-C-9), as it should.
"""

from __future__ import annotations

import json

import httpx
from httpx_sse import connect_sse

from conformance.callers.record import CallerTarget


class StreamFailed(Exception):
    """The naive caller reports a failure."""


def httpx_sse_caller(target: CallerTarget) -> str:
    with httpx.Client(timeout=httpx.Timeout(10.0, read=30.0)) as http:
        response = http.post(target.submit_url, json={"prompt": target.prompt, "max_tokens": 32})
        response.raise_for_status()
        stream_url = httpx.URL(target.submit_url).join(response.json()["sse_url"])
        text, finish = [], None
        with connect_sse(http, "GET", str(stream_url)) as source:
            for sse in source.iter_sse():
                if sse.data == "[DONE]":
                    break
                if sse.event == "token":
                    text.append(json.loads(sse.data)["text"])
                elif sse.event in ("end", "error"):
                    finish = (sse.event, json.loads(sse.data))
        if finish is None:
            raise StreamFailed("the stream ended without end or error")
        kind, data = finish
        if kind == "error":
            raise StreamFailed(f"generation failed: {data['code']}: {data['message']}")
        return "".join(text)
