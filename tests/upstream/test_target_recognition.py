"""The gate against software nobody here wrote: a real `transformers serve` is named, not failed 15 times.

An OpenAI-compatible server has /v1/models and /v1/chat/completions but no POST /v1/inference: the
gate must say so once, at the top of every report, with the fix (the gateway in front of it),
pass nothing, report the checks as unverified and exit 1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from tserve import TransformersServe

GATEWAY = "dualcall-worker gateway --upstream URL --upstream-api openai-chat"


def test_transformers_serve_is_recognised_as_an_openai_compatible_server(
    tserve: TransformersServe, tmp_path: Path
) -> None:
    json_path, junit_path, html_path = tmp_path / "r.json", tmp_path / "r.xml", tmp_path / "r.html"
    env = {key: value for key, value in os.environ.items() if key != "DUALCALL_TOKEN"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "conformance",
            tserve.url,
            "--json",
            str(json_path),
            "--junit",
            str(junit_path),
            "--html",
            str(html_path),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
        env={**env, "COLUMNS": "100"},
    )
    explain = f"exit {done.returncode}\n{done.stdout[-6000:]}\n{done.stderr[-2000:]}"
    assert done.returncode == 1, explain
    assert "Traceback" not in done.stdout + done.stderr, explain
    assert done.stdout.count("Diagnosis: OpenAI-compatible server") == 1, explain
    assert GATEWAY in " ".join(done.stdout.split()), explain
    assert done.stdout.count("answered 404") <= 3, explain  # said once, not once per check

    report = json.loads(json_path.read_text(encoding="utf-8"))
    assert report["target_kind"] == "OpenAI-compatible server" and report["target_unsupported"] is True
    assert report["summary"]["passed"] == 0 and report["summary"]["failed"] == 0
    assert {check["outcome"] for check in report["checks"]} == {"unverified"}
    observations = " ".join(report["diagnoses"][0]["observations"])
    assert "/v1/models" in observations and tserve.model in observations
    suite = ET.parse(junit_path).getroot().find("testsuite")
    assert suite is not None
    first = suite.find("testcase")
    assert first is not None and first.get("name") == "target: OpenAI-compatible server"
    page = html_path.read_text(encoding="utf-8")
    assert page.index("Diagnosis: OpenAI-compatible server") < page.index("<table")
