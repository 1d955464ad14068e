"""A deliberately naive caller, the negative control of ``serve-callers`` (never copy it).

It is what a legacy direct-SSE client looks like after a half-done migration: it retries a 503
at once, reads the POST response as the stream, then builds ``{submit_url}/{job_id}/stream``
itself, splits ``data: `` lines by hand, keeps the ``text`` of every event, treats the end of
the connection as the end of the job and never resumes or cancels.

``python -m conformance.callers.naive SUBMIT_URL PROMPT``
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable

import httpx

ATTEMPTS = 3


def _texts(lines: Iterable[str]) -> str:
    text = ""
    for line in lines:
        if not line.startswith("data: "):
            continue
        data = line[len("data: ") :]
        if data == "[DONE]":
            break
        try:
            payload = json.loads(data)
        except ValueError:
            text += data  # the legacy shape: raw text in data:
            continue
        if isinstance(payload, dict) and isinstance(payload.get("text"), str):
            text += payload["text"]
    return text


def call(submit_url: str, prompt: str) -> str:
    with httpx.Client(timeout=10) as http:
        response = http.post(submit_url, json={"prompt": prompt, "max_tokens": 32})
        for _ in range(ATTEMPTS - 1):
            if response.status_code != 503:
                break
            response = http.post(submit_url, json={"prompt": prompt, "max_tokens": 32})  # no wait
        response.raise_for_status()
        text = _texts(response.text.splitlines())  # the POST body as the stream
        if text:
            return text
        job_id = response.json()["job_id"]
        with http.stream("GET", f"{submit_url}/{job_id}/stream") as stream:
            stream.raise_for_status()
            return _texts(stream.iter_lines())


def main() -> int:
    if len(sys.argv) != 3:
        print("usage: python -m conformance.callers.naive SUBMIT_URL PROMPT", file=sys.stderr)
        return 2
    print(call(sys.argv[1], sys.argv[2]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
