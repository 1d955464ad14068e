"""Two worker processes share one real Redis: any replica serves any job, and failures end streams.

Replica A generates (it accepted the POST); replica B serves the stream, the status and the
DELETE. A third replica is SIGKILLed mid-generation: B's readers must get `worker_lost`, then
`[DONE]`, instead of hanging.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import httpx
import pytest
from helpers import events_of, submit
from pooltools import Pool, StartReplica
from workerproc import WorkerProcess

from conformance.sse import SSEEvent, SSEParser

pytestmark = pytest.mark.slow

#: bound of every read: far above any honest duration here, so a hang fails instead of blocking CI
READ_TIMEOUT_S = 20.0


def job_body(max_tokens: int, prompt: str = "redis pool") -> dict[str, Any]:
    return {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0}


def data(event: SSEEvent) -> Any:
    return json.loads(event.data)


def assert_complete(events: list[SSEEvent], job_id: str) -> None:
    """started first, ids 1..n without gaps, one end or error, then [DONE]."""
    assert events[0].event == "started" and data(events[0])["job_id"] == job_id
    assert [event.id for event in events[:-1]] == [str(n) for n in range(1, len(events))]
    assert events[-1].data == "[DONE]" and not events[-1].has_id_field
    kinds = [event.event for event in events[:-1]]
    assert kinds.count("end") + kinds.count("error") == 1
    assert events[-2].event in ("end", "error")


class Reader(threading.Thread):
    """Reads a stream in the background; `events` grows as blocks arrive."""

    def __init__(self, url: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.headers = headers or {}
        self.events: list[SSEEvent] = []
        self.status = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        parser = SSEParser(strict=True)
        try:
            with httpx.stream("GET", self.url, headers=self.headers, timeout=READ_TIMEOUT_S) as response:
                self.status = response.status_code
                for chunk in response.iter_raw():
                    self.events += parser.feed(chunk)
            self.events += parser.close()
        except BaseException as exc:  # reported by the test
            self.error = exc

    def tokens(self) -> int:
        return sum(1 for event in self.events if event.event == "token")

    def wait_for_tokens(self, count: int) -> None:
        deadline = time.monotonic() + READ_TIMEOUT_S
        while self.tokens() < count:
            assert self.is_alive() or self.tokens() >= count, f"stream ended early: {self.events!r}"
            assert time.monotonic() < deadline, "no tokens arrived"
            time.sleep(0.01)

    def finish(self) -> list[SSEEvent]:
        self.join(READ_TIMEOUT_S)
        assert not self.is_alive(), "the stream hung"
        assert self.error is None, self.error
        assert self.status == 200
        return self.events


def test_submit_to_a_stream_from_b(pool: Pool) -> None:
    job = submit(pool.a.url, job_body(40))
    status = httpx.get(pool.b.url + job["status_url"], timeout=10)
    assert status.status_code == 200 and status.json()["job_id"] == job["job_id"]

    from_b = httpx.get(pool.b.url + job["sse_url"], timeout=READ_TIMEOUT_S)
    assert from_b.status_code == 200 and from_b.headers["content-type"].startswith("text/event-stream")
    events = events_of(from_b.content)
    assert_complete(events, job["job_id"])
    assert data(events[-2]) == {"tokens_out": 40, "stop_reason": "max_tokens"}

    # a replay from the generating replica is the same bytes, and so is the stored log
    assert httpx.get(pool.a.url + job["sse_url"], timeout=READ_TIMEOUT_S).content == from_b.content
    with pool.server.client(pool.db) as client:
        stored = client.xrange(f"dualcall:events:{job['job_id']}")
    assert b"".join(fields[b"b"] for _, fields in stored) == from_b.content
    assert [entry_id for entry_id, _ in stored] == [f"0-{n}".encode() for n in range(1, len(stored) + 1)]

    final = httpx.get(pool.b.url + job["status_url"], timeout=10).json()
    assert (final["state"], final["tokens_out"], final["stop_reason"]) == ("completed", 40, "max_tokens")
    # resuming after the final event is 204 on either replica
    last = events[-2].id
    assert last is not None
    for replica in (pool.a, pool.b):
        after_end = httpx.get(replica.url + job["sse_url"], headers={"Last-Event-ID": last}, timeout=10)
        assert after_end.status_code == 204


def test_resume_on_b_after_cutting_the_reader_on_a(pool: Pool) -> None:
    job = submit(pool.a.url, job_body(300))
    parser = SSEParser(strict=True)
    head: list[SSEEvent] = []
    with httpx.stream("GET", pool.a.url + job["sse_url"], timeout=READ_TIMEOUT_S) as response:
        for chunk in response.iter_raw():
            head += parser.feed(chunk)
            if len(head) >= 5:
                break  # cut the connection mid-stream
    last_seen = head[-1].id
    assert last_seen is not None

    resumed = httpx.get(pool.b.url + job["sse_url"], headers={"Last-Event-ID": last_seen}, timeout=READ_TIMEOUT_S)
    assert resumed.status_code == 200
    tail = events_of(resumed.content)
    assert tail[0].id == str(int(last_seen) + 1)
    assert_complete(head + tail, job["job_id"])
    full = events_of(httpx.get(pool.b.url + job["sse_url"], timeout=READ_TIMEOUT_S).content)
    assert [(e.id, e.event, e.data) for e in head + tail] == [(e.id, e.event, e.data) for e in full]


def test_delete_on_b_stops_the_generation_on_a(pool: Pool, slow_replica: WorkerProcess) -> None:
    slow_a = slow_replica
    job = submit(slow_a.url, job_body(500))  # 10 s of generation if nothing stops it
    reader = Reader(slow_a.url + job["sse_url"])
    reader.start()
    reader.wait_for_tokens(2)

    cancelled = httpx.delete(pool.b.url + job["status_url"], timeout=10)
    assert cancelled.status_code == 202, cancelled.text
    body = cancelled.json()
    assert (body["state"], body["stop_reason"]) == ("cancelled", "cancelled")
    assert body["tokens_out"] < 500

    events = reader.finish()
    assert_complete(events, job["job_id"])
    assert data(events[-2])["stop_reason"] == "cancelled"
    for replica in (slow_a, pool.a, pool.b):
        assert httpx.get(replica.url + job["status_url"], timeout=10).status_code == 404
    with pool.server.client(pool.db) as client:  # a deleted job's keys go soon (docs/scaling.md)
        assert 0 < client.pttl(f"dualcall:job:{job['job_id']}") <= 10_000
        assert 0 < client.pttl(f"dualcall:events:{job['job_id']}") <= 20_000
    metrics = httpx.get(slow_a.url + "/metrics", timeout=10).text
    assert "dualcall_jobs_cancelled_total 0" not in metrics  # the generating replica did the cancelling


def test_killed_replica_leaves_readers_worker_lost_then_done(pool: Pool, start_replica: StartReplica) -> None:
    doomed = start_replica("--registry", pool.registry, "--token-delay-ms", "20")
    streamed = submit(doomed.url, job_body(500))
    unread = submit(doomed.url, job_body(500))
    readers = [Reader(replica.url + streamed["sse_url"]) for replica in (pool.b, pool.a)]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.wait_for_tokens(3)

    assert all(reader.is_alive() for reader in readers)  # the streams are still live when the replica dies
    assert doomed.proc is not None
    doomed.proc.kill()  # SIGKILL: no shutdown handler runs, nothing is written to Redis
    doomed.proc.wait(10)

    for reader in readers:
        # waits for the end the heartbeat timeout declares; finish() fails on a stream that never ends
        events = reader.finish()
        assert_complete(events, streamed["job_id"])
        assert events[-2].event == "error" and data(events[-2])["code"] == "worker_lost", events[-3:]
    status = httpx.get(pool.b.url + streamed["status_url"], timeout=10).json()
    assert status["state"] == "failed" and status["error"]["code"] == "worker_lost"
    # the declaration is in the log: a late reader replays the same end
    late = events_of(httpx.get(pool.a.url + streamed["sse_url"], timeout=READ_TIMEOUT_S).content)
    assert [(e.id, e.data) for e in late[-2:]] == [(e.id, e.data) for e in readers[0].events[-2:]]

    # DELETE of a dead replica's job that nobody reads: B ends it itself once the heartbeat is gone
    cancelled = httpx.delete(pool.b.url + unread["status_url"], timeout=20)
    assert cancelled.status_code == 202 and cancelled.json()["state"] in ("cancelled", "failed")


def test_a_stopping_replica_drops_its_readers_of_other_jobs_for_a_resume(
    pool: Pool, slow_replica: WorkerProcess, start_replica: StartReplica
) -> None:
    leaving = start_replica("--registry", pool.registry, "--keepalive-s", "1")
    job = submit(slow_replica.url, job_body(500))  # 10 s of generation
    reader = Reader(leaving.url + job["sse_url"])
    reader.start()
    reader.wait_for_tokens(2)
    assert leaving.terminate(timeout_s=READ_TIMEOUT_S) == 0  # SIGTERM: graceful, the stream must not hold it
    head = reader.finish()
    assert head[-1].data != "[DONE]", "the job runs elsewhere: no end may be invented for it"
    last_seen = head[-1].id
    assert last_seen is not None

    parser = SSEParser(strict=True)
    tail: list[SSEEvent] = []
    headers = {"Last-Event-ID": last_seen}
    with httpx.stream("GET", pool.a.url + job["sse_url"], headers=headers, timeout=READ_TIMEOUT_S) as response:
        for chunk in response.iter_raw():
            tail += parser.feed(chunk)
            if len(tail) >= 3:
                break
    assert [event.id for event in head + tail] == [str(n) for n in range(1, len(head) + len(tail) + 1)]
    assert all(event.event == "token" for event in tail)
    assert httpx.delete(pool.b.url + job["status_url"], timeout=10).status_code == 202
