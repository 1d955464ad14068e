"""The injection points of `workers.app.create_app`: what a test (or an embedding) may substitute.

Every field has the production default, so ``create_app(engine, settings)`` needs none of them.
Tests replace a part through these typed seams, the way httpx tests go through transports, instead
of patching module internals; the deliberately broken workers of the test suite are built this way.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from workers import requests
from workers.config import WorkerSettings
from workers.engines.base import Engine, GenerationRequest
from workers.metrics import JobMetrics
from workers.registry import SYSTEM_CLOCK, Clock, RegistryBackend, create_registry, new_job_id
from workers.schemas import InferenceRequest
from workers.sse import SSE_ENCODER, EventEncoder

__all__ = ["DEFAULT_SEAMS", "ASGIApp", "Middleware", "RegistryFactory", "Seams"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]]
#: wraps the whole app, outside routing, auth and the contract header: it sees the wire as a client does
Middleware = Callable[[ASGIApp], ASGIApp]


class RegistryFactory(Protocol):
    """Builds the registry backend (`workers.registry.create_registry` is the default)."""

    def __call__(
        self,
        engine: Engine,
        settings: WorkerSettings,
        metrics: JobMetrics,
        *,
        encoder: EventEncoder,
        clock: Clock,
        new_id: Callable[[], str],
    ) -> RegistryBackend: ...


@dataclass(frozen=True, slots=True)
class Seams:
    """What `create_app` builds the worker from, besides the engine and the settings."""

    #: a new job's id (the contract wants 128 random bits, URL-safe)
    new_job_id: Callable[[], str] = new_job_id
    #: how events become bytes, on every backend (the framing, the final ``[DONE]``, the keep-alive)
    encoder: EventEncoder = SSE_ENCODER
    #: the submit body to an `InferenceRequest` (raises `workers.problems.ProblemException` on bad input)
    decode_request: Callable[[bytes], InferenceRequest] = requests.decode_request
    #: a decoded request to what the engine gets (defaults and caps applied)
    to_generation: Callable[[InferenceRequest, WorkerSettings], GenerationRequest] = requests.to_generation
    #: the job lifecycle's clocks (timestamps, TTLs, latency histograms)
    clock: Clock = SYSTEM_CLOCK
    #: builds the registry backend from the engine, settings, metrics and the seams above
    registry: RegistryFactory = create_registry
    #: ASGI middleware around the whole app, the first listed outermost
    middleware: Sequence[Middleware] = ()


DEFAULT_SEAMS = Seams()
