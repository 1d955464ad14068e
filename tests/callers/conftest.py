"""One adversarial worker for the caller tests of a module (runs are isolated by their URL token)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from conformance.callers.arena import ArenaServer


@pytest.fixture(scope="module")
def arena() -> Iterator[ArenaServer]:
    with ArenaServer() as server:
        yield server
