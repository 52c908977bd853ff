"""The shared helpers: atomic writes, the hardware table, dtype names, the FLOPs formulas."""

import json

import pytest
import torch

from gpt import files, flops, hardware
from gpt.model import GPT, GPTConfig


def test_write_text_bytes_json_replace_whole_files(tmp_path):
    path = tmp_path / "sub" / "a.json"
    files.write_json(path, {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1}
    files.write_text(path, "x")
    assert path.read_text() == "x"
    files.write_bytes(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    assert [p.name for p in path.parent.iterdir()] == ["a.json"]  # no temporary left behind


def test_atomic_path_keeps_the_old_file_when_the_writer_fails(tmp_path):
    path = tmp_path / "plot.png"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with files.atomic_path(path) as tmp:
            assert tmp.suffix == ".png" and tmp.parent == path.parent  # savefig infers the format
            tmp.write_bytes(b"half")
            raise RuntimeError("crash mid-write")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["plot.png"]


def test_gpu_table_and_dtype_names():
    assert hardware.gpu_named("NVIDIA H100 80GB HBM3") == "H100"
    assert hardware.peak_bf16_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert hardware.peak_bf16_flops("Some Other GPU") is None
    assert hardware.dtype_named("bf16") is torch.bfloat16
    assert hardware.dtype_named("float32") is torch.float32
    with pytest.raises(ValueError, match="unknown dtype 'int7'"):
        hardware.dtype_named("int7")


@pytest.mark.parametrize("bias", [True, False])
def test_flops_formulas_match_the_model(bias):
    config = GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=24, vocab_size=37, bias=bias)
    model = GPT(config)
    counts = flops.param_counts(config)
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    assert counts["non_embedding"] == model.num_params(non_embedding=True)
    expected = 6 * counts["non_embedding"] + 12 * 2 * 16 * 20
    assert flops.flops_per_token(config, seq_len=20)["total"] == expected
    assert model.flops_per_token(seq_len=20) == expected
