"""Request and stream mapping for each upstream API the gateway speaks (pure functions, no I/O).

=====================  ===========================  ===========================  ==================
job field              ``openai-chat``              ``openai-completions``       ``legacy``
=====================  ===========================  ===========================  ==================
prompt                 ``messages: [{role: user}]`` ``prompt``                   ``prompt``
max_tokens             ``max_tokens``               ``max_tokens``               ``max_tokens``
temperature, top_p     same names                   same names                   ``temperature`` only
seed                   ``seed`` (when set)          ``seed`` (when set)          ``seed`` (when set)
stop                   ``stop`` (when non-empty)    ``stop`` (when non-empty)    not sent
top_k                  per ``--upstream-top-k``     per ``--upstream-top-k``     not sent
(none)                 ``stream: true``, ``model``, ``stream_options.include_usage``  ``job_id`` (random)
=====================  ===========================  ===========================  ==================

The worker core applies ``max_tokens`` and ``stop`` to whatever text arrives, so an upstream
that ignores them still yields a conforming job; passing them on saves the upstream's compute.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import Any, Final, Literal

import msgspec

from workers.engines.base import GenerationRequest, StopReason

UpstreamApi = Literal["openai-chat", "openai-completions", "legacy"]
API_NAMES: Final[tuple[UpstreamApi, ...]] = ("openai-chat", "openai-completions", "legacy")
TopKMode = Literal["auto", "pass", "drop"]
TOP_K_MODES: Final[tuple[TopKMode, ...]] = ("auto", "pass", "drop")

PATHS: Final[dict[UpstreamApi, str]] = {
    "openai-chat": "/v1/chat/completions",
    "openai-completions": "/v1/completions",
    "legacy": "/v1/inference",
}
#: what the liveness probe asks; the OpenAI servers' model list also names the model to use
PROBE_PATHS: Final[dict[UpstreamApi, str]] = {
    "openai-chat": "/v1/models",
    "openai-completions": "/v1/models",
    "legacy": "/health",
}
DONE: Final = "[DONE]"

#: how OpenAI-compatible servers word "the prompt does not fit": vLLM ("maximum context length"),
#: llama.cpp ("exceeds the available context size"), TGI ("must be <= ..."), transformers serve
#: ("the model takes at most N ... --max-model-len")
_CONTEXT_LENGTH: Final = re.compile(
    r"context[ _-]?(length|size|window)|max[ _-]?model[ _-]?len|maximum (context|sequence)|"
    r"takes at most \d+|prompt is too long|input is too long|must be <= \d+",
    re.IGNORECASE,
)
_TOP_K: Final = re.compile(r"\btop_k\b")


def request_body(api: UpstreamApi, request: GenerationRequest, model: str, *, send_top_k: bool) -> dict[str, Any]:
    """The JSON body of the upstream request for one job."""
    if api == "legacy":
        body: dict[str, Any] = {
            "job_id": secrets.token_hex(16),
            "prompt": request.prompt,
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
        }
        if request.seed is not None:
            body["seed"] = request.seed
        return body
    body = {"model": model, "stream": True, "stream_options": {"include_usage": True}}
    if api == "openai-chat":
        body["messages"] = [{"role": "user", "content": request.prompt}]
    else:
        body["prompt"] = request.prompt
    body["max_tokens"] = request.max_tokens
    body["temperature"] = request.temperature
    body["top_p"] = request.top_p
    if request.seed is not None:
        body["seed"] = request.seed
    if request.stop:
        body["stop"] = list(request.stop)
    if send_top_k and request.top_k > 0:
        body["top_k"] = request.top_k
    return body


@dataclass(slots=True)  # not frozen: one per upstream event, and a frozen __init__ costs more
class Delta:
    """What one upstream event says: text, and at the end why and how many tokens."""

    text: str = ""
    finish_reason: str | None = None
    #: the upstream's ``stop_reason`` (vLLM names the stop string that matched)
    matched_stop: str | None = None
    completion_tokens: int | None = None
    #: the event that ends the stream (``[DONE]``)
    done: bool = False
    #: an error the upstream reported inside the stream
    error: str | None = None


_IGNORED: Final = Delta()


class UpstreamProtocolError(Exception):
    """An upstream event is not what its API sends."""


_decoder: Final = msgspec.json.Decoder()


def parse_event(api: UpstreamApi, event: str, data: str) -> Delta:
    """Map one upstream SSE event (its type and data) of ``api``."""
    if data.strip() == DONE:
        return Delta(done=True)
    if api == "legacy":
        # the legacy shape streams raw text in unnamed events; named ones (narration) are not text
        return Delta(text=data) if event == "message" else _IGNORED
    if not data.strip():
        return _IGNORED
    try:
        payload = _decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise UpstreamProtocolError(f"upstream sent an event that is not JSON: {data[:80]!r}") from exc
    if not isinstance(payload, dict):
        raise UpstreamProtocolError(f"upstream sent an event that is not a JSON object: {data[:80]!r}")
    error = payload.get("error")
    if error:
        message = error.get("message") if isinstance(error, dict) else error
        return Delta(error=str(message)[:300])
    usage = payload.get("usage")
    tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
    completion_tokens = tokens if isinstance(tokens, int) and tokens >= 0 else None
    choices = payload.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return Delta(completion_tokens=completion_tokens)  # e.g. the final usage chunk, `choices: []`
    choice = choices[0]
    if api == "openai-chat":
        delta = choice.get("delta")
        text = delta.get("content") if isinstance(delta, dict) else None
    else:
        text = choice.get("text")
    finish = choice.get("finish_reason")
    matched = choice.get("stop_reason")
    return Delta(
        text=text if isinstance(text, str) else "",
        finish_reason=finish if isinstance(finish, str) else None,
        matched_stop=matched if isinstance(matched, str) else None,
        completion_tokens=completion_tokens,
    )


def stop_reason(finish_reason: str, request: GenerationRequest, text: str, matched_stop: str | None) -> StopReason:
    """The contract's stop_reason for an upstream ``finish_reason``.

    ``stop`` means "a stop string matched" only when one did: the upstream named it
    (``matched_stop``) or it is in the text (servers that keep it); otherwise the model ended (``eos``).
    """
    if finish_reason == "length":
        return "max_tokens"
    matched = matched_stop in request.stop or any(stop in text for stop in request.stop)
    return "stop" if finish_reason == "stop" and matched else "eos"


def is_context_length_error(message: str) -> bool:
    """Whether an upstream 4xx says the prompt plus max_tokens do not fit the model."""
    return bool(_CONTEXT_LENGTH.search(message))


def names_top_k(message: str) -> bool:
    """Whether an upstream 4xx is about the ``top_k`` field (servers that do not take it)."""
    return bool(_TOP_K.search(message))


def error_detail(body: bytes) -> str:
    """The human part of an upstream error body (OpenAI ``error.message``, FastAPI ``detail``), one line."""
    text = body.decode("utf-8", "replace")
    try:
        payload = _decoder.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError):  # not JSON: the raw text is the detail
        return " ".join(text.split())[:300]
    if isinstance(payload, dict):
        for key in ("error", "detail", "message"):
            value = payload.get(key)
            if isinstance(value, dict):
                value = value.get("message", value)
            if value:
                return " ".join(str(value).split())[:300]
    return " ".join(text.split())[:300]
