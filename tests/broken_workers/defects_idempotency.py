"""Broken workers for Idempotency-Key (DC-1.10 to DC-1.12): each advertises support and gets one part wrong.

Registered into the same catalogue as `defects.py` (which imports this module at its end).
"""

from __future__ import annotations

from workers.engines.base import GenerationRequest
from workers.idempotency import HEADER, MalformedKey, parse_key
from workers.registry import Idempotency, JobRecord
from workers.registry.in_process import InProcessRegistry

from .asgi import Middleware, Rewriter, Scope, drop_header, get_header, is_submit, rewrite
from .defects import _registry, defect


@defect(
    "idempotency-key-ignored",
    "advertises idempotency_key in /health but every submit makes a new job: a retried POST generates twice",
    caught_by=("DC-SUBMIT-014", "DC-SUBMIT-015"),
)
def _key_ignored() -> None:
    class Forgetful(InProcessRegistry):
        async def submit(self, request: GenerationRequest, idempotency: Idempotency | None = None) -> JobRecord:
            return await super().submit(request, None)

    _registry(Forgetful)


@defect(
    "idempotency-body-ignored",
    "a held key answers its first job whatever the body: a client reusing a key gets another request's completion",
    caught_by=("DC-SUBMIT-015",),
)
def _body_ignored() -> None:
    class KeyOnly(InProcessRegistry):
        async def submit(self, request: GenerationRequest, idempotency: Idempotency | None = None) -> JobRecord:
            blind = None if idempotency is None else Idempotency(idempotency.key, fingerprint="")
            return await super().submit(request, blind)

    _registry(KeyOnly)


@defect(
    "idempotency-by-body",
    "deduplicates equal bodies instead of equal keys: two jobs with the same prompt and different keys become one",
    caught_by=("DC-SUBMIT-014", "DC-SUBMIT-015"),
)
def _by_body() -> None:
    class ByBody(InProcessRegistry):
        async def submit(self, request: GenerationRequest, idempotency: Idempotency | None = None) -> JobRecord:
            by_body = None if idempotency is None else Idempotency(idempotency.fingerprint, idempotency.fingerprint)
            return await super().submit(request, by_body)

    _registry(ByBody)


@defect(
    "idempotency-malformed-key-accepted",
    "an empty, overlong or space-holding Idempotency-Key is dropped silently instead of refused with 400",
    caught_by=("DC-SUBMIT-016",),
)
def _malformed_accepted() -> Middleware:
    class DropsMalformed(Rewriter):
        def request(self, scope: Scope) -> Scope:
            value = get_header(list(scope["headers"]), HEADER)
            if value is None:
                return scope
            try:
                parse_key(value)
            except MalformedKey:
                return {**scope, "headers": drop_header(list(scope["headers"]), HEADER)}
            return scope

    return rewrite(is_submit, DropsMalformed)
