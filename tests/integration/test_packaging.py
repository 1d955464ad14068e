"""What ``pip install dualcall`` brings, and what happens when the ``conformance`` extra is absent.

The "absent" cases run real processes whose ``sitecustomize`` installs an import hook that
refuses the extra's packages, as on a machine that installed the worker only.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from conformance.client import DualCallClient
from workers.testing import WorkerProcess

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
#: what a worker must run without; faker is not here: litestar itself requires it (through polyfactory)
TEST_STACK = ("pytest", "schemathesis", "hypothesis")
CONFORMANCE_ONLY = ("schemathesis", "hypothesis", "jsonschema")
INSTALL_HINT = "pip install 'dualcall[conformance]'"


def _closure(name: str, extras: frozenset[str] = frozenset()) -> set[str]:
    """Installed distributions that ``name[extras]`` requires, transitively (markers evaluated here)."""
    seen: set[str] = set()
    pending = [(name, extras)]
    while pending:
        current, wanted = pending.pop()
        key = canonicalize_name(current)
        try:
            dist = distribution(current)
        except PackageNotFoundError:
            continue  # a marker-excluded or optional dependency that is not installed
        if key in seen and not wanted:
            continue
        seen.add(key)
        for line in dist.requires or []:
            requirement = Requirement(line)
            environments = [{"extra": extra} for extra in wanted] or [{"extra": ""}]
            applies = requirement.marker is None or any(requirement.marker.evaluate(env) for env in environments)
            if applies and (canonicalize_name(requirement.name) not in seen or requirement.extras):
                pending.append((requirement.name, frozenset(requirement.extras)))
    return seen


def test_base_install_pulls_no_test_or_fuzzing_stack() -> None:
    base = _closure("dualcall")
    assert {"litestar", "uvicorn", "httpx", "httpx-sse", "prometheus-client"} <= base
    assert not base & set(TEST_STACK), sorted(base & set(TEST_STACK))
    assert "schemathesis" in _closure("dualcall", frozenset({"conformance"}))


def test_metadata_declares_license_extras_and_typed_packages() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = project["optional-dependencies"]
    assert {Requirement(line).name for line in extras["conformance"]} >= {"schemathesis", "jsonschema"}
    assert "dualcall[conformance]" in extras["test"]
    assert project["license"] == "Apache-2.0"
    assert "Apache License" in (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Typing :: Typed" in project["classifiers"]
    for package in ("conformance", "workers", "openapi"):
        assert (ROOT / package / "py.typed").is_file()


_BLOCKER = """
import importlib.abc
import sys


class _Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {names!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None


sys.meta_path.insert(0, _Absent())
"""


@pytest.fixture
def without(tmp_path: Path) -> object:
    """``without(*names)`` -> environment of a process in which those packages cannot be imported."""

    def env(*names: str) -> dict[str, str]:
        site = tmp_path / "site"
        site.mkdir(exist_ok=True)
        (site / "sitecustomize.py").write_text(_BLOCKER.format(names=names), encoding="utf-8")
        return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)]), "PYTHONDONTWRITEBYTECODE": "1"}

    return env


def test_worker_serves_a_job_without_the_test_and_fuzzing_stack(without) -> None:  # type: ignore[no-untyped-def]
    env = without(*TEST_STACK, "_pytest", "faker", "jsonschema", "respx")
    with WorkerProcess("mock", env=env) as worker, DualCallClient(worker.url) as client:
        completion = client.generate("Hello", max_tokens=4, temperature=0)
    assert completion.stop_reason == "max_tokens"
    assert completion.tokens_out == 4
    assert "Traceback" not in worker.stderr


def _run(args: list[str], env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def test_conformance_cli_names_the_missing_extra(without) -> None:  # type: ignore[no-untyped-def]
    env = without(*CONFORMANCE_ONLY)
    assert "No module named 'schemathesis'" in _run(["-c", "import schemathesis"], env).stderr  # the hook works
    done = _run(["-m", "conformance", "http://127.0.0.1:9"], env)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("dualcall-conformance: error:")
    assert INSTALL_HINT in lines[0]
    assert "schemathesis" in lines[0]
    version = _run(["-m", "conformance", "--version"], env)  # still answers without the extra
    assert version.returncode == 0, version.stderr


def test_pytest_plugin_does_not_break_other_suites_and_names_the_extra(without, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    env = without(*CONFORMANCE_ONLY)
    (tmp_path / "test_theirs.py").write_text("def test_ok():\n    assert 1 + 1 == 2\n", encoding="utf-8")
    # plugins of packages a worker-only install lacks stay off; dualcall's own entry point is under test
    absent = ("hypothesispytest", "schemathesis", "asyncio", "respx")
    plain = ["-m", "pytest", "-q", "-p", "no:cacheprovider", *(arg for name in absent for arg in ("-p", f"no:{name}"))]
    theirs = _run([*plain, "test_theirs.py"], env, cwd=tmp_path)
    assert theirs.returncode == 0, theirs.stdout + theirs.stderr
    assert "1 passed" in theirs.stdout
    gated = _run([*plain, "test_theirs.py", "--dualcall-url", "http://127.0.0.1:9"], env, cwd=tmp_path)
    assert gated.returncode == pytest.ExitCode.USAGE_ERROR, gated.stdout + gated.stderr
    assert "Traceback" not in gated.stdout + gated.stderr
    errors = [line for line in gated.stderr.splitlines() if INSTALL_HINT in line]
    assert len(errors) == 1, gated.stderr
    assert errors[0].startswith("ERROR: dualcall:")
