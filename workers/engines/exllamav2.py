"""ExLlamaV2 engine: a real model on an NVIDIA GPU, served through the dynamic generator.

Design (the thread bridge)
--------------------------
* One dedicated thread (``dualcall-exllamav2``) owns the generator. Nothing else ever touches it.
* The event loop talks to that thread only through a thread-safe command queue
  (``submit`` / ``cancel`` / ``stop``); the thread answers each job through that job's own
  deque on the loop, filled by ``loop.call_soon_threadsafe``. No thread per request.
* The thread blocks on the command queue while the generator holds no job (no spinning); while
  it holds jobs it drains the commands without blocking, then calls the blocking ``iterate()``.
* Closing a job's iterator early (DELETE, TTL, shutdown, a task cancel) sends ``cancel``; the
  thread cancels the job only if the generator still holds it — the race with a job that has
  just finished is normal and ignored.
* ``iterate()`` raising fails the jobs it was serving with `EngineError`, the generator is reset
  and the thread keeps serving; if the reset fails too, or the thread dies, ``health().ok`` is
  False. A dying or stopping thread answers every job it holds or has queued, and takes no more
  submits, so no stream waits forever (and none needs a timer to find out).
* One ``call_soon_threadsafe`` per ``iterate()`` carries every chunk that step produced, for all
  jobs (`_send`); the consumer waits on a plain future, not ``wait_for`` with a Task and a
  timer per token. That is what keeps the event loop's cost per token small (see docs/gpu.md).

Stop strings and EOS
--------------------
exllamav2 checks ``max_new_tokens`` before stop strings, and skips the stop check while it holds
back incomplete UTF-8, so a stop string can reach its text. The engine therefore applies the
request's stop strings itself, to the accumulated text (`StopFilter`, the mock's rule): the text
ends before the first occurrence, the reason is ``stop``, and the generator job is cancelled if it
still runs. Every EOS id the model declares (``config.json``, ``generation_config.json``, the
tokenizer) is a stop token.

Capacity
--------
After ``start()``, `ExLlamaV2Engine.max_tokens_limit` is the largest ``max_tokens`` a job can
get: the context minus the smallest prompt (BOS and one token). The CLI advertises the lower of
that and ``--max-tokens-cap``.

The generator is reached through a small internal protocol, `_Backend`; the real one wraps
``ExLlamaV2DynamicGenerator``, tests pass ``generator_factory`` returning a fake one. Both share
all of the bridge code above.

``exllamav2`` and ``torch`` are imported only inside ``start()``: this module imports fine on a
machine without them.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import json
import logging
import math
import queue
import threading
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from workers.engines.base import (
    Chunk,
    EngineError,
    EngineHealth,
    EngineUnavailable,
    GenerationRequest,
    StopReason,
)

__all__ = [
    "ExLlamaV2Backend",
    "ExLlamaV2Engine",
    "JobHandle",
    "StopFilter",
    "eos_token_ids",
    "sampler_params",
    "stop_reason_for",
]

log = logging.getLogger(__name__)

INSTALL_HINT = "exllamav2 is not installed: pip install 'dualcall[exllamav2]'"
NO_CUDA = "CUDA is not available: the exllamav2 engine needs an NVIDIA GPU"

#: exllamav2's ``eos_reason`` → our ``stop_reason``. We pass only EOS ids as stop tokens.
_EOS_REASONS: dict[str, StopReason] = {
    "stop_token": "eos",
    "stop_string": "stop",
    "max_new_tokens": "max_tokens",
    "end_filter": "stop",
}

#: jobs the paged generator runs at once (the cache holds this many full-length sequences)
PAGED_BATCH = 8
#: the shortest prompt a job can have, in tokens: BOS and one token (the contract's prompt is non-empty)
MIN_PROMPT_TOKENS = 2


def eos_token_ids(config: Any, tokenizer: Any) -> list[int]:
    """Every EOS id the model declares, in order, without duplicates.

    exllamav2 keeps only the first of a list in ``config.eos_token_id``; Llama-3-style models list
    several in ``generation_config.json`` (``<|end_of_text|>``, ``<|eot_id|>``, …).
    """
    found: list[object] = []
    generation_config = getattr(config, "generation_config", None)
    if isinstance(generation_config, dict):
        listed = generation_config.get("eos_token_id")
        found += listed if isinstance(listed, (list, tuple)) else [listed]
    found += [getattr(config, "eos_token_id", None), getattr(tokenizer, "eos_token_id", None)]
    ids: list[int] = []
    for value in found:
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0 and value not in ids:
            ids.append(value)
    return ids


def stop_reason_for(eos_reason: object) -> StopReason:
    """Map an exllamav2 ``eos_reason`` to a contract ``stop_reason`` (unknown → ``"stop"``)."""
    return _EOS_REASONS.get(str(eos_reason), "stop")


def sampler_params(request: GenerationRequest) -> dict[str, Any]:
    """The sampler settings for a request, as plain data.

    ``{"greedy": True}`` for temperature 0 (exllamav2 divides by the temperature, so greedy is
    ``Settings.greedy()``: top_k 1); otherwise the fields of ``ExLlamaV2Sampler.Settings`` to
    set. exllamav2's default repetition penalty (1.025) is switched off so that the parameters
    mean what the contract says; top_k 0 and top_p 1 disable those filters in exllamav2 too.
    """
    if request.temperature <= 0.0:
        return {"greedy": True}
    return {
        "temperature": float(request.temperature),
        "top_k": int(request.top_k),
        "top_p": float(request.top_p),
        "min_p": 0.0,
        "token_repetition_penalty": 1.0,
    }


def count_tokens(token_ids: object) -> int:
    """Number of token ids in a result's ``token_ids``: a torch tensor (1, n), a list, …"""
    if token_ids is None:
        return 0
    numel = getattr(token_ids, "numel", None)
    if callable(numel):
        return int(numel())
    if isinstance(token_ids, (list, tuple)):
        if token_ids and isinstance(token_ids[0], (list, tuple)):
            return sum(len(row) for row in token_ids)
        return len(token_ids)
    try:
        return len(token_ids)  # type: ignore[arg-type]
    except TypeError:
        return 0


class StopFilter:
    """Applies a request's stop strings to the accumulated text, whatever the generator reports.

    ``feed`` returns the text that is safe to emit now and whether a stop string was found; the
    longest tail that could still grow into a stop string is held back until the next call.
    """

    __slots__ = ("held", "stops")

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = tuple(s for s in stops if s)
        self.held = ""

    def feed(self, text: str, *, final: bool = False) -> tuple[str, bool]:
        if not self.stops:
            return text, False
        pending = self.held + text
        hits = [index for index in (pending.find(stop) for stop in self.stops) if index >= 0]
        if hits:
            self.held = ""
            return pending[: min(hits)], True
        keep = 0 if final else self._tail(pending)
        self.held = pending[len(pending) - keep :] if keep else ""
        return pending[: len(pending) - keep], False

    def _tail(self, text: str) -> int:
        longest = 0
        for stop in self.stops:
            for size in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:size]):
                    longest = size
                    break
        return longest


# ---------------------------------------------------------------------------------------------
# The backend seam


class _Backend(Protocol):
    """What the generator thread needs from a generator. Called on the generator thread only.

    ``generator_factory()`` returns one of these (tests use fakes); the real one is
    `ExLlamaV2Backend`. Optional attributes read with defaults: ``paged`` (bool),
    ``flash_attn`` (bool), ``device`` (str), ``max_concurrency`` (int), and ``reset()`` (called
    after ``iterate()`` raised, to drop whatever the generator still holds).
    """

    def make_job(self, request: GenerationRequest) -> Any:
        """A job for the request; raise `EngineError` for a request it cannot serve."""

    def enqueue(self, job: Any) -> None: ...

    def iterate(self) -> list[dict[str, Any]]:
        """One step; result dicts shaped like ``ExLlamaV2DynamicGenerator.iterate()``'s."""

    def num_remaining_jobs(self) -> int: ...

    def holds(self, job: Any) -> bool:
        """True while the generator still holds the job (pending or active)."""

    def cancel(self, job: Any) -> None: ...


class ExLlamaV2Backend:
    """The real backend around ``ExLlamaV2DynamicGenerator`` (classes injected for tests)."""

    def __init__(
        self,
        *,
        generator: Any,
        tokenizer: Any,
        settings_cls: Any,
        job_cls: Any,
        max_seq_len: int,
        paged: bool,
        flash_attn: bool,
        device: str,
        max_concurrency: int,
        eos_token_ids: list[int],
    ) -> None:
        if not eos_token_ids:
            raise EngineUnavailable(
                "the model declares no EOS token id (config.json, generation_config.json, tokenizer)"
            )
        self.generator = generator
        self.tokenizer = tokenizer
        self.settings_cls = settings_cls
        self.job_cls = job_cls
        self.max_seq_len = max_seq_len
        self.paged = paged
        self.flash_attn = flash_attn
        self.device = device
        self.max_concurrency = max_concurrency
        self.eos_token_ids = list(eos_token_ids)
        #: the largest max_tokens a job can get: the context minus the smallest prompt
        self.max_tokens_limit = max(0, max_seq_len - MIN_PROMPT_TOKENS)

    def make_job(self, request: GenerationRequest) -> Any:
        input_ids = self.tokenizer.encode(request.prompt, add_bos=True)
        prompt_len = int(input_ids.shape[-1])
        if prompt_len + request.max_tokens > self.max_seq_len:
            raise EngineError(
                f"prompt ({prompt_len} tokens) + max_tokens ({request.max_tokens}) exceeds the "
                f"model context of {self.max_seq_len} tokens",
                code="context_length_exceeded",
            )
        params = sampler_params(request)
        greedy = params.pop("greedy", False)
        settings = self.settings_cls.greedy() if greedy else self.settings_cls(**params)
        return self.job_cls(
            input_ids=input_ids,
            max_new_tokens=request.max_tokens,
            gen_settings=settings,
            seed=request.seed,
            # exllamav2 stops early on the strings too; the engine's own filter decides (DC-2.13)
            stop_conditions=[*self.eos_token_ids, *(stop for stop in request.stop if stop)],
            decode_special_tokens=False,
        )

    def enqueue(self, job: Any) -> None:
        self.generator.enqueue(job)

    def token_text(self, token_id: int) -> str:
        """A token's text as the job decodes it (special tokens empty)."""
        pieces = self.tokenizer.get_id_to_piece_list(False)
        return str(pieces[token_id]) if 0 <= token_id < len(pieces) else ""

    def iterate(self) -> list[dict[str, Any]]:
        results: list[dict[str, Any]] = self.generator.iterate()
        return results

    def num_remaining_jobs(self) -> int:
        return int(self.generator.num_remaining_jobs())

    def holds(self, job: Any) -> bool:
        gen = self.generator
        return any(j is job for j in gen.pending_jobs) or any(j is job for j in gen.active_jobs)

    def cancel(self, job: Any) -> None:
        self.generator.cancel(job)

    def reset(self) -> None:
        self.generator.clear_queue()


# ---------------------------------------------------------------------------------------------
# The thread bridge


@dataclass(eq=False)
class JobHandle:
    """One job as the bridge sees it: where its results go, and its generator job.

    ``items`` and ``waiter`` belong to the event loop (touched only in loop callbacks and in
    ``generate``); the rest belongs to the generator thread.
    """

    request: GenerationRequest
    loop: asyncio.AbstractEventLoop
    ident: int
    items: collections.deque[Chunk | BaseException] = field(default_factory=collections.deque)
    waiter: asyncio.Future[None] | None = None
    job: Any = None
    tokens: int = 0
    stops: StopFilter = field(default_factory=lambda: StopFilter(()))


_Outbox = list[tuple[JobHandle, Chunk | BaseException]]


def _receive(batch: _Outbox) -> None:
    """On the event loop: hand one generator step's chunks to their consumers."""
    for handle, item in batch:
        handle.items.append(item)
        waiter = handle.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


@dataclass
class _State:
    live: dict[int, JobHandle] = field(default_factory=dict)  # id(job) → handle
    by_ident: dict[int, JobHandle] = field(default_factory=dict)


_SUBMIT, _CANCEL, _STOP = "submit", "cancel", "stop"


class ExLlamaV2Engine:
    """Serves jobs with an ExLlamaV2 model; see the module docstring for the design."""

    name = "exllamav2"
    deterministic = False

    #: health() reports not-ok when one iterate() call has run longer than this (a hung GPU)
    stall_timeout_s: float = 60.0
    #: how long close() waits for the generator thread
    join_timeout_s: float = 10.0

    def __init__(
        self,
        model_dir: str | Path,
        *,
        max_seq_len: int = 2048,
        generator_factory: Callable[..., Any] | None = None,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.model = self.model_dir.name or str(model_dir)
        self.max_seq_len = int(max_seq_len)
        self.max_concurrency = 1
        #: the largest max_tokens a job can get (context minus the smallest prompt); set by start()
        self.max_tokens_limit: int | None = None
        self._factory = generator_factory
        self._backend: Any = None
        self._commands: queue.SimpleQueue[tuple[str, JobHandle | None]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        # submits and the generator thread's exit take this lock, so no job is submitted to a
        # thread that has already drained its command queue for the last time
        self._submit_lock = threading.Lock()
        self._accepting = True
        self._ids = itertools.count(1)
        self._state = _State()
        self._broken: str | None = None  # set when the generator cannot recover
        self._closing = False
        self._iterate_since: float | None = None
        self._info: dict[str, object] = {}

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        if self._thread is not None:
            return
        if self._factory is not None:
            backend = self._factory()
        else:
            self._check_model_dir()
            backend = await asyncio.to_thread(self._load)
        self._backend = backend
        limit = getattr(backend, "max_tokens_limit", None)
        self.max_tokens_limit = int(limit) if isinstance(limit, int) else None
        paged = bool(getattr(backend, "paged", False))
        self.max_concurrency = int(getattr(backend, "max_concurrency", 0) or 1) if paged else 1
        self._info = {
            "mode": "paged" if paged else "unpaged",
            "flash_attn": bool(getattr(backend, "flash_attn", False)),
            "device": str(getattr(backend, "device", "unknown")),
            "max_seq_len": self.max_seq_len,
        }
        if self.max_tokens_limit is not None:
            self._info["max_tokens_limit"] = self.max_tokens_limit
        self._thread = threading.Thread(target=self._run, name="dualcall-exllamav2", daemon=True)
        self._thread.start()

    async def close(self) -> None:
        self._closing = True
        thread = self._thread
        if thread is None:
            return
        self._commands.put((_STOP, None))
        await asyncio.to_thread(thread.join, self.join_timeout_s)
        if thread.is_alive():
            log.warning("exllamav2 generator thread did not stop within %.0f s", self.join_timeout_s)

    def health(self) -> EngineHealth:
        extra = dict(self._info)
        extra["jobs"] = len(self._state.live)
        if self._thread is None:
            return EngineHealth(ok=False, detail="not started", extra=extra)
        if self._closing:
            return EngineHealth(ok=False, detail="shutting down", extra=extra)
        if not self._thread.is_alive():
            return EngineHealth(ok=False, detail="generator thread died", extra=extra)
        if self._broken is not None:
            return EngineHealth(ok=False, detail=self._broken, extra=extra)
        since = self._iterate_since
        if since is not None and time.monotonic() - since > self.stall_timeout_s:
            stalled = f"generator stalled: one step running for {time.monotonic() - since:.0f} s"
            return EngineHealth(ok=False, detail=stalled, extra=extra)
        return EngineHealth(ok=True, extra=extra)

    # -- jobs ---------------------------------------------------------------------------------

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[Chunk, None]:
        self._check_can_serve()
        handle = JobHandle(
            request=request,
            loop=asyncio.get_running_loop(),
            ident=next(self._ids),
            stops=StopFilter(request.stop),
        )
        with self._submit_lock:
            if not self._accepting:
                raise EngineError("the exllamav2 generator thread is not running", code="engine_unavailable")
            self._commands.put((_SUBMIT, handle))
        done = False
        try:
            while True:
                item = await self._next(handle)
                if isinstance(item, BaseException):
                    done = True
                    raise item
                if item.stop_reason is not None:
                    done = True
                    yield item
                    return
                yield item
        finally:
            if not done:
                # consumer went away (aclose / task cancel): cancel on the generator thread
                self._commands.put((_CANCEL, handle))

    @staticmethod
    async def _next(handle: JobHandle) -> Chunk | BaseException:
        # A plain future woken by `_receive`: no Task, no timer per token. Every submitted job is
        # answered: by its chunks, by `_fail_all` (a failed step, shutdown, the thread dying), or
        # by `_refuse_leftovers` (a submit the thread never read).
        while not handle.items:
            waiter: asyncio.Future[None] = handle.loop.create_future()
            handle.waiter = waiter
            try:
                await waiter
            finally:
                handle.waiter = None
        return handle.items.popleft()

    def _check_can_serve(self) -> None:
        if self._thread is None:
            raise EngineError("the exllamav2 engine is not started", code="engine_unavailable")
        if self._closing:
            raise EngineError("the exllamav2 engine is shutting down", code="shutdown")
        if not self._thread.is_alive():
            raise EngineError("the exllamav2 generator thread died", code="engine_unavailable")
        if self._broken is not None:
            raise EngineError(self._broken, code="engine_unavailable")

    # -- the generator thread -----------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._serve()
        except BaseException as exc:  # the thread dies: fail what it held; health() says so
            log.critical("exllamav2 generator thread died", exc_info=exc)
            self._fail_all(EngineError(f"generator thread died: {_one_line(exc)}", code="engine_unavailable"))
        finally:
            self._refuse_leftovers()

    def _refuse_leftovers(self) -> None:
        """On exit: stop taking submits, then answer the ones still queued."""
        with self._submit_lock:
            self._accepting = False
        error = EngineError("the exllamav2 generator thread is not running", code="engine_unavailable")
        while True:
            try:
                kind, handle = self._commands.get_nowait()
            except queue.Empty:
                return
            if kind == _SUBMIT and handle is not None:
                self._deliver(handle, error)

    def _serve(self) -> None:
        backend = self._backend
        while True:
            idle = not self._state.live and backend.num_remaining_jobs() == 0
            # idle: block on the command queue (no spinning); busy: only drain it
            commands = [self._commands.get()] if idle else []
            while True:
                try:
                    commands.append(self._commands.get_nowait())
                except queue.Empty:
                    break
            for kind, handle in commands:
                if kind == _STOP:
                    self._shutdown_jobs()
                    return
                assert handle is not None
                if kind == _SUBMIT:
                    self._submit(handle)
                else:
                    self._cancel(handle)
            if not self._state.live and backend.num_remaining_jobs() == 0:
                continue
            self._step()

    def _submit(self, handle: JobHandle) -> None:
        if self._broken is not None:
            self._deliver(handle, EngineError(self._broken, code="engine_unavailable"))
            return
        try:
            job = self._backend.make_job(handle.request)
            self._backend.enqueue(job)
        except EngineError as exc:
            self._deliver(handle, exc)
            return
        except Exception as exc:
            self._deliver(handle, EngineError(f"could not start the job: {_one_line(exc)}"))
            return
        handle.job = job
        self._state.live[id(job)] = handle
        self._state.by_ident[handle.ident] = handle

    def _cancel(self, handle: JobHandle) -> None:
        # Only jobs we still track and the generator still holds; a job that finished in the
        # meantime is the normal race and needs nothing.
        if self._state.by_ident.get(handle.ident) is not handle:
            return
        self._forget(handle)
        self._cancel_job(handle.job)

    def _cancel_job(self, job: Any) -> None:
        backend = self._backend
        try:
            if backend.holds(job):
                backend.cancel(job)
        except Exception:  # e.g. AssertionError for a job that finished meanwhile
            log.debug("cancel of a job the generator no longer holds", exc_info=True)

    def _forget(self, handle: JobHandle) -> None:
        self._state.live.pop(id(handle.job), None)
        self._state.by_ident.pop(handle.ident, None)

    def _step(self) -> None:
        self._iterate_since = time.monotonic()
        try:
            results = self._backend.iterate()
        except Exception as exc:
            self._iterate_since = None
            self._recover(exc)
            return
        self._iterate_since = None
        outbox: _Outbox = []
        for result in results:
            self._route(result, outbox)
        self._send(outbox)

    def _route(self, result: dict[str, Any], outbox: _Outbox) -> None:
        if result.get("stage") != "streaming":
            return
        handle = self._state.live.get(id(result.get("job")))
        if handle is None:  # cancelled meanwhile
            return
        text = str(result.get("text") or "")
        tokens = count_tokens(result.get("token_ids"))
        stop: StopReason | None = None
        finished = bool(result.get("eos"))
        if finished:
            stop = stop_reason_for(result.get("eos_reason"))
            held = result.get("held")
            if isinstance(held, dict):
                # exllamav2 leaves what it held back in "held": incomplete UTF-8 and the EOS
                # token on a stop token, the matched stop string and what follows on a stop string
                text += self._without_stop_token(str(held.get("text") or ""), result)
                tokens += count_tokens(held.get("token_ids"))
            new_tokens = result.get("new_tokens")
            if isinstance(new_tokens, int) and new_tokens >= handle.tokens:
                tokens = new_tokens - handle.tokens  # the generator's own total wins
        text, stopped = handle.stops.feed(text, final=finished)
        if stopped:
            stop = "stop"
        if stop is not None:
            self._forget(handle)
            if not finished:  # our filter ended it: the generator job still runs
                self._cancel_job(handle.job)
        if not text and not tokens and stop is None:
            return
        handle.tokens += tokens
        outbox.append((handle, Chunk(text=text, tokens=tokens, stop_reason=stop)))

    def _without_stop_token(self, held_text: str, result: dict[str, Any]) -> str:
        """The held text less the EOS token's own text (non-empty when the EOS id is an ordinary token)."""
        token_id = result.get("eos_triggering_token_id")
        piece_of = getattr(self._backend, "token_text", None)
        if result.get("eos_reason") != "stop_token" or not isinstance(token_id, int) or not callable(piece_of):
            return held_text
        piece = str(piece_of(token_id))
        return held_text[: -len(piece)] if piece and held_text.endswith(piece) else held_text

    @staticmethod
    def _send(outbox: _Outbox) -> None:
        """One ``call_soon_threadsafe`` per event loop for everything one step produced."""
        if not outbox:
            return
        loop = outbox[0][0].loop
        if all(handle.loop is loop for handle, _ in outbox):
            batches = {loop: outbox}
        else:
            batches = {}
            for handle, item in outbox:
                batches.setdefault(handle.loop, []).append((handle, item))
        for target, batch in batches.items():
            with contextlib.suppress(RuntimeError):  # the consumer's loop is closed: nobody listens
                target.call_soon_threadsafe(_receive, batch)

    def _recover(self, exc: Exception) -> None:
        log.error("exllamav2 iterate() failed: %s", _one_line(exc), exc_info=exc)
        # reset first, then answer the jobs: a consumer that sees the error sees a truthful health()
        reset = getattr(self._backend, "reset", None)
        try:
            if callable(reset):
                reset()
        except Exception as reset_exc:
            self._broken = f"generator cannot recover: {_one_line(reset_exc)}"
        if self._broken is None and "CUDA error" in str(exc):
            self._broken = f"GPU error: {_one_line(exc)}"
        self._fail_all(EngineError(f"generation failed: {_one_line(exc)}"))

    def _fail_all(self, error: EngineError) -> None:
        handles = list(self._state.by_ident.values())
        for handle in handles:
            self._forget(handle)
            with contextlib.suppress(Exception):
                self._cancel_job(handle.job)
            self._deliver(handle, error)

    def _shutdown_jobs(self) -> None:
        self._fail_all(EngineError("the worker is shutting down", code="shutdown"))

    @classmethod
    def _deliver(cls, handle: JobHandle, item: Chunk | BaseException) -> None:
        cls._send([(handle, item)])

    # -- loading ------------------------------------------------------------------------------

    def _check_model_dir(self) -> None:
        d = self.model_dir
        if not d.exists():
            raise EngineUnavailable(f"model directory {d} does not exist")
        if not d.is_dir():
            raise EngineUnavailable(f"model directory {d} is not a directory")
        config = d / "config.json"
        if not config.is_file():
            raise EngineUnavailable(f"model directory {d} has no config.json")
        try:
            json.loads(config.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise EngineUnavailable(f"{config} is unreadable: {_one_line(exc)}") from None
        try:
            has_weights = any(d.glob("*.safetensors"))
        except OSError as exc:
            raise EngineUnavailable(f"model directory {d} is unreadable: {_one_line(exc)}") from None
        if not has_weights:
            raise EngineUnavailable(f"model directory {d} has no *.safetensors weights")

    def _load(self) -> ExLlamaV2Backend:
        try:
            import torch  # type: ignore[import-not-found, unused-ignore]
        except ImportError:
            raise EngineUnavailable(INSTALL_HINT) from None
        if not torch.cuda.is_available():
            raise EngineUnavailable(NO_CUDA)
        try:
            import exllamav2  # type: ignore[import-not-found, unused-ignore]
            from exllamav2 import attn as exl_attn  # type: ignore[import-not-found, unused-ignore]
            from exllamav2.generator import (  # type: ignore[import-not-found, unused-ignore]
                ExLlamaV2DynamicGenerator,
                ExLlamaV2DynamicJob,
                ExLlamaV2Sampler,
            )
        except ImportError:
            raise EngineUnavailable(INSTALL_HINT) from None
        except Exception as exc:  # e.g. the CUDA extension failed to build
            raise EngineUnavailable(f"exllamav2 failed to import: {_one_line(exc)}") from None

        paged = bool(getattr(exl_attn, "has_flash_attn_with_paged", False))
        flash = bool(getattr(exl_attn, "has_flash_attn", False))
        seq_len = max(256, math.ceil(self.max_seq_len / 256) * 256)
        try:
            config = exllamav2.ExLlamaV2Config(str(self.model_dir))
            config.arch_compat_overrides(quiet=True)
            if not flash:
                # torch-SDPA gives wrong prefill without flash-attn (see docs/gpu.md)
                config.no_sdpa = True
            config.max_seq_len = seq_len
            tokenizer = exllamav2.ExLlamaV2Tokenizer(config)
            eos_ids = eos_token_ids(config, tokenizer)
            if not eos_ids:  # checked before the weights load: a generator without one never stops
                raise EngineUnavailable(
                    f"the model in {self.model_dir} declares no EOS token id "
                    "(config.json, generation_config.json or tokenizer_config.json)"
                )
            model = exllamav2.ExLlamaV2(config)
            cache = exllamav2.ExLlamaV2Cache(model, max_seq_len=seq_len * (PAGED_BATCH if paged else 1), lazy=True)
            model.load_autosplit(cache, progress=False)
            if paged:
                generator = ExLlamaV2DynamicGenerator(
                    model=model,
                    cache=cache,
                    tokenizer=tokenizer,
                    max_batch_size=PAGED_BATCH,
                    paged=True,
                )
            else:
                generator = ExLlamaV2DynamicGenerator(model=model, cache=cache, tokenizer=tokenizer, paged=False)
            generator.warmup()
            device = str(torch.cuda.get_device_name(0))
            backend = ExLlamaV2Backend(
                generator=generator,
                tokenizer=tokenizer,
                settings_cls=ExLlamaV2Sampler.Settings,
                job_cls=ExLlamaV2DynamicJob,
                max_seq_len=seq_len,
                paged=paged,
                flash_attn=flash,
                device=device,
                max_concurrency=PAGED_BATCH if paged else 1,
                eos_token_ids=eos_ids,
            )
        except EngineUnavailable:
            raise
        except Exception as exc:
            raise EngineUnavailable(f"could not load the model from {self.model_dir}: {_one_line(exc)}") from None
        self.max_seq_len = seq_len
        return backend


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
