"""Shared fixtures for the CPU run of the real exllamav2 generator (see test_real_generator.py)."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from workers.testing import WorkerProcess

#: a real prerequisite that is absent (`tox -e exllamav2-cpu` installs them); found without importing
MISSING = [name for name in ("torch", "exllamav2", "tokenizers") if importlib.util.find_spec(name) is None]

#: context of the worker under test: the advertised cap must be this minus BOS and one token
MAX_SEQ_LEN = 512
#: each toy forward step sleeps this long (like waiting on a GPU), so a cancel lands mid-stream
STEP_MS = "2"


SERVE = Path(__file__).resolve().parent / "serve.py"


class StandInWorker(WorkerProcess):
    """The real worker CLI with the CPU stand-ins installed (``tests/exllamav2_cpu/serve.py``)."""

    @property
    def command(self) -> list[str]:
        return [sys.executable, str(SERVE), self.engine, "--port", "0", *self.args]


def build_model(path: Path) -> Path:
    from workers.tinymodel import build

    build(path, size="tiny", seed=0)
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_model(tmp_path_factory.mktemp("exl") / "tiny")


@pytest.fixture(scope="session")
def worker(tiny_model: Path) -> Iterator[StandInWorker]:
    env = {**os.environ, "DUALCALL_STANDIN_STEP_MS": STEP_MS}
    args = ("--model", str(tiny_model), "--max-seq-len", str(MAX_SEQ_LEN), "--ttl-s", "2", "--keepalive-s", "1")
    with StandInWorker("exllamav2", *args, start_timeout_s=60, env=env) as proc:
        yield proc


def rewrite_json(path: Path, **changes: object) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))
