"""``dualcall-conformance URL`` / ``python -m conformance URL`` — gate a worker in CI.

Exit codes: 0 every MUST check passed (and every SHOULD check with ``--level should``);
1 a check failed (or, with ``--require-all``, a MUST check could not be verified), or the target
is not a dual-call worker; 2 usage error, or a target the suite cannot test as given (no HTTP,
not a worker's base URL, a bearer token needed); 3 the suite itself broke (a bug in a check, its
own broken installation, or schemathesis breaking inside a fuzz phase: the report's traceback is
for a bug report, not about the worker).
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from collections.abc import Sequence
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

from conformance import __version__
from conformance.cli_support import EXIT_USAGE, OneLineErrorParser, positive_number, report_console
from conformance.context import Options
from conformance.contract import contract_version
from conformance.probe import TargetUnusable
from conformance.registry import AREAS

EXIT_OK, EXIT_FAILED, EXIT_SUITE_ERROR = 0, 1, 3


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="dualcall-conformance",
        description=(
            f"Check that an LLM worker implements the dual-call streaming contract v{contract_version()} "
            "(POST /v1/inference -> 202 {job_id, sse_url}; GET sse_url -> SSE) and not the legacy direct-SSE shape."
        ),
        epilog=(
            "Exit codes: 0 pass, 1 a check failed (or an unverified MUST rule with --require-all) or the "
            "target is not a dual-call worker, 2 usage error or a target the suite cannot test as given, "
            "3 the suite itself broke (a bug in the suite, not a finding about the worker). "
            "To grade a caller (an orchestrator) instead of a worker: dualcall-conformance serve-callers --help"
        ),
    )
    parser.add_argument("url", nargs="?", help="base URL of the worker, e.g. http://127.0.0.1:8000")
    parser.add_argument("--list", action="store_true", help="print the check catalogue and exit")
    parser.add_argument("--markdown", action="store_true", help="with --list: print the catalogue as Markdown")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the JSON report")
    parser.add_argument("--junit", type=Path, metavar="PATH", help="write a JUnit XML report")
    parser.add_argument("--html", type=Path, metavar="PATH", help="write a self-contained HTML report")
    parser.add_argument(
        "--level",
        choices=("must", "should"),
        default="must",
        help="what fails the run: MUST checks only (SHOULD failures are warnings), or SHOULD too (default: must)",
    )
    parser.add_argument("--checks", metavar="ID,...", help="run only these check ids (see --list)")
    parser.add_argument(
        "--token",
        default=os.environ.get("DUALCALL_TOKEN"),
        help="bearer token for workers with auth on (default: $DUALCALL_TOKEN)",
    )
    parser.add_argument(
        "--timeout", type=positive_number, default=10.0, metavar="S", help="per-request timeout (default: 10)"
    )
    parser.add_argument(
        "--ttl-budget",
        type=positive_number,
        default=6.0,
        metavar="S",
        help="longest advertised job TTL the suite waits out to check reclaim (default: 6)",
    )
    parser.add_argument(
        "--require-all",
        action="store_true",
        help=(
            "fail the run when a MUST rule could not be verified (e.g. TTL reclaim on a worker whose TTL exceeds "
            "--ttl-budget); off by default, because what a worker's configuration hides is not evidence of a "
            "broken rule — every unverified MUST rule is listed either way"
        ),
    )
    parser.add_argument(
        "--run-budget",
        type=positive_number,
        default=1800.0,
        metavar="S",
        help="the whole run's wall-clock bound: no check starts after it, none reads past it; the checks left "
        "are unverified (default: 1800)",
    )
    parser.add_argument("--no-fuzz", action="store_true", help="skip schemathesis fuzzing")
    parser.add_argument(
        "--max-examples", type=_count, default=25, metavar="N", help="fuzz examples per operation (default: 25)"
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="fuzzing seed; the run prints the one it used, so a run can be replayed (default: random)",
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {__version__} (contract {contract_version()})"
    )
    return parser


def print_catalogue(console: Console) -> None:
    from conformance.runner import catalogue

    table = Table(title=f"dualcall conformance checks (contract {contract_version()})", show_lines=False)
    for column in ("id", "rule", "level", "area", "title"):
        table.add_column(column, overflow="fold")
    for spec in catalogue():
        table.add_row(spec.id, spec.rule, spec.level, AREAS[spec.area].split(" (")[0], spec.title)
    console.print(table)


def _validate_url(parser: argparse.ArgumentParser, url: str | None) -> str:
    if not url:
        parser.error("the worker URL is required, e.g. dualcall-conformance http://127.0.0.1:8000")
    assert url is not None
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        parser.error(f"not a valid URL: {url!r}")
    if parsed.scheme not in ("http", "https") or not parsed.host:
        parser.error(f"the worker URL must be http:// or https:// with a host, got {url!r}")
    return url.rstrip("/")


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["serve-callers"]:  # caller conformance: its own options (conformance/callers/cli.py)
        from conformance.callers.cli import main as serve_callers

        return serve_callers(arguments[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    console = report_console()
    if args.list and args.markdown:
        from conformance.runner import catalogue_markdown

        sys.stdout.write(catalogue_markdown())
        return EXIT_OK
    if args.list:
        print_catalogue(console)
        return EXIT_OK
    target = _validate_url(parser, args.url)
    from conformance.extras import missing_extra_message

    missing = missing_extra_message()
    if missing:
        print(f"dualcall-conformance: error: {missing}", file=sys.stderr)
        return EXIT_USAGE

    from conformance.report import ConsoleProgress, render_console, write_html, write_json, write_junit
    from conformance.runner import RunConfig, run, selected_checks, unknown_ids

    only: frozenset[str] | None = None
    if args.checks:
        ids = [part.strip().upper() for part in args.checks.split(",") if part.strip()]
        unknown = unknown_ids(ids)
        if unknown:
            parser.error(f"unknown check id(s): {', '.join(unknown)} (see --list)")
        only = frozenset(ids)
    for path in (args.json, args.junit, args.html):
        if path is not None and path.exists() and path.is_dir():
            parser.error(f"report path {path} is a directory")

    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    config = RunConfig(
        target=target,
        options=Options(timeout_s=args.timeout, ttl_budget_s=args.ttl_budget, token=args.token or None),
        threshold=args.level,
        only=only,
        fuzz=not args.no_fuzz,
        max_examples=args.max_examples,
        seed=seed,
        require_all=args.require_all,
        run_budget_s=args.run_budget,
    )
    selected = selected_checks(config)
    console.print(f"[bold]dualcall conformance[/] {__version__} — contract {contract_version()} — target {target}")
    if any(check.seeded for check in selected):
        console.print(f"fuzz seed {seed} (replay with --seed {seed})", markup=False)
    try:
        with ConsoleProgress(console, total=len(selected)) as progress:
            report = run(
                config,
                on_start=lambda spec: progress.start(spec.id, spec.title),
                on_result=progress.advance,
                on_progress=progress.note,
            )
    except TargetUnusable as exc:
        print(f"dualcall-conformance: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("dualcall-conformance: interrupted", file=sys.stderr)
        return 130
    render_console(report, console, lines_already_printed=True)
    try:
        if args.json:
            write_json(report, args.json)
        if args.junit:
            write_junit(report, args.junit)
        if args.html:
            write_html(report, args.html)
    except OSError as exc:
        print(f"dualcall-conformance: cannot write report: {exc}", file=sys.stderr)
        return EXIT_USAGE
    for label, path in (("JSON", args.json), ("JUnit", args.junit), ("HTML", args.html)):
        if path:
            console.print(f"{label} report: {path}")
    if report.suite_error:
        return EXIT_SUITE_ERROR
    return EXIT_OK if report.ok else EXIT_FAILED


if __name__ == "__main__":
    raise SystemExit(main())
