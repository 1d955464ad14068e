"""Console rendering with rich: a line per check, evidence of failures, diagnoses, a summary line.

Everything taken from the report is put into :class:`rich.text.Text` objects (never parsed as
markup) after :func:`~conformance.report.text.visible`, so a hostile body can neither inject
rich markup nor terminal escape sequences.
"""

from __future__ import annotations

import math
import time
from types import TracebackType

from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from conformance.model import CheckResult, Diagnosis, Report
from conformance.report.text import (
    OUTCOME_LABEL,
    clip,
    counted,
    plural,
    request_line,
    response_line,
    summary_line,
    unverified_heading,
    unverified_lines,
    visible,
)

__all__ = ["ConsoleProgress", "check_line", "render_console", "summary_text"]

_GLYPH = {"passed": "✔", "failed": "✘", "warning": "!", "unverified": "?", "error": "‼"}
_STYLE = {"passed": "green", "failed": "bold red", "warning": "yellow", "unverified": "magenta", "error": "bold yellow"}
_REASON_CHARS = 100
#: outside a terminal, progress notes are printed at most this often (CI logs stay short)
NOTE_INTERVAL_S = 5.0
_BODY_CHARS = 300


def _clean(text: str) -> str:
    return visible(text, terminal=True)


def _hang(text: str, indent: str) -> str:
    """Continuation lines of *text* indented by *indent* (bullets stay readable)."""
    return text.rstrip().replace("\n", "\n" + indent)


def check_line(result: CheckResult, *, id_width: int = 16) -> Text:
    """``DC-SUBMIT-202    MUST   ✔ PASS  title — reason`` as styled text."""
    style = _STYLE[result.outcome]
    line = Text.assemble(
        (f"{_clean(result.id):<{id_width}}", "bold"),
        " ",
        (f"{result.level:<6}", "cyan" if result.level == "MUST" else "blue"),
        " ",
        (f"{_GLYPH[result.outcome]} {OUTCOME_LABEL[result.outcome]}", style),
        "  ",
        _clean(result.title),
    )
    if result.outcome != "passed" and result.message:
        reason = _clean(result.message).splitlines()[0] if result.message.strip() else ""
        line.append(" — " + clip(reason, _REASON_CHARS), style=style)
    return line


def _print_evidence(console: Console, result: CheckResult) -> None:
    style = _STYLE[result.outcome]
    text = Text()
    text.append(f"{OUTCOME_LABEL[result.outcome]} ", style=style)
    text.append(f"{_clean(result.id)} ", style="bold")
    text.append(f"[{result.rule} {result.level}] ", style="cyan")
    text.append(_clean(result.title) + "\n")
    text.append(f"  {_hang(_clean(result.message), '  ')}")
    for detail in counted(result.details):
        text.append(f"\n  • {_hang(_clean(detail), '    ')}")
    if result.exchanges:
        exchange = result.exchanges[0]
        text.append("\n  ")
        text.append(_clean(f"{request_line(exchange)} {response_line(exchange)}"), style="bold")
        if exchange.body_excerpt:
            body = clip(_clean(exchange.body_excerpt).rstrip(), _BODY_CHARS)
            text.append("\n    " + _hang(body, "    "), style="dim")
    console.print(text)
    if result.exchanges:
        # soft_wrap: the terminal wraps the command, so it copies and pastes as one line
        console.print(Text("    $ " + _clean(result.exchanges[0].curl()), style="green"), soft_wrap=True)
        if len(result.exchanges) > 1:
            more = len(result.exchanges) - 1
            console.print(Text(f"    (+{more} more exchanges in the JSON/HTML report)", style="dim"))
    if result.replay:
        console.print(Text("  replay: " + _clean(result.replay), style="dim"), soft_wrap=True)


def _print_suite_error(console: Console, result: CheckResult) -> None:
    text = Text()
    text.append("ERROR ", style=_STYLE["error"])
    text.append(f"{_clean(result.id)} ", style="bold")
    text.append(_clean(result.message) + "\n")
    for detail in result.details:
        text.append(f"  {_hang(_clean(detail), '  ')}\n")
    last = [line for line in result.traceback.strip().splitlines() if line.strip()][-3:]
    for line in last:
        text.append(f"    {_clean(line)}\n", style="dim")
    console.print(text)


def _diagnosis_text(diagnosis: Diagnosis) -> Text:
    body = Text()
    body.append(_clean(diagnosis.summary).rstrip() + "\n")
    if diagnosis.observations:
        body.append("\nObserved:\n", style="bold")
        for item in diagnosis.observations:
            body.append(f"  • {_hang(_clean(item), '    ')}\n")
    if diagnosis.fixes:
        body.append("\nWhat to change:\n", style="bold")
        for number, fix in enumerate(diagnosis.fixes, 1):
            body.append(f"  {number}. {_hang(_clean(fix), '     ')}\n")
    body.rstrip()
    return body


def _print_diagnosis(console: Console, diagnosis: Diagnosis) -> None:
    """A box on a terminal (rich wraps inside it); plain lines elsewhere, so no width ever cuts the text."""
    title = Text(f"Diagnosis: {_clean(diagnosis.name)}", style="bold")
    if console.is_terminal:
        console.print(Panel(_diagnosis_text(diagnosis), title=title, title_align="left", border_style="red"))
        return
    console.print(Text.assemble(("== ", "red"), title, (" ==", "red")), soft_wrap=True)
    console.print(_diagnosis_text(diagnosis), soft_wrap=True)
    console.print()


def summary_text(report: Report) -> Text:
    """The closing line: ``31 passed, 2 failed, 1 warnings, 3 unverified in 4.2s — FAIL (MUST failures)``."""
    return Text(summary_line(report), style="bold green" if report.ok else "bold red")


def render_console(report: Report, console: Console, *, lines_already_printed: bool = False) -> None:
    """Print the report on *console*.

    The diagnoses of the target lead (after the check lines, when :class:`ConsoleProgress` printed
    them while the checks ran; else before them). Then the suite's own errors, the evidence of
    failed and warning checks — grouped into one line each when a diagnosis explains them — the
    unverified MUST rules (one line per distinct reason), and the summary line.
    """
    if not lines_already_printed:
        console.print(Text(f"dualcall conformance — {_clean(report.target)}", style="bold"))
    for diagnosis in report.diagnoses:
        _print_diagnosis(console, diagnosis)
    if report.target_unsupported:
        console.print(
            Text(
                f"{len(report.results)} checks not run (unverified): the target is not a dual-call worker "
                f"({_clean(report.target_kind)})",
                style=_STYLE["unverified"],
            ),
            soft_wrap=True,
        )
    elif not lines_already_printed:
        id_width = max((len(_clean(r.id)) for r in report.results), default=0) + 1
        for result in report.results:
            console.print(check_line(result, id_width=max(id_width, 16)))
    errors = [r for r in report.results if r.outcome == "error"]
    if errors:
        console.print()
        console.rule(Text("Errors of the suite (not findings about the worker)", style="bold"))
        for result in errors:
            _print_suite_error(console, result)
    problems = [r for r in report.results if r.outcome in ("failed", "warning")]
    explaining = [d for d in report.diagnoses if d.explains_failures]
    if problems and explaining:
        console.print()
        names = ", ".join(_clean(d.name) for d in explaining)
        console.rule(Text(f"Failures and warnings ({names})", style="bold"))
        # the first failure's evidence reproduces what the diagnosis describes; the rest follow from it
        _print_evidence(console, problems[0])
        if len(problems) > 1:
            console.print(
                Text(
                    f"The diagnosis above also explains {plural(len(problems) - 1, 'other check')} below; the "
                    "evidence of each is in the JSON/HTML report (--json, --html):",
                    style="dim",
                ),
                soft_wrap=True,
            )
            for result in problems[1:]:
                console.print(check_line(result), soft_wrap=True)
    elif problems:
        console.print()
        console.rule(Text("Failures and warnings", style="bold"))
        for result in problems:
            _print_evidence(console, result)
            console.print()
    heading = unverified_heading(report)
    if heading and not report.target_unsupported:
        console.print()
        block = Text(heading + "\n", style="bold magenta")
        for line in unverified_lines(report):
            block.append(f"  • {_hang(_clean(line), '    ')}\n")
        if not report.require_all:
            block.append(
                "  (not a failure; pass --require-all to make unverified MUST rules fail the run)", style="dim"
            )
        console.print(block)
    console.print()
    console.print(summary_text(report))


class ConsoleProgress:
    """Prints each check's line as it finishes; on a terminal also a transient progress bar.

    Used by the runner::

        with ConsoleProgress(console, total=len(specs)) as progress:
            for spec in specs:
                progress.start(spec.id, spec.title)
                progress.advance(run(spec))
        render_console(report, console, lines_already_printed=progress.lines_printed)
    """

    def __init__(self, console: Console, total: int, *, description: str = "checking", id_width: int = 16) -> None:
        self.console = console
        self.id_width = id_width
        self.total = total
        self.description = description
        self.done = 0
        self.lines_printed = False
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._last_note = -math.inf

    def __enter__(self) -> ConsoleProgress:
        if self.console.is_terminal:
            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("[progress.description]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=self.console,
                transient=True,
            )
            self._progress.start()
            self._task = self._progress.add_task(escape(self.description), total=self.total)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def start(self, check_id: str, title: str = "") -> None:
        """Show *check_id* as the check now running (terminal only)."""
        if self._progress is not None and self._task is not None:
            label = f"{check_id} {title}".strip()
            self._progress.update(self._task, description=escape(f"{self.description}: {_clean(label)}"))

    def note(self, text: str) -> None:
        """Progress inside a long check (fuzzing): the bar's label on a terminal, else a line every few seconds."""
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, description=escape(_clean(text)))
            return
        now = time.monotonic()
        if now - self._last_note >= NOTE_INTERVAL_S:
            self._last_note = now
            self.console.print(Text(_clean(text), style="dim"))

    def advance(self, result: CheckResult) -> None:
        """Print *result*'s line now and move the bar on by one."""
        self.console.print(check_line(result, id_width=self.id_width))
        self.lines_printed = True
        self.done += 1
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, advance=1, description=escape(self.description))
