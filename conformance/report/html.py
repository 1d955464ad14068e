"""The HTML report: one self-contained page (inline CSS, no scripts, no external assets).

Evidence is hostile input, so every string from the report goes through :func:`_e` (visible
escapes for control characters, then HTML escaping); the page also carries a Content-Security-Policy
that forbids scripts outright.
"""

from __future__ import annotations

import html
from pathlib import Path

from conformance.model import CheckResult, Diagnosis, Exchange, Report
from conformance.report.text import (
    OUTCOME_LABEL,
    counted,
    masked_headers,
    summary_line,
    unverified_heading,
    unverified_lines,
    verdict,
    verdict_reason,
    visible,
)

__all__ = ["to_html", "write_html"]

_CSS = """
:root { --pass:#1a7f37; --fail:#cf222e; --warn:#9a6700; --skip:#6e7781; --bg:#ffffff; --fg:#1f2328;
        --muted:#59636e; --line:#d1d9e0; --panel:#f6f8fa; }
* { box-sizing: border-box; }
body { margin: 0; padding: 1.5rem 2rem 3rem; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto,
       sans-serif; color: var(--fg); background: var(--bg); max-width: 1400px; }
h1 { font-size: 1.4rem; margin: 0 0 .25rem; }
h2 { font-size: 1.15rem; margin: 2rem 0 .6rem; }
code, pre, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: .85rem; }
pre { background: var(--panel); border: 1px solid var(--line); border-radius: 6px; padding: .6rem .8rem;
      white-space: pre-wrap; word-break: break-all; margin: .3rem 0 .8rem; max-height: 32rem; overflow: auto; }
header { display: flex; gap: 2rem; align-items: center; flex-wrap: wrap; border-bottom: 1px solid var(--line);
         padding-bottom: 1rem; }
.verdict { font-size: 2.6rem; font-weight: 800; letter-spacing: .05em; padding: .2rem 1.2rem; border-radius: 8px;
           color: #fff; }
.verdict.PASS { background: var(--pass); } .verdict.FAIL { background: var(--fail); }
.reason { color: var(--muted); font-weight: 600; }
dl.meta { display: grid; grid-template-columns: max-content auto; gap: .15rem 1rem; margin: .4rem 0 0; }
dl.meta dt { color: var(--muted); } dl.meta dd { margin: 0; }
.counts { display: flex; gap: .6rem; flex-wrap: wrap; margin-top: .5rem; }
.count { border: 1px solid var(--line); border-radius: 6px; padding: .2rem .7rem; font-weight: 600; }
.badge { display: inline-block; min-width: 3.6em; text-align: center; border-radius: 4px; padding: .05rem .4rem;
         font-weight: 700; font-size: .8rem; color: #fff; }
.badge.passed { background: var(--pass); } .badge.failed { background: var(--fail); }
.badge.warning { background: var(--warn); } .badge.unverified { background: var(--skip); }
.badge.error { background: var(--warn); color: #000; } details.error { border-left: 6px dashed var(--warn); }
.diagnosis { border: 2px solid var(--fail); border-left-width: 8px; border-radius: 8px; background: #fff5f5;
             padding: .8rem 1.2rem; margin: 1.2rem 0; }
.diagnosis h2 { margin: 0 0 .4rem; color: var(--fail); }
.diagnosis h3 { font-size: 1rem; margin: .8rem 0 .2rem; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; vertical-align: top; padding: .35rem .6rem; border-bottom: 1px solid var(--line); }
th { background: var(--panel); position: sticky; top: 0; }
tr.failed td { background: #fff5f5; } tr.warning td { background: #fff8e6; }
td.msg { color: var(--muted); word-break: break-word; }
td:nth-child(-n+4) { white-space: nowrap; }
td.msg, details > p, details li, .diagnosis li { white-space: pre-wrap; }
details { border: 1px solid var(--line); border-radius: 8px; margin: .6rem 0; padding: .4rem .9rem; }
details.failed { border-left: 6px solid var(--fail); } details.warning { border-left: 6px solid var(--warn); }
summary { cursor: pointer; font-weight: 600; padding: .2rem 0; }
.exchange { border-top: 1px dashed var(--line); margin-top: .6rem; padding-top: .4rem; }
.label { color: var(--muted); font-size: .8rem; text-transform: uppercase; letter-spacing: .04em; }
footer { margin-top: 2rem; color: var(--muted); border-top: 1px solid var(--line); padding-top: .6rem; }
@media (prefers-color-scheme: dark) {
  :root { --bg:#0d1117; --fg:#e6edf3; --muted:#9198a1; --line:#30363d; --panel:#161b22; }
  .diagnosis { background: #2d1214; } tr.failed td { background: #2d1214; } tr.warning td { background: #2b230d; }
}
"""


def _e(text: object) -> str:
    """Escape *text* for HTML text and attribute values."""
    return html.escape(visible(str(text)), quote=True)


def _anchor(result: CheckResult) -> str:
    return "check-" + "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in result.id)


def _headers(headers: dict[str, str]) -> str:
    return "\n".join(f"{name}: {value}" for name, value in headers.items())


def _exchange(index: int, exchange: Exchange) -> str:
    parts = [f'<div class="exchange"><div class="label">exchange {index}</div>']
    parts.append(f"<div class=mono><strong>{_e(exchange.method)}</strong> {_e(exchange.url)}</div>")
    if exchange.request_headers:
        headers = _e(_headers(masked_headers(exchange.request_headers)))
        parts.append(f'<div class="label">request headers</div><pre>{headers}</pre>')
    if exchange.request_body is not None:
        parts.append(f'<div class="label">request body</div><pre>{_e(exchange.request_body)}</pre>')
    if exchange.status is None:
        parts.append(f"<p><strong>No response:</strong> {_e(exchange.error or 'unknown error')}</p>")
    else:
        elapsed = f" in {exchange.elapsed_ms:.0f} ms" if exchange.elapsed_ms is not None else ""
        status = f"→ <strong>{exchange.status}</strong>{elapsed}"
        parts.append(f'<div class="label">response</div><div class=mono>{status}</div>')
        if exchange.response_headers:
            headers = _e(_headers(exchange.response_headers))
            parts.append(f'<div class="label">response headers</div><pre>{headers}</pre>')
        truncated = " (truncated)" if exchange.body_truncated else ""
        body = _e(exchange.body_excerpt) if exchange.body_excerpt else "<em>(empty)</em>"
        parts.append(f'<div class="label">body excerpt{truncated}</div><pre>{body}</pre>')
        if exchange.error:
            parts.append(f"<p><strong>Error:</strong> {_e(exchange.error)}</p>")
    parts.append(f'<div class="label">repeat with curl</div><pre>{_e(exchange.curl())}</pre></div>')
    return "\n".join(parts)


def _exchange_key(exchange: Exchange) -> tuple[object, ...]:
    return (exchange.method, exchange.url, exchange.request_body, exchange.status, exchange.body_excerpt)


def _evidence(result: CheckResult, *, opened: bool, shown: dict[tuple[object, ...], str]) -> str:
    """One collapsible block; an exchange already shown under another check is referred to, not repeated."""
    parts = [
        f'<details id="{_e(_anchor(result))}" class="{result.outcome}"{" open" if opened else ""}>',
        f'<summary><span class="badge {result.outcome}">{OUTCOME_LABEL[result.outcome]}</span> '
        f"<code>{_e(result.id)}</code> [{_e(result.rule)} {_e(result.level)}] {_e(result.title)}</summary>",
        f"<p>{_e(result.message)}</p>",
    ]
    if result.details:
        parts.append("<ul>" + "".join(f"<li>{_e(line)}</li>" for line in counted(result.details)) + "</ul>")
    if result.traceback:
        parts.append(f'<div class="label">traceback (a bug in the suite)</div><pre>{_e(result.traceback)}</pre>')
    for index, exchange in enumerate(result.exchanges, 1):
        key = _exchange_key(exchange)
        if key in shown:
            parts.append(
                f'<div class="exchange"><div class="label">exchange {index}</div>'
                f"{_e(exchange.method)} {_e(exchange.url)} — the same exchange as under "
                f'<a href="#{_e(shown[key])}">{_e(shown[key].removeprefix("check-"))}</a></div>'
            )
        else:
            shown[key] = _anchor(result)
            parts.append(_exchange(index, exchange))
    parts.append("</details>")
    return "\n".join(parts)


def _diagnosis(diagnosis: Diagnosis) -> str:
    parts = [
        '<section class="diagnosis">',
        f"<h2>Diagnosis: {_e(diagnosis.name)}</h2>",
        f"<p>{_e(diagnosis.summary)}</p>",
    ]
    if diagnosis.observations:
        parts.append("<h3>Observed</h3><ul>" + "".join(f"<li>{_e(o)}</li>" for o in diagnosis.observations) + "</ul>")
    if diagnosis.fixes:
        parts.append("<h3>What to change</h3><ol>" + "".join(f"<li>{_e(f)}</li>" for f in diagnosis.fixes) + "</ol>")
    parts.append("</section>")
    return "\n".join(parts)


def _row(result: CheckResult) -> str:
    has_evidence = result.outcome in ("failed", "warning", "error")
    check_id = f'<a href="#{_e(_anchor(result))}">{_e(result.id)}</a>' if has_evidence else _e(result.id)
    return (
        f'<tr class="{result.outcome}"><td><code>{check_id}</code></td><td>{_e(result.rule)}</td>'
        f'<td>{_e(result.level)}</td><td><span class="badge {result.outcome}">{OUTCOME_LABEL[result.outcome]}</span>'
        f'</td><td>{_e(result.title)}</td><td class="msg">{_e(result.message)}</td></tr>'
    )


def to_html(report: Report) -> str:
    """The report as one self-contained HTML page."""
    summary = report.summary
    result = verdict(report)
    meta = {
        "Target": report.target,
        "Contract version": report.contract_version,
        "Threshold": report.threshold,
        "Suite version": report.suite_version or "—",
        "Started": report.started_at,
        "Duration": f"{report.duration_s:.1f} s",
    }
    counts = [
        ("passed", summary.passed),
        ("failed", summary.failed),
        ("warnings", summary.warnings),
        ("unverified", summary.unverified),
    ]
    if summary.errors:
        counts.append(("suite errors", summary.errors))
    problems = [r for r in report.results if r.outcome in ("error", "failed", "warning")]
    body = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{result} — dualcall conformance — {_e(report.target)}</title>",
        f"<style>{_CSS}</style></head><body>",
        "<header>",
        f'<div><div class="verdict {result}">{result}</div>',
        f'<div class="reason">{_e(verdict_reason(report))}</div></div>',
        "<div><h1>dualcall conformance report</h1>",
        '<dl class="meta">' + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in meta.items()) + "</dl>",
        '<div class="counts">'
        + "".join(f'<span class="count">{n} {label}</span>' for label, n in counts)
        + "</div></div>",
        "</header>",
    ]
    body += [_diagnosis(d) for d in report.diagnoses]
    heading = unverified_heading(report)
    if heading:
        body.append('<section class="unverified">')
        body.append(f"<h2>{_e(heading)}</h2>")
        body.append("<ul>" + "".join(f"<li>{_e(line)}</li>" for line in unverified_lines(report)) + "</ul>")
        if not report.require_all:
            body.append("<p>Not a failure; <code>--require-all</code> makes unverified MUST rules fail the run.</p>")
        body.append("</section>")
    body += [
        f"<h2>Checks ({len(report.results)})</h2>",
        "<table><thead><tr><th>ID</th><th>Rule</th><th>Level</th><th>Outcome</th><th>Title</th><th>Message</th>"
        "</tr></thead><tbody>",
        *(_row(r) for r in report.results),
        "</tbody></table>",
    ]
    if problems:
        body.append(f"<h2>Suite errors, failures and warnings ({len(problems)})</h2>")
        shown: dict[tuple[object, ...], str] = {}
        # only the first failure starts open: a page of expanded evidence hides the diagnosis and the table
        first = next((r for r in problems if r.outcome == "failed"), None)
        body += [_evidence(r, opened=r is first, shown=shown) for r in problems]
    body += [f"<footer>{_e(summary_line(report))}</footer>", "</body></html>", ""]
    return "\n".join(body)


def write_html(report: Report, path: str | Path) -> Path:
    """Write the HTML report to *path* (parent directories are created); returns the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(to_html(report).encode("utf-8", errors="replace"))
    return target
