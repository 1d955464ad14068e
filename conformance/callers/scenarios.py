"""The adversarial worker's scenarios: each one legal under the contract, each one inconvenient.

A scenario is data: how the worker answers the submit, where ``sse_url`` points, which bytes
the stream carries and where (and how) the connection is cut. The exact completion text is
known in advance, so a caller's reassembled text can be compared byte for byte.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

SseUrlStyle = Literal["default", "absolute", "relative-query"]
Cut = Literal["none", "mid-event", "mid-utf8", "before-done", "every-attempt"]
Finish = Literal["end", "error"]

#: token texts: JSON escaping must carry newlines, CR, SSE syntax and multi-byte UTF-8 intact
TOKENS: tuple[str, ...] = (
    "Hello",
    ",",
    " wörld",
    "\n",
    "data: [DONE]",
    "\r\n",
    " 日本語",
    " 🙂",
    ": not a comment",
    ' "quoted"',
    " end.",
)
#: tokens sent before the ``error`` event of the error scenario
ERROR_AFTER_TOKENS = 3
ERROR_CODE = "engine_failure"
ERROR_MESSAGE = "the adversarial worker's engine failed on purpose"
#: the token whose event the mid-event cut splits (its ``id:`` line is delivered, its data is not)
MID_EVENT_TOKEN = 5
#: the token whose multi-byte character the mid-UTF-8 cut splits, and the character
MID_UTF8_TOKEN = 6
MID_UTF8_CHAR = "本"
DONE_LINE = b"data: [DONE]\n\n"
#: the contract's default keep-alive interval (DC-2.8)
DEFAULT_KEEPALIVE_S = 15.0
#: the slow-first-token scenario advertises this interval and stays silent just under it
SHORT_KEEPALIVE_S = 5.0
SLOW_FIRST_TOKEN_S = 4.5
#: the dead stream asks for reconnects this soon, so a caller that never gives up passes the
#: suite's bound within seconds (a standard EventSource honours it)
DEAD_STREAM_RETRY_MS = 100


@dataclass(frozen=True, slots=True)
class WireEvent:
    id: int
    type: str
    data: dict[str, Any]

    @property
    def is_final(self) -> bool:
        return self.type in ("end", "error")

    def encode(self, *, awkward: bool = False) -> bytes:
        payload = json.dumps(self.data, ensure_ascii=False, separators=(",", ":"))
        if awkward:  # legal SSE spellings: no space after the colon, CRLF, a comment between fields
            return f"id:{self.id}\r\n: keep-alive\r\nevent:{self.type}\r\ndata:{payload}\r\n\r\n".encode()
        return f"id: {self.id}\nevent: {self.type}\ndata: {payload}\n\n".encode()


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    #: what the worker does, one line
    title: str
    #: the caller rules (DC-C-n) this scenario is built to test
    rules: tuple[str, ...]
    sse_url: SseUrlStyle = "default"
    #: submits answered 503 before one is accepted; -1: every submit
    busy_submits: int = 0
    retry_after_s: int = 1
    cut: Cut = "none"
    awkward_framing: bool = False
    unknown_events: bool = False
    first_token_delay_s: float = 0.0
    #: the worker holds the connection open this long after ``[DONE]`` (a buffering proxy)
    close_delay_s: float = 0.0
    finish: Finish = "end"
    #: the keep-alive interval /health advertises (DC-2.8): the longest silence a caller must sit out
    keepalive_s: float = DEFAULT_KEEPALIVE_S
    #: a ``retry:`` field (ms) at the start of every connection; an EventSource waits that long to reconnect
    retry_ms: int | None = None

    @property
    def expected_text(self) -> str | None:
        """The completion a conforming caller reports; None where it must report failure."""
        if self.finish == "error" or self.busy_submits < 0 or self.cut == "every-attempt":
            return None
        return "".join(TOKENS)

    def events(self, job_id: str) -> list[WireEvent]:
        """The job's events with consecutive ids, as every (re)connection replays them."""
        typed: list[tuple[str, dict[str, Any]]] = [("started", {"job_id": job_id})]
        if self.unknown_events:
            typed[0][1]["model"] = "adversary-1"
            typed.append(("narration", {"text": "(thinking…)", "phase": "warmup"}))
        tokens = TOKENS[:ERROR_AFTER_TOKENS] if self.finish == "error" else TOKENS
        for index, text in enumerate(tokens):
            data: dict[str, Any] = {"index": index, "text": text}
            if self.unknown_events:
                data |= {"logprob": -0.25, "token_ids": [index + 100]}
                if index == 3:
                    typed.append(("usage", {"tokens_so_far": index}))
            typed.append(("token", data))
        if self.finish == "error":
            typed.append(("error", {"code": ERROR_CODE, "message": ERROR_MESSAGE}))
        else:
            end: dict[str, Any] = {"tokens_out": len(tokens), "stop_reason": "eos"}
            if self.unknown_events:
                end["usage"] = {"prompt_tokens": 3, "completion_tokens": len(tokens)}
            typed.append(("end", end))
        return [WireEvent(number, kind, data) for number, (kind, data) in enumerate(typed, start=1)]


SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        "absolute-sse-url",
        "sse_url is an absolute URL on a second listener (another port of the same host)",
        ("DC-C-2",),
        sse_url="absolute",
    ),
    Scenario(
        "relative-sse-url-query",
        "sse_url is a relative reference with '..' and a signed query string (../streams/ID?sig=...)",
        ("DC-C-2",),
        sse_url="relative-query",
    ),
    Scenario(
        "cut-mid-event",
        "the connection is reset in the middle of an event, after its id: line",
        ("DC-C-4", "DC-C-5"),
        cut="mid-event",
    ),
    Scenario(
        "cut-mid-utf8",
        "events arrive in small chunks that split characters, and the stream closes inside a UTF-8 sequence",
        ("DC-C-4", "DC-C-5"),
        cut="mid-utf8",
    ),
    Scenario(
        "retry-after",
        "the first submit answers 503 with Retry-After: 1, the next one is accepted",
        ("DC-C-3",),
        busy_submits=1,
        retry_after_s=1,
    ),
    Scenario(
        "busy",
        "every submit answers 503 with Retry-After: 0: the queue stays full",
        ("DC-C-3",),
        busy_submits=-1,
        retry_after_s=0,
    ),
    Scenario(
        "keepalive",
        "keep-alive comments (also between fields), retry: fields, CRLF line ends, data: without a space",
        ("DC-C-8",),
        awkward_framing=True,
    ),
    Scenario(
        "unknown-events",
        "unknown event types (one with a text field) and unknown JSON fields in the submit answer and in events",
        ("DC-C-8",),
        unknown_events=True,
    ),
    Scenario(
        "slow-first-token",
        f"/health advertises keepalive_s {SHORT_KEEPALIVE_S:g}; after `started` the stream is silent for "
        f"{SLOW_FIRST_TOKEN_S:g} s (just under it) before the first token",
        ("DC-C-11",),
        first_token_delay_s=SLOW_FIRST_TOKEN_S,
        keepalive_s=SHORT_KEEPALIVE_S,
    ),
    Scenario(
        "error-event",
        "the job fails: three tokens, then an `error` event and [DONE]",
        ("DC-C-7",),
        finish="error",
    ),
    Scenario(
        "done-204",
        "the connection closes after `end`, before [DONE]; a resume after the end answers 204",
        ("DC-C-6",),
        cut="before-done",
    ),
    Scenario(
        "dead-stream",
        f"every connection starts with `retry: {DEAD_STREAM_RETRY_MS}` and is cut right after `started` "
        "(or a keep-alive): the stream never progresses",
        ("DC-C-4", "DC-C-9"),
        cut="every-attempt",
        retry_ms=DEAD_STREAM_RETRY_MS,
    ),
    Scenario(
        "late-close",
        "after [DONE] the worker holds the connection open for 2 s before it closes it",
        ("DC-C-10",),
        close_delay_s=2.0,
    ),
)

SCENARIO_BY_NAME: dict[str, Scenario] = {scenario.name: scenario for scenario in SCENARIOS}
