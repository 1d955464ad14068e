"""``dualcall-conformance serve-callers``: usage errors, reports, wire-only grading, the pytest fixtures.

The fixture tests use ``dualcall_caller`` exactly as a user's suite does: it comes from the
installed pytest11 entry point (conformance.pytest_plugin), not from a conftest.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import jsonschema
import pytest
from junitparser import JUnitXml

from conformance.callers.arena import ArenaServer
from conformance.callers.grade import NOT_OBSERVED, build_report
from conformance.callers.naive import call as naive_call
from conformance.callers.reference import sync_caller
from conformance.callers.scenarios import SCENARIO_BY_NAME
from conformance.cli import main
from conformance.report import SCHEMA_PATH

NAIVE = f"{sys.executable} -m conformance.callers.naive {{submit_url}} {{prompt}}"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--caller", "python my.py"], "needs {submit_url} or {base_url}"),
        (["--caller", "no-such-program-xyz {submit_url}"], "not an executable"),
        (["--caller", "python 'unbalanced {submit_url}"], "cannot split"),
        (["--scenarios", "nope", "--caller", "python {submit_url}"], "unknown scenario"),
        (["--timeout", "0"], "must be > 0"),
        (["--port", "x"], "not a port"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["serve-callers", *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_list_prints_rules_and_scenarios(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve-callers", "--list"]) == 0
    out = capsys.readouterr().out
    assert "DC-CALLER-011" in out and "dead-stream" in out


def test_a_failing_caller_gets_json_junit_and_html_reports(tmp_path: Path) -> None:
    reports = {kind: tmp_path / f"callers.{kind}" for kind in ("json", "xml", "html")}
    command = [sys.executable, "-m", "conformance", "serve-callers", "--caller", NAIVE, "--scenarios", "error-event"]
    command += ["--json", str(reports["json"]), "--junit", str(reports["xml"]), "--html", str(reports["html"])]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Diagnosis: caller breaks DC-C-7" in done.stdout
    report = json.loads(reports["json"].read_text())
    jsonschema.validate(report, json.loads(SCHEMA_PATH.read_text()))
    verdicts = {check["id"]: check["outcome"] for check in report["checks"]}
    assert verdicts["DC-CALLER-007"] == "failed" and verdicts["DC-CALLER-001"] == "passed"
    assert report["worker"]["scenarios"][0]["name"] == "error-event"
    failures = [case.name for suite in JUnitXml.fromfile(str(reports["xml"])) for case in suite if not case.is_passed]
    assert any("DC-CALLER-007" in name for name in failures)
    assert "DC-CALLER-007" in reports["html"].read_text()
    replay = next(d for d in report["checks"] if d["id"] == "DC-CALLER-007")["replay"]
    assert replay.startswith("dualcall-conformance serve-callers --caller ") and "--scenarios error-event" in replay
    assert "replay: dualcall-conformance serve-callers --caller " in done.stdout


def test_without_the_callers_result_the_wire_alone_is_graded() -> None:
    with ArenaServer() as server:
        run = server.arena.new_run(SCENARIO_BY_NAME["absolute-sse-url"])
        with pytest.raises(httpx.HTTPStatusError):
            naive_call(run.submit_url, "hello")
        server.settle(run)
    report = build_report([run], target="wire only")
    verdicts = {result.id: result.outcome for result in report.results}
    assert verdicts["DC-CALLER-002"] == "failed"
    assert verdicts["DC-CALLER-009"] == NOT_OBSERVED  # abandonment needs the caller's result


@pytest.mark.parametrize("dualcall_caller", ["cut-mid-utf8", "relative-sse-url-query"], indirect=True)
def test_the_fixture_grades_a_conforming_caller(dualcall_caller) -> None:  # type: ignore[no-untyped-def]
    report = dualcall_caller.check(sync_caller)
    assert report.ok and dualcall_caller.expected_text is not None


@pytest.mark.parametrize("dualcall_caller", ["unknown-events"], indirect=True)
def test_the_fixture_grades_a_result_the_test_reported(dualcall_caller) -> None:  # type: ignore[no-untyped-def]
    text = naive_call(dualcall_caller.submit_url, dualcall_caller.prompt)
    with pytest.raises(pytest.fail.Exception) as failure:
        dualcall_caller.grade(text=text)
    assert "DC-CALLER-008 [DC-C-8 MUST]" in str(failure.value) and "narration" in str(failure.value)


@pytest.mark.parametrize("dualcall_caller", ["cut-mid-event"], indirect=True)
def test_the_fixture_fails_a_broken_caller_with_the_rule(dualcall_caller) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(pytest.fail.Exception) as failure:
        dualcall_caller.check(lambda target: naive_call(target.submit_url, target.prompt))
    assert "DC-CALLER-004 [DC-C-4 MUST]" in str(failure.value)
    assert "Last-Event-ID" in str(failure.value)
