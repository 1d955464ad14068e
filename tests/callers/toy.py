"""A small, correct caller written independently of the reference client, with knobs that break it.

It has its own SSE parser (bytes in, WHATWG dispatch at the blank line), so the suite is shown
to pass a caller that is not built on httpx-sse, and each knob turned away from its default
models one real caller bug (see ``defects.py``).
"""

from __future__ import annotations

import codecs
import contextlib
import json
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from conformance.callers.drive import CallerTarget

_LINE = re.compile(r"\r\n|\r|\n")


class CallFailed(Exception):
    """The toy caller reports a failure."""


@dataclass(frozen=True, slots=True)
class Knobs:
    send_job_id: bool = False
    build_stream_path: bool = False
    concat_sse_url: bool = False
    wait_retry_after: bool = True
    max_submits: int = 4
    resume: bool = True
    send_last_event_id: bool = True
    #: take Last-Event-ID from the last id: line seen, even of an event cut in half
    id_from_partial_event: bool = False
    #: reconnects without a new event before giving up; None: never give up
    max_resumes: int | None = 3
    #: pause before each reconnect (3 s is a standard EventSource's default)
    reconnect_delay_s: float = 0.0
    #: pause as the stream's `retry:` field says instead, as an EventSource does
    honour_retry_field: bool = False
    #: report a stream on another origin as blocked after reading it (a browser page without CORS)
    same_origin_only: bool = False
    stop_on_204: bool = True
    error_is_failure: bool = True
    error_details: bool = True
    skip_unknown_events: bool = True
    strict_fields: bool = False
    #: only ``data: `` (with the space) counts as a data line
    data_needs_space: bool = False
    strip_tokens: bool = False
    cancel_on_abandon: bool = True
    close_at_done: bool = True
    read_timeout_s: float = 10.0
    resume_on_timeout: bool = True


@dataclass(frozen=True, slots=True)
class Event:
    id: str | None
    type: str
    data: str


class SSEReader:
    """Incremental SSE parser: feed bytes, get the events dispatched at blank lines."""

    def __init__(self, *, data_needs_space: bool = False) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buffer = ""
        self._data: list[str] = []
        self._type = ""
        self._id: str | None = None
        self.id_line: str | None = None
        self.retry_ms: int | None = None
        self._data_needs_space = data_needs_space

    def feed(self, chunk: bytes) -> Iterator[Event]:
        self._buffer += self._decoder.decode(chunk)
        held = ""
        if self._buffer.endswith("\r"):  # maybe half of a CRLF: wait for the next byte
            self._buffer, held = self._buffer[:-1], "\r"
        parts = _LINE.split(self._buffer)
        self._buffer = parts.pop() + held
        for line in parts:
            event = self._line(line)
            if event is not None:
                yield event

    def _line(self, line: str) -> Event | None:
        if line == "":
            if not self._data:
                self._type = ""
                return None
            event = Event(self._id, self._type or "message", "\n".join(self._data))
            self._data, self._type = [], ""
            return event
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        if self._data_needs_space and name == "data" and not line.startswith("data: "):
            return None
        value = value.removeprefix(" ")
        if name == "id":
            self._id = self.id_line = value
        elif name == "event":
            self._type = value
        elif name == "data":
            self._data.append(value)
        elif name == "retry" and value.isdigit():
            self.retry_ms = int(value)
        return None


class ToyCaller:
    def __init__(self, knobs: Knobs | None = None) -> None:
        self.knobs = knobs or Knobs()
        self._submit_url = ""

    def __call__(self, target: CallerTarget) -> str:
        self._submit_url = target.submit_url
        timeout = httpx.Timeout(10.0, read=self.knobs.read_timeout_s)
        with httpx.Client(timeout=timeout) as http:
            answer, stream_url, status_url = self._submit(http, target)
            try:
                if self.knobs.strict_fields and set(answer) - {"job_id", "sse_url", "status_url"}:
                    raise CallFailed(f"unexpected fields in the submit answer: {sorted(answer)}")
                return self._stream(http, stream_url)
            except Exception:
                if self.knobs.cancel_on_abandon:
                    with contextlib.suppress(httpx.HTTPError):
                        http.delete(status_url)
                raise

    def _submit(self, http: httpx.Client, target: CallerTarget) -> tuple[dict[str, Any], str, str]:
        knobs = self.knobs
        body: dict[str, Any] = {"prompt": target.prompt, "max_tokens": 32}
        if knobs.send_job_id:
            body["job_id"] = "test-job-001"
        for attempt in range(1, knobs.max_submits + 1):
            response = http.post(target.submit_url, json=body)
            if response.status_code != 503:
                break
            if attempt == knobs.max_submits:
                raise CallFailed(f"submit answered 503 {attempt} times")
            if knobs.wait_retry_after:
                time.sleep(float(response.headers.get("retry-after", "1")))
        if response.status_code != 202:
            raise CallFailed(f"submit answered {response.status_code}")
        answer: dict[str, Any] = response.json()
        job_id, sse_url = answer["job_id"], answer["sse_url"]
        post_url = httpx.URL(target.submit_url)
        if knobs.build_stream_path:
            stream_url = f"{target.submit_url}/{job_id}/stream"
        elif knobs.concat_sse_url and not sse_url.startswith("http"):
            stream_url = target.base_url + sse_url
        else:
            stream_url = str(post_url.join(sse_url))
        status_url = str(post_url.join(answer.get("status_url") or f"{target.submit_url}/{job_id}"))
        return answer, stream_url, status_url

    def _stream(self, http: httpx.Client, url: str) -> str:
        knobs = self.knobs
        tokens: dict[int, str] = {}
        finish: dict[str, Any] | None = None
        last_id: str | None = None
        idle_resumes = 0
        retry_ms: int | None = None
        while True:
            headers = {"Last-Event-ID": last_id} if last_id is not None and knobs.send_last_event_id else {}
            progressed = done = no_content = False
            reader = SSEReader(data_needs_space=knobs.data_needs_space)
            try:
                with http.stream("GET", url, headers=headers) as response:
                    no_content = response.status_code == 204
                    if not no_content and response.status_code != 200:
                        raise CallFailed(f"stream answered {response.status_code}")
                    chunks = iter([]) if no_content else response.iter_bytes()
                    for chunk in chunks:
                        for event in reader.feed(chunk):
                            if event.data == "[DONE]":
                                done = True
                                break
                            if event.id is not None:
                                last_id, progressed = event.id, True
                            finish = self._event(event, tokens) or finish
                        if done:
                            break
                    if done and not knobs.close_at_done:
                        for _ in chunks:  # wait for the worker to close
                            pass
            except httpx.ReadTimeout:
                if not knobs.resume_on_timeout:
                    raise CallFailed("the stream timed out") from None
            except httpx.TransportError:
                pass
            if knobs.id_from_partial_event and reader.id_line is not None:
                last_id = reader.id_line
            retry_ms = reader.retry_ms if reader.retry_ms is not None else retry_ms
            if done or (no_content and knobs.stop_on_204):
                break
            if finish is not None and not knobs.resume:
                break
            if not knobs.resume:
                raise CallFailed("the stream was cut")
            idle_resumes = 0 if progressed else idle_resumes + 1
            if knobs.max_resumes is not None and idle_resumes > knobs.max_resumes:
                if finish is not None:
                    break
                raise CallFailed(f"the stream made no progress in {idle_resumes} reconnects")
            delay = retry_ms / 1000 if knobs.honour_retry_field and retry_ms is not None else knobs.reconnect_delay_s
            time.sleep(delay)
        if knobs.same_origin_only and httpx.URL(url).port != httpx.URL(self._submit_url).port:
            raise CallFailed(f"the browser blocked the cross-origin stream {url} (no Access-Control-Allow-Origin)")
        return self._result(tokens, finish)

    def _event(self, event: Event, tokens: dict[int, str]) -> dict[str, Any] | None:
        knobs = self.knobs
        if event.type not in ("started", "token", "end", "error"):
            if knobs.skip_unknown_events:
                return None
            raise CallFailed(f"unknown event type {event.type!r}")
        data = json.loads(event.data)
        known = {"started": {"job_id"}, "token": {"index", "text"}, "end": {"tokens_out", "stop_reason"}}
        if knobs.strict_fields and set(data) - known.get(event.type, {"code", "message"}):
            raise CallFailed(f"unexpected fields in {event.type}: {sorted(data)}")
        if event.type == "token":
            tokens.setdefault(int(data["index"]), data["text"])
        if event.type in ("end", "error"):
            return {"type": event.type, **data}
        return None

    def _result(self, tokens: dict[int, str], finish: dict[str, Any] | None) -> str:
        knobs = self.knobs
        texts = [tokens[index] for index in sorted(tokens)]
        text = "".join(t.strip() for t in texts) if knobs.strip_tokens else "".join(texts)
        if finish is None:
            raise CallFailed("the stream ended without end or error")
        if finish["type"] == "error" and knobs.error_is_failure:
            if knobs.error_details:
                raise CallFailed(f"generation failed: {finish['code']}: {finish['message']}")
            raise CallFailed("generation failed")
        return text


def main(argv: list[str]) -> int:
    """``python -m callers.toy KNOBS_JSON SUBMIT_URL BASE_URL PROMPT``: the toy as a command (the suite can kill it)."""
    if len(argv) != 4:
        print("usage: python -m callers.toy KNOBS_JSON SUBMIT_URL BASE_URL PROMPT", file=sys.stderr)
        return 2
    knobs, submit_url, base_url, prompt = argv
    try:
        text = ToyCaller(Knobs(**json.loads(knobs)))(CallerTarget("", base_url, submit_url, prompt))
    except Exception as exc:  # the failure is the report
        print(f"toy caller: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
