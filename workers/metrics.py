"""Prometheus text exposition of the registry's counters and gauges (no client library needed)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from workers.registry import JobRegistry

_HELP = {
    "jobs_submitted": "Jobs accepted by POST /v1/inference.",
    "jobs_completed": "Jobs that ended with an end event.",
    "jobs_failed": "Jobs that ended with an error event.",
    "jobs_cancelled": "Jobs cancelled by DELETE.",
    "jobs_reclaimed": "Jobs reclaimed by the TTL sweeper.",
    "jobs_rejected_queue_full": "Submissions answered 503 because the queue was full.",
    "stream_readers": "Stream readers attached since start.",
}


def render_metrics(registry: JobRegistry) -> str:
    lines: list[str] = []
    for name, value in registry.counters.items():
        metric = f"dualcall_{name}_total"
        lines += [f"# HELP {metric} {_HELP.get(name, name)}", f"# TYPE {metric} counter", f"{metric} {value}"]
    gauges = {
        "dualcall_jobs_active": (registry.active, "Jobs generating now."),
        "dualcall_jobs_queued": (registry.queued, "Jobs waiting for a generation slot."),
        "dualcall_jobs_retained": (len(registry), "Jobs held for streaming or replay."),
        "dualcall_stream_readers_open": (registry.open_readers, "Stream readers attached now."),
        "dualcall_event_loop_tasks": (_tasks(), "asyncio tasks alive (jobs, connections, sweeper): a leak grows it."),
        "dualcall_engine_up": (int(registry.engine.health().ok), "1 while the engine can serve."),
    }
    for metric, (value, help_text) in gauges.items():
        lines += [f"# HELP {metric} {help_text}", f"# TYPE {metric} gauge", f"{metric} {value}"]
    return "\n".join(lines) + "\n"


def _tasks() -> int:
    try:
        return len(asyncio.all_tasks())
    except RuntimeError:  # no running loop: rendered outside the server
        return 0
