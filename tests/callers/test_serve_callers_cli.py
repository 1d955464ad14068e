"""``dualcall-conformance serve-callers``: usage errors, reports, wire-only grading, the pytest fixtures.

The fixture tests use ``dualcall_caller`` exactly as a user's suite does: it comes from the
installed pytest11 entry point (conformance.pytest_plugin), not from a conftest.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import httpx
import jsonschema
import pytest
from junitparser import JUnitXml

from callers.toy import ToyCaller
from conformance.callers.arena import ArenaServer
from conformance.callers.drive import CallerTarget, CommandCaller, run_callers, select
from conformance.callers.grade import NOT_OBSERVED, build_report
from conformance.callers.naive import call as naive_call
from conformance.callers.record import CallerOutcome
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
        (["--cors-origin", "127.0.0.1:5173"], "must be an origin"),
        (["--cors-origin", "http://127.0.0.1:5173/app"], "must be an origin"),
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


TESTS_DIR = Path(__file__).resolve().parents[1]


def toy_command(monkeypatch: pytest.MonkeyPatch, **knobs: object) -> str:
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")]))
    return f"{sys.executable} -m callers.toy {shlex.quote(json.dumps(knobs))} {{submit_url}} {{base_url}} {{prompt}}"


def test_a_rule_passes_only_on_a_scenario_built_for_it(arena: ArenaServer) -> None:
    """DC-C-5 kept where the text is easy (absolute-sse-url) says nothing about the cuts it is built for."""
    easy = arena.arena.new_run(SCENARIO_BY_NAME["absolute-sse-url"])
    text = ToyCaller()(CallerTarget("", easy.base_url, easy.submit_url, "hi"))
    easy.outcome = CallerOutcome(succeeded=True, text=text)
    hard = arena.arena.new_run(SCENARIO_BY_NAME["cut-mid-event"])
    ToyCaller()(CallerTarget("", hard.base_url, hard.submit_url, "hi"))  # its result is not reported: wire only
    for run in (easy, hard):
        arena.settle(run)
    verdicts = {result.id: result for result in build_report([easy, hard], target="toy").results}
    reassembly = verdicts["DC-CALLER-005"]
    assert reassembly.outcome == NOT_OBSERVED, reassembly.message
    assert "[cut-mid-event]" in reassembly.message and "result is unknown" in reassembly.message
    assert any("[absolute-sse-url] PASS" in detail for detail in reassembly.details)  # kept as detail, not as proof
    assert verdicts["DC-CALLER-004"].outcome == "passed"  # the resume itself was seen on the wire
    only_easy = {result.id: result for result in build_report([easy], target="toy").results}["DC-CALLER-005"]
    assert only_easy.outcome == NOT_OBSERVED and "scenarios run: none of cut-mid-event" in only_easy.message


def test_the_replay_names_the_scenario_that_failed(monkeypatch: pytest.MonkeyPatch) -> None:
    """A text lost in absolute-sse-url breaks DC-C-5 there; the replay runs that scenario, not DC-C-5's own."""
    command = toy_command(monkeypatch, same_origin_only=True)
    report = run_callers(
        CommandCaller(command, timeout_s=15), scenarios=select(["absolute-sse-url", "cut-mid-event"]), jobs=2
    )
    text = next(result for result in report.results if result.id == "DC-CALLER-005")
    assert text.outcome == "failed" and text.message.startswith("[absolute-sse-url]"), text.message
    assert text.replay is not None and text.replay.endswith(" --scenarios absolute-sse-url"), text.replay


@pytest.mark.parametrize(("require_all", "code"), [(False, 0), (True, 1)])
def test_require_all_fails_a_run_that_left_must_rules_unverified(
    capsys: pytest.CaptureFixture[str], require_all: bool, code: int
) -> None:
    reference = f"{sys.executable} -m conformance.callers.reference {{base_url}} {{prompt}}"
    args = ["serve-callers", "--caller", reference, "--scenarios", "keepalive", *(["--require-all"] * require_all)]
    assert main(args) == code
    out = capsys.readouterr().out
    assert "DC-C-4" in out and "not verified" in out
