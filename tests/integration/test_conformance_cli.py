"""`python -m conformance` end to end: real subprocesses against real workers on loopback.

Exit codes (README): 0 every MUST check passed, 1 a check failed, 2 usage error or a target that
does not answer HTTP. Usage errors and unreachable targets are one line on stderr, never a traceback.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from helpers import free_port
from junitparser import Failure, JUnitXml, TestSuite
from workerproc import WorkerProcess

from conformance.runner import catalogue

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
CHECKS_MD = ROOT / "docs" / "checks.md"
REPORT_SCHEMA = ROOT / "conformance" / "report" / "report.schema.json"
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
TIMEOUT_S = 120


def conformance(
    *args: str, env: dict[str, str] | None = None, timeout: float = TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    base_env = {key: value for key, value in os.environ.items() if key != "DUALCALL_TOKEN"}
    return subprocess.run(
        [sys.executable, "-m", "conformance", *args],
        check=False,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        env={**base_env, "COLUMNS": "160", **(env or {})},
    )


def explain(done: subprocess.CompletedProcess[str]) -> str:
    return f"exit {done.returncode}\n--- stdout ---\n{done.stdout[-6000:]}\n--- stderr ---\n{done.stderr[-3000:]}"


def assert_one_line_error(done: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Exit 2, exactly one non-empty stderr line naming the problem, and no traceback anywhere."""
    assert done.returncode == EXIT_USAGE, explain(done)
    assert "Traceback" not in done.stderr, explain(done)
    assert "Traceback" not in done.stdout, explain(done)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, explain(done)
    assert lines[0].startswith("dualcall-conformance:"), explain(done)
    for needle in needles:
        assert needle in lines[0], explain(done)
    return lines[0]


def load_json(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def by_id(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {check["id"]: check for check in report["checks"]}


def junit_suites(path: Path) -> list[TestSuite]:
    xml = JUnitXml.fromfile(str(path))
    return [xml] if isinstance(xml, TestSuite) else list(xml)


def junit_failures(path: Path) -> list[str]:
    """Names of the test cases carrying a <failure>."""
    return [
        case.name
        for suite in junit_suites(path)
        for case in suite
        if any(isinstance(result, Failure) for result in case.result)
    ]


def flat(text: str) -> str:
    """Console text without rich's panel borders and line wrapping, for substring checks."""
    return re.sub(r"\s+", " ", text.replace("│", " "))


# ------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def fast_mock() -> Iterator[WorkerProcess]:
    """The mock with a short TTL (so the lifetime checks run) and fast tokens."""
    with WorkerProcess("mock", "--ttl-s", "2", "--token-delay-ms", "1") as worker:
        yield worker


@pytest.fixture(scope="module")
def auth_mock() -> Iterator[WorkerProcess]:
    with WorkerProcess("mock", "--ttl-s", "2", "--token-delay-ms", "1", "--auth-token", "s3cret") as worker:
        yield worker


@pytest.fixture
def not_http() -> Iterator[str]:
    """A TCP server that answers every connection with `garbage\\r\\n` and hangs up."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(1.0)
                try:
                    conn.recv(4096)
                    conn.sendall(b"garbage\r\n")
                except OSError:
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join(5)
    server.close()


# ------------------------------------------------------------------------------------ catalogue, version


def test_list_prints_every_check_id() -> None:
    done = conformance("--list")
    assert done.returncode == EXIT_OK, explain(done)
    assert done.stderr == ""
    ids = [spec.id for spec in catalogue()]
    assert len(ids) == len(set(ids)), "duplicate check ids in the catalogue"
    for check_id in ids:
        assert re.search(rf"(?<![\w-]){re.escape(check_id)}(?![\w-])", done.stdout), f"{check_id} missing from --list"


def test_list_markdown_is_the_committed_docs_byte_for_byte() -> None:
    """docs/checks.md is generated: `python -m conformance --list --markdown > docs/checks.md`."""
    done = subprocess.run(
        [sys.executable, "-m", "conformance", "--list", "--markdown"],
        check=False,
        capture_output=True,
        timeout=TIMEOUT_S,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == EXIT_OK, done.stderr
    assert done.stdout == CHECKS_MD.read_bytes(), (
        "docs/checks.md is out of date: regenerate it with `python -m conformance --list --markdown > docs/checks.md`"
    )
    for spec in catalogue():
        assert f"`{spec.id}`".encode() in done.stdout


def test_version() -> None:
    from conformance import __version__
    from conformance.contract import contract_version

    done = conformance("--version")
    assert done.returncode == EXIT_OK, explain(done)
    assert __version__ in done.stdout
    assert f"contract {contract_version()}" in done.stdout


# ------------------------------------------------------------------------------------ usage errors: exit 2


def test_no_url_is_a_usage_error() -> None:
    done = conformance()
    assert_one_line_error(done, "URL is required")
    assert done.stdout == ""


@pytest.mark.parametrize(
    "args,needle",
    [
        (("ftp://x",), "ftp://x"),
        (("not a url",), "http"),
        (("http://127.0.0.1:9", "--checks", "NOPE"), "NOPE"),
        (("http://127.0.0.1:9", "--checks", "DC-STREAM-007,DC-NOPE-999"), "DC-NOPE-999"),
        (("http://127.0.0.1:9", "--timeout", "-1"), "--timeout"),
        (("http://127.0.0.1:9", "--timeout", "soon"), "--timeout"),
        (("http://127.0.0.1:9", "--timeout", "nan"), "finite"),
        (("http://127.0.0.1:9", "--ttl-budget", "inf"), "finite"),
        (("http://127.0.0.1:9", "--max-examples", "0"), "--max-examples"),
        (("http://127.0.0.1:9", "--level", "may"), "--level"),
        (("http://127.0.0.1:9", "--no-such-option"), "--no-such-option"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(args: tuple[str, ...], needle: str) -> None:
    done = conformance(*args)
    assert_one_line_error(done, needle)
    assert done.stdout == ""


def test_unreachable_target_exits_2_with_one_clear_line() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    started = time.perf_counter()
    done = conformance(url, "--no-fuzz", "--timeout", "5")
    line = assert_one_line_error(done, url)
    assert "connect" in line.lower()
    assert time.perf_counter() - started < 30


def test_target_that_is_not_http_exits_2(not_http: str) -> None:
    done = conformance(not_http, "--no-fuzz", "--timeout", "5")
    line = assert_one_line_error(done, not_http)
    assert "HTTP" in line


def test_report_path_that_is_a_directory_is_a_usage_error(tmp_path: Path) -> None:
    done = conformance("http://127.0.0.1:9", "--json", str(tmp_path))
    assert_one_line_error(done, str(tmp_path))


# ------------------------------------------------------------------------------------ the mock passes


def test_mock_passes_with_all_three_reports(fast_mock: WorkerProcess, tmp_path: Path) -> None:
    json_path, junit_path, html_path = tmp_path / "r.json", tmp_path / "r.xml", tmp_path / "sub" / "r.html"
    html_path.parent.mkdir()
    done = conformance(
        fast_mock.url, "--no-fuzz", "--json", str(json_path), "--junit", str(junit_path), "--html", str(html_path)
    )
    assert done.returncode == EXIT_OK, explain(done)
    assert "Traceback" not in done.stdout + done.stderr

    report = load_json(json_path)
    jsonschema.Draft202012Validator(json.loads(REPORT_SCHEMA.read_text(encoding="utf-8"))).validate(report)
    assert report["target"] == fast_mock.url
    assert re.fullmatch(r"\d+\.\d+\.\d+", report["contract_version"])
    assert report["ok"] is True
    summary = report["summary"]
    for key in ("passed", "failed", "warnings", "unverified"):
        assert isinstance(summary[key], int), key
    assert summary["failed"] == 0, explain(done)
    non_fuzz = [spec.id for spec in catalogue() if spec.area != "fuzz"]
    assert [check["id"] for check in report["checks"]] == non_fuzz  # catalogue order, fuzz left out
    assert sum(summary[key] for key in ("passed", "failed", "warnings", "unverified")) == len(non_fuzz)
    for check in report["checks"]:
        for key in ("id", "rule", "level", "outcome", "message", "evidence"):
            assert key in check, (check["id"], key)
        assert check["outcome"] in ("passed", "unverified"), check
        assert check["level"] in ("MUST", "SHOULD")
        assert re.fullmatch(r"DC-\d+\.\d+", check["rule"]), check["rule"]
    assert summary["passed"] >= len(non_fuzz) - 3
    checks = by_id(report)
    # the short TTL lets the suite check reclaim instead of skipping it
    assert checks["DC-LIFE-001"]["outcome"] == "passed", checks["DC-LIFE-001"]
    assert checks["DC-LIFE-002"]["outcome"] == "passed", checks["DC-LIFE-002"]
    assert checks["DC-SVC-005"]["outcome"] == "unverified"
    assert "--token" in checks["DC-SVC-005"]["how_to_verify"]
    # every unverified MUST rule is listed with its reason, in the summary and on the console
    unverified = {entry["id"] for entry in summary["unverified_must"]}
    assert unverified == {c["id"] for c in report["checks"] if c["outcome"] == "unverified" and c["level"] == "MUST"}
    if unverified:
        assert "MUST rule" in done.stdout and "not verified" in done.stdout

    suites = junit_suites(junit_path)
    assert sum(suite.failures for suite in suites) == 0
    assert sum(suite.errors for suite in suites) == 0
    assert sum(suite.tests for suite in suites) == len(non_fuzz)
    assert junit_failures(junit_path) == []

    html = html_path.read_text(encoding="utf-8")
    assert "PASS" in html
    assert fast_mock.url in html

    for label, path in (("JSON", json_path), ("JUnit", junit_path), ("HTML", html_path)):
        assert f"{label} report: {path}" in flat(done.stdout)
    assert "PASS" in done.stdout


def test_checks_selects_exactly_one(fast_mock: WorkerProcess, tmp_path: Path) -> None:
    json_path = tmp_path / "one.json"
    done = conformance(fast_mock.url, "--checks", "dc-stream-007", "--json", str(json_path))
    assert done.returncode == EXIT_OK, explain(done)
    report = load_json(json_path)
    assert [check["id"] for check in report["checks"]] == ["DC-STREAM-007"]
    assert report["checks"][0]["outcome"] == "passed"
    assert sum(report["summary"][key] for key in ("passed", "failed", "warnings", "unverified")) == 1
    assert "DC-STREAM-007" in done.stdout
    assert "DC-STREAM-006" not in done.stdout


def test_full_run_with_fuzzing_is_green_and_fast(fast_mock: WorkerProcess, tmp_path: Path) -> None:
    json_path = tmp_path / "full.json"
    started = time.perf_counter()
    done = conformance(fast_mock.url, "--json", str(json_path), timeout=180)
    duration = time.perf_counter() - started
    # wall time is measured by `python -m benchmarks` (suite wall time), not asserted here: machines are noisy
    print(f"\nfull conformance run with fuzzing against the mock: {duration:.1f}s")
    assert done.returncode == EXIT_OK, explain(done)
    report = load_json(json_path)
    assert report["summary"]["failed"] == 0
    ran = [check["id"] for check in report["checks"]]
    fuzz_ids = [spec.id for spec in catalogue() if spec.area == "fuzz"]
    assert fuzz_ids, "the catalogue has no fuzz checks"
    for fuzz_id in fuzz_ids:
        assert fuzz_id in ran
        assert by_id(report)[fuzz_id]["outcome"] == "passed", by_id(report)[fuzz_id]
    assert sorted(ran) == sorted(spec.id for spec in catalogue())


# ------------------------------------------------------------------------------------ the legacy worker fails


def test_legacy_worker_fails_with_the_diagnosis(legacy_worker: WorkerProcess, tmp_path: Path) -> None:
    json_path, junit_path = tmp_path / "legacy.json", tmp_path / "legacy.xml"
    done = conformance(legacy_worker.url, "--no-fuzz", "--json", str(json_path), "--junit", str(junit_path))
    assert done.returncode == EXIT_FAILED, explain(done)
    assert "Traceback" not in done.stdout + done.stderr
    report = load_json(json_path)
    assert report["ok"] is False
    assert report["diagnoses"][0]["name"] == "legacy direct-SSE worker"
    fixes = report["diagnoses"][0]["fixes"]
    assert fixes
    console = flat(done.stdout)
    assert "legacy direct-SSE" in console
    assert "What to change" in console
    assert flat(fixes[0])[:60] in console, "the first fix is not printed"
    legacy = by_id(report)["DC-LEGACY-001"]
    assert legacy["outcome"] == "failed"
    assert legacy["rule"] == "DC-1.2"
    assert any("curl " in exchange["curl"] for exchange in legacy["evidence"]["exchanges"])
    assert "FAIL DC-LEGACY-001 [DC-1.2 MUST]" in done.stdout
    assert "$ curl " in done.stdout
    # the diagnosis leads; the failures it explains are one line each, not a block each
    assert done.stdout.index("Diagnosis: legacy direct-SSE worker") < done.stdout.index("FAIL DC-LEGACY-001 [")
    assert done.stdout.count("$ curl ") == 1, explain(done)
    unverified = [line for line in done.stdout.splitlines() if line.startswith("  • DC-")]
    rules = report["summary"]["unverified_must_rules"]
    assert 0 < len(unverified) < len(rules) // 2, explain(done)  # grouped by reason, not one line per rule

    assert sum(suite.failures for suite in junit_suites(junit_path)) == report["summary"]["failed"] > 0
    failing = junit_failures(junit_path)
    assert any(name.startswith("DC-LEGACY-001") for name in failing), failing


def test_should_failure_is_a_warning_unless_level_should(legacy_worker: WorkerProcess, tmp_path: Path) -> None:
    """DC-SVC-003 (metrics, SHOULD): the legacy worker has no /metrics."""
    spec = next(spec for spec in catalogue() if spec.id == "DC-SVC-003")
    assert spec.level == "SHOULD"

    must_json, should_json = tmp_path / "must.json", tmp_path / "should.json"
    at_must = conformance(legacy_worker.url, "--checks", "DC-SVC-003", "--json", str(must_json))
    assert at_must.returncode == EXIT_OK, explain(at_must)
    must_check = load_json(must_json)["checks"][0]
    assert must_check["outcome"] == "warning"
    assert "/metrics" in must_check["message"]
    assert load_json(must_json)["summary"]["warnings"] == 1

    at_should = conformance(
        legacy_worker.url, "--checks", "DC-SVC-003", "--level", "should", "--json", str(should_json)
    )
    assert at_should.returncode == EXIT_FAILED, explain(at_should)
    should_report = load_json(should_json)
    assert should_report["threshold"] == "should"
    assert should_report["checks"][0]["outcome"] == "failed"
    assert should_report["summary"]["failed"] == 1


# ------------------------------------------------------------------------------------ auth


def test_auth_worker_without_token_says_to_pass_token(auth_mock: WorkerProcess, tmp_path: Path) -> None:
    """A usage error (exit 2, one line naming the fix), not a failure per check."""
    done = conformance(auth_mock.url, "--no-fuzz", "--json", str(tmp_path / "noauth.json"))
    assert_one_line_error(done, "this worker requires a bearer token: pass --token or set $DUALCALL_TOKEN")
    assert not (tmp_path / "noauth.json").exists()


def test_wrong_token_is_a_usage_error(auth_mock: WorkerProcess) -> None:
    done = conformance(auth_mock.url, "--no-fuzz", "--token", "wrong")
    assert_one_line_error(done, "the worker rejected the bearer token (401)")


def test_url_with_a_path_suggests_the_base_url(fast_mock: WorkerProcess) -> None:
    done = conformance(fast_mock.url + "/v1", "--no-fuzz")
    assert_one_line_error(done, "/health answered 404")
    assert f"try: {fast_mock.url}" in done.stderr


def test_auth_worker_with_token_passes(auth_mock: WorkerProcess, tmp_path: Path) -> None:
    json_path = tmp_path / "auth.json"
    done = conformance(auth_mock.url, "--no-fuzz", "--token", "s3cret", "--json", str(json_path))
    assert done.returncode == EXIT_OK, explain(done)
    report = load_json(json_path)
    assert report["summary"]["failed"] == 0
    assert by_id(report)["DC-SVC-005"]["outcome"] == "passed", by_id(report)["DC-SVC-005"]
    assert by_id(report)["DC-SUBMIT-001"]["outcome"] == "passed"
    assert "s3cret" not in done.stdout, "the token leaked into the console output"


def test_auth_token_from_environment(auth_mock: WorkerProcess, tmp_path: Path) -> None:
    json_path = tmp_path / "env.json"
    done = conformance(
        auth_mock.url,
        "--checks",
        "DC-SVC-005,DC-SUBMIT-001,DC-STREAM-007",
        "--json",
        str(json_path),
        env={"DUALCALL_TOKEN": "s3cret"},
    )
    assert done.returncode == EXIT_OK, explain(done)
    checks = by_id(load_json(json_path))
    assert {check_id: check["outcome"] for check_id, check in checks.items()} == {
        "DC-SVC-005": "passed",
        "DC-SUBMIT-001": "passed",
        "DC-STREAM-007": "passed",
    }
