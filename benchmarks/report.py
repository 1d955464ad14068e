"""Results as a Markdown table and a PNG plot (matplotlib, from the ``bench`` extra).

The goals are data (`GOALS`): each names a figure of the results, its bound and its direction, and
the report says for each whether this run (or the median of ``--repeat`` runs) met it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Goal:
    label: str
    #: keys into the results down to a number (a trial summary's median is taken)
    path: tuple[str, ...]
    bound: float
    #: True: the figure must be at least ``bound``; False: at most
    at_least: bool
    unit: str = ""

    def value(self, results: dict[str, Any]) -> tuple[float, dict[str, float] | None] | None:
        """The figure and, after ``--repeat``, its spread over the runs; None if not measured."""
        node: Any = results
        for key in self.path[:-1]:
            if not isinstance(node, dict) or key not in node:
                return None
            node = node[key]
        last = self.path[-1]
        if not isinstance(node, dict) or last not in node:
            return None
        figure = node[last]
        if isinstance(figure, dict):  # a trial summary (after --repeat: a summary of the runs' medians)
            spread = {"min": figure["min"], "max": figure["max"]} if figure.get("trials") else None
            return float(figure["median"]), spread
        spread = node.get("spread", {}).get(last)
        return float(figure), spread

    def met(self, figure: float) -> bool:
        return figure >= self.bound if self.at_least else figure <= self.bound

    def describe(self) -> str:
        return f"{'≥' if self.at_least else '≤'} {self.bound:g}{self.unit}"


_HANDOFF = ("handoff", "by_concurrency")
GOALS = (
    Goal("hand-off c=1: TTFT p50 over legacy", (*_HANDOFF, "1", "ttft_p50_overhead_ms"), 0.5, False, " ms"),
    Goal("hand-off c=1: server CPU per job / legacy", (*_HANDOFF, "1", "server_cpu_ratio"), 1.3, False, "×"),
    Goal("hand-off c=8: jobs/s / legacy", (*_HANDOFF, "8", "jobs_per_s_ratio"), 0.8, True, "×"),
    Goal("hand-off c=64: jobs/s / legacy", (*_HANDOFF, "64", "jobs_per_s_ratio"), 0.8, True, "×"),
    Goal("live ×1: events/s / bare ASGI", ("live", "1", "ratio"), 0.85, True, "×"),
    Goal("live ×64: events/s / bare ASGI", ("live", "64", "ratio"), 0.8, True, "×"),
    Goal("replay ×256: events/s / bare ASGI", ("replay", "by_readers", "256", "ratio"), 0.6, True, "×"),
    Goal("memory per idle open stream", ("memory", "dual", "kib_per_stream"), 20.0, False, " KiB"),
    Goal("conformance suite wall time", ("suite", "seconds"), 30.0, False, " s"),
    Goal(
        "Redis registry: worker CPU per token over in-process",
        ("redis", "added_worker_cpu_us_per_token"),
        20.0,
        False,
        " µs",
    ),
    Goal("Redis registry: latency per token p50 over in-process", ("redis", "added_latency_p50_ms"), 0.3, False, " ms"),
    Goal("Redis registry, 1 replica: 16-token jobs/s / in-process", ("pool", "jobs_per_s_ratio"), 0.9, True, "×"),
    Goal(
        "gateway, 1 stream: tokens/s / direct",
        ("gateway", "by_concurrency", "1", "tokens_per_s_ratio"),
        0.95,
        True,
        "×",
    ),
    Goal(
        "gateway, 16 streams: tokens/s / direct",
        ("gateway", "by_concurrency", "16", "tokens_per_s_ratio"),
        0.95,
        True,
        "×",
    ),
    Goal(
        "gateway, 1 stream: TTFT p50 over direct",
        ("gateway", "by_concurrency", "1", "ttft_p50_overhead_ms"),
        1.0,
        False,
        " ms",
    ),
)

_MEMORY_GOAL_KIB = 20.0

#: a client process busier than this was (close to) the limit, not the server
CLIENT_BOUND = 0.9


def _client_bound(row: dict[str, Any]) -> str:
    busy = [side["busy"]["max"] for side in row.values() if isinstance(side, dict) and "busy" in side]
    return f" ⚠ client-bound ({max(busy):.0%} CPU)" if busy and max(busy) >= CLIENT_BOUND else ""


def _spread(stat: dict[str, float], fmt: str = "{:.0f}") -> str:
    return f"{fmt.format(stat['median'])} ({fmt.format(stat['min'])}–{fmt.format(stat['max'])})"


def _number(row: dict[str, Any], key: str, fmt: str) -> str:
    """A same-run figure; after ``--repeat`` with the runs' min-max."""
    text = fmt.format(row[key])
    spread = row.get("spread", {}).get(key)
    if spread and spread.get("runs", 1) > 1:
        text += f" ({fmt.format(spread['min'])}–{fmt.format(spread['max'])})"
    return text


Line = Callable[[dict[str, Any]], list[str]]


def _handoff(results: dict[str, Any]) -> list[str]:
    lines = []
    section = results["handoff"]
    for concurrency, row in section["by_concurrency"].items():
        dual, legacy = row["dual"], row["legacy"]
        lines += [
            f"| hand-off c={concurrency}: TTFT p50 | {_spread(dual['p50'], '{:.2f}')} ms | "
            f"legacy {_spread(legacy['p50'], '{:.2f}')} ms | {_number(row, 'ttft_p50_overhead_ms', '{:+.2f}')} ms "
            f"({_number(row, 'ttft_p50_ratio', '{:.2f}')}×) |",
            f"| hand-off c={concurrency}: TTFT p99 | {_spread(dual['p99'], '{:.2f}')} ms | "
            f"legacy {_spread(legacy['p99'], '{:.2f}')} ms | "
            f"{dual['p99']['median'] - legacy['p99']['median']:+.2f} ms |",
            f"| hand-off c={concurrency}: jobs/s ({section['tokens_per_job']} tokens) | "
            f"{_spread(dual['jobs_per_s'])} | legacy {_spread(legacy['jobs_per_s'])} | "
            f"{_number(row, 'jobs_per_s_ratio', '{:.2f}')}×{_client_bound(row)} |",
            f"| hand-off c={concurrency}: server CPU per job | "
            f"{_spread(dual['server_cpu_ms_per_job'], '{:.2f}')} ms | "
            f"legacy {_spread(legacy['server_cpu_ms_per_job'], '{:.2f}')} ms | "
            + (f"{_number(row, 'server_cpu_ratio', '{:.2f}')}× " if "server_cpu_ratio" in row else "")
            + f"({dual['server_cpu_ms_per_job']['median'] - legacy['server_cpu_ms_per_job']['median']:+.2f} ms) |",
        ]
    return lines


def _live(results: dict[str, Any]) -> list[str]:
    lines = []
    for streams, row in results["live"].items():
        lines += [
            f"| live stream ×{streams} ({row['tokens_per_stream']} tokens each): events/s | "
            f"{_spread(row['dual']['events_per_s'])} | bare ASGI {_spread(row['bare']['events_per_s'])} | "
            f"{_number(row, 'ratio', '{:.2f}')}×{_client_bound(row)} |",
            f"| live stream ×{streams}: server CPU per event | "
            f"{_spread(row['dual']['server_cpu_us_per_event'], '{:.1f}')} µs | "
            f"bare ASGI {_spread(row['bare']['server_cpu_us_per_event'], '{:.1f}')} µs | "
            f"{_number(row, 'cpu_ratio', '{:.2f}')}× ({_number(row, 'added_cpu_us_per_event', '{:+.1f}')} µs) |",
        ]
    return lines


def _replay(results: dict[str, Any]) -> list[str]:
    return [
        f"| replay ×{readers} readers ({results['replay']['tokens']} tokens): events/s | "
        f"{_spread(row['dual']['events_per_s'])} | bare ASGI {_spread(row['bare']['events_per_s'])} | "
        f"{_number(row, 'ratio', '{:.2f}')}×{_client_bound(row)} |"
        for readers, row in results["replay"]["by_readers"].items()
    ]


def _memory(results: dict[str, Any]) -> list[str]:
    row = results["memory"]
    return [
        f"| memory per idle open stream ({row['streams']} streams of queued jobs) | "
        f"{_spread(row['dual']['kib_per_stream'], '{:.1f}')} KiB | "
        f"bare ASGI {_spread(row['bare']['kib_per_stream'], '{:.1f}')} KiB | {_number(row, 'ratio', '{:.2f}')}× |"
    ]


def _suite(results: dict[str, Any]) -> list[str]:
    row = results["suite"]
    kind = "with fuzzing" if row["fuzz"] else "without fuzzing"
    failed = row.get("failed_checks", [])
    verdict = "passed" if row["passed"] else f"FAILED: {'; '.join(failed) or 'see bench.json'}"
    return [
        f"| conformance suite wall time ({kind}; {verdict}) | {_spread(row['seconds'], '{:.1f}')} s | "
        f"goal {row['goal_s']:.0f} s | {_number(row, 'ratio', '{:.2f}')}× |"
    ]


def _client(results: dict[str, Any]) -> list[str]:
    row = results["client"]
    ref, lean = row["reference"], row["lean"]
    return [
        f"| reference client: client CPU per job ({row['tokens_per_job']} tokens) | "
        f"{_spread(ref['job_cpu_us'])} µs | lean load generator {_spread(lean['job_cpu_us'])} µs | "
        f"{_number(row, 'job_cpu_ratio', '{:.2f}')}× |",
        f"| reference client: client CPU of the submit | {_spread(ref['submit_cpu_us'])} µs | "
        f"lean {_spread(lean['submit_cpu_us'])} µs | – |",
        f"| reference client: client CPU of the second request (stream) | {_spread(ref['stream_cpu_us'])} µs | "
        f"lean {_spread(lean['stream_cpu_us'])} µs | {_number(row, 'stream_cpu_ratio', '{:.2f}')}× "
        f"({_number(row, 'added_stream_cpu_us', '{:+.0f}')} µs) |",
        f"| reference client: TTFT p50 | {_spread(ref['ttft_p50_ms'], '{:.2f}')} ms | "
        f"lean {_spread(lean['ttft_p50_ms'], '{:.2f}')} ms | – |",
        f"| reference client: worker CPU per job (must not depend on the client) | "
        f"{_spread(ref['server_cpu_us'])} µs | lean {_spread(lean['server_cpu_us'])} µs | – |",
    ]


def _pool(results: dict[str, Any]) -> list[str]:
    row = results["pool"]
    lines = []
    base = row["in-process"]
    for name in ("in-process", "redis x1", "redis x2"):
        config = row[name]
        ratio = config["tokens_per_s"]["median"] / base["tokens_per_s"]["median"]
        lines += [
            f"| pool {name}: tokens/s ({row['users']} clients, {row['tokens_per_job']}-token jobs) | "
            f"{_spread(config['tokens_per_s'])} | in-process {base['tokens_per_s']['median']:.0f} | {ratio:.2f}× |",
            f"| pool {name}: TTFT p50 / p99 | {_spread(config['ttft_p50_ms'], '{:.2f}')} / "
            f"{_spread(config['ttft_p99_ms'], '{:.2f}')} ms | – | – |",
            f"| pool {name}: CPU per job, workers / Redis | {_spread(config['worker_cpu_ms_per_job'], '{:.2f}')} / "
            f"{_spread(config['redis_cpu_ms_per_job'], '{:.2f}')} ms | – | – |",
        ]
    lines += [
        f"| pool: worker CPU per token, one {row['stream_tokens']}-token stream | "
        f"redis {_spread(row['redis x1']['stream_cpu_us_per_token'], '{:.1f}')} µs | "
        f"in-process {_spread(base['stream_cpu_us_per_token'], '{:.1f}')} µs | "
        f"{_number(row, 'added_stream_cpu_us_per_token', '{:+.1f}')} µs |",
        f"| pool: scaling efficiency of two replicas (tokens/s ÷ 2 × one replica) | "
        f"{_number(row, 'scaling_efficiency', '{:.2f}')} | 1.00 = linear | – |",
    ]
    return lines


def _redis(results: dict[str, Any]) -> list[str]:
    row = results["redis"]
    local = row["in-process"]
    lines = []
    for name in ("redis", "redis, reader on another replica"):
        if name not in row:
            continue
        remote = row[name]
        where = "reader on the owner's replica" if name == "redis" else "reader on another replica"
        added = (
            f"{_number(row, 'added_worker_cpu_us_per_token', '{:+.1f}')} µs"
            if name == "redis"
            else f"{remote['worker_cpu_us_per_token']['median'] - local['worker_cpu_us_per_token']['median']:+.1f} µs"
        )
        lines += [
            f"| Redis registry ({where}): worker CPU per token ({row['tokens']} tokens, no HTTP) | "
            f"{_spread(remote['worker_cpu_us_per_token'], '{:.1f}')} µs | "
            f"in-process {_spread(local['worker_cpu_us_per_token'], '{:.1f}')} µs | {added} |",
            f"| Redis registry ({where}): Redis CPU per token | "
            f"{_spread(remote['redis_cpu_us_per_token'], '{:.1f}')} µs | – | – |",
            f"| Redis registry ({where}): latency per token p50 / p99 | "
            f"{_spread(remote['latency_p50_ms'], '{:.3f}')} / {_spread(remote['latency_p99_ms'], '{:.3f}')} ms | "
            f"in-process {_spread(local['latency_p50_ms'], '{:.3f}')} / "
            f"{_spread(local['latency_p99_ms'], '{:.3f}')} ms | "
            f"{remote['latency_p50_ms']['median'] - local['latency_p50_ms']['median']:+.3f} ms p50 |",
        ]
    return lines


def _ceiling(results: dict[str, Any]) -> list[str]:
    return [
        f"| load generator ceiling (1 client process, replay) | {_spread(results['ceiling']['events_per_s'])} "
        "events/s | – | what one client process can take in |"
    ]


SECTIONS: dict[str, Line] = {
    "ceiling": _ceiling,
    "handoff": _handoff,
    "live": _live,
    "replay": _replay,
    "memory": _memory,
    "suite": _suite,
    "client": _client,
    "pool": _pool,
    "redis": _redis,
}


#: top-level keys of the results that are not a scenario's section
_NOT_SCENARIOS = frozenset(("meta", "failed", "runs", "client_busy_max", "soak"))
#: scenarios whose module renders its own table
_OWN_TABLES = frozenset(("gateway",))


def goal_lines(results: dict[str, Any]) -> list[str]:
    lines = ["| goal | figure | bound | verdict |", "|---|---|---|---|"]
    for goal in GOALS:
        found = goal.value(results)
        if found is None:
            continue
        figure, spread = found
        text = f"{figure:.2f}{goal.unit}"
        if spread is not None:
            text += f" ({spread['min']:.2f}–{spread['max']:.2f})"
        lines.append(f"| {goal.label} | {text} | {goal.describe()} | {'met ✔' if goal.met(figure) else 'missed ✘'} |")
    return lines if len(lines) > 2 else []


def markdown(results: dict[str, Any]) -> str:
    meta = results["meta"]
    runs = meta.get("runs", 1)
    how = (
        f"median of **{runs} runs** (min–max of the runs' figures), each of {meta['trials']} interleaved trials"
        if runs > 1
        else f"{meta['trials']} interleaved trials per figure (median, min–max)"
    )
    loads = meta.get("load_averages") or [[meta.get("load_average_start"), meta.get("load_average_end")]]
    load_text = ", ".join(
        f"{start:.1f}→{end:.1f}" if isinstance(start, float) and isinstance(end, float) else "?" for start, end in loads
    )
    lines = [
        f"Mode **{meta['mode']}**, {how}; {meta['machine']}; load average {load_text}; {meta['when']}.",
        "",
        "| scenario | dual-call worker | baseline | ratio / difference |",
        "|---|---|---|---|",
    ]
    for name, section in SECTIONS.items():
        if name in results:
            lines += section(results)
    for name in results:
        if name not in SECTIONS and name not in _NOT_SCENARIOS and name not in _OWN_TABLES:
            lines.append(f"| {name} | results in bench.json | – | – |")
    if "gateway" in results:
        from benchmarks import gateway

        lines += ["", gateway.markdown(results["gateway"]).rstrip("\n")]
    goals = goal_lines(results)
    if goals:
        lines += ["", *goals]
    failed = results.get("failed", {})
    if failed:
        lines += ["", "**Scenarios that failed** (their figures are missing above):", ""]
        for name, why in failed.items():
            lines.append(f"- `{name}`: {why['error']}" + (f" (at {why['where']})" if why.get("where") else ""))
    busy = results.get("client_busy_max")
    if busy is not None:
        lines += [
            "",
            f"Busiest client process: {busy:.0%} CPU of its wall time; rows marked client-bound had a client "
            f"process at ≥ {CLIENT_BOUND:.0%} CPU, so the load generator, not the server, set their pace.",
        ]
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, 2, figsize=(11, 8))
    figure.suptitle(f"dualcall worker vs baselines ({results['meta']['mode']} mode, median with min–max)")

    def bars(axis: Any, labels: list[str], series: dict[str, list[dict[str, float]]], ylabel: str, title: str) -> None:
        width = 0.8 / len(series)
        for offset, (name, stats) in enumerate(series.items()):
            xs = [index + offset * width for index in range(len(labels))]
            medians = [stat["median"] for stat in stats]
            errors = [[m - stat["min"] for m, stat in zip(medians, stats, strict=True)],
                      [stat["max"] - m for m, stat in zip(medians, stats, strict=True)]]  # fmt: skip
            axis.bar(xs, medians, width, yerr=errors, capsize=3, label=name)
        axis.set_xticks([index + width * (len(series) - 1) / 2 for index in range(len(labels))], labels)
        axis.set_ylabel(ylabel)
        axis.set_title(title)
        axis.legend()

    if "handoff" in results:
        rows = results["handoff"]["by_concurrency"]
        bars(
            axes[0][0],
            [f"c={c}" for c in rows],
            {
                "dual-call": [r["dual"]["p50"] for r in rows.values()],
                "legacy": [r["legacy"]["p50"] for r in rows.values()],
            },
            "ms (log scale)",
            "hand-off: time to first token, p50",
        )
        axes[0][0].set_yscale("log")
    if "live" in results:
        rows = results["live"]
        bars(
            axes[0][1],
            [f"{s} stream{'s' if s != '1' else ''}" for s in rows],
            {
                "dual-call worker": [r["dual"]["events_per_s"] for r in rows.values()],
                "bare ASGI": [r["bare"]["events_per_s"] for r in rows.values()],
            },
            "events/s",
            "live streaming",
        )
    if "replay" in results:
        rows = results["replay"]["by_readers"]
        axis = axes[1][0]
        readers = [int(r) for r in rows]
        for name, key in (("dual-call worker", "dual"), ("bare ASGI", "bare")):
            medians = [row[key]["events_per_s"]["median"] for row in rows.values()]
            low = [m - row[key]["events_per_s"]["min"] for m, row in zip(medians, rows.values(), strict=True)]
            high = [row[key]["events_per_s"]["max"] - m for m, row in zip(medians, rows.values(), strict=True)]
            axis.errorbar(readers, medians, yerr=[low, high], marker="o", capsize=3, label=name)
        axis.set_xscale("log", base=2)
        axis.set_xlabel("readers of one finished job")
        axis.set_ylabel("events/s (all readers)")
        axis.set_title("replay fan-out")
        axis.legend()
    if "memory" in results:
        row = results["memory"]
        bars(
            axes[1][1],
            [f"{row['streams']} idle streams"],
            {"dual-call worker": [row["dual"]["kib_per_stream"]], "bare ASGI": [row["bare"]["kib_per_stream"]]},
            "KiB RSS per open stream",
            "memory per idle open stream",
        )
        axes[1][1].axhline(_MEMORY_GOAL_KIB, color="grey", linestyle="--", linewidth=1)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)
    plt.close(figure)
