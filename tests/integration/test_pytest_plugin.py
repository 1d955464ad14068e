"""The pytest11 plugin: ``pytest --dualcall-url URL`` turns each check into one test item.

Every run goes through ``pytester.runpytest_subprocess`` in an empty directory, so the plugin is
loaded the way a user's pytest loads it: through the installed entry point.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import free_port
from junitparser import JUnitXml, Skipped, TestSuite
from workerproc import WorkerProcess

from conformance.runner import catalogue

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.slow

TIMEOUT_S = 120
FAILED_LINE = re.compile(r"^FAILED \S*::(DC-[A-Z]+-\d+) - (.*)$")


@pytest.fixture(scope="module")
def fast_mock() -> Iterator[WorkerProcess]:
    """The mock with a short TTL (the lifetime checks run instead of skipping) and fast tokens."""
    with WorkerProcess("mock", "--ttl-s", "2", "--token-delay-ms", "1") as worker:
        yield worker


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(*args, "-p", "no:cacheprovider", timeout=TIMEOUT_S)


def output(result: pytest.RunResult) -> str:
    stdout, stderr = result.stdout.str()[-8000:], result.stderr.str()[-3000:]
    return f"exit {result.ret}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"


def skipped_by_id(junit_path: Path) -> dict[str, str]:
    """Check id -> skip message, from pytest's own JUnit XML (one testcase per item)."""
    xml = JUnitXml.fromfile(str(junit_path))
    suites = [xml] if isinstance(xml, TestSuite) else list(xml)
    skipped: dict[str, str] = {}
    for suite in suites:
        for case in suite:
            for result in case.result:
                if isinstance(result, Skipped):
                    skipped[case.name] = result.message or ""
    return skipped


def test_mock_every_dualcall_item_passes(pytester: pytest.Pytester, fast_mock: WorkerProcess) -> None:
    junit_path = pytester.path / "dualcall.xml"
    result = run(pytester, "--dualcall-url", fast_mock.url, "--dualcall-no-fuzz", "-q", f"--junitxml={junit_path}")
    assert result.ret == pytest.ExitCode.OK, output(result)

    specs = catalogue()
    fuzz_ids = {spec.id for spec in specs if spec.area == "fuzz"}
    non_fuzz_ids = {spec.id for spec in specs if spec.area != "fuzz"}
    skipped = skipped_by_id(junit_path)
    assert set(skipped) >= fuzz_ids, "fuzz items must be skipped with --dualcall-no-fuzz"
    for fuzz_id in fuzz_ids:
        assert "fuzzing disabled" in skipped[fuzz_id], skipped[fuzz_id]
    skipped_checks = {check_id: message for check_id, message in skipped.items() if check_id in non_fuzz_ids}
    for check_id, message in skipped_checks.items():
        assert message and "not run" not in message, (check_id, message)
    # no auth on this mock: the auth check says it is not verified and how to verify it
    assert "NOT VERIFIED" in skipped_checks.get("DC-SVC-005", ""), skipped_checks
    assert "--token" in skipped_checks.get("DC-SVC-005", ""), skipped_checks
    assert "DC-LIFE-001" not in skipped_checks
    assert "DC-LIFE-002" not in skipped_checks

    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) == 0, output(result)
    assert outcomes.get("errors", 0) == 0, output(result)
    # every check that was not skipped, and the item that says what the target is
    assert outcomes["passed"] == len(non_fuzz_ids) - len(skipped_checks) + 1, output(result)
    assert outcomes["skipped"] == len(fuzz_ids) + len(skipped_checks), output(result)


@pytest.fixture
def not_found_server() -> Iterator[str]:
    """A loopback HTTP server that answers 404 to every request."""
    import http.server
    import threading

    class NotFound(http.server.BaseHTTPRequestHandler):
        def _answer(self) -> None:
            self.rfile.read(int(self.headers.get("content-length") or 0))
            self.send_response(404)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        do_GET = do_POST = do_DELETE = do_PUT = _answer

        def log_message(self, *_: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_target_that_is_not_a_worker_fails_once(pytester: pytest.Pytester, not_found_server: str) -> None:
    result = run(pytester, "--dualcall-url", not_found_server, "--dualcall-no-fuzz", "-q", "-rf")
    assert result.ret == pytest.ExitCode.TESTS_FAILED, output(result)
    outcomes = result.parseoutcomes()
    assert outcomes["failed"] == 1 and "passed" not in outcomes, output(result)
    assert "not a dual-call worker" in result.stdout.str(), output(result)


def test_legacy_failures_name_check_rule_and_curl(pytester: pytest.Pytester, legacy_worker: WorkerProcess) -> None:
    result = run(pytester, "--dualcall-url", legacy_worker.url, "--dualcall-no-fuzz", "-q", "-rf")
    assert result.ret == pytest.ExitCode.TESTS_FAILED, output(result)
    text = result.stdout.str()
    assert "Traceback" not in text

    # the failure section: id, rule and level, the message, and a curl line reproducing the request
    assert "DC-LEGACY-001 [DC-1.2 MUST]" in text, output(result)
    assert "legacy direct-SSE" in text
    assert re.search(r"^\s+curl -sS .*http://127\.0\.0\.1:\d+/v1/inference", text, re.MULTILINE), output(result)

    failed = [FAILED_LINE.match(line) for line in result.stdout.lines if line.startswith("FAILED ")]
    assert failed, output(result)
    for match in failed:
        assert match is not None, output(result)
        check_id, summary = match.groups()
        # each failure is the check's own report, never an internal pytest error
        assert summary.startswith(f"{check_id} [DC-"), output(result)
    failed_ids = {match.group(1) for match in failed if match}
    assert "DC-LEGACY-001" in failed_ids
    assert "DC-SVC-003" not in failed_ids, "a SHOULD failure at --dualcall-level must is a warning, not a failure"
    assert result.parseoutcomes()["failed"] == len(failed_ids)


def test_should_check_warns_at_must_and_fails_at_should(
    pytester: pytest.Pytester, legacy_worker: WorkerProcess
) -> None:
    """DC-SVC-003 (SHOULD: Prometheus metrics): the legacy worker has no /metrics."""
    at_must = run(pytester, "--dualcall-url", legacy_worker.url, "--dualcall-checks", "DC-SVC-003", "-q")
    assert at_must.ret == pytest.ExitCode.OK, output(at_must)
    at_must.assert_outcomes(passed=1, warnings=1)
    at_must.stdout.fnmatch_lines(["*PytestWarning: DC-SVC-003 [[]DC-5.2 SHOULD[]]*/metrics*"])

    at_should = run(
        pytester, "--dualcall-url", legacy_worker.url, "--dualcall-checks", "DC-SVC-003", "--dualcall-level", "should"
    )
    assert at_should.ret == pytest.ExitCode.TESTS_FAILED, output(at_should)
    at_should.assert_outcomes(failed=1)
    assert "DC-SVC-003 [DC-5.2 SHOULD]" in at_should.stdout.str()


def test_dualcall_checks_selects_one_item(pytester: pytest.Pytester, fast_mock: WorkerProcess) -> None:
    collected = run(
        pytester, "--dualcall-url", fast_mock.url, "--dualcall-checks", "DC-SUBMIT-001", "--collect-only", "-q"
    )
    assert collected.ret == pytest.ExitCode.OK, output(collected)
    items = [line for line in collected.stdout.lines if "::" in line]
    assert len(items) == 1, output(collected)
    assert items[0].endswith("DC-SUBMIT-001")
    collected.stdout.fnmatch_lines(["*1 test collected*"])

    ran = run(pytester, "--dualcall-url", fast_mock.url, "--dualcall-checks", "dc-submit-001", "-q")
    assert ran.ret == pytest.ExitCode.OK, output(ran)
    ran.assert_outcomes(passed=1)


def test_without_url_the_plugin_adds_nothing(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_plain="""
        def test_plain():
            assert 1 + 1 == 2
        """
    )
    result = run(pytester, "-q", "-m", "not dualcall")
    assert result.ret == pytest.ExitCode.OK, output(result)
    result.assert_outcomes(passed=1)
    assert "DC-" not in result.stdout.str()

    collected = run(pytester, "--collect-only", "-q")
    assert [line for line in collected.stdout.lines if "::" in line] == ["test_plain.py::test_plain"], output(collected)


def test_plugin_is_registered_through_the_entry_point(pytester: pytest.Pytester) -> None:
    helped = run(pytester, "--help")
    assert helped.ret == pytest.ExitCode.OK, output(helped)
    for option in ("--dualcall-url", "--dualcall-token", "--dualcall-no-fuzz", "--dualcall-checks"):
        assert option in helped.stdout.str()
    markers = run(pytester, "--markers")
    markers.stdout.fnmatch_lines(["*@pytest.mark.dualcall:*"])


def test_unreachable_url_is_a_usage_error(pytester: pytest.Pytester) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = run(pytester, "--dualcall-url", url, "--dualcall-no-fuzz", "-q")
    assert result.ret == pytest.ExitCode.USAGE_ERROR, output(result)
    errors = [line for line in result.stderr.lines if line.startswith("ERROR:")]
    assert len(errors) == 1, output(result)
    assert f"dualcall: cannot connect to {url}" in errors[0]
    assert "Traceback" not in result.stdout.str() + result.stderr.str()
    assert "passed" not in result.stdout.str()
    assert "failed" not in result.stdout.str()


def test_a_bug_in_a_check_is_an_error_not_a_failure(pytester: pytest.Pytester, fast_mock: WorkerProcess) -> None:
    """A check that raises (a bug planted here) is the suite's ERROR; the worker is not blamed."""
    pytester.makeconftest(
        """
        import dataclasses
        from conformance import registry
        from conformance.checks import load_all

        load_all()

        def planted(ctx):
            raise ZeroDivisionError("planted")

        registry.REGISTRY["DC-SVC-001"] = dataclasses.replace(registry.REGISTRY["DC-SVC-001"], func=planted)
        """
    )
    result = run(
        pytester, "--dualcall-url", fast_mock.url, "--dualcall-no-fuzz", "--dualcall-checks", "DC-SVC-001,DC-SVC-006"
    )
    result.assert_outcomes(passed=1, errors=1)
    text = result.stdout.str()
    assert "ERROR" in text and "bug in the conformance suite" in text, output(result)
    assert "ZeroDivisionError: planted" in text, output(result)
