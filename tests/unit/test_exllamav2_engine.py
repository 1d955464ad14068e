"""The exllamav2 engine's thread bridge, against a fake generator (no GPU, no torch)."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
import types
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from helpers import wait_until_async

from workers.engines.base import (
    Chunk,
    Engine,
    EngineError,
    EngineUnavailable,
    GenerationRequest,
)
from workers.engines.exllamav2 import (
    INSTALL_HINT,
    NO_CUDA,
    ExLlamaV2Backend,
    ExLlamaV2Engine,
    JobHandle,
    StopFilter,
    count_tokens,
    eos_token_ids,
    sampler_params,
)

TIMEOUT = 5.0


# ---------------------------------------------------------------------------------------------
# A fake generator shaped like ExLlamaV2DynamicGenerator (results dicts as iterate() makes them)


class FakeJob:
    def __init__(self, request: GenerationRequest, script: Iterable[dict[str, Any]]) -> None:
        self.request = request
        self.script = iter(script)  # remaining result dicts (without "job")
        self.cancelled_on: str | None = None

    def cancel(self) -> None:
        self.cancelled_on = threading.current_thread().name


def default_script(request: GenerationRequest) -> Iterator[dict[str, Any]]:
    """One token per step: "t0 ", "t1 ", …, ending with max_new_tokens (made lazily)."""
    yield {"stage": "started", "eos": False}
    yield {"stage": "prefill", "eos": False, "curr_progress": 3, "max_progress": 3}
    for i in range(request.max_tokens):
        last = i == request.max_tokens - 1
        r: dict[str, Any] = {"stage": "streaming", "eos": last, "text": f"t{i} ", "token_ids": [[i]]}
        if last:
            r.update(eos_reason="max_new_tokens", new_tokens=request.max_tokens)
        yield r


class FakeGenerator:
    """Unpaged unless ``paged``: one active job at a time, others pending (like exllamav2)."""

    def __init__(
        self,
        script: Any = default_script,
        *,
        paged: bool = False,
        step_delay: float = 0.0,
    ) -> None:
        self.script = script
        self.paged = paged
        self.flash_attn = paged
        self.device = "fake"
        self.max_concurrency = 4 if paged else 1
        self.step_delay = step_delay
        self.pending: list[FakeJob] = []
        self.active: list[FakeJob] = []
        self.requests: list[GenerationRequest] = []
        self.threads: set[str] = set()
        self.fail_next = 0
        self.fail_reset = False
        self.die_next = False
        self.iterations = 0
        self.cancelled: list[FakeJob] = []

    # _Backend protocol
    def make_job(self, request: GenerationRequest) -> FakeJob:
        self.threads.add(threading.current_thread().name)
        self.requests.append(request)
        return FakeJob(request, self.script(request))

    def enqueue(self, job: FakeJob) -> None:
        self.pending.append(job)

    def num_remaining_jobs(self) -> int:
        return len(self.pending) + len(self.active)

    def holds(self, job: FakeJob) -> bool:
        return job in self.pending or job in self.active

    def cancel(self, job: FakeJob) -> None:
        self.threads.add(threading.current_thread().name)
        if job in self.pending:
            self.pending.remove(job)
        elif job in self.active:
            self.active.remove(job)
        else:
            raise AssertionError("cancel of a job the generator does not hold")
        job.cancel()
        self.cancelled.append(job)

    def reset(self) -> None:
        if self.fail_reset:
            raise RuntimeError("cache is gone")
        self.pending.clear()
        self.active.clear()

    def iterate(self) -> list[dict[str, Any]]:
        self.threads.add(threading.current_thread().name)
        self.iterations += 1
        if self.die_next:
            raise SystemExit("fake generator thread death")
        if self.fail_next:
            self.fail_next -= 1
            raise RuntimeError("boom\nsecond line")
        if self.step_delay:
            threading.Event().wait(self.step_delay)
        limit = 4 if self.paged else 1
        while self.pending and len(self.active) < limit:
            self.active.append(self.pending.pop(0))
        results = []
        for job in list(self.active):
            r = dict(next(job.script))
            r["job"] = job
            results.append(r)
            if r.get("eos"):
                self.active.remove(job)
        return results


def make_engine(gen: FakeGenerator | None = None) -> tuple[ExLlamaV2Engine, FakeGenerator]:
    fake = gen or FakeGenerator()
    engine = ExLlamaV2Engine("/models/tiny-llama", generator_factory=lambda: fake)
    return engine, fake


async def collect(engine: ExLlamaV2Engine, request: GenerationRequest) -> list[Chunk]:
    async def run() -> list[Chunk]:
        return [c async for c in engine.generate(request)]

    return await asyncio.wait_for(run(), TIMEOUT)


def req(max_tokens: int = 4, **kw: Any) -> GenerationRequest:
    return GenerationRequest(prompt="Hello", max_tokens=max_tokens, **kw)


@pytest_asyncio.fixture
async def engine() -> AsyncIterator[tuple[ExLlamaV2Engine, FakeGenerator]]:
    eng, fake = make_engine()
    await eng.start()
    yield eng, fake
    await asyncio.wait_for(eng.close(), TIMEOUT)


# ---------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_protocol_and_identity(engine: tuple[ExLlamaV2Engine, FakeGenerator]) -> None:
    eng, _ = engine
    assert isinstance(eng, Engine)
    assert eng.name == "exllamav2"
    assert eng.model == "tiny-llama"
    assert eng.deterministic is False
    assert eng.max_concurrency == 1
    h = eng.health()
    assert h.ok
    assert h.extra["mode"] == "unpaged"
    assert h.extra["flash_attn"] is False
    assert h.extra["device"] == "fake"


@pytest.mark.asyncio
async def test_paged_backend_sets_concurrency() -> None:
    eng, _ = make_engine(FakeGenerator(paged=True))
    await eng.start()
    try:
        assert eng.max_concurrency == 4
        assert eng.health().extra["mode"] == "paged"
        assert eng.health().extra["flash_attn"] is True
        results = await asyncio.gather(*(collect(eng, req(3)) for _ in range(6)))
        assert all("".join(c.text for c in r) == "t0 t1 t2 " for r in results)
    finally:
        await eng.close()


@pytest.mark.asyncio
async def test_chunks_in_order_and_token_counts(
    engine: tuple[ExLlamaV2Engine, FakeGenerator],
) -> None:
    eng, fake = engine
    chunks = await collect(eng, req(5))
    assert [c.text for c in chunks] == ["t0 ", "t1 ", "t2 ", "t3 ", "t4 "]
    assert sum(c.tokens for c in chunks) == 5
    assert [c.stop_reason for c in chunks] == [None] * 4 + ["max_tokens"]
    assert fake.threads == {"dualcall-exllamav2"}


@pytest.mark.asyncio
async def test_held_utf8_one_result_many_tokens() -> None:
    def script(request: GenerationRequest) -> list[dict[str, Any]]:
        return [
            {"stage": "streaming", "eos": False, "token_ids": [[7]]},  # held: no text
            {"stage": "streaming", "eos": False, "text": "é", "token_ids": [[8, 9]]},
            {
                "stage": "streaming",
                "eos": True,
                "eos_reason": "stop_token",
                "new_tokens": 5,
                "held": {"text": "x", "token_ids": [[10, 2]]},
            },
        ]

    eng, _ = make_engine(FakeGenerator(script))
    await eng.start()
    try:
        chunks = await collect(eng, req(10))
    finally:
        await eng.close()
    assert "".join(c.text for c in chunks) == "éx"
    assert sum(c.tokens for c in chunks) == 5  # the generator's own count wins at the end
    assert chunks[-1].stop_reason == "eos"


@pytest.mark.parametrize(
    ("eos_reason", "expected"),
    [
        ("stop_token", "eos"),
        ("stop_string", "stop"),
        ("max_new_tokens", "max_tokens"),
        ("end_filter", "stop"),
    ],
)
@pytest.mark.asyncio
async def test_stop_reason_mapping(eos_reason: str, expected: str) -> None:
    def script(request: GenerationRequest) -> list[dict[str, Any]]:
        return [
            {"stage": "streaming", "eos": False, "text": "a", "token_ids": [1]},
            {"stage": "streaming", "eos": True, "eos_reason": eos_reason, "text": "b"},
        ]

    eng, _ = make_engine(FakeGenerator(script))
    await eng.start()
    try:
        chunks = await collect(eng, req(10, stop=("zz",)))
    finally:
        await eng.close()
    assert chunks[-1].stop_reason == expected
    assert "".join(c.text for c in chunks) == "ab"


@pytest.mark.asyncio
async def test_close_iterator_cancels_on_generator_thread(
    engine: tuple[ExLlamaV2Engine, FakeGenerator],
) -> None:
    eng, fake = engine
    it = eng.generate(req(1000))
    first = await asyncio.wait_for(it.__anext__(), TIMEOUT)
    assert first.text == "t0 "
    await it.aclose()
    await wait_until_async(lambda: len(fake.cancelled) == 1, "the generator job cancelled")
    assert fake.cancelled[0].cancelled_on == "dualcall-exllamav2"
    assert fake.num_remaining_jobs() == 0
    chunks = await collect(eng, req(3))
    assert chunks[-1].stop_reason == "max_tokens"


@pytest.mark.asyncio
async def test_task_cancel_cancels_job(engine: tuple[ExLlamaV2Engine, FakeGenerator]) -> None:
    eng, fake = engine
    started = asyncio.Event()

    async def consume() -> None:
        async for _ in eng.generate(req(100_000)):
            started.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(started.wait(), TIMEOUT)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_until_async(lambda: len(fake.cancelled) == 1, "the generator job cancelled")
    assert (await collect(eng, req(2)))[-1].stop_reason == "max_tokens"


@pytest.mark.asyncio
async def test_cancel_after_finish_is_a_normal_race(
    engine: tuple[ExLlamaV2Engine, FakeGenerator],
) -> None:
    eng, fake = engine
    it = eng.generate(req(1))
    chunk = await asyncio.wait_for(it.__anext__(), TIMEOUT)
    assert chunk.stop_reason == "max_tokens"
    await it.aclose()  # finished: nothing to cancel
    assert (await collect(eng, req(2)))[-1].stop_reason == "max_tokens"
    assert fake.cancelled == []
    assert eng.health().ok


@pytest.mark.asyncio
async def test_disconnect_storm_leaves_engine_serving(
    engine: tuple[ExLlamaV2Engine, FakeGenerator],
) -> None:
    eng, fake = engine
    fake.step_delay = 0.0005  # a generator that streams, not one that floods
    threads_before = threading.active_count()
    iterators = [eng.generate(req(10_000)) for _ in range(50)]

    async def read_some(i: int, it: AsyncIterator[Chunk]) -> None:
        # the first job streams; the other 49 are queued (unpaged) — drop them all
        if i == 0:
            await it.__anext__()
            await it.__anext__()
        else:
            task = asyncio.ensure_future(it.__anext__())
            await asyncio.sleep(0.01)
            task.cancel()  # it may have got its first chunk already: both are fine
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await it.aclose()  # type: ignore[attr-defined]

    await asyncio.wait_for(asyncio.gather(*(read_some(i, it) for i, it in enumerate(iterators))), TIMEOUT)
    await wait_until_async(lambda: fake.num_remaining_jobs() == 0, "the generator to finish its jobs")
    assert len(fake.cancelled) == 50
    assert threading.active_count() == threads_before
    assert eng.health().ok
    assert eng.health().extra["jobs"] == 0
    chunks = await collect(eng, req(3))
    assert "".join(c.text for c in chunks) == "t0 t1 t2 "


@pytest.mark.asyncio
async def test_generator_exception_is_engine_error_then_recovers(
    engine: tuple[ExLlamaV2Engine, FakeGenerator],
) -> None:
    eng, fake = engine
    fake.fail_next = 1
    with pytest.raises(EngineError) as info:
        await collect(eng, req(3))
    assert "boom" in info.value.message
    assert "\n" not in info.value.message
    assert eng.health().ok
    assert (await collect(eng, req(3)))[-1].stop_reason == "max_tokens"


@pytest.mark.asyncio
async def test_unrecoverable_generator_turns_health_off(
    engine: tuple[ExLlamaV2Engine, FakeGenerator],
) -> None:
    eng, fake = engine
    fake.fail_next = 1
    fake.fail_reset = True
    with pytest.raises(EngineError):
        await collect(eng, req(3))
    h = eng.health()
    assert not h.ok
    assert "cannot recover" in h.detail
    with pytest.raises(EngineError):
        await collect(eng, req(3))


@pytest.mark.asyncio
async def test_thread_death_turns_health_off_and_fails_waiters(
    engine: tuple[ExLlamaV2Engine, FakeGenerator],
) -> None:
    eng, fake = engine
    fake.die_next = True
    with pytest.raises(EngineError):
        await collect(eng, req(3))
    await wait_until_async(lambda: not eng.health().ok, "the engine to report unhealthy")
    assert "died" in eng.health().detail
    with pytest.raises(EngineError):
        await collect(eng, req(3))


@pytest.mark.asyncio
async def test_make_job_error_fails_only_that_job(
    engine: tuple[ExLlamaV2Engine, FakeGenerator],
) -> None:
    eng, fake = engine
    original = fake.make_job

    def picky(request: GenerationRequest) -> FakeJob:
        if request.prompt == "too long":
            raise EngineError("too long", code="context_length_exceeded")
        return original(request)

    fake.make_job = picky  # type: ignore[method-assign]
    with pytest.raises(EngineError) as info:
        await collect(eng, GenerationRequest(prompt="too long", max_tokens=2))
    assert info.value.code == "context_length_exceeded"
    assert (await collect(eng, req(2)))[-1].stop_reason == "max_tokens"


@pytest.mark.asyncio
async def test_no_thread_per_request_and_idle_thread_does_not_spin(
    engine: tuple[ExLlamaV2Engine, FakeGenerator],
) -> None:
    eng, fake = engine
    before = threading.active_count()
    await asyncio.gather(*(collect(eng, req(2)) for _ in range(20)))
    assert threading.active_count() == before
    names = [t.name for t in threading.enumerate()]
    assert names.count("dualcall-exllamav2") == 1
    iterations = fake.iterations
    await asyncio.sleep(0.1)
    assert fake.iterations == iterations  # idle: blocked on the command queue


@pytest.mark.asyncio
async def test_close_joins_thread_and_fails_running_jobs() -> None:
    eng, _ = make_engine(FakeGenerator(step_delay=0.001))
    await eng.start()
    thread = eng._thread
    assert thread is not None and thread.is_alive()
    it = eng.generate(req(100_000))
    await asyncio.wait_for(it.__anext__(), TIMEOUT)
    await asyncio.wait_for(eng.close(), TIMEOUT)
    assert not thread.is_alive()
    assert not eng.health().ok
    with pytest.raises(EngineError) as info:
        while True:
            await asyncio.wait_for(it.__anext__(), TIMEOUT)
    assert info.value.code == "shutdown"
    with pytest.raises(EngineError):
        await collect(eng, req(1))


@pytest.mark.asyncio
async def test_health_reports_stall() -> None:
    def script(request: GenerationRequest) -> list[dict[str, Any]]:
        return [{"stage": "streaming", "eos": True, "eos_reason": "max_new_tokens", "text": "x"}]

    eng, _ = make_engine(FakeGenerator(script, step_delay=0.3))
    eng.stall_timeout_s = 0.05
    await eng.start()
    try:
        it = eng.generate(req(1))
        task = asyncio.ensure_future(it.__anext__())
        await asyncio.sleep(0.15)
        assert not eng.health().ok
        assert "stalled" in eng.health().detail
        await asyncio.wait_for(task, TIMEOUT)
        assert eng.health().ok
    finally:
        await eng.close()


@pytest.mark.asyncio
async def test_seed_and_parameters_reach_the_backend(
    engine: tuple[ExLlamaV2Engine, FakeGenerator],
) -> None:
    eng, fake = engine
    r = req(2, temperature=0.7, top_k=40, top_p=0.9, seed=1234, stop=("END",))
    await collect(eng, r)
    assert fake.requests[-1] == r


# ---------------------------------------------------------------------------------------------
# Parameter mapping of the real backend (with fake exllamav2 classes)


def test_sampler_params() -> None:
    assert sampler_params(req(temperature=0.0)) == {"greedy": True}
    p = sampler_params(req(temperature=0.7, top_k=40, top_p=0.9))
    assert p["temperature"] == 0.7
    assert p["top_k"] == 40
    assert p["top_p"] == 0.9
    assert p["token_repetition_penalty"] == 1.0


class FakeSettings:
    def __init__(self, **kw: Any) -> None:
        self.kw = kw
        self.is_greedy = False

    @staticmethod
    def greedy() -> FakeSettings:
        s = FakeSettings(top_k=1, top_p=0.0)
        s.is_greedy = True
        return s


class FakeIds:
    def __init__(self, n: int) -> None:
        self.shape = (1, n)


class FakeTokenizer:
    eos_token_id = 2

    def encode(self, text: str, add_bos: bool = False) -> FakeIds:
        assert add_bos
        return FakeIds(len(text.split()) + 1)


class RecordingJob:
    def __init__(self, **kw: Any) -> None:
        self.kw = kw


def real_backend(max_seq_len: int = 64) -> ExLlamaV2Backend:
    return ExLlamaV2Backend(
        generator=types.SimpleNamespace(pending_jobs=[], active_jobs=[]),
        tokenizer=FakeTokenizer(),
        settings_cls=FakeSettings,
        job_cls=RecordingJob,
        max_seq_len=max_seq_len,
        paged=False,
        flash_attn=False,
        device="fake",
        max_concurrency=1,
        eos_token_ids=[2],
    )


def test_real_backend_greedy_job() -> None:
    job = real_backend().make_job(req(8, temperature=0.0, seed=5))
    assert job.kw["gen_settings"].is_greedy
    assert job.kw["gen_settings"].kw["top_k"] == 1
    assert job.kw["max_new_tokens"] == 8
    assert job.kw["seed"] == 5
    assert job.kw["stop_conditions"] == [2]


def test_real_backend_sampling_job() -> None:
    job = real_backend().make_job(req(8, temperature=0.8, top_k=40, top_p=0.95, seed=99, stop=("\n\n", "END")))
    settings = job.kw["gen_settings"]
    assert not settings.is_greedy
    assert settings.kw["temperature"] == 0.8
    assert settings.kw["top_k"] == 40
    assert settings.kw["top_p"] == 0.95
    assert job.kw["seed"] == 99
    assert job.kw["stop_conditions"] == [2, "\n\n", "END"]


def test_real_backend_rejects_too_long() -> None:
    with pytest.raises(EngineError) as info:
        real_backend(max_seq_len=9).make_job(req(8))  # 2 prompt tokens + 8
    assert info.value.code == "context_length_exceeded"


def test_real_backend_every_eos_id_is_a_stop_token() -> None:
    backend = ExLlamaV2Backend(
        generator=types.SimpleNamespace(pending_jobs=[], active_jobs=[]),
        tokenizer=FakeTokenizer(),
        settings_cls=FakeSettings,
        job_cls=RecordingJob,
        max_seq_len=256,
        paged=False,
        flash_attn=False,
        device="fake",
        max_concurrency=1,
        eos_token_ids=[128001, 128009],
    )
    job = backend.make_job(req(8, stop=("END", "")))
    assert job.kw["stop_conditions"] == [128001, 128009, "END"]  # an empty stop string is no stop
    assert backend.max_tokens_limit == 254  # the context minus BOS and one prompt token


def test_real_backend_without_eos_is_engine_unavailable() -> None:
    with pytest.raises(EngineUnavailable, match="no EOS token id"):
        ExLlamaV2Backend(
            generator=None,
            tokenizer=FakeTokenizer(),
            settings_cls=FakeSettings,
            job_cls=RecordingJob,
            max_seq_len=256,
            paged=False,
            flash_attn=False,
            device="fake",
            max_concurrency=1,
            eos_token_ids=[],
        )


def test_eos_token_ids_from_every_source() -> None:
    llama3 = types.SimpleNamespace(generation_config={"eos_token_id": [128001, 128008, 128009]}, eos_token_id=128001)
    assert eos_token_ids(llama3, types.SimpleNamespace(eos_token_id=128009)) == [128001, 128008, 128009]
    single = types.SimpleNamespace(generation_config={"eos_token_id": None}, eos_token_id=None)
    assert eos_token_ids(single, types.SimpleNamespace(eos_token_id=2)) == [2]
    bare = types.SimpleNamespace()
    assert eos_token_ids(bare, types.SimpleNamespace(eos_token_id=None)) == []


def test_stop_filter_holds_a_partial_stop_and_cuts_at_the_first() -> None:
    f = StopFilter(("END", "\n\n"))
    assert f.feed("abc E") == ("abc ", False)
    assert f.feed("N") == ("", False)
    assert f.feed("x") == ("ENx", False)
    assert f.feed("y\n\nzEND") == ("y", True)
    g = StopFilter(("END",))
    assert g.feed("tail E", final=True) == ("tail E", False)  # the end flushes what was held
    assert StopFilter(()).feed("END") == ("END", False)


def test_real_backend_holds_and_cancel() -> None:
    backend = real_backend()
    job = object()
    assert not backend.holds(job)
    backend.generator.pending_jobs.append(job)
    assert backend.holds(job)


# ---------------------------------------------------------------------------------------------
# DC-2.13: stop strings applied by the engine, whatever exllamav2 reports


def scripted(*results: dict[str, Any]) -> FakeGenerator:
    return FakeGenerator(lambda request: [{"stage": "streaming", **r} for r in results])


async def run_script(gen: FakeGenerator, request: GenerationRequest) -> list[Chunk]:
    eng, _ = make_engine(gen)
    await eng.start()
    try:
        return await collect(eng, request)
    finally:
        await eng.close()


@pytest.mark.asyncio
async def test_stop_completed_on_the_last_allowed_token_is_stop_not_leaked() -> None:
    # exllamav2 checks max_new_tokens before stop strings: it reports max_new_tokens and emits
    # the stop string in the text
    gen = scripted(
        {"eos": False, "text": "one ", "token_ids": [[5]]},
        {"eos": True, "eos_reason": "max_new_tokens", "text": "twoEND", "token_ids": [[6]], "new_tokens": 2},
    )
    chunks = await run_script(gen, req(2, stop=("END",)))
    assert "".join(c.text for c in chunks) == "one two"
    assert chunks[-1].stop_reason == "stop"
    assert sum(c.tokens for c in chunks) == 2


@pytest.mark.asyncio
async def test_stop_in_held_utf8_then_eos_is_not_leaked() -> None:
    # while incomplete UTF-8 is held exllamav2 skips its stop check; the stop string then
    # arrives in "held" together with the EOS token
    gen = scripted(
        {"eos": False, "text": "ok ", "token_ids": [[5]]},
        {"eos": False, "token_ids": [[6]]},
        {"eos": False, "token_ids": [[7]]},
        {
            "eos": True,
            "eos_reason": "stop_token",
            "new_tokens": 4,
            "held": {"text": "é!STOP tail", "token_ids": [[6, 7, 2]]},
        },
    )
    chunks = await run_script(gen, req(10, stop=("STOP",)))
    assert "".join(c.text for c in chunks) == "ok é!"
    assert chunks[-1].stop_reason == "stop"
    assert sum(c.tokens for c in chunks) == 4


@pytest.mark.asyncio
async def test_stop_string_reported_by_exllamav2_is_cut_from_held() -> None:
    gen = scripted(
        {"eos": False, "text": "a", "token_ids": [[5]]},
        {
            "eos": True,
            "eos_reason": "stop_string",
            "text": "b",
            "new_tokens": 3,
            "held": {"text": "\n\nc", "token_ids": [[9]]},
        },
    )
    chunks = await run_script(gen, req(10, stop=("\n\n",)))
    assert "".join(c.text for c in chunks) == "ab"
    assert chunks[-1].stop_reason == "stop"


@pytest.mark.asyncio
async def test_stop_found_by_the_engine_cancels_the_running_job() -> None:
    def script(request: GenerationRequest) -> Iterator[dict[str, Any]]:
        for piece in ["x", "ST", "OP", "never", *(["more"] * 50)]:
            yield {"stage": "streaming", "eos": False, "text": piece, "token_ids": [[4]]}
        yield {"stage": "streaming", "eos": True, "eos_reason": "max_new_tokens", "text": "z"}

    gen = FakeGenerator(script)
    eng, _ = make_engine(gen)
    await eng.start()
    try:
        chunks = await collect(eng, req(100, stop=("STOP",)))
        assert "".join(c.text for c in chunks) == "x"
        assert chunks[-1].stop_reason == "stop"
        assert sum(c.tokens for c in chunks) == 3
        await wait_until_async(lambda: len(gen.cancelled) == 1, "the generator job cancelled")
        assert gen.cancelled[0].cancelled_on == "dualcall-exllamav2"
        assert not eng._state.live
        again = await collect(eng, req(100, stop=("STOP",)))  # the generator keeps serving
        assert ["".join(c.text for c in again), again[-1].stop_reason] == ["x", "stop"]
    finally:
        await eng.close()


@pytest.mark.asyncio
async def test_max_tokens_limit_from_backend_reaches_health_and_cli_cap() -> None:
    from workers.__main__ import capped_to_engine
    from workers.config import WorkerSettings

    gen = FakeGenerator()
    gen.max_tokens_limit = 2046  # type: ignore[attr-defined]
    eng, _ = make_engine(gen)
    assert eng.max_tokens_limit is None
    await eng.start()
    try:
        assert eng.max_tokens_limit == 2046
        assert eng.health().extra["max_tokens_limit"] == 2046
        capped = capped_to_engine(WorkerSettings(max_tokens_cap=4096), eng)
        assert capped.max_tokens_cap == 2046
        assert capped.default_max_tokens == 64
        assert capped_to_engine(WorkerSettings(max_tokens_cap=512), eng).max_tokens_cap == 512
    finally:
        await eng.close()


def test_count_tokens() -> None:
    class Tensorish:
        def numel(self) -> int:
            return 3

    assert count_tokens(None) == 0
    assert count_tokens([[1, 2]]) == 2
    assert count_tokens([1, 2, 3]) == 3
    assert count_tokens(Tensorish()) == 3
    assert count_tokens(b"ab") == 2
    assert count_tokens(object()) == 0


# ---------------------------------------------------------------------------------------------
# start(): clear one-line errors


def model_dir(tmp_path: Path, *, config: bool = True, weights: bool = True) -> Path:
    d = tmp_path / "m"
    d.mkdir()
    if config:
        (d / "config.json").write_text('{"model_type": "llama"}')
    if weights:
        (d / "model.safetensors").write_bytes(b"\0" * 16)
    return d


async def start_error(path: Path) -> str:
    with pytest.raises(EngineUnavailable) as info:
        await ExLlamaV2Engine(path).start()
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.fixture
def no_torch(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch → ImportError
    monkeypatch.setitem(sys.modules, "exllamav2", None)
    yield


def fake_torch(cuda: bool) -> types.ModuleType:
    torch = types.ModuleType("torch")
    torch.cuda = types.SimpleNamespace(  # type: ignore[attr-defined]
        is_available=lambda: cuda, get_device_name=lambda i: "Fake GPU"
    )
    return torch


@pytest.mark.asyncio
async def test_missing_model_dir(tmp_path: Path, no_torch: None) -> None:
    msg = await start_error(tmp_path / "nope")
    assert msg == f"model directory {tmp_path / 'nope'} does not exist"


@pytest.mark.asyncio
async def test_missing_config(tmp_path: Path, no_torch: None) -> None:
    d = model_dir(tmp_path, config=False)
    assert await start_error(d) == f"model directory {d} has no config.json"


@pytest.mark.asyncio
async def test_unreadable_config(tmp_path: Path, no_torch: None) -> None:
    d = model_dir(tmp_path, config=False)
    (d / "config.json").write_text("{not json")
    assert "config.json is unreadable" in await start_error(d)


@pytest.mark.asyncio
async def test_no_safetensors(tmp_path: Path, no_torch: None) -> None:
    d = model_dir(tmp_path, weights=False)
    assert await start_error(d) == f"model directory {d} has no *.safetensors weights"


@pytest.mark.asyncio
async def test_torch_missing_is_not_installed(tmp_path: Path, no_torch: None) -> None:
    assert await start_error(model_dir(tmp_path)) == INSTALL_HINT


@pytest.mark.asyncio
async def test_exllamav2_missing_is_not_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", fake_torch(cuda=True))
    monkeypatch.setitem(sys.modules, "exllamav2", None)
    msg = await start_error(model_dir(tmp_path))
    assert msg == "exllamav2 is not installed: pip install 'dualcall[exllamav2]'"


@pytest.mark.asyncio
async def test_no_cuda(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", fake_torch(cuda=False))
    monkeypatch.setitem(sys.modules, "exllamav2", None)
    msg = await start_error(model_dir(tmp_path))
    assert msg == NO_CUDA
    assert msg.startswith("CUDA is not available")


def test_module_imports_without_torch() -> None:
    import importlib

    mod = importlib.import_module("workers.engines.exllamav2")
    assert "torch" not in vars(mod)
    assert "exllamav2" not in vars(mod)


def fake_exllamav2(eos: int | None, generation_eos: object = None) -> dict[str, types.ModuleType]:
    """Just enough of exllamav2's surface for `_load` to reach the EOS check."""
    calls: list[str] = []

    class Config:
        def __init__(self, path: str) -> None:
            self.generation_config = {"eos_token_id": generation_eos}
            self.eos_token_id = eos

        def arch_compat_overrides(self, quiet: bool = False) -> None:
            calls.append("arch_compat_overrides")

    class Tokenizer:
        def __init__(self, config: Config) -> None:
            self.eos_token_id = config.eos_token_id

    class Model:
        def __init__(self, config: Config) -> None:
            calls.append("model")
            raise RuntimeError("weights must not load without an EOS id")

    root = types.ModuleType("exllamav2")
    root.ExLlamaV2Config = Config  # type: ignore[attr-defined]
    root.ExLlamaV2Tokenizer = Tokenizer  # type: ignore[attr-defined]
    root.ExLlamaV2 = Model  # type: ignore[attr-defined]
    root.calls = calls  # type: ignore[attr-defined]
    attn = types.ModuleType("exllamav2.attn")
    generator = types.ModuleType("exllamav2.generator")
    for name in ("ExLlamaV2DynamicGenerator", "ExLlamaV2DynamicJob", "ExLlamaV2Sampler"):
        setattr(generator, name, object)
    root.attn = attn  # type: ignore[attr-defined]
    return {"exllamav2": root, "exllamav2.attn": attn, "exllamav2.generator": generator}


@pytest.mark.asyncio
async def test_model_without_eos_is_a_one_line_engine_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", fake_torch(cuda=True))
    modules = fake_exllamav2(eos=None)
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    d = model_dir(tmp_path)
    msg = await start_error(d)
    assert msg.startswith(f"the model in {d} declares no EOS token id")
    assert modules["exllamav2"].calls == ["arch_compat_overrides"]  # type: ignore[attr-defined]


@pytest.mark.asyncio
async def test_generation_config_eos_ids_pass_the_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", fake_torch(cuda=True))
    modules = fake_exllamav2(eos=None, generation_eos=[128001, 128009])
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    msg = await start_error(model_dir(tmp_path))  # gets past the EOS check to the (failing) model
    assert "weights must not load without an EOS id" in msg
    assert modules["exllamav2"].calls == ["arch_compat_overrides", "model"]  # type: ignore[attr-defined]


@pytest.mark.asyncio
async def test_one_loop_callback_per_generator_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """Everything one iterate() produced crosses to the loop in ONE call_soon_threadsafe."""
    loop = asyncio.get_running_loop()
    batches: list[int] = []
    real_call_soon_threadsafe = loop.call_soon_threadsafe

    def counting(callback: Any, *args: Any, **kwargs: Any) -> Any:
        if len(args) == 1 and isinstance(args[0], list) and all(isinstance(item, tuple) for item in args[0]):
            batches.append(len(args[0]))  # a generator step's (handle, chunk) pairs
        return real_call_soon_threadsafe(callback, *args, **kwargs)

    monkeypatch.setattr(loop, "call_soon_threadsafe", counting)
    gen = FakeGenerator(paged=True, step_delay=0.002)
    eng, _ = make_engine(gen)
    await eng.start()
    try:
        results = await asyncio.gather(*(collect(eng, req(6)) for _ in range(4)))
    finally:
        await eng.close()
    assert all("".join(c.text for c in r) == "t0 t1 t2 t3 t4 t5 " for r in results)
    assert sum(batches) == 4 * 6  # every chunk delivered, none twice
    assert len(batches) <= gen.iterations  # at most one callback per step
    assert max(batches) == 4  # a step's chunks for all four jobs travel together


@pytest.mark.asyncio
async def test_a_submit_the_exiting_thread_never_read_is_answered() -> None:
    eng, _ = make_engine()
    handle = JobHandle(request=req(), loop=asyncio.get_running_loop(), ident=99)
    eng._commands.put(("submit", handle))
    eng._refuse_leftovers()  # what the generator thread runs on its way out
    item = await asyncio.wait_for(eng._next(handle), TIMEOUT)  # answered, not left waiting
    assert isinstance(item, EngineError)
    assert item.code == "engine_unavailable"
    assert not eng._accepting  # and no later submit can slip in behind the drain
