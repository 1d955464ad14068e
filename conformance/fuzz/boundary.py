"""Deterministic boundary cases for submit: schemathesis' ``coverage`` phase, run through its CLI.

The coverage phase derives its cases from the schema alone: for every field of ``InferenceRequest``
the smallest and largest valid values, min-1 and max+1, ``null``, values of the wrong type, a
missing required field, an unknown field, other HTTP methods. schemathesis 4 offers it through
``schemathesis run --phases coverage`` (its Python API runs it only inside pytest), so this
module runs the CLI in a subprocess, in a temporary directory that is removed afterwards, and
reads its NDJSON event report: every case with the request sent, the response and the verdict
of each check. The bearer token travels in the environment, never on the command line.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

__all__ = ["BoundaryCase", "BoundaryRun", "run_coverage"]

#: the submit operation, the only one whose boundaries matter for the contract's request rules
_PATH: Final = "/v1/inference"
_TOKEN_VARIABLE: Final = "DUALCALL_FUZZ_TOKEN"
#: seconds the CLI needs to start and load the document, on top of the requests themselves
_STARTUP_S: Final = 30.0


@dataclass(slots=True)
class BoundaryCase:
    """One coverage case as the CLI reported it."""

    method: str
    path: str
    #: the JSON body schemathesis generated (``has_body`` tells ``None`` from no body)
    body: Any
    has_body: bool
    #: the case was generated to be valid (positive mode)
    positive: bool
    #: what the case tests, in schemathesis' words, e.g. "Maximum value for 'seed'"
    description: str
    #: ``{"method", "uri", "headers": {name: [values]}, "body": bytes | None}``
    request: dict[str, Any] = field(default_factory=dict)
    #: ``{"status", "headers": {name: [values]}, "content": bytes, "elapsed": s}``; None without a response
    response: dict[str, Any] | None = None
    #: (check name, title, message) of every failed check
    failures: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.method} {self.path}"


@dataclass(slots=True)
class BoundaryRun:
    cases: list[BoundaryCase] = field(default_factory=list)
    #: transport errors the CLI reported (no response for a case)
    errors: list[str] = field(default_factory=list)
    #: why the run produced nothing usable (the CLI could not start, timed out, wrote no report)
    problem: str | None = None
    seconds: float = 0.0


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(str(k))} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def config_toml(checks: dict[str, dict[str, Any]], *, with_token: bool) -> str:
    """A ``schemathesis.toml``: the checks' settings, and the token header read from the environment."""
    lines = []
    if with_token:
        lines.append(f'headers = {{ "Authorization" = "Bearer ${{{_TOKEN_VARIABLE}}}" }}')
    for name, settings in checks.items():
        lines.append(f"[checks.{name}]")
        lines.extend(f"{json.dumps(key)} = {_toml_value(value)}" for key, value in settings.items())
    return "\n".join(lines) + "\n"


def _decoded(payload: Any) -> bytes | None:
    if isinstance(payload, dict) and isinstance(payload.get("$base64"), str):
        return base64.b64decode(payload["$base64"])
    if isinstance(payload, dict) and isinstance(payload.get("string"), str):
        return str(payload["string"]).encode()
    return None


def _case(value: dict[str, Any], checks: list[Any], interaction: Any) -> BoundaryCase:
    meta = value.get("meta") or {}
    mode = ((meta.get("generation") or {}).get("mode")) or ""
    phase_data = (meta.get("phase") or {}).get("data") or {}
    case = BoundaryCase(
        method=str(value.get("method", "")).upper(),
        path=str(value.get("path", "")),
        body=value.get("body"),
        has_body="body" in value,
        positive=mode == "positive",
        description=str(phase_data.get("description", "")),
    )
    if isinstance(interaction, dict):
        request = interaction.get("request") or {}
        case.request = {
            "method": str(request.get("method", case.method)),
            "uri": str(request.get("uri", "")),
            "headers": request.get("headers") or {},
            "body": _decoded(request.get("body")),
        }
        response = interaction.get("response")
        if isinstance(response, dict):
            case.response = {
                "status": int(response.get("status_code", 0)),
                "headers": response.get("headers") or {},
                "content": _decoded(response.get("content")) or b"",
                "elapsed": response.get("elapsed"),
            }
    for check in checks:
        if not isinstance(check, dict) or check.get("status") != "failure":
            continue
        failure = ((check.get("failure_info") or {}).get("failure")) or {}
        case.failures.append(
            (str(check.get("name", "")), str(failure.get("title", "")), str(failure.get("message", "")))
        )
    return case


def parse_report(lines: list[str]) -> BoundaryRun:
    """Cases and transport errors from the CLI's NDJSON event report."""
    run = BoundaryRun()
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if not isinstance(event, dict) or len(event) != 1:
            continue
        (kind, payload), *_ = event.items()
        if kind == "NonFatalError" and isinstance(payload, dict):
            run.errors.append(str((payload.get("value") or {}).get("message", "")))
        if kind != "ScenarioFinished" or not isinstance(payload, dict):
            continue
        recorder = payload.get("recorder") or {}
        checks, interactions = recorder.get("checks") or {}, recorder.get("interactions") or {}
        for case_id, entry in (recorder.get("cases") or {}).items():
            value = entry.get("value") if isinstance(entry, dict) else None
            if isinstance(value, dict):
                run.cases.append(_case(value, checks.get(case_id) or [], interactions.get(case_id)))
    return run


def run_coverage(
    document: Path,
    base_url: str,
    *,
    checks: dict[str, dict[str, Any]],
    token: str | None,
    timeout_s: float,
    seed: int | None,
    time_limit_s: float,
) -> BoundaryRun:
    """Run the coverage phase against ``POST /v1/inference``; never raises."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="dualcall-boundary-") as directory:
        workdir = Path(directory)
        config = workdir / "schemathesis.toml"
        config.write_text(config_toml(checks, with_token=bool(token)), encoding="utf-8")
        report = workdir / "report.ndjson"
        command = [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "--config-file",
            str(config),
            "run",
            str(document),
            "--url",
            base_url.rstrip("/"),
            "--phases",
            "coverage",
            "--include-path",
            _PATH,
            "--include-method",
            "POST",
            "--checks",
            ",".join(checks),
            "--report",
            "ndjson",
            "--report-ndjson-path",
            str(report),
            "--request-timeout",
            f"{timeout_s:g}",
            "--workers",
            "1",
            # every case runs: the first failure must not hide the cases after it
            "--continue-on-failure",
            "--no-color",
            # sanitizing would replace `max_tokens` values ("token" in the name) in the evidence
            "--output-sanitize",
            "false",
            "--generation-database",
            "none",
        ]
        if seed is not None:
            command += ["--seed", str(seed)]
        env = {**os.environ, _TOKEN_VARIABLE: token or ""}
        result = BoundaryRun()
        limit_s = max(_STARTUP_S, time_limit_s)
        try:
            completed = subprocess.run(
                command,
                cwd=workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=limit_s,
                check=False,
            )
        except subprocess.TimeoutExpired:
            result.problem = f"the schemathesis coverage run did not finish within {limit_s:.0f} s"
        except OSError as exc:
            result.problem = f"could not start the schemathesis CLI: {exc}"
        else:
            if report.exists():
                result = parse_report(report.read_text(encoding="utf-8", errors="replace").splitlines())
            if not result.cases:
                output = (completed.stderr or completed.stdout or "").strip().splitlines()
                last = output[-1] if output else f"exit code {completed.returncode}"
                result.problem = result.problem or f"the schemathesis coverage run produced no cases ({last})"
    result.seconds = time.monotonic() - started
    return result
