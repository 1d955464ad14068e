"""Tests for the report renderers (JSON, JUnit XML, HTML, console): all views of one Report."""

from __future__ import annotations

import html.parser
import io
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import jsonschema
import pytest
from junitparser import Failure, JUnitXml, Skipped
from rich.console import Console

from conformance.model import CheckResult, Diagnosis, Exchange, Report
from conformance.report import (
    SCHEMA_PATH,
    ConsoleProgress,
    render_console,
    write_html,
    write_json,
    write_junit,
)
from conformance.report.text import visible

HOSTILE = "<script>alert(1)</script>\x00\x1b[31mred\x1b[0m \U0001f525 line1\r\nline2 ]]> & \"q\" 'a' [bold]x[/bold]"
DIAGNOSIS_NAME = "legacy direct-SSE worker"


def _legacy_exchange() -> Exchange:
    return Exchange(
        method="POST",
        url="http://worker.test/v1/inference",
        request_headers={"content-type": "application/json", "authorization": "Bearer s3cret"},
        request_body='{"prompt": "hi", "max_tokens": 4}',
        status=200,
        response_headers={"content-type": "text/event-stream"},
        body_excerpt='data: {"token": "<script>alert(1)</script>"}\r\n\r\n' + HOSTILE,
        body_truncated=True,
        elapsed_ms=12.5,
    )


def make_report() -> Report:
    results = [
        CheckResult(
            id="DC-SUBMIT-202",
            rule="DC-1.2",
            level="MUST",
            title="Submit answers 202 at once, never with the stream",
            outcome="failed",
            message="POST /v1/inference answered 200 text/event-stream, expected 202 application/json",
            exchanges=[_legacy_exchange(), Exchange(method="GET", url="http://worker.test/x", error="timed out")],
            details=["the body is an SSE stream: " + HOSTILE],
            duration_s=0.25,
        ),
        CheckResult(
            id="DC-SUBMIT-JOBID",
            rule="DC-1.3",
            level="MUST",
            title="Server-generated job ids",
            outcome="passed",
            message="ok",
            duration_s=0.1,
        ),
        CheckResult(
            id="DC-STREAM-KEEPALIVE",
            rule="DC-2.8",
            level="SHOULD",
            title="Keep-alive comments",
            outcome="warning",
            message="no keep-alive comment within 15 s",
            exchanges=[
                Exchange(
                    method="GET",
                    url="http://worker.test/v1/inference/j1/stream",
                    status=200,
                    response_headers={"content-type": "text/event-stream"},
                    body_excerpt="id: 1\nevent: started\ndata: {}\n\n",
                )
            ],
        ),
        CheckResult(
            id="DC-STREAM-RESUME",
            rule="DC-2.11",
            level="MUST",
            title="Resume with Last-Event-ID",
            outcome="unverified",
            message="submit failed; nothing to resume " + HOSTILE,
            how_to_verify="a worker that accepts the submission",
        ),
    ]
    return Report(
        target="http://worker.test",
        contract_version="1.0.0",
        threshold="must",
        started_at="2025-01-01T12:00:00+00:00",
        duration_s=4.2,
        results=results,
        diagnoses=[
            Diagnosis(
                name=DIAGNOSIS_NAME,
                summary="The worker streams from POST /v1/inference instead of answering 202.",
                observations=["POST answered 200 with content-type text/event-stream", "body: " + HOSTILE],
                fixes=["Answer POST with 202 {job_id, sse_url}", "Serve the stream from GET {sse_url}"],
            )
        ],
        worker={"server": "legacy/0.1"},
        suite_version="0.1.0",
    )


@pytest.fixture
def report() -> Report:
    return make_report()


# ------------------------------------------------------------------ JSON


def test_json_validates_against_schema_and_round_trips(report: Report, tmp_path: Path) -> None:
    path = write_json(report, tmp_path / "deep" / "dir" / "report.json")
    raw = path.read_bytes()
    assert "🔥".encode() in raw  # ensure_ascii=False
    data = json.loads(raw.decode("utf-8"))
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.Draft202012Validator(schema).validate(data)
    assert {key: data["summary"][key] for key in ("passed", "failed", "warnings", "unverified")} == {
        "passed": 1,
        "failed": 1,
        "warnings": 1,
        "unverified": 1,
    }
    assert data["summary"]["unverified_must_rules"] == ["DC-2.11"]
    assert data["summary"]["unverified_must"][0]["how_to_verify"] == "a worker that accepts the submission"
    assert list(data)[:4] == ["schema_version", "target", "target_kind", "target_unsupported"]
    assert [c["id"] for c in data["checks"]] == [r.id for r in report.results]
    first = data["checks"][0]
    assert {"id", "rule", "level", "outcome", "message", "evidence"} <= set(first)
    assert first["evidence"]["exchanges"][0]["response"]["body_excerpt"] == report.results[0].exchanges[0].body_excerpt
    assert first["evidence"]["exchanges"][1]["response"] is None
    assert "s3cret" not in raw.decode()
    assert first["evidence"]["exchanges"][0]["request"]["headers"]["authorization"] == "Bearer $DUALCALL_TOKEN"
    assert data["ok"] is False


def test_schema_rejects_a_broken_report(report: Report) -> None:
    data = report.to_dict()
    checks = data["checks"]
    assert isinstance(checks, list)
    checks[0]["outcome"] = "exploded"
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(data, schema, cls=jsonschema.Draft202012Validator)


# ------------------------------------------------------------------ JUnit


def test_junit_is_read_by_junitparser(report: Report, tmp_path: Path) -> None:
    path = write_junit(report, tmp_path / "out" / "junit.xml")
    xml = JUnitXml.fromfile(str(path))
    suites = list(xml) if isinstance(xml, JUnitXml) else [xml]
    assert len(suites) == 1
    suite = suites[0]
    assert suite.name == "dualcall-conformance"
    assert suite.tests == 4
    assert suite.failures == 1
    assert suite.skipped == 1
    assert suite.errors == 0
    cases = {case.name: case for case in suite}
    assert set(cases) == {f"{r.id} {r.title}" for r in report.results}
    failed = cases["DC-SUBMIT-202 Submit answers 202 at once, never with the stream"]
    assert failed.classname == "dualcall.DC-SUBMIT"
    failures = [r for r in failed.result if isinstance(r, Failure)]
    assert len(failures) == 1
    assert failures[0].message is not None
    assert failures[0].message.startswith("[DC-1.2 MUST]")
    assert failures[0].type == "DC-SUBMIT-202"
    assert "curl" in (failures[0].text or "")
    skipped = cases["DC-STREAM-RESUME Resume with Last-Event-ID"]
    assert any(
        isinstance(r, Skipped) and "to verify: a worker that accepts" in (r.message or "") for r in skipped.result
    )
    warning = cases["DC-STREAM-KEEPALIVE Keep-alive comments"]
    assert warning.is_passed
    assert (warning.system_out or "").startswith("WARNING [DC-2.8 SHOULD]")
    props = {p.name: p.value for p in suite.properties()}
    assert props["target"] == "http://worker.test"
    assert props["contract_version"] == "1.0.0"
    assert props["threshold"] == "must"


def test_junit_parses_with_elementtree_and_has_no_illegal_chars(report: Report, tmp_path: Path) -> None:
    path = write_junit(report, tmp_path / "junit.xml")
    raw = path.read_bytes().decode("utf-8")
    assert "\x00" not in raw
    assert "\x1b" not in raw
    assert "\\x1b" in raw  # shown, not dropped silently
    root = ET.parse(path).getroot()
    assert root.tag == "testsuites"
    suite = root.find("testsuite")
    assert suite is not None
    assert suite.get("tests") == "4"
    assert suite.get("failures") == "1"
    assert suite.get("skipped") == "1"
    assert suite.get("errors") == "0"
    assert suite.get("timestamp") == "2025-01-01T12:00:00+00:00"
    out = suite.find("system-out")
    assert out is not None
    assert out.text is not None
    assert DIAGNOSIS_NAME in out.text
    assert "What to change" in out.text
    failure = suite.find("testcase/failure")
    assert failure is not None
    assert failure.text is not None
    assert "<script>alert(1)</script>" in failure.text  # escaped in the file, intact after parsing
    assert "🔥" in failure.text
    assert "Bearer $DUALCALL_TOKEN" in failure.text
    assert "s3cret" not in raw


def test_visible_escapes_illegal_characters() -> None:
    assert visible("a\x00b\x1bc\td\ne\rf\ud800") == "a\\x00b\\x1bc\td\ne\rf\\ud800"
    assert visible("x\ry\r\nz", terminal=True) == "x\\ry\nz"


# ------------------------------------------------------------------ HTML


class _Collector(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_html_is_escaped_and_complete(report: Report, tmp_path: Path) -> None:
    path = write_html(report, tmp_path / "a" / "report.html")
    page = path.read_text(encoding="utf-8")
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "\x00" not in page
    assert "\x1b" not in page
    assert "FAIL" in page
    for result in report.results:
        assert result.id in page
    assert DIAGNOSIS_NAME in page
    assert page.index(DIAGNOSIS_NAME) < page.index("<table")  # diagnosis at the top
    assert "http://" not in page.replace("http://worker.test", "")  # no external assets
    assert "s3cret" not in page
    collector = _Collector()
    collector.feed(page)
    assert "script" not in collector.tags
    assert collector.tags.count("details") == 2  # the failure and the warning
    assert "<script>alert(1)</script>" in "".join(collector.text)  # rendered as text
    assert "1 passed, 1 failed, 1 warning, 1 unverified in 4.2s" in "".join(collector.text)


def test_html_passing_report(tmp_path: Path) -> None:
    report = Report(target="http://ok.test", contract_version="1.0.0", threshold="should", started_at="now")
    report.results.append(CheckResult("DC-SUBMIT-202", "DC-1.2", "MUST", "t", "passed", "ok"))
    page = write_html(report, tmp_path / "r.html").read_text(encoding="utf-8")
    assert 'class="verdict PASS">PASS<' in page
    assert "<details" not in page


# ------------------------------------------------------------------ console


def _console() -> Console:
    return Console(record=True, width=120, force_terminal=False, file=io.StringIO())


def test_console_render(report: Report) -> None:
    console = _console()
    report.diagnoses = []  # with a diagnosis the failures are grouped (next test)
    render_console(report, console)
    out = console.export_text()
    for result in report.results:
        assert result.id in out
    assert "✔ PASS" in out
    assert "✘ FAIL" in out
    assert "! WARN" in out
    assert "? UNVERIFIED" in out
    assert "1 MUST rule not verified: DC-2.11" in out
    assert "to verify: a worker that accepts the submission" in out
    assert "POST http://worker.test/v1/inference → 200" in out
    assert "curl" in out
    assert "1 passed, 1 failed, 1 warning, 1 unverified in 4.2s — FAIL (MUST failures)" in out
    assert out.rstrip().splitlines()[-1].startswith("1 passed, 1 failed")
    assert "\x1b" not in out
    assert "\x00" not in out
    assert "[bold]x[/bold]" in out  # not interpreted as rich markup
    assert "s3cret" not in out


def test_console_leads_with_the_diagnosis_and_groups_what_it_explains(report: Report) -> None:
    console = _console()
    render_console(report, console, lines_already_printed=True)
    out = console.export_text()
    assert out.index(f"Diagnosis: {DIAGNOSIS_NAME}") < out.index("DC-SUBMIT-202")
    assert "What to change" in out
    assert "1. Answer POST with 202 {job_id, sse_url}" in out
    assert "The diagnosis above also explains 1 other check below" in out
    assert out.count("$ curl") == 1  # the first failure's evidence; one line for each other explained one
    assert "\x1b" not in out
    assert "s3cret" not in out


@pytest.mark.parametrize("width", [40, 80, 120, 200])
def test_diagnosis_is_never_cut_outside_a_terminal(report: Report, width: int) -> None:
    console = Console(record=True, width=width, force_terminal=False, file=io.StringIO(), soft_wrap=True)
    report.diagnoses[0].fixes.append(
        "Put `dualcall-worker gateway --upstream http://127.0.0.1:8080 --upstream-api openai-chat` in front of "
        "the server, point the gate at the gateway's URL, and run it again; the fix must reach the reader whole."
    )
    render_console(report, console, lines_already_printed=True)
    out = console.export_text()
    for fix in report.diagnoses[0].fixes:
        assert fix in out  # whole, on one line: no box border, no cut


def test_console_lines_already_printed(report: Report) -> None:
    console = _console()
    render_console(report, console, lines_already_printed=True)
    out = console.export_text()
    assert "✔ PASS" not in out  # the passed check has no evidence, so no line
    assert "DC-SUBMIT-202" in out  # failure evidence
    assert "1 passed, 1 failed" in out


def test_progress_prints_lines_as_it_advances(report: Report) -> None:
    console = _console()
    with ConsoleProgress(console, total=len(report.results)) as progress:
        for index, result in enumerate(report.results):
            progress.start(result.id, result.title)
            progress.advance(result)
            out = console.export_text(clear=False)
            assert result.id in out
            assert sum(r.id in out for r in report.results) == index + 1
    assert progress.lines_printed
    assert progress.done == len(report.results)
    render_console(report, console, lines_already_printed=progress.lines_printed)
    out = console.export_text()
    assert out.count("DC-SUBMIT-JOBID") == 1
    assert "1 passed, 1 failed, 1 warning, 1 unverified" in out


def test_progress_on_a_terminal_is_transient(report: Report) -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, width=120, force_terminal=True, record=True)
    with ConsoleProgress(console, total=len(report.results)) as progress:
        for result in report.results:
            progress.start(result.id, "[red]markup[/red]")
            progress.advance(result)
    out = console.export_text()
    for result in report.results:
        assert result.id in out


def test_warning_only_report_passes(tmp_path: Path) -> None:
    report = make_report()
    report.results = [r for r in report.results if r.outcome != "failed"]
    report.diagnoses = []
    console = _console()
    render_console(report, console)
    assert "PASS (with warnings; 1 MUST rule not verified)" in console.export_text()

    xml = JUnitXml.fromfile(str(write_junit(report, tmp_path / "j.xml")))
    suite = next(iter(xml)) if isinstance(xml, JUnitXml) else xml
    assert suite.failures == 0
    assert suite.tests == 3


def test_require_all_turns_an_unverified_must_rule_into_a_failure(tmp_path: Path) -> None:
    report = make_report()
    report.results = [r for r in report.results if r.outcome != "failed"]
    report.diagnoses = []
    assert report.ok
    report.require_all = True
    assert not report.ok
    console = _console()
    render_console(report, console)
    assert "FAIL (1 MUST rule not verified, --require-all)" in console.export_text()
    suite = ET.parse(write_junit(report, tmp_path / "j.xml")).getroot().find("testsuite")
    assert suite is not None and suite.get("failures") == "1" and suite.get("skipped") == "0"
    data = json.loads(write_json(report, tmp_path / "r.json").read_text(encoding="utf-8"))
    assert data["ok"] is False and data["require_all"] is True


def test_curl_runs_as_printed_with_the_token_from_the_environment(tmp_path: Path) -> None:
    """The reproduction line expands $DUALCALL_TOKEN and carries a NUL byte in the body intact."""
    import shutil
    import subprocess

    body = '{"prompt": "a\x001b\\\\n%s"}'
    exchange = Exchange(
        method="POST",
        url="http://127.0.0.1:9/v1/inference",
        request_headers={"Authorization": "Bearer ***", "Content-Type": "application/json"},
        request_body=body,
    )
    line = exchange.curl()
    assert "'Authorization" not in line and '"Authorization: Bearer $DUALCALL_TOKEN"' in line
    bash = shutil.which("bash")
    assert bash is not None
    # swap curl for a recorder of its stdin and arguments; the shell line itself runs unchanged
    recorder = tmp_path / "curl"
    recorder.write_text(f'#!{bash}\ncat > "{tmp_path}/body"; printf "%s\\n" "$@" > "{tmp_path}/args"\n')
    recorder.chmod(0o755)
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "DUALCALL_TOKEN": "s3cret"}
    subprocess.run([bash, "-c", line], check=True, env=env, timeout=10)
    assert (tmp_path / "body").read_bytes() == body.encode()
    assert "Authorization: Bearer s3cret" in (tmp_path / "args").read_text()
