"""The Triton LayerNorm (gpt_kernels/layer_norm.py) against float64 references.

On CPU every test runs the real kernels in Triton's interpreter (the conftest sets
TRITON_INTERPRET=1); LayerNorm has no tl.dot, so bfloat16 runs there too. Forward and the
gradients of x, weight and bias are compared with ``gpt_kernels.reference.layer_norm`` on float64
copies and with ``torch.nn.functional.layer_norm`` in float64.
"""

from functools import partial

import pytest
import torch
import torch.nn.functional as F

import gpt_kernels
from gpt_kernels import reference
from gpt_kernels.layer_norm import MAX_WIDTH
from gpt_kernels.layer_norm import layer_norm as _layer_norm

layer_norm = partial(_layer_norm, backend="triton")  # the kernel, whatever GPT_KERNELS says
from tests.helpers import TOL, assert_close

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (leading shape, C): rows 1, 7, 423 and widths 96, 100, 768 (not powers of two), a 3-D x
SHAPES = [((1,), 96), ((7,), 100), ((423,), 96), ((5,), 768), ((2, 9), 100), ((3,), 1)]


def make_inputs(lead, C, dtype, param_dtype=None, bias=True, scale=1.0, shift=0.0):
    """x ~ shift + scale * N(0, 1) and non-trivial weight/bias, all leaves requiring grad."""
    param_dtype = dtype if param_dtype is None else param_dtype
    x = (shift + scale * torch.randn(*lead, C)).to(dtype).requires_grad_(True)
    w = (1.0 + 0.5 * torch.randn(C)).to(param_dtype).requires_grad_(True)
    b = (0.5 * torch.randn(C)).to(param_dtype).requires_grad_(True) if bias else None
    return x, w, b


def reference_grads(x, w, b, eps, g):
    """Output and gradients of reference.layer_norm on float64 copies, upstream gradient g."""
    copies = [t.detach().double().requires_grad_(True) if t is not None else None
              for t in (x, w, b)]
    y = reference.layer_norm(*copies, eps=eps)
    y.backward(g.double())
    return y, [t.grad if t is not None else None for t in copies]


def check_against_reference(x, w, b, eps=1e-5, tol=None, g=None):
    tol = TOL[x.dtype] if tol is None else tol
    y = layer_norm(x, w, b, eps)
    assert y.dtype == x.dtype and y.shape == x.shape
    g = torch.randn(y.shape).to(y.dtype) if g is None else g
    y.backward(g)
    y_ref, (dx_ref, dw_ref, db_ref) = reference_grads(x, w, b, eps, g)
    assert_close(y, y_ref, tol, "y")
    # dx sums to zero over a row, and x - mean is zero when C == 1, so there dx and dweight
    # vanish: the kernel gives exact zeros, F.layer_norm's float64 rounding leftovers
    # (~1e-14); an rms floor
    assert_close(x.grad, dx_ref, tol, "dx", atol=1e-6)
    assert x.grad.dtype == x.dtype and w.grad.dtype == w.dtype
    assert_close(w.grad, dw_ref, tol, "dweight", atol=1e-6)
    if b is not None:
        assert b.grad.dtype == b.dtype
        assert_close(b.grad, db_ref, tol, "dbias")


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lead, C", SHAPES)
def test_forward_backward_vs_reference(lead, C, dtype, bias):
    check_against_reference(*make_inputs(lead, C, dtype, bias=bias))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_activations_float32_parameters(dtype):
    """The mixed-precision case: half x, float32 weight and bias (gradients float32)."""
    check_against_reference(*make_inputs((37,), 100, dtype, param_dtype=torch.float32))


def test_matches_torch_functional_in_float64():
    x, w, b = make_inputs((19,), 768, torch.float32)
    y = layer_norm(x, w, b, 1e-5)
    g = torch.randn_like(y)
    dx, dw, db = torch.autograd.grad(y, (x, w, b), g)
    xd, wd, bd = (t.detach().double().requires_grad_(True) for t in (x, w, b))
    y_ref = F.layer_norm(xd, (768,), wd, bd, 1e-5)
    for name, got, ref in zip(("dx", "dweight", "dbias"), (dx, dw, db),
                              torch.autograd.grad(y_ref, (xd, wd, bd), g.double())):
        assert_close(got, ref, TOL[torch.float32], name)
    assert_close(y, y_ref, TOL[torch.float32], "y")


@pytest.mark.parametrize("eps", [1e-5, 1e-2])
def test_large_offset_and_eps(eps):
    """Rows around 1e4 with unit spread: the corrected float32 mean and two-pass variance keep
    full float32 accuracy (a one-pass float32 mean is off by ~4e-4 relative here)."""
    check_against_reference(*make_inputs((13,), 96, torch.float32, scale=1.0, shift=1e4),
                            eps=eps)


def test_constant_rows_give_finite_output():
    x = torch.full((4, 100), 3.0, requires_grad=True)
    w = torch.randn(100, requires_grad=True)
    b = torch.randn(100, requires_grad=True)
    y = layer_norm(x, w, b)
    (y * torch.randn_like(y)).sum().backward()
    for t in (y, x.grad, w.grad, b.grad):
        assert torch.isfinite(t).all()
    assert_close(y, b.detach().expand(4, 100), 1e-6, "y")


def test_loss_times_three():
    """A non-unit upstream gradient through a scalar loss (3 * mean of squares)."""
    x, w, b = make_inputs((7, 3), 100, torch.float32)
    loss = 3.0 * layer_norm(x, w, b).pow(2).mean()
    loss.backward()
    xd, wd, bd = (t.detach().double().requires_grad_(True) for t in (x, w, b))
    loss_ref = 3.0 * reference.layer_norm(xd, wd, bd).pow(2).mean()
    loss_ref.backward()
    assert_close(loss, loss_ref, TOL[torch.float32], "loss")
    for name, got, ref in (("dx", x, xd), ("dweight", w, wd), ("dbias", b, bd)):
        assert_close(got.grad, ref.grad, TOL[torch.float32], name)


def test_expanded_upstream_gradient():
    """y.sum() hands backward a stride-0 gradient; the kernels read its strides."""
    x, w, b = make_inputs((9,), 96, torch.float32)
    layer_norm(x, w, b).sum().backward()
    _, (dx, dw, db) = reference_grads(x, w, b, 1e-5, torch.ones(9, 96))
    assert_close(x.grad, dx, 1e-5, "dx", atol=1e-7)
    assert_close(w.grad, dw, 1e-5, "dweight")
    assert_close(b.grad, db, 1e-5, "dbias")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_non_contiguous_inputs(dtype):
    # x (7, 100) as a transposed view, x (2, 5, 96) with its first two dims swapped,
    # weight and bias as every other element of longer vectors
    base = torch.randn(100, 7).to(dtype)
    x1 = base.t().requires_grad_(True)
    x2 = torch.randn(5, 2, 96).to(dtype).transpose(0, 1).requires_grad_(True)
    for x in (x1, x2):
        C = x.shape[-1]
        w = torch.randn(2 * C).to(dtype)[::2].requires_grad_(True)
        b = torch.randn(3 * C).to(dtype)[::3].requires_grad_(True)
        assert not x.is_contiguous() and not w.is_contiguous()
        check_against_reference(x, w, b)


def test_callers_tensors_unchanged():
    x, w, b = make_inputs((11,), 100, torch.float32)
    g = torch.randn(11, 100)
    before = [t.detach().clone() for t in (x, w, b, g)]
    y = layer_norm(x, w, b)
    y.backward(g)
    for name, t, old in zip(("x", "weight", "bias", "grad_output"), (x, w, b, g), before):
        assert torch.equal(t.detach(), old), f"{name} was modified"


def test_backward_is_bit_identical_on_rerun():
    """Two-stage dweight/dbias reduction in a fixed order: the same bits every time."""
    x, w, b = make_inputs((423,), 96, torch.float32)
    g = torch.randn(423, 96)
    first = torch.autograd.grad(layer_norm(x, w, b), (x, w, b), g)
    second = torch.autograd.grad(layer_norm(x, w, b), (x, w, b), g)
    for name, a, c in zip(("dx", "dweight", "dbias"), first, second):
        assert torch.equal(a, c), f"{name} differs between two identical backward passes"


def test_no_grad_and_inputs_without_grad():
    x, w, b = make_inputs((7,), 100, torch.float32)
    with torch.no_grad():
        y0 = layer_norm(x, w, b)
    assert not y0.requires_grad
    y1 = layer_norm(x.detach(), w.detach(), b.detach())
    assert not y1.requires_grad
    assert torch.equal(y0, y1)
    # only the weight needs a gradient
    w2 = w.detach().clone().requires_grad_(True)
    y2 = layer_norm(x.detach(), w2, b.detach())
    g = torch.randn_like(y2)
    y2.backward(g)
    _, (_, dw_ref, _) = reference_grads(x, w, b, 1e-5, g)
    assert_close(w2.grad, dw_ref, TOL[torch.float32], "dweight")


def test_empty_batch():
    x = torch.randn(0, 96, requires_grad=True)
    w = torch.randn(96, requires_grad=True)
    b = torch.randn(96, requires_grad=True)
    y = layer_norm(x, w, b)
    assert y.shape == (0, 96)
    y.sum().backward()
    assert torch.equal(w.grad, torch.zeros(96)) and torch.equal(b.grad, torch.zeros(96))


_x = torch.randn(4, 32)
_w = torch.randn(32)
BAD_CALLS = {
    "float64 x": (lambda: layer_norm(_x.double(), _w, None), TypeError,
                  r"x has dtype torch.float64"),
    "integer x": (lambda: layer_norm(_x.long(), _w, None), TypeError,
                  r"x must be a floating-point tensor"),
    "weight shape": (lambda: layer_norm(_x, torch.randn(31), None), ValueError,
                     r"weight must have shape \(32,\)"),
    "bias shape": (lambda: layer_norm(_x, _w, torch.randn(4, 32)), ValueError,
                   r"bias must have shape \(32,\)"),
    "weight None": (lambda: layer_norm(_x, None, None), TypeError,
                    r"weight must be a torch.Tensor"),
    "eps zero": (lambda: layer_norm(_x, _w, None, eps=0.0), ValueError,
                 r"eps must be a finite number > 0"),
    "too wide": (lambda: layer_norm(torch.randn(1, MAX_WIDTH + 1), torch.randn(MAX_WIDTH + 1),
                                    None), ValueError, r"C=16385 is wider"),
}


@pytest.mark.parametrize("case", list(BAD_CALLS))
def test_bad_input(case):
    call, exc, pattern = BAD_CALLS[case]
    with pytest.raises(exc, match=pattern):
        call()


# --------------------------------------------------------------------------- slow

@pytest.mark.slow
@pytest.mark.parametrize("M, C", [(1024, 768), (256, 1600), (64, 4100)])
def test_gpt2_sizes_in_the_interpreter(M, C):
    """GPT-2 small / XL widths and one past 4096, float32, with the kernels' real block sizes
    (make test-all; minutes in Triton's interpreter)."""
    check_against_reference(*make_inputs((M,), C, torch.float32))


# --------------------------------------------------------------------------- GPU

@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M, C", [(8192, 768), (4096, 1600), (1000, 4100), (3, 16384)])
def test_gpu_large(M, C, dtype):
    x = torch.randn(M, C, device="cuda").to(dtype).requires_grad_(True)
    w = (1.0 + 0.5 * torch.randn(C, device="cuda")).requires_grad_(True)  # float32 params
    b = (0.5 * torch.randn(C, device="cuda")).requires_grad_(True)
    check_against_reference(x, w, b)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_gpu_backward_is_bit_identical_on_rerun(dtype):
    x = torch.randn(8192, 768, device="cuda").to(dtype).requires_grad_(True)
    w = torch.randn(768, device="cuda", requires_grad=True)
    b = torch.randn(768, device="cuda", requires_grad=True)
    g = torch.randn(8192, 768, device="cuda").to(dtype)
    first = torch.autograd.grad(layer_norm(x, w, b), (x, w, b), g)
    second = torch.autograd.grad(layer_norm(x, w, b), (x, w, b), g)
    for a, c in zip(first, second):
        assert torch.equal(a, c)


@pytest.mark.gpu
def test_gpu_auto_dispatch_takes_triton(monkeypatch):
    monkeypatch.delenv("GPT_KERNELS", raising=False)
    x, w, b = (t.cuda() for t in make_inputs((64,), 768, torch.float32))
    assert gpt_kernels.use_triton("auto", x, w, b)
    assert torch.equal(gpt_kernels.layer_norm(x, w, b), layer_norm(x, w, b))
