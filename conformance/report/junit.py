"""The JUnit XML report (the de-facto Jenkins / GitLab / GitHub Actions schema).

One ``<testsuites>`` holding one ``<testsuite name="dualcall-conformance">``; one ``<testcase>`` per
check. A failed check is a ``<failure>``, an unverified one ``<skipped>`` whose message says why and what
would verify it (with ``--require-all`` an unverified MUST check is a ``<failure>``); a warning (a SHOULD failure
under the ``must`` threshold) passes, with a ``WARNING`` line in its ``<system-out>``. Diagnoses go
into the suite's ``<system-out>``. Every string is cleaned of characters XML 1.0 forbids.
"""

from __future__ import annotations

import socket
import xml.etree.ElementTree as ET
from pathlib import Path

from conformance.model import CheckResult, Report
from conformance.report.text import area_of, exchange_text, summary_line, unverified_heading, unverified_lines, visible

__all__ = ["SUITE_NAME", "to_junit_xml", "write_junit"]

SUITE_NAME = "dualcall-conformance"


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    element = ET.SubElement(parent, tag, {k: visible(v) for k, v in attrs.items()})
    if text is not None:
        element.text = visible(text)
    return element


def _evidence_text(result: CheckResult, *, with_message: bool = True) -> str:
    parts = [result.message] if with_message else []
    parts += [f"- {detail}" for detail in result.details]
    for index, exchange in enumerate(result.exchanges, 1):
        parts.append(f"[exchange {index}] {exchange_text(exchange)}")
    return "\n".join(parts)


def _testcase(parent: ET.Element, result: CheckResult, *, require_all: bool) -> None:
    case = _sub(
        parent,
        "testcase",
        classname=f"dualcall.{area_of(result)}",
        name=f"{result.id} {result.title}".strip(),
        time=f"{result.duration_s:.3f}",
    )
    headline = f"[{result.rule} {result.level}] {result.message}"
    if result.how_to_verify:
        headline += f" — to verify: {result.how_to_verify}"
    if result.outcome == "error":
        _sub(
            case,
            "error",
            "\n".join([*result.details, result.traceback]).strip(),
            message=result.message,
            type="suite-error",
        )
    elif result.outcome == "failed" or (result.outcome == "unverified" and require_all and result.level == "MUST"):
        _sub(case, "failure", _evidence_text(result), message=headline, type=result.id)
    elif result.outcome == "unverified":
        _sub(case, "skipped", message=f"NOT VERIFIED {headline}")
    elif result.outcome == "warning":
        _sub(case, "system-out", f"WARNING {headline}\n{_evidence_text(result, with_message=False)}".rstrip())


def _diagnoses_text(report: Report) -> str:
    blocks = []
    for diagnosis in report.diagnoses:
        lines = [f"DIAGNOSIS: {diagnosis.name}", diagnosis.summary, "Observations:"]
        lines += [f"  - {item}" for item in diagnosis.observations]
        lines.append("What to change:")
        lines += [f"  {number}. {fix}" for number, fix in enumerate(diagnosis.fixes, 1)]
        blocks.append("\n".join(lines))
    heading = unverified_heading(report)
    if heading:
        blocks.append("\n".join([heading, *(f"  - {line}" for line in unverified_lines(report))]))
    blocks.append(summary_line(report))
    return "\n\n".join(blocks)


def to_junit_xml(report: Report) -> ET.Element:
    """The report as a JUnit XML ``<testsuites>`` element (indented)."""
    summary = report.summary
    failing_unverified = len(summary.unverified_must) if report.require_all else 0
    counts = {
        "tests": str(len(report.results) + int(report.target_unsupported)),
        "failures": str(summary.failed + failing_unverified + int(report.target_unsupported)),
        "errors": str(summary.errors),
        "skipped": str(summary.unverified - failing_unverified),
        "time": f"{report.duration_s:.3f}",
    }
    root = ET.Element("testsuites", {"name": SUITE_NAME, **counts})
    suite = _sub(
        root,
        "testsuite",
        name=SUITE_NAME,
        **counts,
        timestamp=report.started_at,
        hostname=socket.gethostname() or "localhost",
    )
    properties = _sub(suite, "properties")
    props = {
        "target": report.target,
        "contract_version": report.contract_version,
        "threshold": report.threshold,
        "suite_version": report.suite_version,
        "verdict": "PASS" if report.ok else "FAIL",
        "target_kind": report.target_kind,
        "unverified_must_rules": ", ".join(summary.unverified_must_rules),
    }
    for index, diagnosis in enumerate(report.diagnoses, 1):
        props[f"diagnosis.{index}"] = diagnosis.name
    for name, value in props.items():
        _sub(properties, "property", name=name, value=value)
    if report.target_unsupported:
        # said once, first: the checks below were not run against something that is not a dual-call worker
        case = _sub(suite, "testcase", classname="dualcall.target", name=f"target: {report.target_kind}", time="0")
        first = report.diagnoses[0] if report.diagnoses else None
        message = first.summary if first else f"not a dual-call worker: {report.target_kind}"
        text = "\n".join(first.observations + [f"fix: {fix}" for fix in first.fixes]) if first else ""
        _sub(case, "failure", text, message=message, type="target")
    for result in report.results:
        _testcase(suite, result, require_all=report.require_all)
    _sub(suite, "system-out", _diagnoses_text(report))
    ET.indent(root)
    return root


def write_junit(report: Report, path: str | Path) -> Path:
    """Write the JUnit XML report to *path* (parent directories are created); returns the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(to_junit_xml(report)).write(target, encoding="utf-8", xml_declaration=True)
    return target
