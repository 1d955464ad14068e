"""Fixtures of the upstream tests: a real `transformers serve` on loopback serving a tiny model.

Only when transformers (with torch and the serving extra) is not importable do these tests skip,
saying so; `tox -e upstream` installs it. Everything else that goes wrong is a failure.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tserve import TransformersServe, transformers_missing

from workers import tinymodel


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The random-weight Llama checkpoint of `workers.tinymodel`, with its chat template."""
    out = tmp_path_factory.mktemp("tinymodel")
    tinymodel.build(out)
    return out


@pytest.fixture(scope="session")
def tserve(tiny_model_dir: Path) -> Iterator[TransformersServe]:
    """One `transformers serve --continuous-batching` for the session (concurrent streams batch)."""
    missing = transformers_missing()
    if missing is not None:
        pytest.skip(f"transformers serve is unavailable: {missing}")
    with TransformersServe(tiny_model_dir, "--continuous-batching") as server:
        yield server
