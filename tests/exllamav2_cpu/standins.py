"""Python stand-ins for the two parts of exllamav2 that need a GPU, so its real generator runs on CPU.

Only these are replaced; everything else is the real ``exllamav2==0.3.2`` package: config,
tokenizer, ``ExLlamaV2DynamicGenerator`` (scheduler, page table, jobs, held-back UTF-8, stop
tokens and stop strings, ``max_new_tokens``), ``ExLlamaV2DynamicJob`` and
``ExLlamaV2Sampler.Settings``.

1. The compiled extension ``exllamav2_ext`` (CUDA kernels plus a few CPU helpers) becomes a small
   Python module with the functions the dynamic generator calls on an unpaged FP16 model:
   ``sample_basic`` (temperature, top-k, top-p, min-p, by inverse CDF on the job's own uniform
   draw, as the C++ does), ``apply_rep_penalty`` (the warm-up's default settings),
   ``partial_strings_match`` (the stop-string scan, same return codes:
   index of a full match, -2 for a partial match at the end, -1 for none), ``count_match`` and
   ``fast_fill_cpu_ones_bool``. Any other extension function raises ``NotImplementedError``
   naming itself, so a code path this stand-in does not cover fails loudly instead of passing.
2. The model's forward pass (``ExLlamaV2.forward_chunk``) and weight loading
   (``ExLlamaV2.load_autosplit``) become a deterministic toy model: the weights are not read; the
   next token is the prompt's tokens repeated cyclically (``ECHO``), given a margin of
   ``MARGIN`` logits over seeded noise that depends only on (position, previous token). Greedy
   output is therefore exact and repeatable, and sampling at temperature 1 departs from the echo
   now and then, differently for each seed. Two prompt prefixes steer it for tests:
   ``#ids 5 6 2`` makes the continuation those token ids first (then the echo), so a test can
   produce EOS (id 2) or split UTF-8 exactly where it wants; ``#fail`` makes the decode step
   raise ``RuntimeError`` (an ``iterate()`` failure the engine must recover from).
3. ``torch.cuda.is_available`` answers True and ``get_device_name`` names this stand-in, so the
   engine's own start-up path (``ExLlamaV2Engine._load``) runs unchanged.

``DUALCALL_STANDIN_STEP_MS`` (default 0) makes each forward call sleep that long without the GIL,
the way a real step waits for the GPU; the streaming benchmark uses it.

What this does NOT cover: the CUDA kernels, attention, the cache tensors and any numerical
result. Whether the real model computes the right logits only the GPU check shows
(``scripts/gpu-check.sh``, which compares with HF transformers).
"""

from __future__ import annotations

import itertools
import math
import os
import sys
import time
import types
from pathlib import Path
from typing import Any

ECHO = "echo"
MARGIN = 8.0
SCRIPT_PREFIX = "#ids"
FAIL_PREFIX = "#fail"
DEVICE_NAME = "CPU stand-in (no CUDA; tests/exllamav2_cpu/standins.py)"

_state = {"installed": False}


# ---------------------------------------------------------------------------------------------
# 1. the extension


def _unsupported(name: str) -> Any:
    def call(*args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"exllamav2_ext.{name} has no CPU stand-in (tests/exllamav2_cpu/standins.py)")

    return call


def sample_basic(  # noqa: PLR0917 - the extension's positional signature
    logits: Any,
    temperature: float,
    top_k: int,
    top_p: float,
    top_a: float,
    min_p: float,
    tfs: float,
    typical: float,
    random: float,
    output_tokens: Any,
    output_probs: Any,
    output_kprobs: Any,
    output_ktokens: Any,
    logit_filter: Any,
    mirostat: bool,
    mirostat_mu: list[float],
    mirostat_tau: float,
    mirostat_eta: float,
    post_temperature: float,
    xtc_mask: Any,
    xtc_probability: float,
    xtc_threshold: float,
    min_temp: float,
    max_temp: float,
    temp_exponent: float,
    smoothing_factor: float,
    skew: float,
) -> list[float]:
    """Temperature / top-k / top-p / min-p sampling on the job's uniform draw ``random``."""
    import torch

    neutral = (top_a == 0.0, tfs in (0.0, 1.0), typical in (0.0, 1.0), not mirostat, xtc_probability == 0.0)
    if not all(neutral) or smoothing_factor or skew or max_temp > min_temp:
        raise NotImplementedError("sample_basic stand-in: only temperature, top_k, top_p and min_p are supported")
    for row in range(logits.shape[0]):
        scores = logits[row, 0].double().clone()
        if logit_filter is not None and logit_filter.device.type != "meta":
            scores[~logit_filter[row]] = -math.inf
        temp = temperature * post_temperature
        if top_k == 1 or temp <= 0.0:
            token = int(torch.argmax(scores))
            prob = 1.0
        else:
            probs = torch.softmax(scores / temp, dim=-1)
            sorted_probs, order = torch.sort(probs, descending=True)
            keep = sorted_probs.numel() if top_k <= 0 else min(top_k, sorted_probs.numel())
            if 0.0 < top_p < 1.0:
                cumulative = torch.cumsum(sorted_probs, 0)
                keep = min(keep, int(torch.searchsorted(cumulative, torch.tensor(top_p, dtype=cumulative.dtype))) + 1)
            if min_p > 0.0:
                keep = min(keep, max(1, int((sorted_probs >= min_p * sorted_probs[0]).sum())))
            kept = sorted_probs[:keep] / sorted_probs[:keep].sum()
            index = int(torch.searchsorted(torch.cumsum(kept, 0), torch.tensor(random, dtype=kept.dtype)))
            index = min(index, keep - 1)
            token = int(order[index])
            prob = float(kept[index])
        output_tokens[row, 0] = token
        output_probs[row, 0] = prob
    return list(mirostat_mu)


def partial_strings_match(match: Any, offsets: Any, strings: Any) -> int:
    """exllamav2's stop-string scan: index of a full match, -2 for a partial one at the end, else -1.

    Same order as the C++: strings in turn, each scanned from the left; the first full or
    partial (running off the end of the text) match decides.
    """
    import numpy as np

    text = bytes(np.asarray(match, dtype=np.uint8)).decode("utf-32-le")
    bounds = np.frombuffer(bytes(np.asarray(offsets, dtype=np.uint8)), dtype=np.int32).tolist()
    packed = bytes(np.asarray(strings, dtype=np.uint8))
    for begin, end in itertools.pairwise(bounds):
        stop = packed[begin:end].decode("utf-32-le")
        if not stop:
            continue
        for start in range(len(text)):
            tail = text[start:]
            if tail.startswith(stop):
                return start
            if len(tail) < len(stop) and stop.startswith(tail):
                return -2
    return -1


def count_match(a: Any, b: Any, max_a: int) -> int:
    """Number of equal leading ids of ``a[:, :max_a]`` and ``b`` (prefix-cache page reuse)."""
    left = a.reshape(-1)[:max_a].tolist()
    right = b.reshape(-1).tolist()
    n = 0
    for x, y in zip(left, right, strict=False):
        if x != y:
            break
        n += 1
    return n


def apply_rep_penalty(  # noqa: PLR0917 - the extension's positional signature
    sequence_ids: Any,
    penalty: float,
    penalty_range: int,
    decay: int,
    frequency_penalty: float,
    presence_penalty: float,
    logits: Any,
) -> None:
    """Repetition penalty over the last ``penalty_range`` ids (all when < 0); no decay ramp.

    Only the generator's warm-up uses it: the engine sets the penalty to 1.0 (off).
    """
    for row in range(logits.shape[0]):
        ids = sequence_ids[row].tolist()
        if penalty_range >= 0:
            ids = ids[-penalty_range:] if penalty_range else []
        counts: dict[int, int] = {}
        for token in ids:
            counts[token] = counts.get(token, 0) + 1
        scores = logits[row, 0]
        for token, count in counts.items():
            if 0 <= token < scores.shape[-1]:
                value = float(scores[token])
                value = value / penalty if value > 0 else value * penalty
                scores[token] = value - frequency_penalty * count - presence_penalty


def fast_fill_cpu_ones_bool(tensor: Any) -> None:
    tensor.fill_(True)


def extension_module() -> types.ModuleType:
    ext = types.ModuleType("exllamav2_ext")
    ext.__doc__ = "CPU stand-in for exllamav2's compiled extension (tests/exllamav2_cpu/standins.py)"
    for fn in (sample_basic, partial_strings_match, count_match, apply_rep_penalty, fast_fill_cpu_ones_bool):
        setattr(ext, fn.__name__, fn)

    def __getattr__(name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _unsupported(name)

    ext.__getattr__ = __getattr__  # type: ignore[method-assign]
    return ext


# ---------------------------------------------------------------------------------------------
# 2. the model


class ToyModelState:
    """The toy model's view of the one sequence in the (unpaged) cache."""

    def __init__(self, model_dir: str, vocab_size: int, bos_id: int | None) -> None:
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
        self.vocab_size = vocab_size
        self.padded_vocab = (vocab_size + 31) // 32 * 32
        self.bos_id = bos_id
        self.history: list[int] = []
        self.prompt_len: int | None = None
        self.script: list[int] = []
        self.fail = False
        self.step_s = float(os.environ.get("DUALCALL_STANDIN_STEP_MS", "0") or 0) / 1000
        self.forward_calls = 0

    def start_prompt(self) -> None:
        self.prompt_len = len(self.history)
        body = self.body()
        text = self.tokenizer.decode(body)
        self.fail = text.startswith(FAIL_PREFIX)
        self.script = []
        if text.startswith(SCRIPT_PREFIX):
            words = text[len(SCRIPT_PREFIX) :].split()
            self.script = [int(w) for w in words if w.isdigit()]

    def body(self) -> list[int]:
        prompt = self.history[: self.prompt_len]
        return prompt[1:] if prompt and prompt[0] == self.bos_id else prompt

    def next_logits(self) -> Any:
        import torch

        assert self.prompt_len is not None
        generated = len(self.history) - self.prompt_len
        body = self.body() or [0]
        if generated < len(self.script):
            target = self.script[generated]
        else:
            target = body[(generated - len(self.script)) % len(body)]
        rng = torch.Generator().manual_seed((len(self.history) * 1_000_003 + self.history[-1]) % (2**31 - 1))
        logits = torch.randn(self.padded_vocab, generator=rng, dtype=torch.float32)
        logits[self.vocab_size :] = -math.inf
        logits[target] += MARGIN
        return logits


def _load_autosplit(self: Any, cache: Any, *args: Any, **kwargs: Any) -> None:
    """No weights are read: the toy model needs none."""
    config = self.config
    tokenizer_bos = config.bos_token_id if isinstance(config.bos_token_id, int) else None
    self._dualcall_toy = ToyModelState(config.model_dir, int(config.vocab_size), tokenizer_bos)
    self.loaded = True


def _forward_chunk(  # noqa: PLR0917 - ExLlamaV2.forward_chunk's signature
    self: Any,
    input_ids: Any,
    cache: Any = None,
    input_mask: Any = None,
    preprocess_only: bool = False,
    last_id_only: bool = False,
    loras: Any = None,
    return_last_state: bool = False,
    position_offsets: Any = None,
    abort_event: Any = None,
    attn_params: Any = None,
    extract_state_indices: Any = None,
    **kwargs: Any,
) -> Any:
    import torch

    toy: ToyModelState = self._dualcall_toy
    toy.forward_calls += 1
    if toy.step_s:
        time.sleep(toy.step_s)
    assert input_ids.shape[0] == 1, "the toy model serves the unpaged generator: one sequence"
    past = int(attn_params.past_len) if attn_params is not None else int(getattr(cache, "current_seq_len", 0))
    if preprocess_only or past != len(toy.history):
        # a new job: its prefill, or (prompt prefix reused from the cache) its first decode step
        toy.prompt_len = None
    toy.history = toy.history[:past] + [int(x) for x in input_ids[0].tolist()]
    if preprocess_only:
        return None
    if toy.prompt_len is None:
        toy.start_prompt()
    if toy.fail:
        raise RuntimeError("stand-in forward failure (#fail prompt)")
    logits = toy.next_logits()
    q = input_ids.shape[1]
    out = torch.full((1, q, toy.padded_vocab), -math.inf, dtype=torch.float32)
    out[0, q - 1] = logits
    return {"logits": out}


# ---------------------------------------------------------------------------------------------


def install() -> None:
    """Put the stand-ins in place, then import the real exllamav2. Idempotent."""
    if _state["installed"]:
        return
    if "exllamav2" in sys.modules:
        raise RuntimeError("install() must run before exllamav2 is imported")
    sys.modules["exllamav2_ext"] = extension_module()
    import torch

    torch.cuda.is_available = lambda: True
    torch.cuda.get_device_name = lambda device=None: DEVICE_NAME
    import exllamav2

    exllamav2.ExLlamaV2.load_autosplit = _load_autosplit
    exllamav2.ExLlamaV2.forward_chunk = _forward_chunk
    _state["installed"] = True
