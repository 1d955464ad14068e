"""The mock engine: deterministic (DC-2.14), honours max_tokens and stop (DC-2.13), tricky tokens."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import pytest

from workers.engines.base import Chunk, EngineError, GenerationRequest
from workers.engines.mock import VOCABULARY, MockEngine


def run(engine: MockEngine, request: GenerationRequest) -> list[Chunk]:
    async def collect() -> list[Chunk]:
        return [chunk async for chunk in engine.generate(request)]

    return asyncio.run(collect())


def texts(chunks: list[Chunk]) -> list[str]:
    return [chunk.text for chunk in chunks if chunk.text]


def request(**overrides: object) -> GenerationRequest:
    fields: dict[str, object] = {"prompt": "Tell me about workers", "max_tokens": 40, "temperature": 0.8, "seed": 7}
    fields.update(overrides)
    return GenerationRequest(**fields)  # type: ignore[arg-type]


# -- determinism ---------------------------------------------------------------------------------


def test_same_request_same_chunks() -> None:
    req = request()
    assert run(MockEngine(), req) == run(MockEngine(), req)
    assert MockEngine().tokens(req) == MockEngine().tokens(req)


def test_different_seed_with_temperature_gives_different_tokens() -> None:
    assert MockEngine().tokens(request(seed=1)) != MockEngine().tokens(request(seed=2))


def test_temperature_zero_ignores_seed() -> None:
    greedy = [MockEngine().tokens(request(temperature=0, seed=seed)) for seed in (None, 0, 1, 2**63 - 1)]
    assert all(tokens == greedy[0] for tokens in greedy)


def test_different_prompt_gives_different_tokens() -> None:
    assert MockEngine().tokens(request(prompt="a")) != MockEngine().tokens(request(prompt="b"))


def test_shorter_max_tokens_is_a_prefix() -> None:
    long = MockEngine().tokens(request(max_tokens=50))
    short = MockEngine().tokens(request(max_tokens=13))
    assert short == long[:13]
    assert texts(run(MockEngine(), request(max_tokens=13))) == long[:13]


def test_generate_matches_tokens_without_stop() -> None:
    req = request(max_tokens=30)
    chunks = run(MockEngine(), req)
    assert "".join(c.text for c in chunks) == "".join(MockEngine().tokens(req))
    assert sum(c.tokens for c in chunks) == 30


_CHILD = """
import json
from workers.engines.base import GenerationRequest
from workers.engines.mock import MockEngine
req = GenerationRequest(prompt="Déterminisme 🚀 across processes", max_tokens=25, temperature=0.9, top_p=0.8,
                        top_k=12, seed=123456789)
print(json.dumps(MockEngine().tokens(req)))
"""


def test_deterministic_across_processes() -> None:
    """hash() of a str is salted per process; the mock must not depend on it."""
    outputs = []
    for hash_seed in ("1", "4242"):
        env = dict(os.environ, PYTHONHASHSEED=hash_seed)
        done = subprocess.run(
            [sys.executable, "-c", _CHILD],
            check=False,
            capture_output=True,
            text=True,
            encoding="utf-8",
            env=env,
            timeout=30,
        )
        assert done.returncode == 0, done.stderr
        outputs.append(json.loads(done.stdout))
    assert outputs[0] == outputs[1]
    assert len(outputs[0]) == 25
    in_process = MockEngine().tokens(
        GenerationRequest(
            prompt="Déterminisme 🚀 across processes",
            max_tokens=25,
            temperature=0.9,
            top_p=0.8,
            top_k=12,
            seed=123456789,
        )
    )
    assert outputs[0] == in_process


# -- every parameter the contract allows (DC-1.1, DC-2.15) -------------------------------------------------------

#: 0 < temperature <= 100 (0 is greedy); the smallest ones once overflowed ``(1 + rank) ** (1 / t)``
BOUNDARY_TEMPERATURES = (5e-324, 1e-300, 1e-6, 1e-3, 0.002, 0.0049, 0.5, 1.0, 99.0, 100.0)


@pytest.mark.parametrize("temperature", BOUNDARY_TEMPERATURES)
@pytest.mark.parametrize("top_p", [5e-324, 0.5, 1.0])
@pytest.mark.parametrize("top_k", [0, 1, 100_000])
@pytest.mark.parametrize("seed", [None, 0, 2**63 - 1])
def test_boundary_sampling_parameters_generate(temperature: float, top_p: float, top_k: int, seed: int | None) -> None:
    """Every valid combination runs to max_tokens, deterministically per seed; none raises."""
    req = request(temperature=temperature, top_p=top_p, top_k=top_k, seed=seed, max_tokens=12)
    chunks = run(MockEngine(), req)
    assert chunks[-1].stop_reason == "max_tokens"
    assert sum(chunk.tokens for chunk in chunks) == 12
    assert all(text in VOCABULARY for text in texts(chunks))
    assert texts(chunks) == MockEngine().tokens(req) == MockEngine().tokens(req)


# -- limits -----------------------------------------------------------------------------------


@pytest.mark.parametrize("max_tokens", [1, 2, 17, 64])
def test_max_tokens_honoured(max_tokens: int) -> None:
    chunks = run(MockEngine(), request(max_tokens=max_tokens))
    assert sum(c.tokens for c in chunks) == max_tokens
    assert len(texts(chunks)) == max_tokens  # the mock emits one model token per chunk
    assert chunks[-1].stop_reason == "max_tokens"
    assert all(c.stop_reason is None for c in chunks[:-1])


def _stop_candidates() -> tuple[GenerationRequest, list[str]]:
    req = request(max_tokens=60)
    return req, MockEngine().tokens(req)


def test_stop_string_single_token() -> None:
    req, tokens = _stop_candidates()
    stop = tokens[10]
    first = "".join(tokens).find(stop)
    chunks = run(MockEngine(), GenerationRequest(**{**_fields(req), "stop": (stop,)}))
    text = "".join(c.text for c in chunks)
    assert stop not in text
    assert chunks[-1].stop_reason == "stop"
    assert text == "".join(tokens)[:first]
    assert sum(c.tokens for c in chunks) <= req.max_tokens


def test_stop_string_spanning_two_tokens() -> None:
    req, tokens = _stop_candidates()
    full = "".join(tokens)
    # a stop string made of the last character of one token and the first of the next, whose first
    # occurrence in the completion really straddles that token boundary
    boundary = 0
    for i in range(len(tokens) - 1):
        boundary += len(tokens[i])
        stop = tokens[i][-1] + tokens[i + 1][0]
        if full.find(stop) == boundary - 1:
            break
    else:
        pytest.fail("no token pair forms a boundary-straddling stop string")
    chunks = run(MockEngine(), GenerationRequest(**{**_fields(req), "stop": (stop,)}))
    text = "".join(c.text for c in chunks)
    assert stop not in text
    assert text == full[: boundary - 1]
    assert chunks[-1].stop_reason == "stop"
    # the held-back first half is never emitted: every chunk before the last carries text
    assert all(c.text for c in chunks[:-1])


def test_stop_string_never_matching_runs_to_max_tokens() -> None:
    req, tokens = _stop_candidates()
    chunks = run(MockEngine(), GenerationRequest(**{**_fields(req), "stop": ("ZZZ-not-in-vocabulary",)}))
    assert "".join(c.text for c in chunks) == "".join(tokens)
    assert chunks[-1].stop_reason == "max_tokens"


def test_earliest_of_several_stop_strings_wins() -> None:
    req, tokens = _stop_candidates()
    full = "".join(tokens)
    late, early = tokens[30], tokens[5]
    chunks = run(MockEngine(), GenerationRequest(**{**_fields(req), "stop": (late, early)}))
    text = "".join(c.text for c in chunks)
    assert text == full[: min(full.find(late), full.find(early))]
    assert late not in text
    assert early not in text


def _fields(req: GenerationRequest) -> dict[str, object]:
    return {name: getattr(req, name) for name in GenerationRequest.__slots__}


# -- vocabulary and failures ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "token", ["\n", "\r\n", "\r", "\n\n", "data: [DONE]", "[DONE]", ": comment", "id: 7", "event: end", "🚀", "\u2028"]
)
def test_tricky_vocabulary_present(token: str) -> None:
    assert token in VOCABULARY


def test_tricky_tokens_are_actually_generated() -> None:
    seen: set[str] = set()
    for seed in range(20):
        seen.update(MockEngine().tokens(request(seed=seed, max_tokens=64)))
    assert {"\n", "\r", "[DONE]", "data: [DONE]"} <= seen


def test_fail_after_raises_engine_error() -> None:
    engine = MockEngine(fail_after_tokens=3)
    got: list[Chunk] = []

    async def collect() -> None:
        async for chunk in engine.generate(request(max_tokens=10)):
            got.append(chunk)

    with pytest.raises(EngineError) as info:
        asyncio.run(collect())
    assert info.value.code == "simulated_failure"
    assert len(got) == 3


def test_fail_prompt_fails_only_matching_jobs() -> None:
    engine = MockEngine(fail_after_tokens=2, fail_prompt="BOOM")

    async def collect(prompt: str) -> list[Chunk]:
        return [chunk async for chunk in engine.generate(request(prompt=prompt, max_tokens=6))]

    with pytest.raises(EngineError):
        asyncio.run(collect("say BOOM"))
    chunks = asyncio.run(collect("calm"))
    assert sum(chunk.tokens for chunk in chunks) == 6


def test_health_follows_lifecycle() -> None:
    engine = MockEngine()
    asyncio.run(engine.start())
    assert engine.health().ok
    asyncio.run(engine.close())
    assert not engine.health().ok


def test_negative_delay_rejected() -> None:
    with pytest.raises(ValueError, match="delay"):
        MockEngine(token_delay_s=-1)
