"""The fused residual add + LayerNorm (gpt_kernels/add_layer_norm.py) against float64.

On CPU the kernels run in Triton's interpreter (tests/conftest.py); the op has no tl.dot, so
bfloat16 runs there too. The oracle is independent of the kernel: s = x + branch and
F.layer_norm(s) in float64, with autograd's gradients of x, branch, weight and bias for
upstream gradients on both outputs (the residual stream s and the normalised y).
"""

from functools import partial

import pytest
import torch
import torch.nn.functional as F

from gpt_kernels import reference
from gpt_kernels.add_layer_norm import add_layer_norm as _add_layer_norm
from tests.helpers import TOL, assert_close

add_layer_norm = partial(_add_layer_norm, backend="triton")  # whatever GPT_KERNELS says

# (leading shape, C): odd rows and widths (not powers of two), a 3-D stream, C = 1
SHAPES = [((1,), 96), ((7,), 100), ((263,), 96), ((5,), 768), ((2, 9), 100), ((3,), 1)]
# (x's dtype, branch's dtype): the model's mixed case (float32 stream, half branch) and same
DTYPES = [(torch.float32, torch.float32), (torch.float32, torch.float16),
          (torch.float32, torch.bfloat16), (torch.float16, torch.float16),
          (torch.bfloat16, torch.bfloat16)]


def make_inputs(lead, C, x_dtype, r_dtype, bias=True):
    x = torch.randn(*lead, C).to(x_dtype).requires_grad_(True)
    r = (0.5 * torch.randn(*lead, C)).to(r_dtype).requires_grad_(True)
    w = (1.0 + 0.5 * torch.randn(C)).requires_grad_(True)
    b = (0.5 * torch.randn(C)).requires_grad_(True) if bias else None
    return x, r, w, b


def oracle(x, r, w, b, eps, gs, gy):
    """(s, y) and the gradients of (x, r, w, b) in float64 from F.layer_norm and autograd."""
    leaves = [t.detach().double().requires_grad_(True) if t is not None else None
              for t in (x, r, w, b)]
    xd, rd, wd, bd = leaves
    # the contract: s is rounded to x's dtype, and y normalises that s
    s = xd if rd is None else (xd + rd).to(x.dtype).double()
    y = F.layer_norm(s, (s.shape[-1],), wd, bd, eps)
    outs, grads = [y], [gy.double()]
    if rd is not None and gs is not None:
        outs.append(s)
        grads.append(gs.double())
    torch.autograd.backward(outs, grads)
    return s, y, [t.grad if t is not None else None for t in leaves]


def check(x, r, w, b, eps=1e-5, use_s=True):
    s, y = add_layer_norm(x, r, w, b, eps)
    assert s.dtype == x.dtype and y.dtype == x.dtype and y.shape == x.shape
    gy = torch.randn(y.shape).to(y.dtype)
    gs = torch.randn(s.shape).to(s.dtype) if (use_s and r is not None) else None
    outs, grads = ((s, y), (gs, gy)) if gs is not None else ((y,), (gy,))
    torch.autograd.backward(outs, grads)
    s_ref, y_ref, (dx, dr, dw, db) = oracle(x, r, w, b, eps, gs, gy)
    tol = max(TOL[x.dtype], TOL[r.dtype] if r is not None else 0.0)
    assert_close(s, s_ref, tol, "s")
    assert_close(y, y_ref, tol, "y")
    # dx sums to zero over a row (and vanishes for C == 1): an rms floor, see test_layer_norm
    assert_close(x.grad, dx, tol, "dx", atol=1e-6)
    assert x.grad.dtype == x.dtype and w.grad.dtype == w.dtype
    if r is not None:
        assert r.grad.dtype == r.dtype
        assert_close(r.grad, dr, tol, "dbranch", atol=1e-6)
    assert_close(w.grad, dw, tol, "dweight", atol=1e-6)
    if b is not None:
        assert_close(b.grad, db, tol, "dbias")


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("x_dtype, r_dtype", DTYPES)
@pytest.mark.parametrize("lead, C", SHAPES)
def test_forward_backward_vs_float64(lead, C, x_dtype, r_dtype, bias):
    check(*make_inputs(lead, C, x_dtype, r_dtype, bias=bias))


@pytest.mark.parametrize("x_dtype, r_dtype", [(torch.float32, torch.bfloat16),
                                              (torch.float16, torch.float16)])
def test_only_y_used(x_dtype, r_dtype):
    """s not used downstream: no gradient for it arrives, backward adds nothing."""
    check(*make_inputs((37,), 100, x_dtype, r_dtype), use_s=False)


def test_only_s_used():
    """y not used downstream: its gradient arrives as None (no zero-filled tensor) and backward
    gives the stream's gradient to x and the branch, zero to weight and bias."""
    x, r, w, b = make_inputs((37,), 100, torch.float32, torch.bfloat16)
    s, _ = add_layer_norm(x, r, w, b)
    gs = torch.randn(s.shape)
    s.backward(gs)
    _, _, (dx, dr, dw, db) = oracle(x, r, w, b, 1e-5, gs, torch.zeros(s.shape))
    assert_close(x.grad, dx, TOL[torch.float32], "dx")
    assert_close(r.grad, dr, TOL[torch.bfloat16], "dbranch")
    assert torch.count_nonzero(w.grad) == 0 and torch.count_nonzero(b.grad) == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_without_branch_is_layer_norm(dtype):
    x, _, w, b = make_inputs((23,), 96, dtype, dtype)
    s, y = add_layer_norm(x, None, w, b)
    assert s is x
    check(x, None, w, b)


def test_large_offset_stream():
    """A stream around 1e4 with unit spread: the corrected float32 mean keeps y accurate."""
    x, r, w, b = make_inputs((13,), 96, torch.float32, torch.float32)
    x = (x.detach() + 1e4).requires_grad_(True)
    check(x, r, w, b, eps=1e-2)


def test_autocast_writes_y_in_the_matmul_dtype():
    """Under autocast y comes out in the autocast dtype (what the next matmul reads), s stays
    float32; the reference twin does the same, to the bf16 rounding of y."""
    x, r, w, b = make_inputs((11, 3), 100, torch.float32, torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        s, y = add_layer_norm(x, r, w, b)
        s_ref, y_ref = reference.add_layer_norm(x, r, w, b)
    assert (s.dtype, y.dtype) == (torch.float32, torch.bfloat16) == (s_ref.dtype, y_ref.dtype)
    assert torch.equal(s, s_ref)
    assert_close(y, y_ref, TOL[torch.bfloat16], "y")


def test_non_contiguous_inputs():
    x = torch.randn(100, 7).t().requires_grad_(True)
    r = torch.randn(7, 200).to(torch.float16)[:, ::2].requires_grad_(True)
    w = torch.randn(200)[::2].requires_grad_(True)
    b = torch.randn(300)[::3].requires_grad_(True)
    assert not (x.is_contiguous() or r.is_contiguous() or w.is_contiguous())
    check(x, r, w, b)


def test_backward_is_bit_identical_on_rerun():
    x, r, w, b = make_inputs((263,), 96, torch.float32, torch.bfloat16)
    gs, gy = torch.randn(263, 96), torch.randn(263, 96)

    def grads():
        return torch.autograd.grad(add_layer_norm(x, r, w, b), (x, r, w, b), (gs, gy))

    for name, a, c in zip(("dx", "dbranch", "dweight", "dbias"), grads(), grads()):
        assert torch.equal(a, c), f"{name} differs between two identical backward passes"


def test_callers_tensors_unchanged():
    x, r, w, b = make_inputs((11,), 100, torch.float32, torch.float16)
    gs, gy = torch.randn(11, 100), torch.randn(11, 100)
    before = [t.detach().clone() for t in (x, r, w, b, gs, gy)]
    torch.autograd.backward(add_layer_norm(x, r, w, b), (gs, gy))
    for t, old in zip((x, r, w, b, gs, gy), before):
        assert torch.equal(t.detach(), old)


def test_empty_batch():
    x, r, w, b = make_inputs((0,), 96, torch.float32, torch.float32)
    s, y = add_layer_norm(x, r, w, b)
    assert s.shape == y.shape == (0, 96)
    (s.sum() + y.sum()).backward()
    assert torch.equal(w.grad, torch.zeros(96)) and torch.equal(b.grad, torch.zeros(96))


@pytest.mark.parametrize("call, exc, pattern", [
    (lambda: add_layer_norm(torch.randn(4, 8), torch.randn(4, 9), torch.ones(8), None),
     ValueError, r"branch must have x's shape \(4, 8\), got \(4, 9\)"),
    (lambda: add_layer_norm(torch.randn(4, 8), torch.ones(4, 8, dtype=torch.long),
                            torch.ones(8), None),
     TypeError, "branch must be a floating-point tensor"),
    (lambda: add_layer_norm(torch.randn(4, 8), torch.randn(4, 8), torch.ones(9), None),
     ValueError, "weight"),
])
def test_bad_input_names_the_argument(call, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call()
