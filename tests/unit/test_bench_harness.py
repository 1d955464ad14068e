"""The benchmark harness: repeated runs fold into medians with their spread, a failing scenario loses only itself."""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console

from benchmarks.__main__ import one_pass
from benchmarks.catalogue import Pass, Scenario, ScenarioUnavailable
from benchmarks.combine import combine
from benchmarks.report import GOALS, markdown


def _run(ratio: float, median: float, load: float) -> dict[str, Any]:
    return {
        "meta": {
            "mode": "quick",
            "trials": 3,
            "machine": "test",
            "when": "now",
            "seconds": 1.0,
            "load_average_start": load,
            "load_average_end": load,
        },
        "failed": {},
        "live": {
            "1": {
                "dual": {"events_per_s": {"median": median, "min": median - 1, "max": median + 1, "n": 3}},
                "ratio": ratio,
                "streams": 1,
            }
        },
    }


def test_repeated_runs_report_the_median_of_same_run_figures_with_their_spread() -> None:
    combined = combine([_run(0.7, 100.0, 1.0), _run(0.9, 300.0, 2.0), _run(0.8, 200.0, 3.0)])
    row = combined["live"]["1"]
    assert row["ratio"] == 0.8
    assert row["spread"]["ratio"] == {"min": 0.7, "max": 0.9, "runs": 3}
    assert row["dual"]["events_per_s"]["median"] == 200.0
    assert (row["dual"]["events_per_s"]["min"], row["dual"]["events_per_s"]["max"]) == (100.0, 300.0)
    assert row["streams"] == 1  # a setting, the same in every run, stays as it was
    assert combined["meta"]["runs"] == 3
    assert combined["meta"]["load_averages"] == [[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]
    goal = next(goal for goal in GOALS if goal.path == ("live", "1", "ratio"))
    assert goal.value(combined) == (0.8, {"min": 0.7, "max": 0.9, "runs": 3})
    assert not goal.met(0.8)


def test_a_failing_scenario_is_named_with_its_reason_and_the_others_are_kept() -> None:
    def works(run: Pass) -> dict[str, Any]:
        run.step("works")
        return {"events_per_s": 5.0}

    def breaks(run: Pass) -> dict[str, Any]:
        raise RuntimeError("the worker answered 500")

    def unavailable(run: Pass) -> dict[str, Any]:
        raise ScenarioUnavailable("needs jsonschema: pip install 'dualcall[conformance]'")

    scenarios = {
        "broken": Scenario("broken", "raises", breaks, lambda mode: 1),
        "custom": Scenario("custom", "works", works, lambda mode: 1),
        "missing": Scenario("missing", "not installed", unavailable, lambda mode: 1),
    }
    saved: list[list[str]] = []
    args = argparse.Namespace(full=False, trials=0, clients=1, scenarios=list(scenarios), soak=0)
    results = one_pass(args, scenarios, Console(quiet=True), save=lambda partial: saved.append(sorted(partial.keys())))
    assert results["custom"] == {"events_per_s": 5.0}
    assert results["failed"]["broken"]["error"] == "RuntimeError: the worker answered 500"
    assert results["failed"]["broken"]["where"].endswith(".py:" + results["failed"]["broken"]["where"].split(":")[-1])
    assert results["failed"]["missing"] == {
        "error": "needs jsonschema: pip install 'dualcall[conformance]'",
        "where": "",
    }
    assert len(saved) == 3  # written after each scenario
    assert "custom" in saved[1]
    text = markdown(results)
    assert "`broken`: RuntimeError: the worker answered 500" in text
    assert "`missing`: needs jsonschema" in text
    assert "| custom | results in bench.json |" in text


def test_a_failed_suite_row_names_its_checks() -> None:
    results = {
        "meta": {"mode": "quick", "trials": 1, "machine": "test", "when": "now"},
        "suite": {
            "fuzz": False,
            "seconds": {"median": 10.0, "min": 10.0, "max": 10.0, "n": 1},
            "passed": False,
            "failed_checks": ["DC-STREAM-001: no token events"],
            "goal_s": 30.0,
            "ratio": 0.33,
        },
    }
    assert "FAILED: DC-STREAM-001: no token events" in markdown(results)
