"""Broken workers for how valid requests end (DC-2.15) and for request validation at the boundaries.

Imported at the end of `defects.py`, whose `defect` decorator registers them in the one catalogue.
The fuzz-caught entries are found by the deterministic boundary cases (schemathesis' coverage phase),
so the default budget (25 examples, seed 0) catches them in every run.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Callable
from typing import Any

import msgspec

from workers import requests as worker_requests
from workers.config import WorkerSettings
from workers.engines.base import Chunk, GenerationRequest
from workers.problems import ProblemException
from workers.schemas import InferenceRequest

from .defects import EngineWrapper, _engine, _map_generation, _wrap_decode, defect, variant

#: the contract's largest max_tokens (openapi/dualcall.yaml)
_CONTRACT_MAX_TOKENS = 4096


def _fail_engine(fails: Callable[[GenerationRequest, int], bool]) -> None:
    """The mock engine raises an unexpected exception (the core's `internal_error`) once ``fails(request, tokens)``."""

    class Failing(EngineWrapper):
        async def generate(self, request: GenerationRequest) -> AsyncGenerator[Chunk, None]:
            produced = 0
            async for chunk in self.inner.generate(request):
                if fails(request, produced):
                    raise RuntimeError("planted engine bug")
                produced += chunk.tokens
                yield chunk

    _engine(Failing)


def _rewrite_body(change: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    """The submit decoder sees ``change(body)`` for a JSON object body (anything else passes unchanged)."""

    def decode(original: Callable[[bytes], InferenceRequest], body: bytes) -> InferenceRequest:
        try:
            data = json.loads(body)
        except ValueError:
            return original(body)
        if isinstance(data, dict):
            body = json.dumps(change(data)).encode()
        return original(body)

    _wrap_decode(decode)


# -- DC-2.15: valid requests end without an internal error --------------------------------------------------


@defect(
    "internal-error-when-sampling-hot",
    "sampling above temperature 0.5 crashes the engine: those jobs end with error internal_error",
    caught_by=("DC-STREAM-014",),
)
def _internal_error_when_sampling_hot() -> None:
    _fail_engine(lambda request, produced: request.temperature > 0.5)


@defect(
    "internal-error-after-16-tokens",
    "a job that crosses its first 16-token cache block fails with internal_error (short jobs pass)",
    caught_by=("DC-STREAM-014",),
    # the reference stream (24 tokens) is read by DC-STREAM-002; only the sweep of it finds the error
    runs_with=("DC-STREAM-002",),
)
def _internal_error_after_16_tokens() -> None:
    _fail_engine(lambda request, produced: produced >= 16)


@defect(
    "internal-error-on-largest-seed",
    "the engine's int64 seed arithmetic overflows for seeds near 2**63-1: the job ends with error internal_error",
    caught_by=("DC-FUZZ-004", "DC-STREAM-014"),
)
def _internal_error_on_largest_seed() -> None:
    _fail_engine(lambda request, produced: request.seed is not None and request.seed >= 2**62)


# -- DC-1.1 / DC-1.5 at the boundaries (found by the coverage phase's deterministic cases) ----------------------


@defect(
    "null-optional-field-accepted",
    "null for an optional field is read as 'use the default' instead of being rejected with 422",
    caught_by=("DC-FUZZ-001",),
)
def _null_optional_field_accepted() -> None:
    _rewrite_body(lambda data: {key: value for key, value in data.items() if value is not None or key == "prompt"})


@defect(
    "max-tokens-above-contract-accepted",
    "max_tokens above the contract's 4096 is clamped to the cap instead of rejected with 422",
    caught_by=("DC-FUZZ-001",),
)
def _max_tokens_above_contract_accepted() -> None:
    def clamp(data: dict[str, Any]) -> dict[str, Any]:
        value = data.get("max_tokens")
        if isinstance(value, int) and not isinstance(value, bool) and value > _CONTRACT_MAX_TOKENS:
            data["max_tokens"] = _CONTRACT_MAX_TOKENS
        return data

    _rewrite_body(clamp)


@defect(
    "negative-value-500",
    "a negative top_k or seed reaches the sampler unchecked: the submit answers 500",
    caught_by=("DC-FUZZ-001",),
)
def _negative_value_500() -> None:
    def crash(data: dict[str, Any]) -> dict[str, Any]:
        for name in ("top_k", "seed"):
            value = data.get(name)
            if isinstance(value, int | float) and not isinstance(value, bool) and value < 0:
                raise ValueError(f"negative {name} {value}")
        return data

    _rewrite_body(crash)


@defect(
    "large-seed-500",
    "a valid seed above 2**53 overflows the worker's float64 seed conversion: the submit answers 500",
    caught_by=("DC-FUZZ-001",),
)
def _large_seed_500() -> None:
    def crash(data: dict[str, Any]) -> dict[str, Any]:
        value = data.get("seed")
        if isinstance(value, int) and not isinstance(value, bool) and value > 2**53:
            raise OverflowError(f"seed {value} does not fit a float64 exactly")
        return data

    _rewrite_body(crash)


# -- conforming: what DC-1.1 allows beside clamping -------------------------------------------------------------


@variant(
    "rejects-max-tokens-above-cap",
    "max_tokens above the advertised max_tokens_cap (but within 4096) is rejected with 422 instead of clamped: DC-1.1",
)
def _rejects_max_tokens_above_cap() -> None:
    original = worker_requests.to_generation

    def to_generation(body: InferenceRequest, settings: WorkerSettings) -> GenerationRequest:
        if body.max_tokens is not msgspec.UNSET and body.max_tokens > settings.max_tokens_cap:
            raise ProblemException(
                422,
                "max-tokens-above-cap",
                f"max_tokens {body.max_tokens} exceeds this worker's max_tokens_cap {settings.max_tokens_cap}.",
            )
        return original(body, settings)

    _map_generation(to_generation)
