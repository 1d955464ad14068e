"""Rolling restarts of a pool behind nginx under >= 32 concurrent streams: nothing lost, nothing doubled.

Each replica is stopped and started again, one after another, while 32 reference clients stream
jobs through nginx. SIGTERM drains: the replica refuses new work with 503 (nginx sends it
elsewhere), its running jobs finish, its readers resume on the other replica; every job completes.
SIGKILL cannot drain: the killed replica's jobs end with `worker_lost` (declared by a reader on
the surviving replica), every other job completes, and no reader hangs.
"""

from __future__ import annotations

import asyncio
import re
import signal

from rollout import Figures, StartPool, rolling_restart

STREAMS = 32
MAX_TOKENS = 40  # 20 ms per token: ~0.8 s per job
_UPSTREAM_STATUS = re.compile(r"upstream_status=(.*?) time=")


def upstream_503s(access_log: str) -> dict[str, int]:
    """Requests a replica answered 503 (a draining one), by method, from nginx's access log."""
    counts = {"POST": 0, "GET": 0}
    for line in access_log.splitlines():
        tried = _UPSTREAM_STATUS.search(line)  # one status per replica tried: "503, 202"
        if tried and "503" in tried.group(1).split(", "):
            counts["POST" if '"POST ' in line else "GET"] += 1
    return counts


def _run(start_pool: StartPool, sig: signal.Signals) -> tuple[str, Figures]:
    pool = start_pool(2)
    notes: list[str] = []
    result = asyncio.run(
        rolling_restart(
            pool.url,
            pool.replicas,
            sig,
            streams=STREAMS,
            max_tokens=MAX_TOKENS,
            stop_timeout_s=20.0,
            on_notes=notes.extend,
        )
    )
    refused = upstream_503s(pool.nginx.access_log())
    report = (
        f"{sig.name}: {result.line()}; nginx saw 503 from a replica on {refused['POST']} submits and "
        f"{refused['GET']} other requests (retried on the other replica)\n" + "\n".join(notes)
    )
    print(report)
    return report, result


def test_sigterm_rolling_restart_completes_every_job(start_pool: StartPool) -> None:
    report, result = _run(start_pool, signal.SIGTERM)
    assert result.jobs >= STREAMS * 2, report
    assert result.client_gave_up == 0, report
    assert result.completed == result.jobs, report
    assert result.lost_tokens == 0 and result.duplicate_tokens == 0, report
    assert result.wrong_text_jobs == 0 and result.event_id_breaks == 0, report


def test_sigkill_rolling_restart_loses_no_token(start_pool: StartPool) -> None:
    report, result = _run(start_pool, signal.SIGKILL)
    assert result.jobs >= STREAMS * 2, report
    assert result.client_gave_up == 0, report
    assert set(result.ended_by_code) <= {"worker_lost"}, report
    assert result.completed + sum(result.ended_by_code.values()) == result.jobs, report
    assert result.lost_tokens == 0 and result.duplicate_tokens == 0, report
    assert result.wrong_text_jobs == 0 and result.event_id_breaks == 0, report
