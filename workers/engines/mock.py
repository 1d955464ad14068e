"""A deterministic engine for orchestrator authors and the conformance suite.

The same prompt, sampling parameters and seed give the same tokens in every run and process:
the random stream is seeded from a SHA-256 of the request (``hash()`` of a str is salted per
process). ``max_tokens`` and ``stop`` do not feed the seed, so a shorter run is a prefix of a
longer one. The vocabulary is chosen to break naive SSE code.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import random
from collections.abc import AsyncGenerator
from typing import Final

from workers.engines.base import Chunk, EngineError, EngineHealth, GenerationRequest, StopReason
from workers.generation import first_stop, held_back

VOCABULARY: Final[tuple[str, ...]] = (
    " the",
    " a",
    " worker",
    " streams",
    " tokens",
    " to",
    " an",
    " orchestrator",
    ".",
    ",",
    "Hello",
    " world",
    "\n",
    "\r\n",
    "\r",
    "\n\n",
    " ",
    "data: [DONE]",
    "[DONE]",
    ": comment",
    "id: 7",
    "event: end",
    "日本語",
    "漢字",
    "🚀",
    "👩‍💻",
    "é",
    "\t",
    '"quoted"',
    "back\\slash",
    "\u2028",
    "\u0085",
    "{}",
)
_MOCK_MODEL: Final = "mock-tricky-v1"
#: below this temperature sampling is as sharp as at this temperature (and still not greedy)
_MIN_TEMPERATURE: Final = 1e-3


def _seed_for(request: GenerationRequest) -> int:
    greedy = request.temperature == 0
    material = "\x1f".join(
        (
            _MOCK_MODEL,
            request.prompt,
            "greedy" if greedy else f"{request.temperature!r}|{request.top_p!r}|{request.top_k}",
            "" if greedy else str(request.seed if request.seed is not None else 0),
        )
    )
    return int.from_bytes(hashlib.sha256(material.encode("utf-8")).digest()[:8], "big")


def _next_token(rng: random.Random, request: GenerationRequest) -> str:
    ranking = list(range(len(VOCABULARY)))
    rng.shuffle(ranking)
    if request.temperature == 0:
        return VOCABULARY[ranking[0]]
    candidates = ranking[: request.top_k] if request.top_k else ranking
    if request.top_p < 1:
        candidates = candidates[: max(1, round(len(candidates) * request.top_p))]
    return VOCABULARY[rng.choices(candidates, weights=_weights(len(candidates), request.temperature))[0]]


def _weights(count: int, temperature: float) -> list[float]:
    """Sampling weights ``(1 + rank) ** (-1 / temperature)`` for ranks ``0 .. count - 1``.

    Computed in log space: the power itself overflows a float for small temperatures (33 ** 1000),
    while its reciprocal only underflows to 0. Rank 0 always weighs 1, so the total is never 0.
    """
    exponent = 1 / max(temperature, _MIN_TEMPERATURE)
    return [math.exp(-exponent * math.log1p(rank)) for rank in range(count)]


class MockEngine:
    name = "mock"
    model = _MOCK_MODEL
    deterministic = True

    def __init__(
        self,
        *,
        token_delay_s: float = 0.0,
        fail_after_tokens: int | None = None,
        fail_prompt: str | None = None,
        max_concurrency: int = 16,
    ) -> None:
        if token_delay_s < 0:
            raise ValueError("token delay must be >= 0")
        self.token_delay_s = token_delay_s
        self.fail_after_tokens = fail_after_tokens
        #: with ``fail_after_tokens``: only prompts containing this text fail (one job fails, others run on)
        self.fail_prompt = fail_prompt
        self.max_concurrency = max_concurrency
        self._healthy = True

    async def start(self) -> None:
        self._healthy = True

    async def close(self) -> None:
        self._healthy = False

    def health(self) -> EngineHealth:
        return EngineHealth(ok=self._healthy, detail="" if self._healthy else "engine closed")

    def tokens(self, request: GenerationRequest) -> list[str]:
        """The raw token sequence for a request, ignoring ``stop`` (for tests and the legacy worker)."""
        rng = random.Random(_seed_for(request))
        return [_next_token(rng, request) for _ in range(request.max_tokens)]

    def _fails(self, request: GenerationRequest) -> bool:
        if self.fail_after_tokens is None:
            return False
        return self.fail_prompt is None or self.fail_prompt in request.prompt

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[Chunk, None]:
        rng = random.Random(_seed_for(request))
        pending = ""
        pending_tokens = 0
        stop_reason: StopReason = "max_tokens"
        for produced in range(1, request.max_tokens + 1):
            if self.token_delay_s:
                await asyncio.sleep(self.token_delay_s)
            else:
                await asyncio.sleep(0)  # keeps cancellation prompt even with no delay
            if self._fails(request) and produced > (self.fail_after_tokens or 0):
                raise EngineError("simulated engine failure (--fail-after)", code="simulated_failure")
            pending += _next_token(rng, request)
            pending_tokens += 1
            cut = first_stop(pending, request.stop)
            if cut >= 0:
                pending = pending[:cut]
                stop_reason = "stop"
                break
            keep = held_back(pending, request.stop) if request.stop else 0
            ready, pending = pending[: len(pending) - keep], pending[len(pending) - keep :]
            if ready:
                yield Chunk(ready, tokens=pending_tokens)
                pending_tokens = 0
        yield Chunk(pending, tokens=pending_tokens, stop_reason=stop_reason)
