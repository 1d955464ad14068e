"""``python -m benchmarks [--full]`` — the price of the second call, the worker against a bare floor.

Scenarios (each its subject and its baseline, interleaved trial by trial, in one run):

* ``ceiling``: events/s one client process takes in when the server only writes bytes;
* ``handoff``: time to first token (p50/p99) and jobs/s, dual-call vs the legacy direct-SSE worker,
  both on the mock engine with no token delay, at 1, 8 and 64 concurrent clients;
* ``live``: events/s of 1 and of 64 concurrent live streams, worker vs a bare-ASGI app that sends
  the same events from the same engine (``benchmarks/baseline.py``);
* ``replay``: events/s of 1..256 readers of one finished job, vs the bare app's pre-encoded body;
* ``memory``: worker RSS per idle open stream (1,000 streams of queued jobs), vs bare idle streams;
* ``suite``: wall time of ``conformance.runner.run`` against the mock;
* ``gateway``: the gateway vs the same upstream streamed directly (``benchmarks/gateway.py``).

Output: a Markdown table on stdout and in ``--out``/bench.md, JSON in bench.json, a plot in
bench.png. The default is the quick mode sized for CI; ``--full`` runs more trials and more tokens.
On a shared machine absolute numbers are noisy: read the ratios, measured side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from benchmarks import loadgen, scenarios
from benchmarks import servers as processes
from benchmarks.report import markdown, plot
from benchmarks.servers import BaselineProcess

SCENARIOS = ("ceiling", "handoff", "live", "replay", "memory", "suite", "gateway")
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
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}, {platform.system()} {platform.release()}, "
        f"load average {load:.1f} at start"
    )


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


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--full", action="store_true", help="the full mode (more trials and tokens; minutes)")
    parser.add_argument(
        "--only", default="", help=f"comma-separated scenarios to run (default: all of {','.join(SCENARIOS)})"
    )
    parser.add_argument("--trials", type=int, default=0, help="override the mode's trials per figure")
    parser.add_argument("--clients", type=int, default=0, help="client processes for concurrent load (default: auto)")
    parser.add_argument("--out", type=Path, default=Path("reports"), help="directory for bench.json/.md/.png")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG (no matplotlib needed)")
    parser.add_argument("--soak", type=int, default=0, metavar="N", help="also run the soak with N jobs")
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.only.split(",") if name.strip()] or list(SCENARIOS)
    unknown = sorted(set(chosen) - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    if args.trials < 0 or args.clients < 0:
        parser.error("--trials and --clients must be >= 0")
    args.scenarios = chosen
    return args


def run(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    mode = scenarios.FULL if args.full else scenarios.QUICK
    if args.trials:
        mode = scenarios.Mode(**{**mode.__dict__, "trials": args.trials})
    clients = args.clients or _auto_clients()
    results: dict[str, Any] = {
        "meta": {
            "mode": mode.name,
            "trials": mode.trials,
            "client_processes": clients,
            "machine": _machine(),
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
        }
    }
    total = sum(
        {
            "ceiling": mode.trials,
            "handoff": mode.trials * 2 * len(mode.handoff_jobs),
            "live": mode.trials * 4,
            "replay": mode.trials * 2 * len(mode.replay_readers),
            "memory": mode.memory_trials * 2,
            "suite": mode.suite_trials,
            "gateway": 0,  # reports its own progress
        }[name]
        for name in args.scenarios
    )
    started = time.perf_counter()
    columns = (TextColumn("{task.description:<20}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("starting servers", total=total)

        def step(label: str) -> None:
            progress.update(task, advance=1, description=label)

        needs_servers = {"ceiling", "handoff", "live", "replay"} & set(args.scenarios)
        if needs_servers:
            pool = loadgen.ClientPool(clients)
            single = loadgen.ClientPool(1)
            try:
                with (
                    scenarios.worker_for_load() as worker,
                    BaselineProcess() as bare,
                    processes.legacy() as legacy,
                ):
                    servers = scenarios.Servers(worker=worker, legacy=legacy, bare=bare)
                    if "ceiling" in args.scenarios:
                        results["ceiling"] = scenarios.ceiling(servers, single, mode, step)
                    if "handoff" in args.scenarios:
                        results["handoff"] = scenarios.handoff(servers, pool, mode, step)
                    if "live" in args.scenarios:
                        results["live"] = scenarios.live(servers, pool, single, mode, step)
                    if "replay" in args.scenarios:
                        results["replay"] = scenarios.replay(servers, pool, mode, step)
            finally:
                pool.close()
                single.close()
        if "memory" in args.scenarios:
            results["memory"] = scenarios.memory(mode, step)
        if "suite" in args.scenarios:
            results["suite"] = scenarios.suite(mode, step)
        if "gateway" in args.scenarios:
            from benchmarks import gateway

            results["gateway"] = gateway.measure(gateway.Settings(trials=max(5, mode.trials)))
    if args.soak:
        from benchmarks.soak import soak

        console.print(f"soak: {args.soak} jobs …")
        results["soak"] = soak(args.soak, ttl_s=1.0)
    results["meta"]["seconds"] = time.perf_counter() - started
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
    return list(section.values())


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
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
    results = run(args, console)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_text(json.dumps(results, indent=2) + "\n")
    table = markdown(results)
    if "gateway" in results:
        from benchmarks import gateway

        table += "\n" + gateway.markdown(results["gateway"])
    (args.out / "bench.md").write_text(table)
    print(table)
    if not args.no_plot:
        plot(results, args.out / "bench.png")
    console.print(
        f"wrote {args.out / 'bench.json'}, {args.out / 'bench.md'}"
        + ("" if args.no_plot else f", {args.out / 'bench.png'}")
        + f" in {results['meta']['seconds']:.0f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
