"""The main job (``tox -e conformance``): the suite must pass the mock and fail the legacy worker.

1. start the mock worker at zero token delay (the fastest worker it can be: a gate must never fail a
   fast conforming worker) with a short TTL so reclaim is observable, run the suite: 0 MUST failures;
2. start the legacy direct-SSE worker, run the suite: it must fail and name the legacy shape;
3. print both summaries; exit 0 only when both expectations hold.

Reports land in ``reports/`` (JSON, JUnit, HTML for each run).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from workers.testing import WorkerProcess

LEGACY_DIAGNOSIS = "legacy direct-SSE worker"


def run_suite(url: str, name: str, out: Path, extra: list[str]) -> tuple[int, dict[str, object]]:
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / f"{name}.json"
    command = [
        sys.executable,
        "-m",
        "conformance",
        url,
        "--json",
        str(json_path),
        "--junit",
        str(out / f"{name}.junit.xml"),
        "--html",
        str(out / f"{name}.html"),
        *extra,
    ]
    print(f"\n$ {' '.join(command)}", flush=True)
    code = subprocess.run(command, check=False).returncode
    report: dict[str, object] = json.loads(json_path.read_text()) if json_path.exists() else {}
    return code, report


def _summary(report: dict[str, object]) -> str:
    summary = report.get("summary")
    if not isinstance(summary, dict):
        return "no report"
    counts = ", ".join(f"{summary.get(key, 0)} {key}" for key in ("passed", "failed", "warnings", "unverified"))
    rules = summary.get("unverified_must_rules") or []
    return counts + (f"; MUST rules not verified: {', '.join(map(str, rules))}" if rules else "")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("reports"), help="report folder (default: reports)")
    parser.add_argument("suite_args", nargs="*", help="extra arguments for the suite, e.g. --no-fuzz")
    args = parser.parse_args()

    started = time.perf_counter()
    with WorkerProcess("mock", "--ttl-s", "2", "--keepalive-s", "1", "--token-delay-ms", "0") as mock:
        print(f"mock worker: {mock.url}", flush=True)
        mock_code, mock_report = run_suite(mock.url, "mock", args.out, args.suite_args)
    mock_seconds = time.perf_counter() - started
    with WorkerProcess("legacy", "--token-delay-ms", "1") as legacy:
        print(f"legacy worker: {legacy.url}", flush=True)
        legacy_code, legacy_report = run_suite(legacy.url, "legacy", args.out, args.suite_args)

    diagnoses = [d.get("name") for d in legacy_report.get("diagnoses", [])]  # type: ignore[union-attr]
    expectations = [
        ("mock worker passes every MUST check", mock_code == 0),
        ("legacy worker fails the suite", legacy_code == 1),
        ("legacy worker is diagnosed as the legacy direct-SSE shape", LEGACY_DIAGNOSIS in diagnoses),
    ]
    print("\n=== dualcall conformance self-test ===")
    print(f"mock   ({mock_seconds:.1f}s incl. start): exit {mock_code}, {_summary(mock_report)}")
    print(f"legacy: exit {legacy_code}, {_summary(legacy_report)}, diagnoses {diagnoses}")
    for label, ok in expectations:
        print(f"  [{'ok' if ok else 'FAILED'}] {label}")
    print(f"reports: {args.out}/mock.{{json,junit.xml,html}} and {args.out}/legacy.{{json,junit.xml,html}}")
    return 0 if all(ok for _, ok in expectations) else 1


if __name__ == "__main__":
    raise SystemExit(main())
