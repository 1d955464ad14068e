"""Write a random-weight Llama checkpoint that ExLlamaV2 and HF transformers both load.

    python -m workers.tinymodel OUT_DIR [--size tiny|small] [--seed N] [--force]

The checkpoint is for tests, not for reading: FP16 ``model.safetensors`` with HF Llama tensor
names, ``config.json`` (``LlamaForCausalLM``), and a byte-level BPE ``tokenizer.json`` (vocab
512, ``<unk>``=0, ``<s>``=1, ``</s>``=2) trained on ``workers/data/tinymodel_corpus.txt``, with a
plain ``role: content`` chat template (so OpenAI-compatible servers serve chat completions).
Needs only numpy, safetensors and tokenizers (``pip install 'dualcall[tinymodel]'``); the
output is byte-identical for the same seed.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["SIZES", "ModelSize", "TinyModelError", "build", "main"]

INSTALL_HINT = "pip install 'dualcall[tinymodel]'"
CORPUS = Path(__file__).parent / "data" / "tinymodel_corpus.txt"
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")  # ids 0, 1, 2
UNK_ID, BOS_ID, EOS_ID = 0, 1, 2
MAX_POSITIONS = 2048
#: a plain-text chat template: OpenAI-compatible servers (``transformers serve``) refuse chat
#: completions for a tokenizer without one
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


@dataclass(frozen=True)
class ModelSize:
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int = 512


SIZES: dict[str, ModelSize] = {
    "tiny": ModelSize(256, 512, 2, 4, 4, 64),
    "small": ModelSize(512, 1376, 4, 8, 4, 64),
}


class TinyModelError(Exception):
    """A one-line reason the checkpoint cannot be written."""


def _imports() -> tuple[Any, Any, Any]:
    try:
        import numpy
        import safetensors.numpy
        import tokenizers
    except ImportError as exc:
        name = (exc.name or "a dependency").split(".")[0]
        raise TinyModelError(f"{name} is not installed: {INSTALL_HINT}") from None
    return numpy, safetensors.numpy, tokenizers


def config_dict(size: ModelSize) -> dict[str, Any]:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": size.hidden_size,
        "intermediate_size": size.intermediate_size,
        "num_hidden_layers": size.num_hidden_layers,
        "num_attention_heads": size.num_attention_heads,
        "num_key_value_heads": size.num_key_value_heads,
        "head_dim": size.head_dim,
        "vocab_size": size.vocab_size,
        "max_position_embeddings": MAX_POSITIONS,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "torch_dtype": "float16",
        "tie_word_embeddings": False,
        "use_cache": True,
    }


def tensor_shapes(size: ModelSize) -> dict[str, tuple[int, ...]]:
    """HF Llama tensor names → shapes, in a fixed order (the order weights are drawn in)."""
    h, i, v = size.hidden_size, size.intermediate_size, size.vocab_size
    q = size.num_attention_heads * size.head_dim
    kv = size.num_key_value_heads * size.head_dim
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (v, h)}
    for n in range(size.num_hidden_layers):
        p = f"model.layers.{n}"
        shapes[f"{p}.input_layernorm.weight"] = (h,)
        shapes[f"{p}.self_attn.q_proj.weight"] = (q, h)
        shapes[f"{p}.self_attn.k_proj.weight"] = (kv, h)
        shapes[f"{p}.self_attn.v_proj.weight"] = (kv, h)
        shapes[f"{p}.self_attn.o_proj.weight"] = (h, q)
        shapes[f"{p}.post_attention_layernorm.weight"] = (h,)
        shapes[f"{p}.mlp.gate_proj.weight"] = (i, h)
        shapes[f"{p}.mlp.up_proj.weight"] = (i, h)
        shapes[f"{p}.mlp.down_proj.weight"] = (h, i)
    shapes["model.norm.weight"] = (h,)
    shapes["lm_head.weight"] = (v, h)
    return shapes


def _weights(np: Any, size: ModelSize, seed: int) -> dict[str, Any]:
    rng = np.random.Generator(np.random.PCG64(seed))
    out: dict[str, Any] = {}
    for name, shape in tensor_shapes(size).items():
        if name.endswith("norm.weight"):
            out[name] = np.ones(shape, dtype=np.float16)
        else:
            w = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)
            out[name] = np.ascontiguousarray(w.astype(np.float16))
    return out


def _tokenizer(tk: Any, vocab_size: int) -> Any:
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = tk.Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    text = CORPUS.read_text(encoding="utf-8")
    # one paragraph per item: a fixed order, so training is deterministic
    tok.train_from_iterator([p for p in text.split("\n\n") if p.strip()], trainer=trainer)
    for token, want in zip(SPECIAL_TOKENS, (UNK_ID, BOS_ID, EOS_ID), strict=True):
        got = tok.token_to_id(token)
        if got != want:  # pragma: no cover - a tokenizers change would be a bug to fix here
            raise TinyModelError(f"tokenizer put {token} at id {got}, expected {want}")
    return tok


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def build(out_dir: str | Path, *, size: str = "tiny", seed: int = 0, force: bool = False) -> int:
    """Write the checkpoint into ``out_dir``; return its parameter count."""
    np, st, tk = _imports()
    if size not in SIZES:
        raise TinyModelError(f"unknown size {size!r}: choose one of {', '.join(SIZES)}")
    spec = SIZES[size]
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise TinyModelError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise TinyModelError(f"{out} is not empty (use --force to overwrite)")
    if not CORPUS.is_file():
        raise TinyModelError(f"tokenizer corpus {CORPUS} is missing")
    out.mkdir(parents=True, exist_ok=True)

    weights = _weights(np, spec, seed)
    st.save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    _write_json(out / "config.json", config_dict(spec))
    _write_json(
        out / "generation_config.json",
        {"bos_token_id": BOS_ID, "eos_token_id": EOS_ID, "do_sample": False},
    )

    tok = _tokenizer(tk, spec.vocab_size)
    tok.save(str(out / "tokenizer.json"))
    special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    _write_json(out / "special_tokens_map.json", special)
    added = {
        str(i): {
            "content": t,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for i, t in enumerate(SPECIAL_TOKENS)
    }
    _write_json(
        out / "tokenizer_config.json",
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "add_bos_token": True,
            "add_eos_token": False,
            "added_tokens_decoder": added,
            "clean_up_tokenization_spaces": False,
            "model_max_length": MAX_POSITIONS,
            "chat_template": CHAT_TEMPLATE,
            **special,
        },
    )
    return sum(int(w.size) for w in weights.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m workers.tinymodel",
        description="Write a random-weight Llama checkpoint for GPU tests.",
    )
    parser.add_argument("out_dir", metavar="OUT_DIR")
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="write into a non-empty OUT_DIR")
    args = parser.parse_args(argv)
    try:
        params = build(args.out_dir, size=args.size, seed=args.seed, force=args.force)
    except TinyModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.size} Llama checkpoint to {Path(args.out_dir).resolve()} ({params:,} parameters)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
