"""PyTorch twins of the kernels: the CPU path, the `kernels="torch"` path, and the test oracle.

Same signatures as the public functions in ``gpt_kernels``. Each one validates its arguments with
the same ``check_*`` as the Triton launcher, then calls PyTorch's fastest op for the job on
every device: ``F.scaled_dot_product_attention`` (flash / memory-efficient kernels on CPU and
GPU, no materialised (T, T) scores), ``F.layer_norm``, ``F.linear`` + ``F.gelu`` (on a CPU the tanh GELU
through a sigmoid, see ``_GeluTanhCPU``), ``F.cross_entropy``. That makes this the path a CPU user trains on, as fast as nanoGPT's model,
which calls the same ops. Autograd comes with the ops.

Precision: outputs in the input dtype (float64 stays float64, so gradient checks can run in
double precision); PyTorch's CPU and GPU kernels accumulate half-precision inputs in float32.
Losses are float32 for half inputs (float64 for float64). The tests compare every op and
gradient with independent written-out formulas in float64 (``tests/test_reference.py``).
"""

import math

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from gpt_kernels._validate import (
    _floating,
    _same_device,
    check_attention,
    check_cross_entropy,
    check_fused_linear_cross_entropy,
    check_layer_norm,
    check_linear_gelu,
)

__all__ = [
    "flash_attention",
    "layer_norm",
    "add_layer_norm",
    "linear_gelu",
    "cross_entropy",
    "fused_linear_cross_entropy",
]

_HALF = (torch.float16, torch.bfloat16)

# Half-precision attention on CPU tensors is computed in float32 (flash_attention says why).
# What models a GPU step on CPU tensors (bench.memory's meter on fake tensors, the roofline
# tests' kernel counts) turns this off: a GPU's SDPA takes bf16 as it is.
CPU_HALF_ATTENTION_IN_FLOAT32 = True


def _loss_dtype(dtype):
    """Losses are computed in float32 for half inputs; float32/float64 keep theirs."""
    return torch.float32 if dtype in _HALF else dtype


def flash_attention(q, k, v, causal=True, sm_scale=None, *, dropout_p=0.0):
    """softmax(q @ k^T * sm_scale [+ causal mask]) @ v.

    q (B, H, Tq, D), k and v (B, H, Tk, D) -> (B, H, Tq, D) in q's dtype. ``sm_scale``
    defaults to 1/sqrt(D). With ``causal`` the mask is bottom-right aligned: query i sits at
    absolute position Tk - Tq + i and sees keys j <= Tk - Tq + i (the queries are the last Tq
    positions, as in a KV-cache step); Tq > Tk is rejected. ``dropout_p`` drops attention
    probabilities with torch's RNG and rescales the survivors by 1/(1 - p).
    """
    check_attention(q, k, v, causal, sm_scale, dropout_p)
    Tq, Tk = q.shape[2], k.shape[2]
    mask = None
    if causal and Tq != Tk:
        # SDPA's is_causal is top-left aligned; a KV-cache step needs bottom-right, so the
        # mask is explicit there (True = attend). Every row keeps key 0 at least (Tq <= Tk).
        q_pos = torch.arange(Tq, device=q.device).unsqueeze(1) + (Tk - Tq)  # (Tq, 1)
        mask = torch.arange(Tk, device=q.device).unsqueeze(0) <= q_pos  # (Tq, Tk)
    if q.device.type == "cpu" and q.dtype in _HALF and CPU_HALF_ATTENTION_IN_FLOAT32:
        # PyTorch's CPU flash attention is ~6x slower backward in bfloat16 than in float32
        # (one thread, AVX-512 with bf16: 53 ms against 9 ms a call at 12 x 4 x 64 x 32):
        # half inputs are computed in float32 there, which is also the more exact result
        with torch.autocast("cpu", enabled=False):
            out = F.scaled_dot_product_attention(
                q.float(), k.float(), v.float(), attn_mask=mask, dropout_p=dropout_p,
                is_causal=causal and Tq == Tk, scale=sm_scale)
        return out.to(q.dtype)
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=causal and Tq == Tk,
        scale=sm_scale,
    )


def layer_norm(x, weight, bias, eps=1e-5):
    """(x - mean) / sqrt(var + eps) * weight + bias over the last dim of x (..., C).

    Biased variance, float32 statistics, output in x's dtype; ``bias`` may be None. Parameters
    may be float32 with half x (mixed precision): then the op runs in float32.
    """
    check_layer_norm(x, weight, bias, eps)
    if weight.dtype == x.dtype and (bias is None or bias.dtype == x.dtype):
        return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)
    dt = torch.promote_types(torch.float32, x.dtype)
    y = F.layer_norm(x.to(dt), (x.shape[-1],), weight.to(dt),
                     None if bias is None else bias.to(dt), eps)
    return y.to(x.dtype)


def check_add_layer_norm(x, branch, weight, bias, eps=1e-5, *, for_triton=False):
    """x (..., C) and branch (x's shape, any floating dtype, or None) on one device; weight
    and bias as for ``layer_norm``. (Kept here, next to its one user besides the kernel.)"""
    check_layer_norm(x, weight, bias, eps, for_triton=for_triton)
    if branch is not None:
        _floating("branch", branch, for_triton)
        if branch.shape != x.shape:
            raise ValueError(f"branch must have x's shape {tuple(x.shape)}, "
                             f"got {tuple(branch.shape)}")
        _same_device("branch", branch, "x", x)


def add_layer_norm_dtype(x):
    """The dtype of add_layer_norm's y: the autocast dtype when autocast is on for x's
    device (what the next matmul reads), else x's dtype."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def add_layer_norm(x, branch, weight, bias, eps=1e-5):
    """s = x + branch (in x's dtype, added in at least float32), y = layer_norm(s) -> (s, y).

    ``branch`` None: s is x. y has the autocast dtype when autocast is on for x's device,
    else x's dtype: what ``layer_norm`` followed by an autocast matmul computes, in one
    call. The Triton op fuses the add, the normalisation and the cast into one pass.
    """
    check_add_layer_norm(x, branch, weight, bias, eps)
    s = x
    if branch is not None:
        dt = torch.promote_types(torch.promote_types(x.dtype, branch.dtype), torch.float32)
        s = (x.to(dt) + branch.to(dt)).to(x.dtype)
    return s, layer_norm(s, weight, bias, eps).to(add_layer_norm_dtype(x))


# gelu_tanh(h) = 0.5 h (1 + tanh(z)) = h * sigmoid(2 z), z = sqrt(2/pi) (h + 0.044715 h^3)
_GELU_A = 2.0 * math.sqrt(2.0 / math.pi)
_GELU_C = 0.044715


class _GeluTanhCPU(torch.autograd.Function):
    """The tanh GELU as h * sigmoid(A h (1 + C h^2)), for float32/float64 CPU tensors.

    Same function as F.gelu(approximate="tanh") (to rounding: 0.5 (1 + tanh z) = sigmoid 2z),
    but PyTorch's CPU tanh is ~3.5x slower than its sigmoid (measured on an AVX2 CPU, one
    thread, 768 x 512 floats, other jobs running: tanh 1.6 ms, sigmoid 0.46 ms), which
    makes F.gelu's tanh form (forward + backward 3.5 ms there) 2.6x the cost of nanoGPT's
    erf GELU (1.3 ms). This one is 1.7 ms: one sigmoid and a few fused, in-place passes. The
    backward reuses the saved sigmoid: d/dh [h s(u)] = s + h u' s (1 - s), u' = A (1 + 3 C h^2).
    """

    @staticmethod
    def forward(ctx, h):
        a = h.new_tensor(_GELU_A)  # the constant in h's dtype (float64 stays exact)
        s = torch.addcmul(a, h, h, value=_GELU_A * _GELU_C).mul_(h).sigmoid_()  # s(u)
        ctx.save_for_backward(h, s)
        return s * h

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        h, s = ctx.saved_tensors
        a = h.new_tensor(_GELU_A)
        g = torch.addcmul(a, h, h, value=3.0 * _GELU_A * _GELU_C).mul_(h).mul_(s)  # h u' s
        g.addcmul_(g, s, value=-1.0)  # h u' s (1 - s), in place: one new buffer in backward
        return g.add_(s).mul_(dy)


def _gelu_tanh(h):
    if h.device.type == "cpu" and h.dtype in (torch.float32, torch.float64):
        return _GeluTanhCPU.apply(h)
    # GPUs (one fused kernel) and half precision (float32 math inside the kernel)
    return F.gelu(h, approximate="tanh")


def linear_gelu(x, weight, bias=None):
    """gelu_tanh(x @ weight.T + bias): x (..., K), weight (N, K), bias (N,) -> (..., N).

    The tanh approximation (GPT-2's "gelu_new"), as the Triton kernel computes: F.linear,
    then F.gelu(approximate="tanh"), or on a CPU the same function through a sigmoid
    (``_GeluTanhCPU``: PyTorch's CPU tanh is slow).
    """
    if isinstance(x, torch.Tensor) and torch.is_autocast_enabled(x.device.type):
        # F.linear would cast all three to the autocast dtype: check what it will compute
        # with (x may already have that dtype, e.g. from add_layer_norm, the weights not)
        dt = torch.get_autocast_dtype(x.device.type)
        x, weight, bias = (t.to(dt) if isinstance(t, torch.Tensor) and t.is_floating_point()
                           else t for t in (x, weight, bias))
    check_linear_gelu(x, weight, bias)
    return _gelu_tanh(F.linear(x, weight, bias))


def _cross_entropy(logits, target, ignore_index, reduction):
    """Loss of already-validated (N, V) logits, in float32 (float64 for float64 logits).

    F.cross_entropy gives ignored rows a loss of 0 and exactly zero gradient. Its "mean" is
    0/0 = NaN when every row is ignored; the contract says 0, so the mean is the sum over the
    count of counted rows, clamped to at least 1.
    """
    logits = logits.to(_loss_dtype(logits.dtype))
    target = target.long()
    if reduction != "mean":
        return F.cross_entropy(logits, target, ignore_index=ignore_index, reduction=reduction)
    total = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="sum")
    count = (target != ignore_index).sum().clamp(min=1)
    return total / count.to(total.dtype)


def cross_entropy(logits, target, ignore_index=-100, reduction="mean"):
    """-log softmax(logits)[target] per row: logits (N, V), target (N,) integer.

    ``reduction``: "mean" over the rows whose target is not ``ignore_index`` (0.0 when every
    row is ignored), "sum", or "none" (per-row losses, 0 for ignored rows). Float32 math and
    a float32 loss whatever the logits' dtype (float64 stays float64).
    """
    check_cross_entropy(logits, target, ignore_index, reduction)
    return _cross_entropy(logits, target, ignore_index, reduction)


def fused_linear_cross_entropy(x, weight, target, bias=None, ignore_index=-100,
                               reduction="mean"):
    """cross_entropy(x @ weight.T + bias, target): x (N, C), weight (V, C), bias (V,).

    Here the (N, V) logits are materialised (the Triton kernel never does); half inputs get
    float32 logits, as the kernel's float32 accumulation gives. Under torch.autocast the
    matmul runs in the autocast dtype, as nanoGPT's lm_head does.
    """
    check_fused_linear_cross_entropy(x, weight, target, bias, ignore_index, reduction)
    dt = _loss_dtype(x.dtype)
    logits = F.linear(x.to(dt), weight.to(dt), None if bias is None else bias.to(dt))
    return _cross_entropy(logits, target, ignore_index, reduction)
