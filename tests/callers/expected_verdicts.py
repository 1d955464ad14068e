"""The verdict every caller rule must get, per real caller: a grader change that flips one is caught.

Third-party clients are graded as users run them: Chromium's native ``EventSource`` (in
tests/browser), Node's ``eventsource`` package and httpx-sse driven naively (in
test_third_party_callers.py), next to the reference client.
"""

from __future__ import annotations

from conformance.callers.rules import RULES
from conformance.callers.scenarios import SCENARIO_BY_NAME
from conformance.model import Report

ALL_PASS: dict[str, str] = {rule.check_id: "passed" for rule in RULES}

EXPECTED: dict[str, dict[str, str]] = {
    # the reference client (conformance.client), as the README shows it
    "reference-client": ALL_PASS,
    # tests/callers/eventsource_caller.js on the browser's own EventSource
    "chromium-eventsource": ALL_PASS,
    # the same script on Node's `eventsource` package
    "node-eventsource": ALL_PASS,
    # httpx-sse has no reconnect and no cancel: a cut stream ends the call
    "httpx-sse-naive": ALL_PASS
    | {
        "DC-CALLER-004": "failed",  # never reconnects after a cut
        "DC-CALLER-005": "unverified",  # no run of a cut scenario reached `end`
        "DC-CALLER-006": "unverified",  # never resumes, so never sees the 204
        "DC-CALLER-009": "failed",  # gives up on the cut job without DELETE
    },
}


def unexpected_verdicts(report: Report, client: str) -> dict[str, str]:
    """The checks whose outcome is not the one recorded for *client*, with the grader's message."""
    expected = EXPECTED[client]
    assert {result.id for result in report.results} == set(expected)
    return {
        result.id: f"expected {expected[result.id]}, got {result.outcome}: {result.message}"
        for result in report.results
        if result.outcome != expected[result.id]
    }


def unexpected_outcomes(report: Report) -> dict[str, str]:
    """Scenarios where a conforming caller did not report what it should (a completion, or a failure).

    A rule passes on its own scenarios; this also catches a caller failing a scenario built for
    another rule in a way no rule could grade (its stream blocked before any byte, say).
    """
    wrong = {}
    for scenario in report.worker["scenarios"]:
        completes = SCENARIO_BY_NAME[scenario["name"]].expected_text is not None
        if scenario["caller"].startswith("reported a completion") != completes:
            wrong[scenario["name"]] = scenario["caller"]
    return wrong
