"""Text helpers shared by the report renderers (private).

Evidence is hostile input: response bodies carry arbitrary stream bytes. Every renderer
passes free text through :func:`visible` first, which turns characters that are illegal in
XML 1.0 (and dangerous on a terminal) into visible ``\\xNN`` escapes.
"""

from __future__ import annotations

import re

from conformance.model import EXCERPT_BYTES, CheckResult, Exchange, Report

# C0 controls other than TAB, LF, CR; DEL; C1 controls; lone surrogates; the two non-characters
# that XML 1.0 forbids.
_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")
_LONE_CR = re.compile("\r(?!\n)")

OUTCOME_LABEL: dict[str, str] = {
    "passed": "PASS",
    "failed": "FAIL",
    "warning": "WARN",
    "unverified": "UNVERIFIED",
    "error": "ERROR",
}


def plural(count: int, noun: str, plural_form: str | None = None) -> str:
    """``1 warning``, ``2 warnings``."""
    return f"{count} {noun if count == 1 else (plural_form or noun + 's')}"


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def visible(text: str, *, terminal: bool = False) -> str:
    """*text* with illegal/control characters replaced by visible escapes.

    With ``terminal=True`` CRLF becomes LF and a lone CR becomes ``\\r`` as well, so a body
    cannot move the cursor of the console it is printed on.
    """
    text = _ILLEGAL.sub(_escape, text)
    if terminal:
        text = _LONE_CR.sub("\\\\r", text).replace("\r\n", "\n")
    return text


#: a cut must save more than its own marker costs
_MIN_CUT = 40


def clip(text: str, limit: int) -> str:
    """*text* cut to *limit* characters, marking the cut (short overruns are kept whole)."""
    if len(text) <= limit + _MIN_CUT:
        return text
    return text[:limit] + f"… [{len(text) - limit} more chars]"


def verdict(report: Report) -> str:
    return "PASS" if report.ok else "FAIL"


def verdict_reason(report: Report) -> str:
    """``PASS``, ``PASS (with warnings; 2 MUST rules not verified)``, ``FAIL (MUST failures)``, ..."""
    summary = report.summary
    rules = len(summary.unverified_must_rules)
    unverified = f"{rules} MUST rule{'s' if rules != 1 else ''} not verified" if rules else ""
    if report.ok:
        notes = [note for note in ("with warnings" if summary.warnings else "", unverified) if note]
        return f"PASS ({'; '.join(notes)})" if notes else "PASS"
    levels = sorted({r.level for r in report.results if r.outcome == "failed"}, key=("MUST", "SHOULD", "MAY").index)
    reasons = [f"{'/'.join(levels)} failures"] if levels else []
    if summary.errors:
        reasons.insert(0, f"{plural(summary.errors, 'check')} broken by a bug in the suite")
    if report.target_unsupported:
        reasons.insert(0, f"not a dual-call worker: {report.target_kind}")
    if report.require_all and unverified:
        reasons.append(f"{unverified}, --require-all")
    return f"FAIL ({'; '.join(reasons)})"


def summary_line(report: Report) -> str:
    """``31 passed, 2 failed, 1 warning, 3 unverified in 4.2s — FAIL (MUST failures)``.

    Suite errors are counted only when there are any (``, 1 suite error``).
    """
    s = report.summary
    errors = f", {plural(s.errors, 'suite error')}" if s.errors else ""
    return (
        f"{s.passed} passed, {s.failed} failed, {plural(s.warnings, 'warning')}, {s.unverified} unverified{errors} "
        f"in {report.duration_s:.1f}s — {verdict_reason(report)}"
    )


def unverified_heading(report: Report) -> str:
    """``2 MUST rules not verified: DC-4.1, DC-4.2`` (empty when every MUST rule was verified)."""
    rules = report.summary.unverified_must_rules
    if not rules:
        return ""
    return f"{len(rules)} MUST rule{'s' if len(rules) != 1 else ''} not verified: {', '.join(rules)}"


def unverified_lines(report: Report) -> list[str]:
    """One line per distinct reason an unverified MUST check gave: the rules, the checks, why, what would verify it.

    Checks that could not observe their behaviour for the same reason (e.g. every one that needs a
    dual-call submission, against a worker that does not hand off) share one line.
    """
    groups: dict[tuple[str, str], list[CheckResult]] = {}
    for result in report.summary.unverified_must:
        groups.setdefault((result.message, result.how_to_verify), []).append(result)
    lines = []
    for (message, how_to_verify), results in groups.items():
        rules = ", ".join(dict.fromkeys(result.rule for result in results))
        line = f"{rules} ({', '.join(result.id for result in results)}): {message}"
        if how_to_verify:
            line += f" — to verify: {how_to_verify}"
        lines.append(line)
    return lines


def counted(lines: list[str]) -> list[str]:
    """*lines* with repeats folded into the first occurrence: ``line (x8)``."""
    counts: dict[str, int] = {}
    for line in lines:
        counts[line] = counts.get(line, 0) + 1
    return [line if count == 1 else f"{line} (x{count})" for line, count in counts.items()]


def area_of(result: CheckResult) -> str:
    """The group a check belongs to, from its id: ``DC-SUBMIT-202`` → ``DC-SUBMIT``.

    ``submit.accepted`` → ``submit``; an id with neither shape falls back to the rule's section
    (``DC-1.2`` → ``DC-1``).
    """
    parts = result.id.split("-")
    if len(parts) >= 3:
        return "-".join(parts[:-1])
    if "." in result.id:
        return result.id.rsplit(".", 1)[0]
    if len(parts) == 2 and not parts[1].isdigit():
        return result.id
    return result.rule.split(".", 1)[0] or result.id


def request_line(exchange: Exchange) -> str:
    return f"{exchange.method} {exchange.url}"


def response_line(exchange: Exchange) -> str:
    """``→ 200 (12 ms)``, ``→ no response: <error>``."""
    if exchange.status is None:
        return f"→ no response: {exchange.error or 'unknown error'}"
    elapsed = f" ({exchange.elapsed_ms:.0f} ms)" if exchange.elapsed_ms is not None else ""
    error = f" — {exchange.error}" if exchange.error else ""
    return f"→ {exchange.status}{elapsed}{error}"


def exchange_text(exchange: Exchange, *, body_limit: int = EXCERPT_BYTES) -> str:
    """A plain-text block describing one exchange (used by JUnit)."""
    lines = [f"{request_line(exchange)} {response_line(exchange)}"]
    if exchange.status is not None:
        content_type = next(
            (v for k, v in exchange.response_headers.items() if k.lower() == "content-type"),
            None,
        )
        if content_type:
            lines.append(f"  content-type: {content_type}")
        if exchange.body_excerpt:
            body = clip(exchange.body_excerpt, body_limit).rstrip()
            if exchange.body_truncated:
                body += " [truncated]"
            lines.append("  body: " + body.replace("\n", "\n        "))
    lines.append(f"  $ {exchange.curl()}")
    return visible("\n".join(lines))


#: request headers whose values never appear in a report (curl() masks Authorization the same way)
SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "x-api-key"})


def masked_headers(headers: dict[str, str]) -> dict[str, str]:
    """*headers* with credentials replaced: ``Authorization: Bearer $DUALCALL_TOKEN``."""
    out = {}
    for name, value in headers.items():
        shown = value
        if name.lower() in SECRET_HEADERS:
            scheme = value.split(" ", 1)[0] if " " in value else ""
            shown = f"{scheme} $DUALCALL_TOKEN" if scheme.lower() == "bearer" else "***"
        out[name] = shown
    return out
