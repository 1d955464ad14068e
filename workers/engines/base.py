"""The one protocol an engine implements.

Everything HTTP, SSE, lifecycle, limits, auth and metrics lives in the worker core
(`workers.app`, `workers.registry`); an engine only turns a `GenerationRequest` into an
async iterator of `Chunk`s and reports its health. Cancellation is the consumer closing the
iterator (``aclose()`` / task cancellation): an engine releases its resources in ``finally``.

What the core guarantees to every engine (`workers.generation`, DC-2.13):

* ``max_tokens``: ``tokens_out`` is the sum of the chunks' ``tokens``, capped at ``max_tokens``;
  the chunk that reaches it ends the job with ``stop_reason: max_tokens``;
* ``stop``: the published text ends before the stop string completed first, wherever the
  chunk boundaries fall (a tail that may grow into a stop string is held back); ``stop_reason: stop``;
* ``stop_reason``: a chunk's own ``stop_reason`` ends the job with it; an iterator that simply
  ends gives ``eos`` (``max_tokens`` when the budget was used up);
* when the core ends a job (a limit, a stop string, DELETE, shutdown, TTL) it closes the iterator
  with ``aclose()``, so the engine stops computing; nothing more is read from it.

So an engine may stream text and nothing else. One that honours ``max_tokens`` and ``stop`` itself
(the mock, exllamav2) may keep doing so: the result is the same. `EngineError` ends the job with an
``error`` event carrying its code; any other exception ends it with ``internal_error``.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

StopReason = Literal["max_tokens", "eos", "stop", "cancelled"]


class EngineError(Exception):
    """A generation failed mid-way; the core turns it into an `error` event.

    ``code`` is a short machine-readable identifier that ends up in the event's ``code``.
    """

    def __init__(self, message: str, code: str = "engine_error") -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class EngineUnavailable(Exception):
    """An engine cannot start (missing package, no CUDA, bad model directory).

    The CLI prints ``str(exc)`` as one line and exits with code 2.
    """


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """Validated, capped parameters of one job, as handed to an engine."""

    prompt: str
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Chunk:
    """One text delta of a completion.

    ``tokens`` is the number of model tokens this delta covers (a real tokenizer may hold back
    incomplete UTF-8, so one chunk can cover several tokens, or zero text). ``stop_reason`` is
    optional: the core reads nothing after a chunk that sets it; that chunk's text may be empty.
    """

    text: str
    tokens: int = 1
    stop_reason: StopReason | None = None


@dataclass(frozen=True, slots=True)
class EngineHealth:
    ok: bool
    detail: str = ""
    extra: dict[str, object] = field(default_factory=dict)


@runtime_checkable
class Engine(Protocol):
    """What an engine implements. See the module docstring for the contract."""

    #: short engine name reported in /health (``mock``, ``exllamav2``)
    name: str
    #: model identifier reported in /health
    model: str
    #: True when the same request (prompt, parameters, seed) always yields the same chunks
    deterministic: bool
    #: how many jobs may generate at once; further jobs wait in the core's bounded queue
    max_concurrency: int

    async def start(self) -> None:
        """Load resources. Raise `EngineUnavailable` with a one-line reason on failure."""

    async def close(self) -> None:
        """Release resources; called once at shutdown."""

    def health(self) -> EngineHealth:
        """Truthful state: ``ok`` only while the engine can serve a new job."""

    def generate(self, request: GenerationRequest) -> AsyncGenerator[Chunk, None]:
        """Start one job. Closing the iterator early cancels the job promptly."""
