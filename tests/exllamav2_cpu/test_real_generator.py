"""Our exllamav2 engine on the REAL exllamav2 0.3.2 generator, on CPU, through the worker over HTTP.

Run with ``tox -e exllamav2-cpu`` (installs the ``exllamav2==0.3.2`` wheel without its CUDA
extension, and CPU torch). The worker is ``python -m workers exllamav2`` on loopback (real
uvicorn), loading the checkpoint ``python -m workers.tinymodel`` writes with the real
``ExLlamaV2Config`` and ``ExLlamaV2Tokenizer``, and serving jobs through the real
``ExLlamaV2DynamicGenerator``, ``ExLlamaV2DynamicJob`` and ``ExLlamaV2Sampler.Settings``: the
library's own scheduler, job state, held-back UTF-8, stop tokens, stop strings and
``max_new_tokens`` logic. Only the compiled extension and the model's forward pass are
replaced, by the documented Python stand-ins in ``tests/exllamav2_cpu/standins.py`` (a toy model
that echoes the prompt; ``#ids …`` prompts script exact token ids; ``#fail`` makes a step raise).

What this does NOT cover: the CUDA kernels, attention, the KV cache tensors, and numerical
equality of the logits with a reference implementation. Those only the GPU check shows
(``scripts/gpu-check.sh``: a teacher-forced comparison with HF transformers on a real GPU).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import connect_sse

from exllamav2_cpu.conftest import MAX_SEQ_LEN, MISSING, SERVE, STEP_MS, StandInWorker, build_model, rewrite_json

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        bool(MISSING),
        reason=f"{', '.join(MISSING)} not installed: `tox -e exllamav2-cpu` runs these on the real exllamav2 generator",
    ),
]

TIMEOUT = httpx.Timeout(30.0)


def token_ids(model: Path, text: str) -> list[int]:
    from tokenizers import Tokenizer

    return list(Tokenizer.from_file(str(model / "tokenizer.json")).encode(text).ids)


def run_job(base: str, body: dict[str, Any], *, cancel_after: int | None = None) -> dict[str, Any]:
    """POST a job, read its stream to the end (DELETE it after ``cancel_after`` tokens)."""
    with httpx.Client(base_url=base, timeout=TIMEOUT) as client:
        submitted = client.post("/v1/inference", json=body)
        assert submitted.status_code == 202, submitted.text
        sub = submitted.json()
        out: dict[str, Any] = {"job_id": sub["job_id"], "texts": [], "end": None, "error": None}
        with connect_sse(client, "GET", sub["sse_url"]) as source:
            for sse in source.iter_sse():
                if sse.data == "[DONE]":
                    break
                if sse.event == "token":
                    out["texts"].append(json.loads(sse.data)["text"])
                    if cancel_after is not None and len(out["texts"]) == cancel_after:
                        out["delete_status"] = client.delete(f"/v1/inference/{sub['job_id']}").status_code
                elif sse.event in ("end", "error"):
                    out[sse.event] = json.loads(sse.data)
    out["text"] = "".join(out["texts"])
    return out


def greedy(base: str, prompt: str, max_tokens: int, **extra: Any) -> dict[str, Any]:
    return run_job(base, {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, **extra})


def echo(prompt: str, n_chars: int) -> str:
    """The toy model's greedy continuation: the prompt repeated (for prompts whose tokens re-split the same)."""
    return (prompt * (n_chars // max(1, len(prompt)) + 2))[:n_chars]


# ---------------------------------------------------------------------------------------------


def test_health_advertises_a_cap_the_context_can_serve(worker: StandInWorker) -> None:
    health = httpx.get(worker.url + "/health", timeout=TIMEOUT).json()
    assert health["status"] == "ok"
    assert health["engine"] == "exllamav2"
    assert health["max_tokens_cap"] == MAX_SEQ_LEN - 2  # the context minus BOS and one prompt token
    assert health["max_tokens_limit"] == MAX_SEQ_LEN - 2
    assert "stand-in" in health["device"]
    assert health["mode"] == "unpaged"


def test_greedy_is_repeatable_and_is_the_toy_models_echo(worker: StandInWorker) -> None:
    prompt = "The quick brown fox "
    first = greedy(worker.url, prompt, 30)
    again = greedy(worker.url, prompt, 30)
    assert first["end"]["stop_reason"] == "max_tokens"
    assert first["end"]["tokens_out"] == 30
    assert first["text"] == again["text"]
    assert first["text"].startswith(prompt + "The quick")


def test_seeded_sampling_is_repeatable_and_the_seed_matters(worker: StandInWorker) -> None:
    body = {"prompt": "In the spring the market ", "max_tokens": 48, "temperature": 1.0}
    a1 = run_job(worker.url, {**body, "seed": 1})
    a2 = run_job(worker.url, {**body, "seed": 1})
    b = run_job(worker.url, {**body, "seed": 2})
    assert a1["end"]["tokens_out"] == 48
    assert a1["text"] == a2["text"]
    assert a1["text"] != b["text"]


def test_stop_string_ends_the_text_before_it(worker: StandInWorker) -> None:
    job = greedy(worker.url, "abc STOP def ", 40, stop=["STOP"])
    assert job["text"] == "abc "
    assert job["end"]["stop_reason"] == "stop"


def test_stop_completed_on_the_last_allowed_token(worker: StandInWorker, tiny_model: Path) -> None:
    prompt = "ab STOP"
    n = len(token_ids(tiny_model, prompt))  # the echo reaches the end of "STOP" on token n
    plain = greedy(worker.url, prompt, n)
    assert plain["text"] == prompt  # the setup: the last allowed token completes the stop string
    job = greedy(worker.url, prompt, n, stop=["STOP"])
    assert job["text"] == "ab "
    assert job["end"]["stop_reason"] == "stop"
    assert job["end"]["tokens_out"] == n


def test_stop_in_held_utf8_followed_by_eos(worker: StandInWorker, tiny_model: Path) -> None:
    first_byte_of_e_acute = token_ids(tiny_model, "é")[0]
    ids = [first_byte_of_e_acute, *token_ids(tiny_model, "STOP"), 2]  # 2 = EOS
    job = greedy(worker.url, "#ids " + " ".join(map(str, ids)), 20, stop=["STOP"])
    assert "STOP" not in job["text"]
    assert job["end"]["stop_reason"] == "stop"


def test_eos_ends_the_job(worker: StandInWorker, tiny_model: Path) -> None:
    ids = [*token_ids(tiny_model, "hi"), 2]
    job = greedy(worker.url, "#ids " + " ".join(map(str, ids)), 20)
    assert job["text"] == "hi"
    assert job["end"]["stop_reason"] == "eos"
    assert job["end"]["tokens_out"] == len(ids)


def test_cancel_then_the_next_job_is_correct(worker: StandInWorker) -> None:
    long = run_job(worker.url, {"prompt": "Numbers can tell stories. ", "max_tokens": 400}, cancel_after=3)
    assert long["delete_status"] in (200, 202, 204)
    assert long["end"]["stop_reason"] == "cancelled"
    assert long["end"]["tokens_out"] < 400
    prompt = "After the cancel, "
    nxt = greedy(worker.url, prompt, 25)
    assert nxt["end"]["stop_reason"] == "max_tokens"
    assert nxt["text"].startswith(prompt + "After")


def test_iterate_raising_fails_the_job_and_the_generator_recovers(worker: StandInWorker) -> None:
    failed = greedy(worker.url, "#fail now", 10)
    assert failed["end"] is None
    assert failed["error"] is not None
    assert "stand-in forward failure" in json.dumps(failed["error"])
    assert httpx.get(worker.url + "/health", timeout=TIMEOUT).status_code == 200
    prompt = "Recovered and well "
    nxt = greedy(worker.url, prompt, 25)
    assert nxt["end"]["stop_reason"] == "max_tokens"
    assert nxt["text"].startswith(prompt + "Recovered")


def test_context_limit(worker: StandInWorker, tiny_model: Path) -> None:
    # a max_tokens above the cap is clamped to what the context can serve, and that much runs
    full = greedy(worker.url, "a", 4000)
    assert full["end"]["stop_reason"] == "max_tokens"
    assert full["end"]["tokens_out"] == MAX_SEQ_LEN - 2
    # a prompt that leaves no room is refused with the contract's error, not a crash
    long_prompt = "lorem ipsum dolor " * 60
    assert len(token_ids(tiny_model, long_prompt)) + 200 > MAX_SEQ_LEN
    refused = greedy(worker.url, long_prompt, 200)
    assert refused["end"] is None
    assert refused["error"]["code"] == "context_length_exceeded"
    assert greedy(worker.url, "still fine ", 5)["end"]["tokens_out"] == 5


def test_twenty_concurrent_jobs(worker: StandInWorker) -> None:
    prompts = [f"Job number {i} says hello. " for i in range(20)]
    with ThreadPoolExecutor(max_workers=20) as pool:
        jobs = list(pool.map(lambda p: greedy(worker.url, p, 24), prompts))
    for prompt, job in zip(prompts, jobs, strict=True):
        assert job["end"]["stop_reason"] == "max_tokens"
        assert job["end"]["tokens_out"] == 24
        assert job["text"].startswith(prompt[:12])
    assert httpx.get(worker.url + "/health", timeout=TIMEOUT).json()["jobs"] == 0


def test_full_conformance_suite(tiny_model: Path) -> None:
    """Every check, auth on (so DC-SVC-005 runs), a 2 s TTL (so the lifetime checks run).

    The cap is configured below the context: the suite's long jobs use max_tokens = cap with its
    own prompt, and a prompt plus the context-minus-BOS cap would not fit (that refusal is
    `test_context_limit`'s subject).
    """
    from conformance.context import Options
    from conformance.runner import RunConfig, run

    token = "cpu-conformance-token"
    args = ("--model", str(tiny_model), "--max-seq-len", str(MAX_SEQ_LEN), "--max-tokens-cap", "256")
    args += ("--ttl-s", "2", "--keepalive-s", "1", "--auth-token", token)
    env = {**os.environ, "DUALCALL_STANDIN_STEP_MS": STEP_MS}
    with StandInWorker("exllamav2", *args, start_timeout_s=60, env=env) as proc:
        report = run(RunConfig(target=proc.url, options=Options(ttl_budget_s=6.0, token=token), max_examples=10))
    failed = [f"{r.id}: {r.message}" for r in report.results if r.outcome == "failed"]
    unproven = [
        f"{r.id} ({r.outcome}): {r.message}" for r in report.results if r.level == "MUST" and r.outcome != "passed"
    ]
    assert not failed, "\n".join(failed)
    assert not unproven, "\n".join(unproven)
    assert len(report.results) > 20


# ---------------------------------------------------------------------------------------------
# start-up: EOS ids


def test_model_without_eos_is_a_one_line_error_exit_2(tmp_path: Path) -> None:
    model = build_model(tmp_path / "no-eos")
    rewrite_json(model / "config.json", eos_token_id=None)
    rewrite_json(model / "generation_config.json", eos_token_id=None)
    rewrite_json(model / "tokenizer_config.json", eos_token=None)
    res = subprocess.run(
        [sys.executable, str(SERVE), "exllamav2", "--model", str(model), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert res.returncode == 2, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    sources = "(config.json, generation_config.json or tokenizer_config.json)"
    assert lines[-1] == f"dualcall-worker: the model in {model} declares no EOS token id {sources}"
    assert "Traceback" not in res.stderr


@pytest.fixture
def in_process_standins() -> Iterator[None]:
    from exllamav2_cpu import standins

    standins.install()
    yield


@pytest.mark.asyncio
async def test_every_generation_config_eos_id_stops(tmp_path: Path, in_process_standins: None) -> None:
    from workers.engines.base import GenerationRequest
    from workers.engines.exllamav2 import ExLlamaV2Engine

    model = build_model(tmp_path / "llama3-like")
    second_eos = token_ids(model, "!")[0]  # a second EOS id, as Llama 3 lists <|eot_id|>
    rewrite_json(model / "generation_config.json", eos_token_id=[2, second_eos])
    engine = ExLlamaV2Engine(model, max_seq_len=256)
    await engine.start()
    try:
        ids = [*token_ids(model, "ok"), second_eos, *token_ids(model, "never")]
        request = GenerationRequest(prompt="#ids " + " ".join(map(str, ids)), max_tokens=20, temperature=0.0)
        chunks = [chunk async for chunk in engine.generate(request)]
    finally:
        await engine.close()
    assert "".join(c.text for c in chunks) == "ok"
    assert chunks[-1].stop_reason == "eos"


# ---------------------------------------------------------------------------------------------
# the premises: what the real generator itself does (why the engine filters stop strings)


def direct_job(model: Path, prompt: str, max_new_tokens: int, stop: list[Any]) -> list[dict[str, Any]]:
    import exllamav2
    from exllamav2.generator import ExLlamaV2DynamicGenerator, ExLlamaV2DynamicJob, ExLlamaV2Sampler

    config = exllamav2.ExLlamaV2Config(str(model))
    config.max_seq_len = 256
    net = exllamav2.ExLlamaV2(config)
    cache = exllamav2.ExLlamaV2Cache(net, max_seq_len=256, lazy=True)
    net.load_autosplit(cache)
    tokenizer = exllamav2.ExLlamaV2Tokenizer(config)
    generator = ExLlamaV2DynamicGenerator(model=net, cache=cache, tokenizer=tokenizer, paged=False)
    job = ExLlamaV2DynamicJob(
        input_ids=tokenizer.encode(prompt, add_bos=True),
        max_new_tokens=max_new_tokens,
        gen_settings=ExLlamaV2Sampler.Settings.greedy(),
        stop_conditions=stop,
    )
    generator.enqueue(job)
    results: list[dict[str, Any]] = []
    deadline = time.monotonic() + 30
    while generator.num_remaining_jobs() and time.monotonic() < deadline:
        results += [r for r in generator.iterate() if r.get("stage") == "streaming"]
    return results


def test_premise_exllamav2_leaks_a_stop_string_on_the_last_token(tiny_model: Path, in_process_standins: None) -> None:
    prompt = "ab STOP"
    results = direct_job(tiny_model, prompt, len(token_ids(tiny_model, prompt)), [2, "STOP"])
    assert results[-1]["eos_reason"] == "max_new_tokens"
    assert "STOP" in "".join(r.get("text", "") for r in results)


def test_premise_exllamav2_leaks_a_stop_string_held_with_utf8(tiny_model: Path, in_process_standins: None) -> None:
    ids = [token_ids(tiny_model, "é")[0], *token_ids(tiny_model, "STOP"), 2]
    results = direct_job(tiny_model, "#ids " + " ".join(map(str, ids)), 20, [2, "STOP"])
    assert results[-1]["eos_reason"] == "stop_token"
    assert "STOP" in results[-1]["held"]["text"]
