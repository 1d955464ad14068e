"""Prometheus text exposition of the registry's counters and gauges (no client library needed)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from workers.registry_api import RegistryBackend

_HELP = {
    "jobs_submitted": "Jobs accepted by POST /v1/inference.",
    "jobs_completed": "Jobs that ended with an end event.",
    "jobs_failed": "Jobs that ended with an error event.",
    "jobs_cancelled": "Jobs cancelled by DELETE.",
    "jobs_reclaimed": "Jobs reclaimed by the TTL sweeper.",
    "jobs_rejected_queue_full": "Submissions answered 503 because the queue was full.",
    "stream_readers": "Stream readers attached since start.",
    "jobs_lost_declared": "Jobs of a silent replica this replica ended with worker_lost (Redis registry).",
}


def render_metrics(registry: RegistryBackend) -> str:
    lines: list[str] = []
    for name, value in registry.counters.items():
        metric = f"dualcall_{name}_total"
        lines += [f"# HELP {metric} {_HELP.get(name, name)}", f"# TYPE {metric} counter", f"{metric} {value}"]
    gauges = {
        "dualcall_jobs_active": (registry.active, "Jobs generating now."),
        "dualcall_jobs_queued": (registry.queued, "Jobs waiting for a generation slot."),
        "dualcall_jobs_retained": (len(registry), "Jobs held for streaming or replay."),
        "dualcall_engine_up": (int(registry.engine.health().ok), "1 while the engine can serve."),
    }
    for metric, (value, help_text) in gauges.items():
        lines += [f"# HELP {metric} {help_text}", f"# TYPE {metric} gauge", f"{metric} {value}"]
    return "\n".join(lines) + "\n"
