"""The checks, one module per area; each registers its checks (`conformance.registry`) on import."""

from __future__ import annotations

from conformance.registry import AREAS, REGISTRY, Check, check

__all__ = ["AREAS", "REGISTRY", "Check", "check", "load_all"]


def load_all() -> dict[str, Check]:
    """Import every check module (registration happens on import) and return the registry."""
    from conformance.checks import (  # noqa: F401
        fuzzing,
        idempotency,
        jobs,
        legacy,
        lifetime,
        outcomes,
        params,
        robustness,
        service,
        stream,
        submit,
    )

    return REGISTRY
