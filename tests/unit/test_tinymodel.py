"""The random-weight Llama checkpoint generator (CPU only: numpy, safetensors, tokenizers)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("numpy")
pytest.importorskip("safetensors")
pytest.importorskip("tokenizers")

from safetensors.numpy import load_file
from tokenizers import Tokenizer

from workers import tinymodel

FILES = {
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer_config.json",
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny") / "model"
    assert tinymodel.main([str(out), "--seed", "0"]) == 0
    return out


def test_files(tiny: Path) -> None:
    assert {p.name for p in tiny.iterdir()} == FILES


def test_config(tiny: Path) -> None:
    cfg = json.loads((tiny / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"]
    assert cfg["model_type"] == "llama"
    assert cfg["hidden_size"] == 256
    assert cfg["intermediate_size"] == 512
    assert cfg["num_hidden_layers"] == 2
    assert cfg["num_attention_heads"] == 4
    assert cfg["num_key_value_heads"] == 4
    assert cfg["head_dim"] == 64
    assert cfg["vocab_size"] == 512
    assert cfg["max_position_embeddings"] == 2048
    assert cfg["bos_token_id"] == 1
    assert cfg["eos_token_id"] == 2
    assert cfg["torch_dtype"] == "float16"
    assert cfg["tie_word_embeddings"] is False
    assert cfg["rms_norm_eps"] > 0
    assert cfg["rope_theta"] > 0


def test_tensors(tiny: Path) -> None:
    import numpy as np

    tensors = load_file(str(tiny / "model.safetensors"))
    expected = {
        "model.embed_tokens.weight": (512, 256),
        "model.norm.weight": (256,),
        "lm_head.weight": (512, 256),
    }
    for n in range(2):
        p = f"model.layers.{n}"
        expected |= {
            f"{p}.self_attn.q_proj.weight": (256, 256),
            f"{p}.self_attn.k_proj.weight": (256, 256),
            f"{p}.self_attn.v_proj.weight": (256, 256),
            f"{p}.self_attn.o_proj.weight": (256, 256),
            f"{p}.mlp.gate_proj.weight": (512, 256),
            f"{p}.mlp.up_proj.weight": (512, 256),
            f"{p}.mlp.down_proj.weight": (256, 512),
            f"{p}.input_layernorm.weight": (256,),
            f"{p}.post_attention_layernorm.weight": (256,),
        }
    assert {k: v.shape for k, v in tensors.items()} == expected
    assert all(v.dtype == np.float16 for v in tensors.values())
    assert np.all(tensors["model.norm.weight"] == 1)
    q = tensors["model.layers.0.self_attn.q_proj.weight"].astype(np.float32)
    assert abs(float(q.mean())) < 0.002
    assert 0.018 < float(q.std()) < 0.022


def test_small_shapes() -> None:
    shapes = tinymodel.tensor_shapes(tinymodel.SIZES["small"])
    assert shapes["model.layers.3.self_attn.q_proj.weight"] == (512, 512)
    assert shapes["model.layers.3.self_attn.k_proj.weight"] == (256, 512)
    assert shapes["model.layers.3.mlp.down_proj.weight"] == (512, 1376)
    assert "model.layers.4.mlp.up_proj.weight" not in shapes


def test_tokenizer_round_trip(tiny: Path) -> None:
    tok = Tokenizer.from_file(str(tiny / "tokenizer.json"))
    assert tok.get_vocab_size() == 512
    assert tok.token_to_id("<unk>") == 0
    assert tok.token_to_id("<s>") == 1
    assert tok.token_to_id("</s>") == 2
    text = "The lighthouse keeper wrote: 42 ships, naïve café!\nNew line."
    ids = tok.encode(text).ids
    assert tok.decode(ids) == text
    assert len(ids) < len(text.encode())  # merges were learned
    assert 1 not in ids and 2 not in ids


def test_tokenizer_config(tiny: Path) -> None:
    tc = json.loads((tiny / "tokenizer_config.json").read_text())
    assert tc["bos_token"] == "<s>"
    assert tc["eos_token"] == "</s>"
    assert tc["added_tokens_decoder"]["2"]["content"] == "</s>"
    # chat completions need a template; tests/upstream serves it with `transformers serve`
    assert tc["chat_template"] == tinymodel.CHAT_TEMPLATE
    stm = json.loads((tiny / "special_tokens_map.json").read_text())
    assert stm == {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    gen = json.loads((tiny / "generation_config.json").read_text())
    assert gen["eos_token_id"] == 2


def test_same_seed_byte_identical(tiny: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    other = tmp_path / "other"
    tinymodel.build(again, seed=0)
    tinymodel.build(other, seed=1)
    for name in FILES:
        assert (tiny / name).read_bytes() == (again / name).read_bytes(), name
    assert (tiny / "model.safetensors").read_bytes() != (other / "model.safetensors").read_bytes()
    assert (tiny / "tokenizer.json").read_bytes() == (other / "tokenizer.json").read_bytes()


def test_non_empty_out_dir_needs_force(tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "busy"
    d.mkdir()
    (d / "keep.txt").write_text("x")
    assert tinymodel.main([str(d)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "not empty" in err and "--force" in err
    assert tinymodel.main([str(d), "--force"]) == 0
    assert (d / "model.safetensors").is_file()


def test_prints_path_and_parameter_count(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "m"
    assert tinymodel.main([str(out), "--seed", "3"]) == 0
    line = capsys.readouterr().out
    assert line.count("\n") == 1
    assert str(out.resolve()) in line
    assert "1,574,144 parameters" in line


def test_missing_dependency(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "safetensors.numpy", None)
    assert tinymodel.main([str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert "pip install 'dualcall[tinymodel]'" in err
    assert err.count("\n") == 1
    assert not (tmp_path / "m").exists()
