"""Every verdict of the gate is evidence: what it cannot observe is never a pass, its own bugs are never the worker's.

Against loopback servers that are not dual-call workers (one answers 404 to everything, one answers like an
OpenAI-compatible server) and against the mock with a bug planted in a check.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from workerproc import WorkerProcess

from conformance.context import Context, FuzzSettings, Options
from conformance.model import CheckResult
from conformance.probe import Probe
from conformance.runner import RunConfig, ordered_checks, run, run_check

pytestmark = pytest.mark.slow

Scope = MutableMapping[str, Any]
ASGI = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]
EXIT_FAILED, EXIT_SUITE_ERROR = 1, 3
GATEWAY = "dualcall-worker gateway --upstream URL --upstream-api openai-chat"


PROBLEM_404 = {"type": "about:blank", "title": "Not Found", "status": 404, "detail": "no such route"}


def _app(routes: dict[tuple[str, str], tuple[int, dict[str, Any]]], *, problem: bool = False) -> ASGI:
    """A tiny JSON server: the listed (method, path) answers, a 404 for anything else.

    ``problem``: the 404 is a proper RFC 9457 problem document, the hardest kind of 404 to tell
    from a worker's "unknown job".
    """

    async def app(scope: Scope, receive: Callable[[], Awaitable[Any]], send: Callable[[Any], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            return
        more = True
        while more:  # read the whole request body first, as a real server does
            message = await receive()
            more = message.get("more_body", False)
        found = routes.get((scope["method"], scope["path"]))
        status, body = found or (404, PROBLEM_404 if problem else {"detail": "Not Found"})
        payload = json.dumps(body).encode()
        content_type = b"application/problem+json" if problem and found is None else b"application/json"
        headers = [(b"content-type", content_type), (b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    return app


NOT_FOUND = _app({}, problem=True)
#: healthy by its /health, a problem+json 404 for everything else
HEALTHY_NOT_FOUND = _app({("GET", "/health"): (200, {"status": "ok"})}, problem=True)
OPENAI_LIKE = _app(
    {
        ("GET", "/health"): (200, {"status": "ok"}),
        ("GET", "/v1/models"): (200, {"object": "list", "data": [{"id": "tiny-llama", "object": "model"}]}),
        (
            "GET",
            "/openapi.json",
        ): (200, {"openapi": "3.1.0", "paths": {"/v1/chat/completions": {}, "/v1/models": {}, "/health": {}}}),
    }
)


@contextmanager
def serve(app: ASGI) -> Iterator[str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "the loopback server did not start"
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def gate(*args: str, code: str | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m conformance ARGS`, or the same CLI after running ``code`` (to plant a bug in a check)."""
    command = [sys.executable, "-m", "conformance", *args]
    if code is not None:
        program = textwrap.dedent(code) + "\nfrom conformance.cli import main\nraise SystemExit(main(sys.argv[1:]))\n"
        command = [sys.executable, "-c", program, *args]
    env = {key: value for key, value in os.environ.items() if key != "DUALCALL_TOKEN"}
    return subprocess.run(
        command,
        check=False,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=300,
        stdin=subprocess.DEVNULL,
        env={**env, "COLUMNS": "100"},
    )


def explain(done: subprocess.CompletedProcess[str]) -> str:
    return f"exit {done.returncode}\n--- stdout ---\n{done.stdout[-6000:]}\n--- stderr ---\n{done.stderr[-3000:]}"


def reports(tmp_path: Path) -> tuple[list[str], Path, Path, Path]:
    paths = (tmp_path / "r.json", tmp_path / "r.xml", tmp_path / "r.html")
    return ["--json", str(paths[0]), "--junit", str(paths[1]), "--html", str(paths[2])], *paths


# -------------------------------------------------------------------- targets that are not dual-call workers


def test_a_server_answering_404_to_everything_passes_nothing(tmp_path: Path) -> None:
    args, json_path, junit_path, html_path = reports(tmp_path)
    with serve(NOT_FOUND) as url:
        done = gate(url, *args)
    assert done.returncode == EXIT_FAILED, explain(done)
    report = json.loads(json_path.read_text(encoding="utf-8"))
    assert report["target_kind"] == "no dual-call route" and report["target_unsupported"] is True
    assert report["summary"]["passed"] == 0 and report["summary"]["failed"] == 0
    assert {check["outcome"] for check in report["checks"]} == {"unverified"}
    assert report["diagnoses"][0]["name"] == "not a dual-call worker"
    # said once, at the top of every view
    out = done.stdout
    assert out.count("Diagnosis: not a dual-call worker") == 1, explain(done)
    assert out.index("Diagnosis: not a dual-call worker") < out.index("checks not run"), explain(done)
    assert "answered 404" in out and out.count("answered 404") < 5, explain(done)
    first_case = ET.parse(junit_path).getroot().find("testsuite/testcase")
    assert first_case is not None and first_case.get("name") == "target: no dual-call route"
    assert first_case.find("failure") is not None
    page = html_path.read_text(encoding="utf-8")
    assert page.index("Diagnosis: not a dual-call worker") < page.index("<table")


def test_a_server_without_post_is_no_dual_call_route(tmp_path: Path) -> None:
    """A static file server answers 501 to any POST: no dual-call route, said once, nothing run."""
    args, json_path, _, _ = reports(tmp_path)
    with serve(_app({("POST", "/v1/inference"): (501, {"detail": "Unsupported method ('POST')"})})) as url:
        done = gate(url, "--no-fuzz", *args)
    assert done.returncode == EXIT_FAILED, explain(done)
    report = json.loads(json_path.read_text(encoding="utf-8"))
    assert report["target_kind"] == "no dual-call route" and report["summary"]["passed"] == 0
    assert "FAIL (not a dual-call worker: no dual-call route)" in done.stdout, explain(done)


def test_an_openai_compatible_server_is_named_with_the_gateway_fix(tmp_path: Path) -> None:
    args, json_path, _, _ = reports(tmp_path)
    with serve(OPENAI_LIKE) as url:
        done = gate(url, *args)
    assert done.returncode == EXIT_FAILED, explain(done)
    assert GATEWAY in done.stdout.replace("\n", " "), explain(done)
    report = json.loads(json_path.read_text(encoding="utf-8"))
    assert report["target_kind"] == "OpenAI-compatible server"
    assert report["summary"]["passed"] == 0
    (diagnosis, *_) = report["diagnoses"]
    assert any("/v1/models" in line for line in diagnosis["observations"])
    assert any(GATEWAY in fix for fix in diagnosis["fixes"])


def _run_alone(url: str) -> list[CheckResult]:
    """Every check on its own against ``url``, with no target recognition in front of it."""
    results = []
    probe = Probe(url, timeout_s=3.0)
    try:
        ctx = Context(probe=probe, options=Options(timeout_s=3.0, ttl_budget_s=2.0), fuzz=FuzzSettings(max_examples=2))
        for check in ordered_checks():
            results.append(run_check(check, ctx, "should"))
    finally:
        probe.close()
    return results


@pytest.mark.parametrize("app", [NOT_FOUND, HEALTHY_NOT_FOUND], ids=["all-404", "healthy-404"])
def test_no_check_on_its_own_passes_on_404s(app: ASGI) -> None:
    """The recognition aside, each check needs evidence of its behaviour: a 404 for everything is none."""
    with serve(app) as url:
        results = _run_alone(url)
    passed = [f"{result.id}: {result.message}" for result in results if result.outcome == "passed"]
    assert not passed, "\n".join(passed)
    assert not [result.id for result in results if result.outcome == "error"]


# -------------------------------------------------------------------- a bug in the suite is the suite's


@pytest.fixture(scope="module")
def mock() -> Iterator[WorkerProcess]:
    with WorkerProcess("mock", "--ttl-s", "2", "--token-delay-ms", "1") as worker:
        yield worker


def _plant(exception: str) -> str:
    return f"""
        import dataclasses, sys
        from conformance import registry
        from conformance.checks import load_all
        load_all()

        def planted(ctx):
            raise {exception}

        registry.REGISTRY["DC-SVC-001"] = dataclasses.replace(registry.REGISTRY["DC-SVC-001"], func=planted)
    """


def test_a_bug_planted_in_a_check_is_a_suite_error(mock: WorkerProcess, tmp_path: Path) -> None:
    args, json_path, junit_path, _ = reports(tmp_path)
    done = gate(
        mock.url, "--no-fuzz", "--checks", "DC-SVC-001,DC-SVC-006", *args, code=_plant("ZeroDivisionError('planted')")
    )
    assert done.returncode == EXIT_SUITE_ERROR, explain(done)
    assert "bug in the conformance suite" in done.stdout and "not a finding about the worker" in done.stdout
    report = json.loads(json_path.read_text(encoding="utf-8"))
    checks = {check["id"]: check for check in report["checks"]}
    assert checks["DC-SVC-001"]["outcome"] == "error"
    assert "ZeroDivisionError: planted" in checks["DC-SVC-001"]["traceback"]
    assert checks["DC-SVC-006"]["outcome"] == "passed"  # the other checks still ran
    assert report["summary"]["errors"] == 1 and report["summary"]["failed"] == 0
    suite = ET.parse(junit_path).getroot().find("testsuite")
    assert suite is not None and suite.get("errors") == "1" and suite.get("failures") == "0"
    assert suite.find("testcase/error") is not None


def test_the_suites_broken_install_is_a_suite_error(mock: WorkerProcess, tmp_path: Path) -> None:
    args, json_path, _, _ = reports(tmp_path)
    planted = _plant("ModuleNotFoundError(\"No module named 'jsonschema'\", name='jsonschema')")
    done = gate(mock.url, "--no-fuzz", "--checks", "DC-SVC-001", *args, code=planted)
    assert done.returncode == EXIT_SUITE_ERROR, explain(done)
    assert "the worker's answers broke" not in done.stdout
    report = json.loads(json_path.read_text(encoding="utf-8"))
    (check,) = report["checks"]
    assert check["outcome"] == "error" and "installation is broken" in check["message"]
    assert "pip install" in " ".join(check["evidence"]["details"])


#: what CPython 3.11 raises when two threads build ASTs at once (hypothesis and a traceback, say)
AST_RACE = "SystemError('AST constructor recursion depth mismatch (before=183, after=79)')"
FUZZ_CHECKS = "DC-FUZZ-001,DC-FUZZ-002,DC-FUZZ-003,DC-FUZZ-004"


def _break_stateful_phase(times: int) -> str:
    """The stateful fuzz phase raises inside the suite on its first ``times`` runs."""
    return f"""
        import sys
        from conformance.fuzz import phases

        real, runs = phases._run_stateful, []

        def breaking(*args, **kwargs):
            runs.append(1)
            if len(runs) <= {times}:
                raise {AST_RACE}
            return real(*args, **kwargs)

        phases._run_stateful = breaking
    """


def test_fuzzing_that_breaks_inside_the_suite_is_a_suite_error(mock: WorkerProcess, tmp_path: Path) -> None:
    args, json_path, _, _ = reports(tmp_path)
    done = gate(mock.url, "--checks", FUZZ_CHECKS, "--max-examples", "3", *args, code=_break_stateful_phase(2))
    assert done.returncode == EXIT_SUITE_ERROR, explain(done)
    assert "not a finding about the worker" in done.stdout, explain(done)
    report = json.loads(json_path.read_text(encoding="utf-8"))
    checks = {check["id"]: check for check in report["checks"]}
    stateful = checks["DC-FUZZ-003"]
    assert stateful["outcome"] == "error", stateful
    assert "schemathesis broke in the stateful link fuzzing: SystemError" in stateful["message"]
    assert "AST constructor recursion depth mismatch" in stateful["traceback"]
    assert stateful["evidence"]["exchanges"] == []
    # the phases that ran are judged on what they saw
    assert {checks[i]["outcome"] for i in ("DC-FUZZ-001", "DC-FUZZ-002", "DC-FUZZ-004")} == {"passed"}, checks
    assert report["summary"]["failed"] == 0 and report["summary"]["errors"] == 1


def test_a_fuzz_phase_that_breaks_once_is_run_again(mock: WorkerProcess, tmp_path: Path) -> None:
    args, json_path, _, _ = reports(tmp_path)
    done = gate(mock.url, "--checks", FUZZ_CHECKS, "--max-examples", "3", *args, code=_break_stateful_phase(1))
    assert done.returncode == 0, explain(done)
    checks = {check["id"]: check for check in json.loads(json_path.read_text(encoding="utf-8"))["checks"]}
    stateful = checks["DC-FUZZ-003"]
    assert stateful["outcome"] == "passed", stateful
    assert "stateful scenarios following submit's links" in stateful["message"]
    assert any("the phase was run again" in line for line in stateful["evidence"]["details"]), stateful


def test_a_schemathesis_check_that_breaks_is_a_suite_error(mock: WorkerProcess, tmp_path: Path) -> None:
    code = """
        import sys
        import schemathesis.checks

        real = schemathesis.checks.CHECKS

        def broken(case, response, *args, **kwargs):
            raise RuntimeError("planted inside use_after_free")

        class Checks:
            def get_one(self, name):
                return broken if name == "use_after_free" else real.get_one(name)

            def __getattr__(self, name):
                return getattr(real, name)

        schemathesis.checks.CHECKS = Checks()
    """
    args, json_path, _, _ = reports(tmp_path)
    done = gate(mock.url, "--checks", FUZZ_CHECKS, "--max-examples", "3", *args, code=code)
    assert done.returncode == EXIT_SUITE_ERROR, explain(done)
    report = json.loads(json_path.read_text(encoding="utf-8"))
    checks = {check["id"]: check for check in report["checks"]}
    stateful = checks["DC-FUZZ-003"]
    assert stateful["outcome"] == "error", stateful
    assert "use_after_free check broke" in stateful["message"] and "planted inside" in stateful["message"]
    assert report["summary"]["failed"] == 0


def test_the_mock_refuses_number_literals_that_are_not_json(mock: WorkerProcess, tmp_path: Path) -> None:
    args, json_path, _, _ = reports(tmp_path)
    done = gate(mock.url, "--no-fuzz", "--checks", "DC-SUBMIT-013", *args)
    assert done.returncode == 0, explain(done)
    (check,) = json.loads(json_path.read_text(encoding="utf-8"))["checks"]
    assert check["outcome"] == "passed" and "refused" in check["message"]


# -------------------------------------------------------------------- one liveness defect, one failure


SERVE = Path(__file__).resolve().parents[1] / "broken_workers" / "serve.py"


class BrokenWorker(WorkerProcess):
    """`serve.py DEFECT`: the mock with one defect of the catalogue."""

    def __init__(self, defect: str, *args: str) -> None:
        super().__init__("mock", *args, start_timeout_s=60.0)
        self.defect = defect

    @property
    def command(self) -> list[str]:
        return [sys.executable, str(SERVE), self.defect, "--port", "0", *self.args]


@pytest.mark.parametrize(
    ("defect", "caught_by"),
    [
        # the connection stays open after [DONE] until the client leaves: only the close check may fail
        ("held-open-after-done", "DC-STREAM-007"),
        # the engine takes no further job after a reader hangs up, while /health says ok: the first check that
        # waits on a job after that fails (which one depends on when the first reader hangs up)
        ("disconnect-stalls-engine", None),
    ],
)
def test_one_liveness_defect_is_one_failure_in_a_bounded_run(defect: str, caught_by: str | None) -> None:
    """No cascade: the other checks pass or say they were not run because of it; the run ends (fuzzing included)."""
    with BrokenWorker(defect, "--token-delay-ms", "0", "--ttl-s", "2", "--keepalive-s", "1") as worker:
        report = run(
            RunConfig(
                target=worker.url,
                options=Options(timeout_s=3.0, ttl_budget_s=4.0),
                max_examples=4,
                seed=7,
                run_budget_s=900.0,
            )
        )
    outcomes = {result.id: result for result in report.results}
    failed = sorted(check_id for check_id, result in outcomes.items() if result.outcome in ("failed", "error"))
    explain = "\n".join(f"{r.id} {r.outcome}: {r.message}" for r in report.results)
    assert len(failed) == 1 and failed[0] == (caught_by or failed[0]), explain
    caught_by = failed[0]
    assert not any("used up its budget" in result.message for result in report.results)
    if defect == "disconnect-stalls-engine":
        assert "nothing moves" in outcomes[caught_by].message
        assert any(d.name == "worker stopped making progress" for d in report.diagnoses)
        later = report.results[report.results.index(outcomes[caught_by]) + 1 :]
        assert any("not run: the worker stopped making progress" in r.message for r in later)
