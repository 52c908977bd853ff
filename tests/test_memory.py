"""The memory meter (bench/memory.py): checked against real CPU allocations, its parts, its
largest-batch search and its command line."""

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import gpt_kernels
from bench import memory
from gpt.cli import UsageError, run_main
from gpt.model import GPT, GPTConfig

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not gpt_kernels.use_triton("auto", torch.empty(0)),
                    reason="the real Triton step needs CUDA or TRITON_INTERPRET=1")
def test_meter_matches_real_cpu_allocations():
    """Each path's metered peak is within 5% of the peak of the same step's real CPU
    allocations (torch profiler), float32 and bf16 autocast."""
    result = memory.validate(list(memory.PATHS), dtypes=("float32", "bfloat16"))
    for row in result["rows"]:
        assert abs(row["error"]) <= 0.05, row


def test_parts_are_what_the_model_holds():
    cfg = GPTConfig(n_layer=2, n_head=2, n_embd=64, vocab_size=500, block_size=64, bias=True)
    n = GPT(cfg).num_params()
    r = memory.meter_step(cfg, "triton", 2, 64, torch.float32)
    assert r["params"] == n
    assert r["parts"]["Parameter"] == 4 * n  # float32 weights, the tied matrix once
    # AdamW: exp_avg and exp_avg_sq per parameter, plus a float32 step counter each
    n_tensors = len(list(GPT(cfg).parameters()))
    assert r["parts"]["Optstate"] == 2 * 4 * n + 4 * n_tensors
    assert r["peak_bytes"] > sum(r["parts"][k] for k in ("Parameter", "Optstate"))


def test_eager_attention_is_metered_as_a_gpu_runs_it(monkeypatch):
    # the CPU reference computes bf16 attention in float32 (float32 copies of q, k, v kept for
    # backward); a GPU's SDPA does not, and the meter models the GPU: the flag changes nothing
    cfg = GPTConfig(n_layer=1, n_head=2, n_embd=64, vocab_size=500, block_size=128, bias=False)
    from gpt_kernels import reference

    peaks = []
    for cpu_float32 in (True, False):
        monkeypatch.setattr(reference, "CPU_HALF_ATTENTION_IN_FLOAT32", cpu_float32)
        peaks.append(memory.meter_step(cfg, "torch", 4, 128, torch.bfloat16)["peak_bytes"])
        assert reference.CPU_HALF_ATTENTION_IN_FLOAT32 is cpu_float32  # restored after
    assert peaks[0] == peaks[1]


def test_fused_loss_saves_memory_at_a_large_vocabulary():
    cfg = GPTConfig(n_layer=1, n_head=2, n_embd=64, vocab_size=8192, block_size=256, bias=False)
    peaks = {p: memory.meter_step(cfg, p, 4, 256, torch.bfloat16)["peak_bytes"]
             for p in memory.PATHS}
    # nanoGPT's head holds (N, V) logits and a float32 log-softmax; the fused one a chunk
    assert peaks["triton"] < 0.5 * peaks["nanogpt"], peaks


def test_per_rank_memory_with_fsdp_ddp_and_checkpointing():
    cfg = GPTConfig(n_layer=4, n_head=2, n_embd=64, vocab_size=512, block_size=64, bias=True)
    n = GPT(cfg).num_params()
    step = lambda **kw: memory.meter_step(cfg, "triton", 4, 64, torch.bfloat16, **kw)  # noqa: E731
    one, ddp = step(), step(parallel="ddp", world_size=4)
    fsdp = step(parallel="fsdp", world_size=4)
    fsdp_ac = step(parallel="fsdp", world_size=4, activation_checkpointing=True)
    assert ddp["peak_bytes"] == one["peak_bytes"] + 4 * n  # DDP's gradient buckets
    # FSDP keeps a quarter of the float32 weights and AdamW moments per rank (up to padding)
    assert fsdp["parts"]["Sharded Param"] == pytest.approx(4 * n / 4, rel=0.05)
    assert fsdp["groups"]["optimizer"] == pytest.approx(one["groups"]["optimizer"] / 4, rel=0.05)
    assert fsdp["peak_bytes"] < one["peak_bytes"]
    # checkpointing keeps each block's input only
    assert fsdp_ac["groups"]["activations"] < 0.7 * fsdp["groups"]["activations"]


ONE_HEAD = SimpleNamespace(n_head=1)


@pytest.mark.parametrize("peak_of", [
    lambda b: 1000 + 37 * b,  # linear, as activations are
    lambda b: 1000 + 30 * b + (200 if b > 20 else 0),  # a jump the prediction misses
    lambda b: 1000 + b * b,  # convex: the linear guess overshoots
])
def test_largest_batch_is_exact(monkeypatch, peak_of):
    monkeypatch.setattr(memory, "meter_step",
                        lambda config, path, b, t, dtype, **setup: {"peak_bytes": peak_of(b)})
    for budget in (999, 1037, 2000, 5000, 10**6):
        want = max((b for b in range(1, 40000) if peak_of(b) <= budget), default=0)
        assert memory.largest_batch(ONE_HEAD, "triton", 64, torch.float32, budget) == want, budget


def test_largest_batch_stops_at_the_attention_grid_limit(monkeypatch):
    # B * n_head programs on one CUDA grid axis (at most 65535): a bigger batch cannot launch
    monkeypatch.setattr(memory, "meter_step",
                        lambda config, path, b, t, dtype, **setup: {"peak_bytes": 1000 + b})
    config = SimpleNamespace(n_head=25)
    assert memory.largest_batch(config, "triton", 64, torch.float32, 10**9) == 65535 // 25
    assert memory.largest_batch(config, "torch", 64, torch.float32, 10**9) == 1 << 16


@pytest.mark.parametrize("text, expected", [("80GiB", 80 * 2**30), ("40GB", 40 * 10**9),
                                            ("24576MiB", 24576 * 2**20), ("1e9", 10**9)])
def test_parse_memory(text, expected):
    assert memory.parse_memory(text) == expected


@pytest.mark.parametrize("argv, match", [
    (["--preset=gpt5"], "--preset must be custom or one of"),
    (["--batch_size=0"], "--batch_size must be >= 1"),
    (["--block_size=2048"], "longer than the model's context 1024"),
    (["--dtype=float8"], "--dtype must be one of"),
    (["--gpu_memory=lots"], "--gpu_memory expects a positive size"),
    (["--paths=triton,jax"], "--paths='triton,jax': unknown jax; choose from triton, torch"),
    (["--parallel=zero3"], "--parallel='zero3': unknown zero3; choose from none, ddp, fsdp"),
    (["--preset=custom", "--n_embd=100", "--n_head=3"], "divisible by --n_head"),
])
def test_bad_options_are_one_line_errors(argv, match, capsys):
    with pytest.raises(SystemExit) as exc:
        run_main(memory.main, "python -m bench.memory", argv + ["--max_batch=False"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("python -m bench.memory: error:") and "\n" not in err
    with pytest.raises(UsageError, match=match):
        memory.main(argv + ["--max_batch=False"])


def test_cli_writes_results(tmp_path):
    out = tmp_path / "m.json"
    cmd = [sys.executable, "-m", "bench.memory", "--preset=tiny", "--vocab_size=256",
           "--batch_size=2", "--block_size=32", "--gpu_memory=64MiB", f"--out={out}"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert [r["path"] for r in result["paths"]] == list(memory.PATHS)
    for r in result["paths"]:
        assert r["peak_bytes"] > 0 and r["largest_batch"] >= 1
    assert "| triton | none |" in done.stdout and "| triton / this |" in done.stdout
    assert all("triton_peak_ratio" in r for r in result["paths"] if r["path"] != "triton")


_CUDA_REGISTRATION = """
import json, sys, torch
real = torch.cuda.is_available
torch.cuda.is_available = lambda: True  # at import only: ops become triton_ops, launches wrap_triton
import gpt_kernels
torch.cuda.is_available = real
from gpt_kernels import _library
assert _library.USE_TRITON_OP and not _library.INTERPRET
from bench import memory
from gpt.model import GPTConfig
cfg = GPTConfig(**json.loads(sys.argv[1]))
print(json.dumps([memory.meter_step(cfg, "triton", 2, 64, dt)["peak_bytes"]
                  for dt in (torch.float32, torch.bfloat16)]))
"""


def test_meter_on_the_cuda_registration_path():
    """On a CUDA machine the ops are ``triton_op``s whose launches go through ``wrap_triton``;
    forced here as far as a CPU allows (the registration and the launches, not the kernels),
    the meter runs and gives the bytes of the CPU registration path."""
    import os

    cfg = dict(n_layer=2, n_head=2, n_embd=64, vocab_size=500, block_size=64, bias=True)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", _CUDA_REGISTRATION, json.dumps(cfg)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    forced = json.loads(proc.stdout.strip().splitlines()[-1])
    here = [memory.meter_step(GPTConfig(**cfg), "triton", 2, 64, dt)["peak_bytes"]
            for dt in (torch.float32, torch.bfloat16)]
    assert forced == here


def test_device_smem_of_a_non_cuda_tensor(monkeypatch):
    from gpt_kernels import _autotune

    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            _autotune.device_smem(torch.device("cpu"))
    props = SimpleNamespace(shared_memory_per_block_optin=232448)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: props)
    assert _autotune.device_smem(torch.device("cpu")) == 232448


def test_recomputation_saves_what_the_shapes_predict(monkeypatch):
    """The Triton path keeps neither LayerNorm output (c_attn's and c_fc's inputs) nor
    gelu(h) (c_proj's input): per block 2 x (M, C) + (M, 4C) values in the matmul dtype less,
    exactly, in what the blocks save for backward (distinct storages, fake tensors). Counted
    at the blocks rather than at the step's peak, which can fall in forward or in backward."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from gpt.model import GPT, Block

    L, C, B, T, V = 2, 64, 4, 32, 512
    saved = {}
    for recompute in (False, True):
        monkeypatch.setattr(Block, "recompute", recompute)
        storages = {}

        def pack(t):
            storage = t.untyped_storage()
            storages[storage._cdata] = storage.nbytes()
            return t

        with FakeTensorMode():
            model = GPT(GPTConfig(n_layer=L, n_head=2, n_embd=C, vocab_size=V, block_size=T,
                                  kernels="triton"))
            idx = torch.randint(0, V, (B, T))
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
                    torch.autocast("cpu", dtype=torch.bfloat16):
                x = model.transformer.wte(idx) + model.transformer.wpe(torch.arange(T))
                for block in model.transformer.h:
                    x = block(x)
        saved[recompute] = sum(storages.values())
    M = B * T
    assert saved[False] - saved[True] == L * 2 * (2 * M * C + M * 4 * C), saved
