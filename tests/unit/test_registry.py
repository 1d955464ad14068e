"""The job registry, driven directly in asyncio: ids, replay, resume, cancel, queue, TTL, failures."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator

import pytest
import pytest_asyncio

from conformance.sse import SSEEvent, parse_stream
from workers import sse
from workers.config import WorkerSettings
from workers.engines.base import Chunk, EngineHealth, GenerationRequest
from workers.engines.mock import MockEngine
from workers.registry import FinalEventDelivered, Job, JobRegistry, QueueFull, UnknownJob

TIMEOUT_S = 10


def gen(prompt: str = "registry", max_tokens: int = 8, **extra: object) -> GenerationRequest:
    return GenerationRequest(prompt=prompt, max_tokens=max_tokens, seed=3, **extra)  # type: ignore[arg-type]


async def read_all(stream: AsyncIterator[bytes]) -> bytes:
    async with asyncio.timeout(TIMEOUT_S):
        return b"".join([block async for block in stream])


def events_of(raw: bytes) -> list[SSEEvent]:
    events, issues = parse_stream(raw, strict=True)
    assert not issues, issues
    return events


async def wait_until(predicate: object, timeout_s: float = TIMEOUT_S) -> None:
    async with asyncio.timeout(timeout_s):
        while True:
            if predicate():  # type: ignore[operator]
                return
            await asyncio.sleep(0.005)


@pytest_asyncio.fixture
async def make_registry() -> AsyncGenerator[object, None]:
    made: list[JobRegistry] = []

    def make(engine: object | None = None, **settings: object) -> JobRegistry:
        registry = JobRegistry(engine or MockEngine(), WorkerSettings(**settings))  # type: ignore[arg-type]
        made.append(registry)
        return registry

    yield make
    for registry in made:
        await registry.close()


def final(events: list[SSEEvent]) -> tuple[str, dict[str, object]]:
    end = events[-2]
    return end.event, json.loads(end.data)


# -- event log ------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_event_ids_consecutive_and_done_last(make_registry) -> None:  # type: ignore[no-untyped-def]
    registry = make_registry()
    job = registry.submit(gen(max_tokens=8))
    events = events_of(await read_all(registry.open_stream(job.id, None)))
    assert [e.event for e in events] == ["started"] + ["token"] * 8 + ["end", "message"]
    assert [e.has_id_field for e in events] == [True] * 10 + [False]
    assert [int(e.id) for e in events[:-1]] == list(range(1, 11))  # type: ignore[arg-type]
    assert events[-1].data == "[DONE]"
    assert json.loads(events[0].data) == {"job_id": job.id}
    assert [json.loads(e.data)["index"] for e in events[1:-2]] == list(range(8))
    assert final(events) == ("end", {"tokens_out": 8, "stop_reason": "max_tokens"})
    assert job.state == "completed"
    assert job.final_event_id == 10
    assert "".join(json.loads(e.data)["text"] for e in events[1:-2]) == "".join(MockEngine().tokens(gen()))


@pytest.mark.asyncio
async def test_job_ids_unique_and_url_safe(make_registry) -> None:  # type: ignore[no-untyped-def]
    registry = make_registry()
    ids = {registry.submit(gen(max_tokens=1)).id for _ in range(50)}
    assert len(ids) == 50
    for job_id in ids:
        assert len(job_id) >= 22
        assert job_id.replace("-", "").replace("_", "").isalnum()
        assert job_id.isascii()


@pytest.mark.asyncio
async def test_replay_to_two_readers_identical(make_registry) -> None:  # type: ignore[no-untyped-def]
    registry = make_registry(MockEngine(token_delay_s=0.005))
    job = registry.submit(gen(max_tokens=12))
    live, late = registry.open_stream(job.id, None), None
    first_task = asyncio.create_task(read_all(live))
    await wait_until(lambda: len(job.events) > 3)  # the second reader joins mid-generation
    late = registry.open_stream(job.id, None)
    second = await read_all(late)
    first = await first_task
    assert first == second
    third = await read_all(registry.open_stream(job.id, None))  # after the end
    assert third == first
    assert first == b"".join(job.events)


@pytest.mark.asyncio
@pytest.mark.parametrize("k", [0, 1, 4, 9])
async def test_resume_after_k(make_registry, k: int) -> None:  # type: ignore[no-untyped-def]
    registry = make_registry()
    job = registry.submit(gen(max_tokens=8))
    full = events_of(await read_all(registry.open_stream(job.id, None)))
    resumed = events_of(await read_all(registry.open_stream(job.id, k)))
    assert resumed == full[k:]
    assert resumed[0].id == str(k + 1)


@pytest.mark.asyncio
async def test_resume_while_running_continues_after_k(make_registry) -> None:  # type: ignore[no-untyped-def]
    registry = make_registry(MockEngine(token_delay_s=0.005))
    job = registry.submit(gen(max_tokens=10))
    await wait_until(lambda: len(job.events) >= 4)
    resumed = events_of(await read_all(registry.open_stream(job.id, 3)))
    full = events_of(b"".join(job.events))
    assert resumed == full[3:]


@pytest.mark.asyncio
async def test_final_event_delivered(make_registry) -> None:  # type: ignore[no-untyped-def]
    registry = make_registry()
    job = registry.submit(gen(max_tokens=3))
    await read_all(registry.open_stream(job.id, None))
    final_id = job.final_event_id
    assert final_id == 5
    for last in (final_id, final_id + 1, 10**9):
        with pytest.raises(FinalEventDelivered):
            registry.open_stream(job.id, last)
    # one before the final event still gets the end event and DONE
    events = events_of(await read_all(registry.open_stream(job.id, final_id - 1)))
    assert [e.event for e in events] == ["end", "message"]


@pytest.mark.asyncio
async def test_unknown_job(make_registry) -> None:  # type: ignore[no-untyped-def]
    registry = make_registry()
    with pytest.raises(UnknownJob):
        registry.get("nope")
    with pytest.raises(UnknownJob):
        registry.open_stream("nope", None)
    with pytest.raises(UnknownJob):
        await registry.cancel("nope")


# -- cancel ----------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_cancel_while_running(make_registry) -> None:  # type: ignore[no-untyped-def]
    registry = make_registry(MockEngine(token_delay_s=0.02))
    job = registry.submit(gen(max_tokens=1000))
    reader = asyncio.create_task(read_all(registry.open_stream(job.id, None)))
    await wait_until(lambda: job._token_events >= 2)
    started = time.monotonic()
    cancelled = await registry.cancel(job.id)
    assert time.monotonic() - started < 1.0  # promptly
    assert cancelled is job
    assert job.state == "cancelled"
    events = events_of(await reader)
    assert final(events) == ("end", {"tokens_out": job.tokens_out, "stop_reason": "cancelled"})
    assert events[-1].data == "[DONE]"
    assert job.tokens_out < 1000
    with pytest.raises(UnknownJob):
        registry.get(job.id)
    with pytest.raises(UnknownJob):
        await registry.cancel(job.id)
    assert registry.active == 0
    assert registry.queued == 0
    assert registry.counters["jobs_cancelled"] == 1


@pytest.mark.asyncio
async def test_cancel_while_queued(make_registry) -> None:  # type: ignore[no-untyped-def]
    registry = make_registry(MockEngine(token_delay_s=0.02, max_concurrency=1), queue_limit=4)
    blocker = registry.submit(gen(max_tokens=1000))
    waiting = registry.submit(gen(prompt="second", max_tokens=5))
    reader = asyncio.create_task(read_all(registry.open_stream(waiting.id, None)))
    await wait_until(lambda: blocker.state == "running")
    await asyncio.sleep(0.05)
    assert waiting.state == "queued"
    assert registry.queued == 1
    await registry.cancel(waiting.id)
    events = events_of(await reader)
    # never started: no started event, just the end and DONE
    assert [e.event for e in events] == ["end", "message"]
    assert json.loads(events[0].data) == {"tokens_out": 0, "stop_reason": "cancelled"}
    assert waiting.state == "cancelled"
    assert registry.queued == 0
    with pytest.raises(UnknownJob):
        registry.get(waiting.id)
    await registry.cancel(blocker.id)
    assert registry.active == 0


@pytest.mark.asyncio
async def test_cancel_before_the_job_task_ever_ran(make_registry) -> None:  # type: ignore[no-untyped-def]
    """A task cancelled before its first step never enters its own except-handler."""
    registry = make_registry(MockEngine(max_concurrency=1), queue_limit=0)
    job = registry.submit(gen(max_tokens=5))
    stream = registry.open_stream(job.id, None)
    await registry.cancel(job.id)  # no await point since submit: the task has not started
    events = events_of(await read_all(stream))
    assert [e.event for e in events] == ["end", "message"]
    assert json.loads(events[0].data) == {"tokens_out": 0, "stop_reason": "cancelled"}
    assert job.state == "cancelled"
    assert registry.queued == 0
    assert registry.active == 0
    registry.submit(gen(max_tokens=1))  # the only slot is free again


@pytest.mark.asyncio
async def test_cancel_finished_job_keeps_its_state(make_registry) -> None:  # type: ignore[no-untyped-def]
    registry = make_registry()
    job = registry.submit(gen(max_tokens=2))
    await read_all(registry.open_stream(job.id, None))
    assert (await registry.cancel(job.id)).state == "completed"
    with pytest.raises(UnknownJob):
        registry.get(job.id)


# -- queue bound -----------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_queue_bound(make_registry) -> None:  # type: ignore[no-untyped-def]
    registry = make_registry(MockEngine(token_delay_s=0.05, max_concurrency=1), queue_limit=1)
    first = registry.submit(gen(max_tokens=1000))
    registry.submit(gen(max_tokens=1000))
    with pytest.raises(QueueFull):
        registry.submit(gen(max_tokens=1))
    assert registry.counters["jobs_rejected_queue_full"] == 1
    await registry.cancel(first.id)
    registry.submit(gen(max_tokens=1))  # a slot freed up


# -- TTL ----------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_ttl_reclaims_unattached_jobs(make_registry) -> None:  # type: ignore[no-untyped-def]
    registry = make_registry(MockEngine(token_delay_s=0.05), job_ttl_s=10)
    job = registry.submit(gen(max_tokens=1000))
    attached = registry.submit(gen(max_tokens=1000))
    stream = registry.open_stream(attached.id, None)
    now = time.monotonic()
    assert registry.sweep(now=now + 5) == 0
    assert registry.sweep(now=now + 11) == 1
    with pytest.raises(UnknownJob):
        registry.get(job.id)
    assert registry.get(attached.id) is attached  # a reader attached: not reclaimed as unattached
    await wait_until(lambda: job.task is not None and job.task.done())
    assert job.state == "cancelled"
    assert registry.counters["jobs_reclaimed"] == 1
    await stream.aclose()  # type: ignore[attr-defined]


@pytest.mark.asyncio
async def test_ttl_reclaims_finished_jobs(make_registry) -> None:  # type: ignore[no-untyped-def]
    registry = make_registry(job_ttl_s=10)
    job = registry.submit(gen(max_tokens=2))
    await read_all(registry.open_stream(job.id, None))
    assert job.finished
    now = time.monotonic()
    assert registry.sweep(now=now + 5) == 0
    assert registry.get(job.id) is job  # kept for replay within the TTL
    assert registry.sweep(now=now + 11) == 1
    with pytest.raises(UnknownJob):
        registry.open_stream(job.id, None)
    assert len(registry) == 0


@pytest.mark.asyncio
async def test_ttl_keeps_finished_job_while_a_reader_is_attached(make_registry) -> None:  # type: ignore[no-untyped-def]
    registry = make_registry(job_ttl_s=10)
    job = registry.submit(gen(max_tokens=2))
    await read_all(registry.open_stream(job.id, None))
    slow_reader = registry.open_stream(job.id, None)
    await anext(slow_reader)  # type: ignore[call-overload]
    assert job.readers == 1
    assert registry.sweep(now=time.monotonic() + 11) == 0
    await slow_reader.aclose()  # type: ignore[attr-defined]
    assert job.readers == 0
    assert registry.sweep(now=time.monotonic() + 11) == 1


@pytest.mark.asyncio
async def test_sweeper_runs_in_background(make_registry) -> None:  # type: ignore[no-untyped-def]
    registry = make_registry(job_ttl_s=0.1)
    registry.start()
    job = registry.submit(gen(max_tokens=1))
    await wait_until(lambda: len(registry) == 0, timeout_s=5)
    with pytest.raises(UnknownJob):
        registry.get(job.id)


# -- failures and shutdown -----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_shutdown_ends_running_jobs_with_error(make_registry) -> None:  # type: ignore[no-untyped-def]
    registry = make_registry(MockEngine(token_delay_s=0.02))
    job = registry.submit(gen(max_tokens=1000))
    reader = asyncio.create_task(read_all(registry.open_stream(job.id, None)))
    await wait_until(lambda: job._token_events >= 1)
    started = time.monotonic()
    await registry.close()
    assert time.monotonic() - started < 2
    events = events_of(await reader)
    event, data = final(events)
    assert event == "error"
    assert data["code"] == "shutdown"
    assert events[-1].data == "[DONE]"
    assert job.state == "failed"
    with pytest.raises(QueueFull):
        registry.submit(gen())


@pytest.mark.asyncio
async def test_engine_error_becomes_error_event(make_registry) -> None:  # type: ignore[no-untyped-def]
    registry = make_registry(MockEngine(fail_after_tokens=2))
    job = registry.submit(gen(max_tokens=10))
    events = events_of(await read_all(registry.open_stream(job.id, None)))
    assert [e.event for e in events] == ["started", "token", "token", "error", "message"]
    assert json.loads(events[-2].data) == {
        "code": "simulated_failure",
        "message": "simulated engine failure (--fail-after)",
    }
    assert job.state == "failed"
    assert job.error is not None
    assert job.error.code == "simulated_failure"
    assert registry.counters["jobs_failed"] == 1


class ExplodingEngine(MockEngine):
    """A mock whose generator raises an unexpected exception for the prompt "boom"."""

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[Chunk, None]:
        if request.prompt == "boom":
            yield Chunk("partial")
            raise ZeroDivisionError("engine bug")
        async for chunk in super().generate(request):
            yield chunk

    def health(self) -> EngineHealth:
        return EngineHealth(ok=True)


@pytest.mark.asyncio
async def test_unexpected_engine_exception_becomes_internal_error(make_registry) -> None:  # type: ignore[no-untyped-def]
    registry = make_registry(ExplodingEngine())
    job = registry.submit(gen(prompt="boom"))
    events = events_of(await read_all(registry.open_stream(job.id, None)))
    event, data = final(events)
    assert event == "error"
    assert data["code"] == "internal_error"
    assert "ZeroDivisionError" not in str(data)
    assert "engine bug" not in str(data)
    assert events[-1].data == "[DONE]"
    assert job.state == "failed"
    assert registry.active == 0
    # the registry keeps serving
    ok = registry.submit(gen(max_tokens=3))
    events = events_of(await read_all(registry.open_stream(ok.id, None)))
    assert final(events) == ("end", {"tokens_out": 3, "stop_reason": "max_tokens"})


@pytest.mark.asyncio
async def test_keepalive_when_idle(make_registry) -> None:  # type: ignore[no-untyped-def]
    registry = make_registry(MockEngine(token_delay_s=0.25), keepalive_s=0.05)
    job = registry.submit(gen(max_tokens=2))
    blocks = []
    async with asyncio.timeout(TIMEOUT_S):
        async for block in registry.open_stream(job.id, None):
            blocks.append(block)
    assert sse.KEEPALIVE in blocks
    parser_events, issues = parse_stream(b"".join(blocks), strict=True)
    assert not issues
    # comment lines are not events
    assert [e.event for e in parser_events] == ["started", "token", "token", "end", "message"]


@pytest.mark.asyncio
async def test_reader_disconnect_leaves_job_running(make_registry) -> None:  # type: ignore[no-untyped-def]
    registry = make_registry(MockEngine(token_delay_s=0.005))
    job = registry.submit(gen(max_tokens=20))
    quitter = registry.open_stream(job.id, None)
    await anext(quitter)  # type: ignore[call-overload]
    await quitter.aclose()  # type: ignore[attr-defined]
    assert job.readers == 0
    events = events_of(await read_all(registry.open_stream(job.id, None)))
    assert final(events) == ("end", {"tokens_out": 20, "stop_reason": "max_tokens"})


def test_job_finish_is_idempotent() -> None:
    job = Job(id="x" * 22, request=gen())
    job.finish("completed", stop_reason="eos")
    job.finish("failed", stop_reason=None)
    assert job.state == "completed"
    assert job.events[-1] == sse.DONE
    assert len(job.events) == 2
