"""The job registry: the backend interface (`api`), the one job lifecycle (`lifecycle`), and its backends.

* `workers.registry.in_process` — the default: every job in this process's memory;
* `workers.registry.redis_backend` — ``--registry redis://...``: the jobs of a pool of replicas on Redis
  Streams (needs the ``redis`` extra; imported only when chosen).

One backend never imports another; both drive `workers.registry.lifecycle.Lifecycle`.
"""

from __future__ import annotations

from collections.abc import Callable

from workers.config import WorkerSettings
from workers.engines.base import Engine
from workers.metrics import JobMetrics
from workers.registry.api import (
    SYSTEM_CLOCK,
    Clock,
    Draining,
    FinalEventDelivered,
    Idempotency,
    IdempotencyKeyReused,
    JobRecord,
    QueueFull,
    RegistryBackend,
    RegistryUnavailable,
    UnknownJob,
    new_job_id,
)
from workers.sse import SSE_ENCODER, EventEncoder

__all__ = [
    "SYSTEM_CLOCK",
    "Clock",
    "Draining",
    "FinalEventDelivered",
    "Idempotency",
    "IdempotencyKeyReused",
    "JobRecord",
    "QueueFull",
    "RegistryBackend",
    "RegistryUnavailable",
    "UnknownJob",
    "create_registry",
    "new_job_id",
]


def create_registry(
    engine: Engine,
    settings: WorkerSettings,
    metrics: JobMetrics,
    *,
    encoder: EventEncoder = SSE_ENCODER,
    clock: Clock = SYSTEM_CLOCK,
    new_id: Callable[[], str] = new_job_id,
) -> RegistryBackend:
    """The backend ``settings.registry_url`` names: None is in-process, ``redis://...`` is Redis Streams."""
    if settings.registry_url is None:
        from workers.registry.in_process import InProcessRegistry

        return InProcessRegistry(engine, settings, metrics, encoder=encoder, clock=clock, new_id=new_id)
    from workers.registry.redis_backend import RedisRegistry  # the `redis` extra is only needed here

    return RedisRegistry(engine, settings, metrics, settings.registry_url, encoder=encoder, clock=clock, new_id=new_id)
