"""``python -m benchmarks [--full] [--repeat N]`` — the price of the second call, the worker against a bare floor.

Scenarios (each its subject and its baseline, interleaved trial by trial, in one run; ``--list``
shows the catalogue, ``benchmarks/catalogue.py`` says how a module adds one):

* ``ceiling``: events/s one client process takes in when the server only writes bytes;
* ``handoff``: time to first token (p50/p99), jobs/s and server CPU per job, dual-call vs the legacy
  direct-SSE worker, both on the mock engine with no token delay, at 1, 8 and 64 concurrent clients;
* ``live``: events/s of 1 and of 64 concurrent live streams, worker vs a bare-ASGI app that sends
  the same events from the same engine (``benchmarks/baseline.py``);
* ``replay``: events/s of 1..256 readers of one finished job, vs the bare app's pre-encoded body;
* ``memory``: worker RSS per idle open stream (1,000 streams of queued jobs), vs bare idle streams;
* ``suite``: wall time of ``conformance.runner.run`` against the mock;
* ``client``: the reference client's own CPU per job (and per second request) next to the lean load
  generator's, against the same worker;
* ``pool``: aggregate tokens/s and TTFT of one in-process worker, one on the Redis registry and
  two sharing it, with the two replicas' scaling efficiency;
* ``redis``: the Redis registry against in-process, no HTTP: worker CPU and latency per token;
* ``gateway``: the gateway vs the same upstream streamed directly (``benchmarks/gateway.py``).

Output: a Markdown table on stdout and in ``--out``/bench.md, JSON in bench.json, a plot in
bench.png. Both files are rewritten as each scenario finishes, so a failing scenario loses only
itself: the report names it and says why. The default is the quick mode sized for CI; ``--full``
runs more trials and more tokens; ``--repeat N`` runs the mode N times and reports, for every
figure, the median of the N runs with their min-max. On a shared machine absolute numbers are
noisy: read the ratios, measured side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from benchmarks.catalogue import FULL, QUICK, Mode, Pass, Scenario, ScenarioUnavailable, catalogue
from benchmarks.combine import combine
from benchmarks.report import markdown, plot

USAGE_ERROR = 2


def _machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}, {platform.system()} {platform.release()}"
    )


def _load() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


#: open files the memory scenario needs: 1,000 client sockets here, 1,000 accepted ones in the server
_FILES_NEEDED = 4096


def _raise_file_limit() -> None:
    """Lift the soft limit on open files (servers started later inherit it); CI defaults to 1024."""
    try:
        import resource
    except ImportError:  # not on POSIX
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = _FILES_NEEDED if hard == resource.RLIM_INFINITY else min(_FILES_NEEDED, hard)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def _auto_clients() -> int:
    """Client processes for the concurrent scenarios: one per two cores, at least one, at most four."""
    return max(1, min(4, (os.cpu_count() or 1) // 2))


def _parse(argv: list[str] | None, scenarios: dict[str, Scenario]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--full", action="store_true", help="the full mode (more trials and tokens; minutes)")
    parser.add_argument(
        "--only", default="", help=f"comma-separated scenarios to run (default: {','.join(_defaults(scenarios))})"
    )
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    parser.add_argument("--repeat", type=int, default=1, metavar="N", help="run the mode N times; report medians")
    parser.add_argument("--trials", type=int, default=0, help="override the mode's trials per figure")
    parser.add_argument("--clients", type=int, default=0, help="client processes for concurrent load (default: auto)")
    parser.add_argument("--out", type=Path, default=Path("reports"), help="directory for bench.json/.md/.png")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG (no matplotlib needed)")
    parser.add_argument("--soak", type=int, default=0, metavar="N", help="also run the soak with N jobs")
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.only.split(",") if name.strip()] or _defaults(scenarios)
    unknown = sorted(set(chosen) - set(scenarios))
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(scenarios)}")
    if args.trials < 0 or args.clients < 0 or args.repeat < 1:
        parser.error("--trials and --clients must be >= 0, --repeat >= 1")
    args.scenarios = [name for name in scenarios if name in chosen]  # the catalogue's order
    return args


def _defaults(scenarios: dict[str, Scenario]) -> list[str]:
    return [name for name, scenario in scenarios.items() if scenario.default]


def _mode(args: argparse.Namespace) -> Mode:
    mode = FULL if args.full else QUICK
    if args.trials:
        mode = Mode(**{**mode.__dict__, "trials": args.trials})
    return mode


def _failure(exc: BaseException) -> dict[str, str]:
    """What a failed scenario's row says: the error in one line, and where it was raised."""
    if isinstance(exc, ScenarioUnavailable):
        return {"error": str(exc), "where": ""}
    frames = traceback.extract_tb(exc.__traceback__)
    where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else ""
    return {"error": f"{type(exc).__name__}: {exc}", "where": where}


def one_pass(
    args: argparse.Namespace,
    scenarios: dict[str, Scenario],
    console: Console,
    *,
    label: str = "",
    save: Any = None,
) -> dict[str, Any]:
    """Run each chosen scenario once; ``save(results)`` after each, so what finished is never lost."""
    mode = _mode(args)
    clients = args.clients or _auto_clients()
    results: dict[str, Any] = {
        "meta": {
            "mode": mode.name,
            "trials": mode.trials,
            "client_processes": clients,
            "machine": _machine(),
            "load_average_start": _load(),
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
        },
        "failed": {},
    }
    chosen = [scenarios[name] for name in args.scenarios]
    started = time.perf_counter()
    columns = (TextColumn("{task.description:<20}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(f"{label}starting", total=sum(scenario.steps(mode) for scenario in chosen))

        def step(what: str) -> None:
            progress.update(task, advance=1, description=f"{label}{what}")

        run = Pass(mode=mode, clients=clients, step=step)
        try:
            for index, scenario in enumerate(chosen):
                try:
                    results[scenario.name] = scenario.run(run)
                except Exception as exc:
                    results["failed"][scenario.name] = _failure(exc)
                    console.print(f"[red]scenario {scenario.name} failed:[/red] {results['failed'][scenario.name]}")
                if not any(later.shares_servers for later in chosen[index + 1 :]):
                    run.release()
                results["meta"]["seconds"] = time.perf_counter() - started
                if save is not None:
                    save(results)
        finally:
            run.release()
    if args.soak:
        from benchmarks.soak import soak

        console.print(f"soak: {args.soak} jobs …")
        results["soak"] = soak(args.soak, ttl_s=1.0)
    results["meta"]["seconds"] = time.perf_counter() - started
    results["meta"]["load_average_end"] = _load()
    busy = [
        stat["busy"]["max"]
        for section in ("handoff", "live", "replay")
        for row in _rows(results.get(section))
        for stat in (row.get("dual", {}), row.get("bare", {}), row.get("legacy", {}))
        if "busy" in stat
    ]
    if busy:
        results["client_busy_max"] = max(busy)
    return results


def _rows(section: dict[str, Any] | None) -> list[dict[str, Any]]:
    if not section:
        return []
    for key in ("by_concurrency", "by_readers"):
        if key in section:
            return list(section[key].values())
    return [row for row in section.values() if isinstance(row, dict)]


def _writer(out: Path, plot_too: bool) -> Any:
    def save(results: dict[str, Any], *, final: bool = False) -> None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "bench.json").write_text(json.dumps(results, indent=2) + "\n")
        (out / "bench.md").write_text(markdown(results))
        if final and plot_too:
            plot(results, out / "bench.png")

    return save


def main(argv: list[str] | None = None) -> int:
    scenarios = catalogue()
    args = _parse(argv, scenarios)
    if args.list:
        for name, scenario in scenarios.items():
            print(f"{name:<10} {'' if scenario.default else '(only with --only) '}{scenario.about}")
        return 0
    console = Console(stderr=True)
    if not args.no_plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print(
                "benchmarks: the plot needs matplotlib: pip install 'dualcall[bench]' (or pass --no-plot)",
                file=sys.stderr,
            )
            return USAGE_ERROR
    _raise_file_limit()
    save = _writer(args.out, not args.no_plot)
    if args.repeat == 1:
        results = one_pass(args, scenarios, console, save=save)
    else:
        runs: list[dict[str, Any]] = []
        for number in range(1, args.repeat + 1):
            runs.append({})

            def save_run(partial: dict[str, Any]) -> None:
                runs[-1] = partial
                save(combine(runs))

            one_pass(args, scenarios, console, label=f"run {number}/{args.repeat}: ", save=save_run)
        results = combine(runs)
    save(results, final=True)
    print(markdown(results))
    failed = results.get("failed", {})
    console.print(
        f"wrote {args.out / 'bench.json'}, {args.out / 'bench.md'}"
        + ("" if args.no_plot else f", {args.out / 'bench.png'}")
        + f" in {results['meta']['seconds']:.0f} s"
        + (f"; failed: {', '.join(failed)}" if failed else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
