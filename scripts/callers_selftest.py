"""``tox -e callers``: the reference client must pass every caller rule; the naive caller must fail.

1. run ``serve-callers`` with the reference client (``conformance.callers.reference``): every
   caller check must pass (none failed, none left unverified);
2. run it with the deliberately naive caller (``conformance.callers.naive``): it must fail, at
   least on building the stream path (DC-C-2), ignoring Retry-After (DC-C-3) and not resuming
   (DC-C-4), with a diagnosis for every rule it breaks;
3. print both verdicts; exit 0 only when both expectations hold.

Reports land in ``reports/`` (JSON, JUnit, HTML for each run).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

CALLERS = {
    "reference": f"{sys.executable} -m conformance.callers.reference {{base_url}} {{prompt}}",
    "naive": f"{sys.executable} -m conformance.callers.naive {{submit_url}} {{prompt}}",
}
NAIVE_MUST_BREAK = {"DC-CALLER-002", "DC-CALLER-003", "DC-CALLER-004"}


def run(name: str, out: Path) -> tuple[int, dict[str, object]]:
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / f"callers-{name}.json"
    json_path.unlink(missing_ok=True)
    command = [sys.executable, "-m", "conformance", "serve-callers", "--require-all", "--caller", CALLERS[name]]
    command += ["--json", str(json_path), "--junit", str(out / f"callers-{name}.junit.xml")]
    command += ["--html", str(out / f"callers-{name}.html")]
    print(f"\n$ {' '.join(command)}", flush=True)
    code = subprocess.run(command, check=False).returncode
    report: dict[str, object] = json.loads(json_path.read_text()) if json_path.exists() else {}
    return code, report


def verdicts(report: dict[str, object]) -> dict[str, str]:
    checks = report.get("checks", [])
    assert isinstance(checks, list)
    return {check["id"]: check["outcome"] for check in checks}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("reports"), help="report folder (default: reports)")
    args = parser.parse_args()
    started = time.perf_counter()
    reference_code, reference = run("reference", args.out)
    reference_seconds = time.perf_counter() - started
    naive_code, naive = run("naive", args.out)

    problems: list[str] = []
    not_passed = {check: outcome for check, outcome in verdicts(reference).items() if outcome != "passed"}
    if reference_code != 0 or not reference or not_passed:
        problems.append(f"the reference client must pass every caller rule (exit {reference_code}): {not_passed}")
    failed = {check for check, outcome in verdicts(naive).items() if outcome == "failed"}
    diagnosed = {str(d["name"]) for d in naive.get("diagnoses", []) if isinstance(d, dict)}  # type: ignore[union-attr]
    rule_of = {check["id"]: check["rule"] for check in naive.get("checks", [])}  # type: ignore[union-attr]
    if naive_code != 1 or not failed >= NAIVE_MUST_BREAK:
        problems.append(
            f"the naive caller must fail {sorted(NAIVE_MUST_BREAK)} (exit {naive_code}, failed {sorted(failed)})"
        )
    missing = [check for check in failed if f"caller breaks {rule_of[check]}" not in diagnosed]
    if missing:
        problems.append(f"failed checks without a diagnosis: {missing}")

    print("\n" + "=" * 100)
    print(
        f"reference client: exit {reference_code}, {len(verdicts(reference))} caller checks, "
        f"{len(not_passed)} not passed, {reference_seconds:.1f}s"
    )
    print(
        f"naive caller:     exit {naive_code}, failed {', '.join(sorted(failed)) or 'nothing'}; "
        f"diagnoses: {', '.join(sorted(diagnosed)) or 'none'}"
    )
    print(f"total {time.perf_counter() - started:.1f}s")
    for problem in problems:
        print(f"SELF-TEST FAILED: {problem}")
    if not problems:
        print(
            "SELF-TEST PASSED: the reference client passes every caller rule; the naive caller fails with its diagnosis"
        )
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
