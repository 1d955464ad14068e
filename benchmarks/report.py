"""Results as a Markdown table and a PNG plot (matplotlib, from the ``bench`` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

GOALS = {
    "live_ratio": 0.8,
    "ttft_overhead_ms": 0.5,
    "kib_per_stream": 50.0,
}


#: a client process busier than this was (close to) the limit, not the server
CLIENT_BOUND = 0.9


def _client_bound(row: dict[str, Any]) -> str:
    busy = max(side["busy"]["max"] for side in row.values() if isinstance(side, dict) and "busy" in side)
    return f" ⚠ client-bound ({busy:.0%} CPU)" if busy >= CLIENT_BOUND else ""


def _spread(stat: dict[str, float], fmt: str = "{:.0f}") -> str:
    return f"{fmt.format(stat['median'])} ({fmt.format(stat['min'])}–{fmt.format(stat['max'])})"


def markdown(results: dict[str, Any]) -> str:
    meta = results["meta"]
    lines = [
        f"Mode **{meta['mode']}**, {meta['trials']} interleaved trials per figure (median, min–max); "
        f"{meta['machine']}; {meta['when']}.",
        "",
        "| scenario | dual-call worker | baseline | ratio / difference | goal |",
        "|---|---|---|---|---|",
    ]
    if "ceiling" in results:
        ceiling = results["ceiling"]["events_per_s"]
        lines.append(
            f"| load generator ceiling (1 client process, replay) | {_spread(ceiling)} events/s | – | – | "
            "what one client process can take in |"
        )
    if "handoff" in results:
        for concurrency, row in results["handoff"]["by_concurrency"].items():
            dual, legacy = row["dual"], row["legacy"]
            ok = "✔" if concurrency != "1" or row["ttft_p50_overhead_ms"] <= GOALS["ttft_overhead_ms"] else "✘"
            goal = f"≤ +{GOALS['ttft_overhead_ms']} ms {ok}" if concurrency == "1" else "–"
            lines.append(
                f"| hand-off c={concurrency}: TTFT p50 | {_spread(dual['p50'], '{:.2f}')} ms | "
                f"legacy {_spread(legacy['p50'], '{:.2f}')} ms | {row['ttft_p50_overhead_ms']:+.2f} ms "
                f"({row['ttft_p50_ratio']:.2f}×) | {goal} |"
            )
            lines.append(
                f"| hand-off c={concurrency}: TTFT p99 | {_spread(dual['p99'], '{:.2f}')} ms | "
                f"legacy {_spread(legacy['p99'], '{:.2f}')} ms | "
                f"{dual['p99']['median'] - legacy['p99']['median']:+.2f} ms | – |"
            )
            lines.append(
                f"| hand-off c={concurrency}: jobs/s ({results['handoff']['tokens_per_job']} tokens) | "
                f"{_spread(dual['jobs_per_s'])} | legacy {_spread(legacy['jobs_per_s'])} | "
                f"{row['jobs_per_s_ratio']:.2f}×{_client_bound(row)} | – |"
            )
            lines.append(
                f"| hand-off c={concurrency}: server CPU per job | "
                f"{_spread(dual['server_cpu_ms_per_job'], '{:.2f}')} ms | "
                f"legacy {_spread(legacy['server_cpu_ms_per_job'], '{:.2f}')} ms | "
                f"{dual['server_cpu_ms_per_job']['median'] - legacy['server_cpu_ms_per_job']['median']:+.2f} ms | – |"
            )
    if "live" in results:
        for streams, row in results["live"].items():
            ok = "✔" if row["ratio"] >= GOALS["live_ratio"] else "✘"
            goal = f"≥ {GOALS['live_ratio']}× {ok}" if streams == "1" else "–"
            lines.append(
                f"| live stream ×{streams} ({row['tokens_per_stream']} tokens each): events/s | "
                f"{_spread(row['dual']['events_per_s'])} | bare ASGI {_spread(row['bare']['events_per_s'])} | "
                f"{row['ratio']:.2f}×{_client_bound(row)} | {goal} |"
            )
            lines.append(
                f"| live stream ×{streams}: server CPU per event | "
                f"{_spread(row['dual']['server_cpu_us_per_event'], '{:.1f}')} µs | "
                f"bare ASGI {_spread(row['bare']['server_cpu_us_per_event'], '{:.1f}')} µs | "
                f"{row['cpu_ratio']:.2f}× (+{row['added_cpu_us_per_event']:.1f} µs) | – |"
            )
    if "replay" in results:
        for readers, row in results["replay"]["by_readers"].items():
            lines.append(
                f"| replay ×{readers} readers ({results['replay']['tokens']} tokens): events/s | "
                f"{_spread(row['dual']['events_per_s'])} | bare ASGI {_spread(row['bare']['events_per_s'])} | "
                f"{row['ratio']:.2f}×{_client_bound(row)} | – |"
            )
    if "memory" in results:
        row = results["memory"]
        ok = "✔" if row["dual"]["kib_per_stream"]["median"] <= GOALS["kib_per_stream"] else "✘"
        lines.append(
            f"| memory per idle open stream ({row['streams']} streams of queued jobs) | "
            f"{_spread(row['dual']['kib_per_stream'], '{:.1f}')} KiB | "
            f"bare ASGI {_spread(row['bare']['kib_per_stream'], '{:.1f}')} KiB | {row['ratio']:.2f}× | "
            f"≤ {GOALS['kib_per_stream']:.0f} KiB {ok} |"
        )
    if "suite" in results:
        row = results["suite"]
        kind = "with fuzzing" if row["fuzz"] else "without fuzzing"
        verdict = "passed" if row["passed"] else "FAILED"
        lines.append(
            f"| conformance suite wall time ({kind}; {verdict}) | {_spread(row['seconds'], '{:.1f}')} s | "
            f"goal {row['goal_s']:.0f} s | {row['ratio']:.2f}× | < {row['goal_s']:.0f} s |"
        )
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
        axes[1][1].axhline(GOALS["kib_per_stream"], color="grey", linestyle="--", linewidth=1)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)
    plt.close(figure)
