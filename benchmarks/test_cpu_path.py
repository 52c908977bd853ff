"""The CPU path's per-op timings (forward + backward) and one training step, at nanoGPT's
CPU recipe (``bench.nanogpt_cpu.RECIPE``: 4 layers x 4 heads x 128 wide, context 64,
batch 12, no biases, Tiny Shakespeare's 65 characters):

    python -m pytest benchmarks --benchmark-only --benchmark-autosave     # save a baseline
    python -m pytest benchmarks --benchmark-only --benchmark-compare      # compare with it

The ops are called with ``backend="torch"``: the plain-PyTorch path a CPU trains on
(``gpt_kernels.reference``), whatever TRITON_INTERPRET says.
"""

import pytest
import torch

import gpt_kernels
from bench.nanogpt_cpu import RECIPE
from gpt import GPT, GPTConfig

B, T, C, H, V = (RECIPE["batch_size"], RECIPE["block_size"], RECIPE["n_embd"],
                 RECIPE["n_head"], 65)
N = B * T


def _leaf(*shape, scale=1.0):
    return (torch.randn(*shape) * scale).requires_grad_(True)


def _fwd_bwd(fn, *inputs):
    """fn(*inputs) then backward of its sum: what a training step asks of the op."""
    def run():
        for t in inputs:
            t.grad = None
        out = fn(*inputs)
        out.sum().backward()
    return run


def test_layer_norm(benchmark):
    x, w = _leaf(N, C), _leaf(C)
    benchmark(_fwd_bwd(lambda x, w: gpt_kernels.layer_norm(x, w, None, backend="torch"), x, w))


def test_linear_gelu(benchmark):
    x, w = _leaf(N, C), _leaf(4 * C, C, scale=0.02)
    benchmark(_fwd_bwd(lambda x, w: gpt_kernels.linear_gelu(x, w, backend="torch"), x, w))


def test_flash_attention(benchmark):
    q, k, v = (_leaf(B, H, T, C // H) for _ in range(3))
    benchmark(_fwd_bwd(lambda q, k, v: gpt_kernels.flash_attention(q, k, v, backend="torch"),
                       q, k, v))


def test_fused_linear_cross_entropy(benchmark):
    x, w = _leaf(N, C), _leaf(V, C, scale=0.02)
    target = torch.randint(0, V, (N,))
    benchmark(_fwd_bwd(lambda x, w: gpt_kernels.fused_linear_cross_entropy(
        x, w, target, backend="torch"), x, w))


def test_cross_entropy(benchmark):
    logits = _leaf(N, V)
    target = torch.randint(0, V, (N,))
    benchmark(_fwd_bwd(lambda z: gpt_kernels.cross_entropy(z, target, backend="torch"), logits))


@pytest.fixture
def model_and_batch():
    cfg = GPTConfig(vocab_size=V, kernels="torch",
                    **{k: RECIPE[k] for k in ("block_size", "n_layer", "n_head", "n_embd",
                                              "dropout", "bias")})
    model = GPT(cfg)
    opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), "cpu")
    idx = torch.randint(0, V, (B, T))
    return model, opt, idx, torch.roll(idx, -1, dims=1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_training_step(benchmark, model_and_batch, dtype):
    # what train.py's loop does per iteration on a CPU: forward with the loss (in bf16
    # autocast, train.py's default on CPUs with native bf16), backward, gradient clipping,
    # AdamW, zero_grad
    model, opt, x, y = model_and_batch

    def step():
        with torch.autocast("cpu", dtype, enabled=dtype != torch.float32):
            _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    loss = benchmark(step)
    assert torch.isfinite(loss)
