"""``--repeat N``: N runs of one mode folded into one result of the same shape.

Every figure becomes the median over the runs of that run's own figure, with the runs' min and max:

* a trial summary (``{"median", "min", "max", "n"}``) becomes the summary of the runs' medians;
* a number (a same-run ratio, an overhead) becomes the median of the runs' numbers, and its spread
  goes into the row's ``"spread"`` under the same key (``{"min", "max", "runs"}``);
* a scenario that failed in some runs is combined over the runs where it finished; ``"failed"``
  lists every run's failures (``"<scenario> (run k)"``).

Ratios are taken within each run first (subject and baseline side by side), then their median: the
median of same-run ratios, not a ratio of medians from different moments.
"""

from __future__ import annotations

import statistics
from typing import Any

from benchmarks.catalogue import summary

_SUMMARY_KEYS = frozenset(("median", "min", "max", "n"))


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _fold(values: list[Any]) -> Any:
    first = values[0]
    if isinstance(first, dict):
        if first.keys() >= _SUMMARY_KEYS:
            folded = summary([value["median"] for value in values])
            folded["trials"] = first["n"]
            return folded
        out: dict[str, Any] = {}
        spread: dict[str, dict[str, float]] = {}
        for key in first:
            if key == "spread":
                continue
            present = [value[key] for value in values if isinstance(value, dict) and key in value]
            if all(_is_number(item) for item in present) and len(set(present)) == 1:
                out[key] = present[0]  # a setting (streams, tokens), not a measurement
            elif all(_is_number(item) for item in present):
                out[key] = statistics.median(present)
                spread[key] = {"min": min(present), "max": max(present), "runs": len(present)}
            else:
                out[key] = _fold(present)
        if spread:
            out["spread"] = spread
        return out
    if isinstance(first, bool):
        return all(values)
    if isinstance(first, list):
        merged: list[Any] = []
        for value in values:
            merged += [item for item in value if item not in merged]
        return merged
    if _is_number(first):
        return statistics.median(values)
    return first


def combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One result from several passes of `benchmarks.__main__.one_pass` (empty ones are skipped)."""
    runs = [run for run in runs if run.get("meta")]
    if not runs:
        return {"meta": {"mode": "-", "trials": 0, "machine": "", "when": "", "seconds": 0.0, "runs": 0}, "failed": {}}
    meta = dict(runs[0]["meta"])
    meta["runs"] = len(runs)
    meta["seconds"] = sum(run["meta"].get("seconds", 0.0) for run in runs)
    meta["load_averages"] = [
        [run["meta"].get("load_average_start"), run["meta"].get("load_average_end")] for run in runs
    ]
    meta["load_average_start"] = runs[0]["meta"].get("load_average_start")
    meta["load_average_end"] = runs[-1]["meta"].get("load_average_end")
    combined: dict[str, Any] = {"meta": meta, "failed": {}}
    for number, run in enumerate(runs, 1):
        for name, why in run.get("failed", {}).items():
            combined["failed"][f"{name} (run {number})"] = why
    sections = [key for key in runs[0] if key not in ("meta", "failed")]
    for run in runs[1:]:
        sections += [key for key in run if key not in ("meta", "failed") and key not in sections]
    for key in sections:
        present = [run[key] for run in runs if key in run]
        combined[key] = _fold(present)
    combined["runs"] = runs
    return combined
