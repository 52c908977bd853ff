"""The kernels as torch.library operators: opcheck, torch.compile without graph breaks,
activation checkpointing, and a training step on fake tensors.

On CPU the ops run their Triton kernels in Triton's interpreter (tests/conftest.py), so
opcheck compares the real kernels with their fake implementations.
"""

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.library import opcheck
from torch.utils.checkpoint import checkpoint

import gpt_kernels
from gpt.model import GPT, GPTConfig
from tests.helpers import assert_close

ROOT = Path(__file__).resolve().parents[1]
needs_triton = pytest.mark.skipif(
    not gpt_kernels.use_triton("auto", torch.empty(0)) and not torch.cuda.is_available(),
    reason="no Triton kernel runs here (needs CUDA or TRITON_INTERPRET=1)")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

ln = importlib.import_module("gpt_kernels.layer_norm")
aln = importlib.import_module("gpt_kernels.add_layer_norm")
lg = importlib.import_module("gpt_kernels.linear_gelu")
ce = importlib.import_module("gpt_kernels.cross_entropy")
fl = importlib.import_module("gpt_kernels.fused_linear_cross_entropy")
at = importlib.import_module("gpt_kernels.attention")


def leaf(*shape, dtype=torch.float32):
    return torch.randn(*shape, dtype=dtype, device=DEVICE, requires_grad=True)


def targets(n, v, ignore=-100):
    t = torch.randint(0, v, (n,), device=DEVICE)
    t[::3] = ignore  # some ignored rows on purpose
    return t


def seed(value):
    return torch.tensor([value], dtype=torch.int64, device=DEVICE)


def op_cases():
    """(id, op, args) for every registered op at odd shapes; backward ops get the saved
    tensors their forward produced."""
    x, w, b = leaf(7, 100), leaf(100), leaf(100)
    y, mean, rstd = ln.layer_norm_fwd(x, w, b, 1e-5)
    xa, ra = leaf(7, 100), leaf(7, 100, dtype=torch.float16)
    sa, _, mean_a, rstd_a = aln.add_layer_norm_fwd(xa, ra, w, b, 1e-5, torch.float16)
    xg, wg, bg = leaf(9, 40), leaf(33, 40), leaf(33)
    _, h = lg.linear_gelu_fwd(xg, wg, bg, True)
    logits, tgt = leaf(5, 37), targets(5, 37)
    _, dlogits, scale = ce.cross_entropy_fwd(logits, tgt, -100, "mean", True)
    xf, wf, bf, tf = leaf(9, 32), leaf(77, 32), leaf(77), targets(9, 77)
    q, k, v = leaf(2, 3, 17, 16), leaf(2, 3, 17, 16), leaf(2, 3, 17, 16)
    out, lse = at.attention_fwd(q, k, v, True, 0.25, 0.0, None)
    qd = leaf(1, 2, 5, 32)
    kd, vd = leaf(1, 2, 21, 32), leaf(1, 2, 21, 32)
    det = lambda *ts: [t.detach() for t in ts]  # noqa: E731
    return [
        ("layer_norm_fwd", ln.layer_norm_fwd, (x, w, b, 1e-5)),
        ("layer_norm_fwd-nobias", ln.layer_norm_fwd, (x, w, None, 1e-5)),
        ("layer_norm_bwd", ln.layer_norm_bwd, (*det(torch.randn_like(y), x, w, b, mean, rstd),)),
        ("add_layer_norm_fwd", aln.add_layer_norm_fwd, (xa, ra, w, b, 1e-5, torch.float16)),
        ("add_layer_norm_fwd-nobranch", aln.add_layer_norm_fwd,
         (xa, None, w, None, 1e-5, torch.float32)),
        ("add_layer_norm_bwd", aln.add_layer_norm_bwd,
         (*det(torch.randn(7, 100, dtype=torch.float16), torch.randn(7, 100), sa, w, b,
               mean_a, rstd_a), torch.float16)),
        ("add_layer_norm_bwd-nods", aln.add_layer_norm_bwd,
         (*det(torch.randn(7, 100)), None, *det(xa, w), None, *det(mean_a, rstd_a), None)),
        ("linear_gelu_fwd", lg.linear_gelu_fwd, (xg, wg, bg, True)),
        ("linear_gelu_fwd-noh", lg.linear_gelu_fwd, (*det(xg, wg), None, False)),
        ("linear_gelu_bwd", lg.linear_gelu_bwd,
         (*det(torch.randn(9, 33), h, xg, wg), True, True, True)),
        ("gelu_bwd", lg.gelu_bwd, (*det(torch.randn(9, 33), h), torch.float32, True)),
        ("gelu_bwd-half", lg.gelu_bwd, (*det(torch.randn(9, 33), h), torch.float16, False)),
        ("linear_bwd", lg.linear_bwd, (*det(torch.randn(9, 33), xg, wg), True, True, True)),
        ("linear_bwd-dx", lg.linear_bwd, (*det(torch.randn(9, 33), xg, wg), False, True, False)),
        ("cross_entropy_fwd-mean", ce.cross_entropy_fwd, (logits, tgt, -100, "mean", True)),
        ("cross_entropy_fwd-none", ce.cross_entropy_fwd, (logits, tgt, -100, "none", True)),
        ("cross_entropy_bwd", ce.cross_entropy_bwd, (*det(dlogits), torch.tensor(2.0), scale.detach())),
        ("flce_fwd-mean", fl.flce_fwd, (xf, wf, bf, tf, -100, "mean", None, True, True, True)),
        ("flce_fwd-none", fl.flce_fwd, (xf, wf, None, tf, -100, "none", None, True, True, False)),
        ("flce_fwd-autocast", fl.flce_fwd,
         (xf, wf, bf, tf, -100, "sum", torch.float16, True, True, True)),
        ("flce_bwd_none", fl.flce_bwd_none,
         (*det(xf, wf, bf), tf, torch.randn(9), -100, None, True, True, True)),
        ("attention_fwd", at.attention_fwd, (q, k, v, True, 0.25, 0.0, None)),
        ("attention_fwd-kvcache", at.attention_fwd, (qd, kd, vd, True, 0.2, 0.0, None)),
        ("attention_fwd-dropout", at.attention_fwd, (q, k, v, False, 0.25, 0.3, seed(99))),
        ("attention_bwd", at.attention_bwd,
         (*det(torch.randn_like(out), q, k, v, out, lse), True, 0.25, 0.0, None)),
    ]


@needs_triton
def test_every_op_passes_opcheck():
    """Schema (no undeclared mutation), autograd registration, fake vs real outputs, and
    AOT dispatch with dynamic shapes, for every forward and backward op."""
    cases = op_cases()
    registered = {n for n in torch.ops.gpt if not n.startswith("_") and n != "name"}
    checked = {op._name for _, op, _ in cases}
    assert registered == checked, f"ops without an opcheck: {registered - checked}"
    for case_id, op, args in cases:
        try:
            opcheck(op, args)
        except Exception as err:
            raise AssertionError(f"opcheck failed for {case_id}: {err}") from err


# --------------------------------------------------------------------------- torch.compile

def small_gpt(backend, dropout=0.0):
    torch.manual_seed(0)
    cfg = GPTConfig(block_size=32, vocab_size=67, n_layer=2, n_head=2, n_embd=32,
                    dropout=dropout, bias=True, kernels=backend)
    return GPT(cfg).to(DEVICE)


def step(model, idx, tgt):
    """Logits, loss and every parameter's gradient of one forward/backward."""
    model.zero_grad(set_to_none=True)
    logits, _ = model(idx)
    _, loss = model(idx, tgt)
    loss.backward()
    # a compiled module names its parameters "_orig_mod.<name>"
    return logits, loss, {n.removeprefix("_orig_mod."): p.grad.clone()
                          for n, p in model.named_parameters()}


def assert_same_step(got, ref, tol):
    assert_close(got[0], ref[0], tol, "logits")
    assert_close(got[1], ref[1], tol, "loss")
    assert got[2].keys() == ref[2].keys()
    for name, g in ref[2].items():
        assert_close(got[2][name], g, 10 * tol, f"grad {name}", atol=1e-9)


def compile_and_compare(backend, compile_backend, tol):
    torch._dynamo.reset()
    eager = small_gpt(backend)
    model = small_gpt(backend)
    compiled = torch.compile(model, fullgraph=True, backend=compile_backend)  # a break raises
    idx = torch.randint(0, 67, (2, 29), device=DEVICE)
    tgt = torch.randint(0, 67, (2, 29), device=DEVICE)
    tgt[0, :5] = -1  # ignored targets flow through the compiled loss too
    assert_same_step(step(compiled, idx, tgt), step(eager, idx, tgt), tol)


@needs_triton
def test_compile_fullgraph_with_triton_kernels():
    compile_and_compare("triton", "aot_eager", 1e-6)


def test_compile_fullgraph_with_torch_path_inductor():
    compile_and_compare("torch", "inductor", 1e-5)


@needs_triton
def test_compiled_dropout_replays_its_mask_in_backward():
    """The dropout seed is an op input: compiled and eager runs from one torch seed agree."""
    torch._dynamo.reset()
    eager, compiled_model = small_gpt("triton", dropout=0.2), small_gpt("triton", dropout=0.2)
    compiled = torch.compile(compiled_model, fullgraph=True, backend="aot_eager")
    idx = torch.randint(0, 67, (2, 29), device=DEVICE)
    tgt = torch.randint(0, 67, (2, 29), device=DEVICE)
    torch.manual_seed(5)
    ref = step(eager, idx, tgt)
    torch.manual_seed(5)
    assert_same_step(step(compiled, idx, tgt), ref, 1e-6)


@needs_triton
def test_activation_checkpointing_replays_attention_dropout():
    q, k, v = leaf(2, 2, 33, 16), leaf(2, 2, 33, 16), leaf(2, 2, 33, 16)
    g = torch.randn(2, 2, 33, 16, device=DEVICE)

    def attn(q, k, v):
        return gpt_kernels.flash_attention(q, k, v, dropout_p=0.3, backend="triton") * 2.0

    torch.manual_seed(11)
    plain = torch.autograd.grad(attn(q, k, v), (q, k, v), g)
    torch.manual_seed(11)
    out = checkpoint(attn, q, k, v, use_reentrant=False)
    recomputed = torch.autograd.grad(out, (q, k, v), g)
    for a, b, name in zip(plain, recomputed, "qkv"):
        assert torch.equal(a, b), f"d{name} differs: the recomputation drew another mask"


def test_train_script_compiles_on_cpu(tmp_path):
    corpus = tmp_path / "input.txt"
    corpus.write_text("To be, or not to be, that is the question.\n" * 400)
    cmd = [sys.executable, str(ROOT / "train.py"), f"--dataset={corpus}", f"--out_dir={tmp_path / 'out'}",
           f"--data_dir={tmp_path / 'data'}", "--compile=True", "--device=cpu", "--n_layer=1",
           "--n_head=2", "--n_embd=32", "--block_size=16", "--batch_size=4", "--max_iters=4",
           "--eval_interval=2", "--eval_iters=1", "--log_interval=1", "--num_samples=0"]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # a user's CPU run
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "iter 4" in done.stdout


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_gpu_compile_fullgraph_inductor(backend):
    compile_and_compare(backend, "inductor", 1e-4)
