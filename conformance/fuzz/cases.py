"""What the bridge does to generated cases, and how it reads their answers against DC-1.1."""

from __future__ import annotations

from typing import Any, Final

from conformance.contract import max_tokens_limit

__all__ = ["MAX_FUZZ_TOKENS", "clamp_max_tokens", "clamp_or_reject", "is_negative"]

#: upper bound on any generated ``max_tokens`` that the schema allows
MAX_FUZZ_TOKENS: Final = 16


def clamp_max_tokens(case: Any) -> None:
    """Keep in-range ``max_tokens`` at or below :data:`MAX_FUZZ_TOKENS`; out-of-range values stay (negative data).

    A real engine is never asked for thousands of tokens by a generated body.
    """
    body = getattr(case, "body", None)
    if not isinstance(body, dict):
        return
    value = body.get("max_tokens")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return
    if isinstance(value, float) and not value.is_integer():
        return
    if MAX_FUZZ_TOKENS < value <= max_tokens_limit():
        body["max_tokens"] = MAX_FUZZ_TOKENS


def clamp_or_reject(body: Any, status: int, cap: int | None) -> bool:
    """A 422 for a ``max_tokens`` between the worker's advertised cap and the contract's maximum.

    DC-1.1 lets a worker clamp such a value to its cap; rejecting it is not a failure either.
    """
    if status != 422 or cap is None or not isinstance(body, dict):
        return False
    value = body.get("max_tokens")
    return isinstance(value, int) and not isinstance(value, bool) and cap < value <= max_tokens_limit()


def is_negative(case: Any) -> bool:
    """The case was generated to be invalid (schemathesis' negative mode)."""
    generation = getattr(getattr(case, "meta", None), "generation", None)
    return bool(getattr(getattr(generation, "mode", None), "is_negative", False))
