"""``dualcall-conformance serve-callers``: the adversarial worker, and the caller conformance run.

With ``--caller CMD`` the command is run once per scenario and graded (exit 0 pass, 1 a rule
broken — or, with ``--require-all``, a MUST rule not verified — 2 usage error). Without it
the worker serves every scenario under its own base URL until Ctrl-C (or ``--duration``), then
grades what the callers did on the wire.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from conformance.callers.arena import ArenaServer
from conformance.callers.drive import DEFAULT_TIMEOUT_S, CallerUsageError, CommandCaller, run_callers, select
from conformance.callers.grade import build_report
from conformance.callers.record import ScenarioRun
from conformance.callers.rules import RULES
from conformance.callers.scenarios import SCENARIOS, Scenario
from conformance.cli_support import OneLineErrorParser, positive_number, report_console
from conformance.contract import contract_version
from conformance.model import Report, Threshold

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
PROG = "dualcall-conformance serve-callers"


def _jobs(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 32:
        raise argparse.ArgumentTypeError(f"must be an integer from 1 to 32, got {text!r}")
    return int(text)


def _port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog=PROG,
        description=(
            f"Check that a caller (an orchestrator) follows the dual-call hand-off, contract v{contract_version()}: "
            "an adversarial worker serves legal but inconvenient scenarios and grades what the caller does "
            "against the caller rules DC-C-n of openapi/SPEC.md."
        ),
        epilog="Exit codes: 0 pass, 1 a caller rule broken (or an unverified MUST rule with --require-all), "
        "2 usage error.",
    )
    parser.add_argument(
        "--caller",
        metavar="CMD",
        help="command run once per scenario; {submit_url} {base_url} {prompt} {scenario} are replaced; "
        "stdout is the reassembled text, exit 0 a completion",
    )
    parser.add_argument("--scenarios", metavar="NAME,...", help="run only these scenarios (see --list)")
    parser.add_argument(
        "--timeout",
        type=positive_number,
        default=DEFAULT_TIMEOUT_S,
        metavar="S",
        help="per-scenario limit (default: 20)",
    )
    parser.add_argument("--jobs", type=_jobs, default=4, metavar="N", help="scenarios run at once (default: 4)")
    parser.add_argument("--level", choices=("must", "should"), default="must", help="what fails the run")
    parser.add_argument(
        "--require-all", action="store_true", help="a MUST rule that no scenario verified fails the run (exit 1)"
    )
    parser.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="also answer CORS for a browser page on ORIGIN (its own origins always are); repeatable",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the JSON report")
    parser.add_argument("--junit", type=Path, metavar="PATH", help="write a JUnit XML report")
    parser.add_argument("--html", type=Path, metavar="PATH", help="write a self-contained HTML report")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=_port, default=0, help="primary port (default: a free one)")
    parser.add_argument("--second-port", type=_port, default=0, help="second listener's port (default: a free one)")
    parser.add_argument(
        "--duration", type=positive_number, metavar="S", help="without --caller: serve S seconds, then grade"
    )
    parser.add_argument("--list", action="store_true", help="print the caller rules and scenarios and exit")
    parser.add_argument("--markdown", action="store_true", help="with --list: print the catalogue as Markdown")
    return parser


def _print_catalogue(console: Console) -> None:
    rules = Table(title=f"dualcall caller rules (contract {contract_version()})")
    for column in ("check", "rule", "level", "a caller …", "scenarios"):
        rules.add_column(column, overflow="fold")
    for rule in RULES:
        rules.add_row(rule.check_id, rule.rule, rule.level, rule.title, ", ".join(rule.scenarios) or "every scenario")
    console.print(rules)
    scenarios = Table(title="scenarios of the adversarial worker")
    for column in ("scenario", "the worker …", "rules"):
        scenarios.add_column(column, overflow="fold")
    for scenario in SCENARIOS:
        scenarios.add_row(scenario.name, scenario.title, ", ".join(scenario.rules))
    console.print(scenarios)


def _scenario_line(console: Console, run: ScenarioRun) -> None:
    outcome = run.outcome.summary() if run.outcome else "no caller"
    console.print(Text(f"  {run.scenario.name:<24} {len(run.hits):>3} requests  {outcome}"[:200]))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    console = report_console()
    if args.list and args.markdown:
        from conformance.callers.catalogue import catalogue_markdown

        sys.stdout.write(catalogue_markdown())
        return EXIT_OK
    if args.list:
        _print_catalogue(console)
        return EXIT_OK
    try:
        names = [part.strip() for part in args.scenarios.split(",") if part.strip()] if args.scenarios else None
        scenarios = select(names)
        caller = CommandCaller(args.caller, timeout_s=args.timeout) if args.caller else None
    except CallerUsageError as exc:
        parser.error(str(exc))
    for path in (args.json, args.junit, args.html):
        if path is not None and path.is_dir():
            parser.error(f"report path {path} is a directory")
    for origin in args.cors_origin:
        if not origin.startswith(("http://", "https://")) or origin.count("/") != 2:
            parser.error(f"--cors-origin must be an origin such as http://127.0.0.1:5173, got {origin!r}")
    server = ArenaServer(args.host, args.port, args.second_port, frozenset(args.cors_origin))
    try:
        server.start()
    except (OSError, RuntimeError) as exc:
        print(f"{PROG}: cannot listen on {args.host}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        if caller is not None:
            console.print(
                f"[bold]dualcall caller conformance[/] — contract {contract_version()} — caller: {caller.label}"
            )
            report = run_callers(
                caller,
                scenarios=scenarios,
                threshold=args.level,
                on_scenario=lambda run: _scenario_line(console, run),
                server=server,
                jobs=args.jobs,
                require_all=args.require_all,
            )
        else:
            report = _serve(
                console, server, scenarios, args.duration, threshold=args.level, require_all=args.require_all
            )
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    finally:
        server.stop()
    from conformance.report import render_console, write_html, write_json, write_junit

    render_console(report, console)
    try:
        for writer, path in ((write_json, args.json), (write_junit, args.junit), (write_html, args.html)):
            if path is not None:
                writer(report, path)
                console.print(f"report: {path}")
    except OSError as exc:
        print(f"{PROG}: cannot write report: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK if report.ok else EXIT_FAILED


def _serve(
    console: Console,
    server: ArenaServer,
    scenarios: Sequence[Scenario],
    duration: float | None,
    *,
    threshold: Threshold,
    require_all: bool,
) -> Report:
    """Serve every scenario under its own URL until Ctrl-C or *duration*; grade what was seen on the wire."""
    runs = [server.arena.new_run(scenario) for scenario in scenarios]
    table = Table(title=f"adversarial worker on {server.arena.base_url} (second listener :{server.arena.second_port})")
    table.add_column("scenario")
    table.add_column("submit URL (base URL: without /v1/inference)", overflow="fold")
    for run in runs:
        table.add_row(run.scenario.name, run.submit_url)
    console.print(table)
    console.print(
        "Point a caller at a submit URL; Ctrl-C" + (f" or {duration:g}s" if duration else "") + " ends and grades."
    )
    started_at, clock = datetime.now(UTC), time.monotonic()
    try:
        while duration is None or time.monotonic() - clock < duration:
            time.sleep(0.2)
    except KeyboardInterrupt:
        console.print("grading what the callers did (their results are unknown here: wire evidence only)")
    for run in runs:
        server.settle(run, 0.5)
    exercised = [run for run in runs if run.hits]
    for run in exercised:
        _scenario_line(console, run)
    return build_report(
        exercised,
        target=f"callers of {server.arena.base_url}",
        threshold=threshold,
        started_at=started_at,
        duration_s=time.monotonic() - clock,
        adversary=server.arena.base_url,
        require_all=require_all,
    )
