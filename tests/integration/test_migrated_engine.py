"""The engine of docs/migrate-legacy.md ("After") passes the gate: the core gives it the contract.

The block is taken from the page as written, served with `workers.server` on loopback, and the
conformance suite runs against it. Its engine streams the prompt's words and nothing else, so
DC-PARAM-001/002 pass only because the core applies max_tokens and stop strings.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from workerproc import WorkerProcess

from conformance.context import Options
from conformance.runner import RunConfig, run

pytestmark = pytest.mark.slow

DOC = Path(__file__).resolve().parents[2] / "docs" / "migrate-legacy.md"
HEADING = "### After: put your model behind the reference core"
SERVE = """
import runpy, sys
from workers import server
app = runpy.run_path(sys.argv[1])["app"]
sock = server.bind("127.0.0.1", 0)
server.serve(app, sock, banner=f"migrated echo worker on {server.base_url(sock)}", access_log=False)
"""


def after_block() -> str:
    text = DOC.read_text(encoding="utf-8")
    section = text[text.index(HEADING) :]
    start = section.index("```python\n") + len("```python\n")
    return section[start : section.index("\n```", start)]


class MigratedWorker(WorkerProcess):
    """The doc's app served by `workers.server` instead of `python -m workers mock`."""

    def __init__(self, module: Path) -> None:
        super().__init__("echo", start_timeout_s=60.0)
        self.module = module

    @property
    def command(self) -> list[str]:
        return [sys.executable, "-c", SERVE, str(self.module)]


def test_the_after_engine_of_the_migration_guide_passes_the_gate(tmp_path: Path) -> None:
    module = tmp_path / "echo_worker.py"
    module.write_text(after_block(), encoding="utf-8")
    assert "request.max_tokens" not in module.read_text()  # the engine leaves max_tokens to the core
    with MigratedWorker(module) as worker:
        report = run(RunConfig(target=worker.url, options=Options(timeout_s=5, ttl_budget_s=4), fuzz=False))
    outcomes = {result.id: result for result in report.results}
    failed = [f"{r.id}: {r.message}" for r in report.results if r.outcome == "failed"]
    assert not failed, "\n".join(failed)
    for check in ("DC-PARAM-001", "DC-PARAM-002"):
        assert outcomes[check].outcome == "passed", (check, outcomes[check].message)
