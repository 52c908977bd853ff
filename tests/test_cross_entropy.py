"""The Triton cross-entropy kernel against torch.nn.functional.cross_entropy in float64.

On CPU these run the real kernels in Triton's interpreter (the conftest sets TRITON_INTERPRET=1);
the kernel has no tl.dot, so float32, float16 and bfloat16 all run here. GPU-marked tests repeat
the check at GPT-2 sizes.
"""

import importlib
import os

from functools import partial

import pytest
import torch
import torch.nn.functional as F

import gpt_kernels
from tests.helpers import TOL, assert_close

ce_mod = importlib.import_module("gpt_kernels.cross_entropy")
cross_entropy = partial(ce_mod.cross_entropy, backend="triton")  # the kernel, whatever GPT_KERNELS says

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
REDUCTIONS = ["mean", "sum", "none"]
# the loss is float32 math on logits both sides read exactly: float32 tolerance in any dtype
LOSS_TOL = TOL[torch.float32]
# Seen with triton 3.9: the interpreter converts float32 to bfloat16/float16 by truncation
# (round toward zero, even with fp_downcast_rounding="rtne"); GPUs round to nearest even. The
# saved softmax - onehot and the scaled gradient are each rounded once, so under the
# interpreter the half-precision gradient error can reach twice the usual tolerance.
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


def grad_tol(dtype):
    return TOL[dtype] * (2 if INTERPRETED and dtype != torch.float32 else 1)


def make_inputs(N, V, dtype, ignore_index=-100, p_ignore=0.3, scale=3.0, device="cpu"):
    logits = (torch.randn(N, V, device=device) * scale).to(dtype)
    target = torch.randint(0, V, (N,), device=device)
    target[torch.rand(N, device=device) < p_ignore] = ignore_index
    return logits, target


def upstream(loss, reduction):
    """A non-unit upstream gradient: 'loss x 3' for scalars, random per row for 'none'."""
    if reduction == "none":
        return torch.randn_like(loss)
    return torch.full_like(loss, 3.0)


def f64_reference(logits, target, ignore_index, reduction, grad_out):
    """F.cross_entropy on a float64 copy: (loss, d loss/d logits) for the given upstream grad."""
    ref = logits.detach().double().requires_grad_(True)
    loss = F.cross_entropy(ref, target.long(), ignore_index=ignore_index, reduction=reduction)
    if reduction == "mean" and not (target != ignore_index).any():
        loss = ref.sum() * 0.0  # torch gives NaN for an all-ignored mean; ours (by design) 0
    loss.backward(grad_out.double())
    return loss.detach(), ref.grad


def run_kernel(logits, target, ignore_index, reduction, grad_out=None):
    x = logits.detach().clone().requires_grad_(True)
    loss = cross_entropy(x, target, ignore_index=ignore_index, reduction=reduction)
    g = upstream(loss, reduction) if grad_out is None else grad_out
    loss.backward(g)
    return loss, x.grad, g


def check_against_reference(logits, target, ignore_index, reduction):
    loss, grad, g = run_kernel(logits, target, ignore_index, reduction)
    ref_loss, ref_grad = f64_reference(logits, target, ignore_index, reduction, g)
    assert loss.dtype == torch.float32
    assert grad.dtype == logits.dtype and grad.shape == logits.shape
    assert_close(loss, ref_loss, LOSS_TOL, "loss", atol=1e-7)
    assert_close(grad, ref_grad, grad_tol(logits.dtype), "grad logits", atol=1e-7)


# --------------------------------------------------------------------------- correctness

@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N, V", [(1, 1000), (7, 1871), (423, 1000), (3, 50257), (5, 7)])
def test_forward_backward_vs_f64(N, V, dtype, reduction):
    logits, target = make_inputs(N, V, dtype)
    check_against_reference(logits, target, -100, reduction)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_ignore_index_minus_one_like_the_model(reduction):
    logits, target = make_inputs(37, 1000, torch.float32, ignore_index=-1, p_ignore=0.5)
    check_against_reference(logits, target, -1, reduction)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_large_logits_stay_finite(dtype):
    # |x| ~ 1e4: a naive exp overflows; the online log-sum-exp must not
    logits, target = make_inputs(9, 1871, dtype, scale=1e4)
    loss, grad, g = run_kernel(logits, target, -100, "mean")
    assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
    ref_loss, ref_grad = f64_reference(logits, target, -100, "mean", g)
    assert_close(loss, ref_loss, LOSS_TOL, "loss")
    assert_close(grad, ref_grad, grad_tol(dtype), "grad logits", atol=1e-7)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_all_targets_ignored_gives_zero_not_nan(reduction):
    logits, _ = make_inputs(6, 1000, torch.float32)
    target = torch.full((6,), -100)
    loss, grad, _ = run_kernel(logits, target, -100, reduction)
    assert torch.equal(loss, torch.zeros_like(loss))
    assert torch.equal(grad, torch.zeros_like(grad))


def test_empty_batch():
    logits = torch.randn(0, 1000, requires_grad=True)
    target = torch.zeros(0, dtype=torch.long)
    loss = cross_entropy(logits, target)
    loss.backward()
    assert loss.item() == 0.0 and logits.grad.shape == (0, 1000)


@pytest.mark.parametrize("layout", ["transposed", "row_slice", "strided_target"])
def test_non_contiguous_inputs(layout):
    N, V = 11, 1000
    logits, target = make_inputs(N, V, torch.float32)
    if layout == "transposed":  # columns strided: copied explicitly
        logits = logits.t().contiguous().t()
    elif layout == "row_slice":  # row stride > V: read in place
        logits = torch.cat([logits, torch.randn(N, 13)], dim=1)[:, :V]
    else:
        target = torch.stack([target, target], dim=1)[:, 0]
    assert not (logits.is_contiguous() and target.is_contiguous())
    check_against_reference(logits, target, -100, "mean")


def test_int32_target():
    logits, target = make_inputs(17, 1000, torch.float32)
    check_against_reference(logits, target.to(torch.int32), -100, "sum")


# --------------------------------------------------------------------------- autograd contract

def test_callers_tensors_unchanged():
    logits, target = make_inputs(13, 1000, torch.float16)
    logits.requires_grad_(True)
    before_logits, before_target = logits.detach().clone(), target.clone()
    loss = cross_entropy(logits, target)
    (loss * 3).backward()
    assert torch.equal(logits.detach(), before_logits)
    assert torch.equal(target, before_target)


def test_no_grad_and_inputs_without_grad():
    logits, target = make_inputs(19, 1000, torch.float32)
    ref, _ = f64_reference(logits, target, -100, "mean", torch.tensor(1.0))
    with torch.no_grad():
        out = cross_entropy(logits.clone().requires_grad_(True), target)
    assert not out.requires_grad
    assert_close(out, ref, LOSS_TOL, "loss (no_grad)")
    out = cross_entropy(logits, target)  # logits do not require grad
    assert not out.requires_grad
    assert_close(out, ref, LOSS_TOL, "loss (no requires_grad)")


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_backward_twice_with_retain_graph(reduction):
    logits, target = make_inputs(8, 1000, torch.float32)
    x = logits.clone().requires_grad_(True)
    loss = cross_entropy(x, target, reduction=reduction)
    g = torch.ones_like(loss)
    (first,) = torch.autograd.grad(loss, x, g, retain_graph=True)
    (second,) = torch.autograd.grad(loss, x, g)
    assert torch.equal(first, second)


def test_rerun_is_bit_identical():
    # one program per row, fixed block order: no atomics, so reruns agree bit for bit
    logits, target = make_inputs(31, 1871, torch.float32)
    g = torch.tensor(3.0)
    runs = [run_kernel(logits, target, -100, "mean", g)[:2] for _ in range(2)]
    assert torch.equal(runs[0][0], runs[1][0])
    assert torch.equal(runs[0][1], runs[1][1])


def test_autocast_keeps_float32_math():
    # under autocast F.cross_entropy runs in float32; so does the kernel, on the logits as given
    logits, target = make_inputs(10, 1000, torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, grad, g = run_kernel(logits, target, -100, "mean")
    ref_loss, ref_grad = f64_reference(logits, target, -100, "mean", g)
    assert loss.dtype == torch.float32 and grad.dtype == torch.bfloat16
    assert_close(loss, ref_loss, LOSS_TOL, "loss")
    assert_close(grad, ref_grad, grad_tol(torch.bfloat16), "grad logits", atol=1e-7)


# --------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("make, exc, name", [
    (lambda: (torch.randint(0, 5, (4, 10)), torch.zeros(4, dtype=torch.long)), TypeError, "logits"),
    (lambda: (torch.randn(4, 10, dtype=torch.float64), torch.zeros(4, dtype=torch.long)),
     TypeError, "logits"),
    (lambda: (torch.randn(40), torch.zeros(4, dtype=torch.long)), ValueError, "logits"),
    (lambda: (torch.randn(4, 10), torch.zeros(5, dtype=torch.long)), ValueError, "target"),
    (lambda: (torch.randn(4, 10), torch.zeros(4)), TypeError, "target"),
    (lambda: (torch.randn(4, 10), torch.tensor([0, 1, 10, 2])), ValueError, "target"),
    (lambda: (torch.randn(4, 10), torch.tensor([0, 1, -5, 2])), ValueError, "target"),
])
def test_bad_input_raises(make, exc, name):
    logits, target = make()
    with pytest.raises(exc, match=f"^{name} "):
        cross_entropy(logits, target)


def test_bad_reduction_raises():
    with pytest.raises(ValueError, match="reduction"):
        cross_entropy(torch.randn(4, 10), torch.zeros(4, dtype=torch.long), reduction="avg")


# --------------------------------------------------------------------------- slow

@pytest.mark.slow
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_gpt2_vocabulary_in_the_interpreter(dtype, reduction):
    """GPT-2's padded vocabulary (50304) over a few hundred rows (make test-all; minutes in
    Triton's interpreter)."""
    check_against_reference(*make_inputs(257, 50304, dtype), -100, reduction)


# --------------------------------------------------------------------------- GPU

@pytest.mark.gpu
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N, V", [(4096, 50257), (8192, 50304), (423, 1871)])
def test_gpu_sizes_vs_f64(N, V, dtype, reduction):
    logits, target = make_inputs(N, V, dtype, device="cuda")
    check_against_reference(logits, target, -100, reduction)


@pytest.mark.gpu
def test_gpu_rerun_is_bit_identical():
    logits, target = make_inputs(2048, 50304, torch.bfloat16, device="cuda")
    g = torch.tensor(3.0, device="cuda")
    runs = [run_kernel(logits, target, -100, "mean", g)[:2] for _ in range(2)]
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])



# --------------------------------------------------------------------------- no host sync

class _RecordOps(torch.utils._python_dispatch.TorchDispatchMode):
    """The aten ops run inside it; ``_local_scalar_dense`` is how bool() / .item() read a
    tensor's value on the host (the host synchronisation on a GPU)."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def _validate_ops(target, V=50):
    from gpt_kernels._validate import check_cross_entropy

    logits = torch.randn(target.shape[0], V)
    with _RecordOps() as rec:
        check_cross_entropy(logits, target, -100, "mean", for_triton=True)
    return rec.ops


def test_target_check_on_a_gpu_reads_nothing_back(monkeypatch):
    target = torch.tensor([0, 3, -100, 49, 7])
    # the CPU check reads the answer on the host (so this test can tell the two apart) ...
    assert "_local_scalar_dense" in _validate_ops(target)
    # ... a device that is not host-checked (every GPU) queues the check instead
    monkeypatch.setattr("gpt_kernels._validate.HOST_CHECKED_DEVICES", ())
    ops = _validate_ops(target)
    assert "_assert_async" in ops
    assert "_local_scalar_dense" not in ops and "is_nonzero" not in ops


@pytest.mark.parametrize("bad", [50, -1, 1000])
def test_target_check_on_the_device_still_names_the_range(bad, monkeypatch):
    from gpt_kernels._validate import check_cross_entropy

    monkeypatch.setattr("gpt_kernels._validate.HOST_CHECKED_DEVICES", ())
    target = torch.tensor([0, bad, 2])
    # on a CPU _assert_async raises at once; on a GPU at the next synchronisation
    with pytest.raises(RuntimeError, match=r"target must be in \[0, 50\) or equal "
                                           r"ignore_index=-100"):
        check_cross_entropy(torch.randn(3, 50), target, -100, "mean", for_triton=True)
