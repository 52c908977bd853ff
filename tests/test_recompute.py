"""The memory-saving matmuls after a LayerNorm (gpt_kernels/recompute.py) against float64.

``linear_after_norm`` and ``mlp_after_norm`` keep the residual stream s (and the MLP its
pre-activation h) instead of the LayerNorm output y and gelu(h), and recompute those in
backward. The oracle is written out in float64 with autograd: y = layer_norm(x + branch),
then F.linear / gelu_tanh; every gradient (x, branch, both LayerNorm parameters, every weight
and bias) on odd shapes, float32 and float16 in Triton's interpreter, and what is saved.
"""

import pytest
import torch
import torch.nn.functional as F

from gpt_kernels.add_layer_norm import add_layer_norm
from gpt_kernels.recompute import linear_after_norm, mlp_after_norm
from tests.helpers import TOL, assert_close

SHAPES = [((7,), 40, 24), ((2, 9), 36, 100), ((33,), 16, 3)]  # (lead, C, N or hidden)


def params(*shapes, dtype=torch.float32, scale=1.0):
    return [(scale * torch.randn(*s)).to(dtype).requires_grad_(True) for s in shapes]


def run_both(fn_ours, fn_ref, leaves, dtype):
    """Loss-free comparison: out and every leaf gradient, ours vs float64."""
    out = fn_ours(*leaves)
    g = torch.randn(out.shape).to(out.dtype)
    grads = torch.autograd.grad(out, leaves, g)
    ref_leaves = [t.detach().double().requires_grad_(True) for t in leaves]
    ref = fn_ref(*ref_leaves)
    ref_grads = torch.autograd.grad(ref, ref_leaves, g.double())
    # float16: the LayerNorm's gradients come through two float16-rounded intermediates
    # (dh, then dy = dh @ W1), as eager PyTorch's float16 MLP rounds them: twice the tolerance
    tol = TOL[dtype] * (2 if dtype == torch.float16 else 1)
    assert_close(out, ref, tol, "out")
    for i, (a, r, t) in enumerate(zip(grads, ref_grads, leaves)):
        assert a.dtype == t.dtype, f"grad {i} dtype {a.dtype} != {t.dtype}"
        assert_close(a, r, tol, f"grad of input {i}", atol=1e-6)


def gelu_tanh(h):
    return F.gelu(h, approximate="tanh")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("lead, C, N", SHAPES)
def test_linear_after_norm(lead, C, N, dtype):
    x, r = params((*lead, C), (*lead, C), dtype=dtype)
    lw, lb = params((C,), (C,), scale=0.5)
    w, b = params((N, C), (N,), dtype=dtype, scale=C ** -0.5)

    def ours(x, r, lw, lb, w, b):
        s, y = add_layer_norm(x, r, lw, lb, backend="triton")
        return linear_after_norm(y, s, lw, lb, 1e-5, w, b)

    def ref(x, r, lw, lb, w, b):
        s = (x + r).to(dtype).double()  # the stream is rounded to x's dtype
        return F.linear(F.layer_norm(s, (C,), lw, lb, 1e-5), w, b)

    run_both(ours, ref, [x, r, lw, lb, w, b], dtype)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("lead, C, N", SHAPES)
def test_mlp_after_norm(lead, C, N, dtype, bias):
    x, r = params((*lead, C), (*lead, C), dtype=dtype)
    lw, lb = params((C,), (C,), scale=0.5)
    w1, w2 = params((N, C), (C, N), dtype=dtype, scale=C ** -0.5)
    b1, b2 = params((N,), (C,), dtype=dtype, scale=0.5)
    leaves = [x, r, lw, lb, w1, w2] + ([b1, b2] if bias else [])

    def ours(x, r, lw, lb, w1, w2, b1=None, b2=None):
        s, y = add_layer_norm(x, r, lw, lb, backend="triton")
        return mlp_after_norm(y, s, lw, lb, 1e-5, w1, b1, w2, b2)

    def ref(x, r, lw, lb, w1, w2, b1=None, b2=None):
        s = (x + r).to(dtype).double()
        y = F.layer_norm(s, (C,), lw, lb, 1e-5)
        return F.linear(gelu_tanh(F.linear(y, w1, b1)), w2, b2)

    run_both(ours, ref, leaves, dtype)


def test_mixed_precision_stream_and_what_is_saved():
    """float32 stream, float16 matmuls (autocast): gradients in the parameters' float32, and
    backward keeps the stream and h, not y nor gelu(h)."""
    C, N, M = 32, 128, 21
    x, r = params((M, C), (M, C))
    lw, lb = params((C,), (C,), scale=0.5)
    w1, w2 = params((N, C), (C, N), scale=C ** -0.5)
    b1, b2 = params((N,), (C,), scale=0.5)
    saved = []

    def pack(t):
        saved.append((tuple(t.shape), t.dtype))
        return t

    with torch.autocast("cpu", dtype=torch.float16):
        s, y = add_layer_norm(x, r.to(torch.float16), lw, lb, backend="triton")
        assert (s.dtype, y.dtype) == (torch.float32, torch.float16)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = mlp_after_norm(y, s, lw, lb, 1e-5, w1, b1, w2, b2)
    assert out.dtype == torch.float16
    assert ((M, C), torch.float32) in saved and ((M, N), torch.float16) in saved  # s, h
    assert ((M, C), torch.float16) not in saved  # y
    assert sum(shape == (M, N) for shape, _ in saved) == 1  # h only, not gelu(h)
    leaves = [x, r, lw, lb, w1, w2, b1, b2]
    grads = torch.autograd.grad(out.float(), leaves, torch.randn(M, C))
    assert all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
