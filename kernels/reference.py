"""Plain-PyTorch twins of the kernels: the CPU fallback and the test oracle.

Same signatures as the public functions in ``kernels``. Everything is built from ordinary
autograd-aware torch ops, so backward comes for free. Math runs in float32 whatever the input
dtype (float64 stays float64, so gradient checks can run in double precision); outputs come
back in the input dtype, losses in float32 (float64 for float64 inputs).
"""

import math

import torch
import torch.nn.functional as F

from kernels._validate import (
    check_attention,
    check_cross_entropy,
    check_fused_linear_cross_entropy,
    check_layer_norm,
    check_linear_gelu,
)

__all__ = [
    "flash_attention",
    "layer_norm",
    "linear_gelu",
    "cross_entropy",
    "fused_linear_cross_entropy",
]

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def _compute_dtype(dtype):
    """float64 stays float64; every other floating dtype computes in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def flash_attention(q, k, v, causal=True, sm_scale=None, *, dropout_p=0.0):
    """softmax(q @ k^T * sm_scale [+ causal mask]) @ v.

    q (B, H, Tq, D), k and v (B, H, Tk, D) -> (B, H, Tq, D) in q's dtype. ``sm_scale``
    defaults to 1/sqrt(D). With ``causal`` the mask is bottom-right aligned: query i sits at
    absolute position Tk - Tq + i and sees keys j <= Tk - Tq + i (the queries are the last Tq
    positions, as in a KV-cache step); Tq > Tk is rejected. ``dropout_p`` drops attention
    probabilities with torch's RNG and rescales the survivors by 1/(1 - p). CPU tensors take
    the explicit formula in float32 (float64 stays float64); CUDA tensors take
    F.scaled_dot_product_attention in their own dtype.
    """
    check_attention(q, k, v, causal, sm_scale, dropout_p)
    Tq, D = q.shape[2], q.shape[3]
    Tk = k.shape[2]
    scale = 1.0 / math.sqrt(D) if sm_scale is None else float(sm_scale)
    if q.is_cuda:
        # On GPUs the reference is also the model's "torch" path (nanoGPT's eager model), so
        # it takes PyTorch's fused SDPA in the input dtype; is_causal is top-left aligned,
        # hence the explicit bottom-right mask when Tq < Tk.
        mask = None
        if causal and Tq != Tk:
            q_pos = torch.arange(Tq, device=q.device).unsqueeze(1) + (Tk - Tq)
            mask = torch.arange(Tk, device=q.device).unsqueeze(0) <= q_pos  # True = keep
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=causal and Tq == Tk, scale=scale
        )
    dt = _compute_dtype(q.dtype)
    scores = torch.matmul(q.to(dt), k.to(dt).transpose(-2, -1)) * scale  # (B, H, Tq, Tk)
    if causal:
        q_pos = torch.arange(Tq, device=q.device).unsqueeze(1) + (Tk - Tq)  # (Tq, 1)
        k_pos = torch.arange(Tk, device=q.device).unsqueeze(0)  # (1, Tk)
        # Every row keeps at least key 0 (Tq <= Tk), so no row is all -inf and none is NaN.
        scores = scores.masked_fill(k_pos > q_pos, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    if dropout_p > 0.0:
        probs = F.dropout(probs, p=dropout_p, training=True)
    return torch.matmul(probs, v.to(dt)).to(q.dtype)


def layer_norm(x, weight, bias, eps=1e-5):
    """(x - mean) / sqrt(var + eps) * weight + bias over the last dim of x (..., C).

    Biased variance, float32 statistics, output in x's dtype; ``bias`` may be None.
    """
    check_layer_norm(x, weight, bias, eps)
    dt = _compute_dtype(x.dtype)
    xf = x.to(dt)
    mean = xf.mean(dim=-1, keepdim=True)
    xc = xf - mean
    var = (xc * xc).mean(dim=-1, keepdim=True)
    y = xc * torch.rsqrt(var + eps) * weight.to(dt)
    if bias is not None:
        y = y + bias.to(dt)
    return y.to(x.dtype)


def _gelu_tanh(x):
    # GPT-2's "gelu_new": 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
    return 0.5 * x * (1.0 + torch.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)))


def linear_gelu(x, weight, bias=None):
    """gelu_tanh(x @ weight.T + bias): x (..., K), weight (N, K), bias (N,) -> (..., N)."""
    check_linear_gelu(x, weight, bias)
    dt = _compute_dtype(x.dtype)
    h = torch.matmul(x.to(dt), weight.to(dt).t())
    if bias is not None:
        h = h + bias.to(dt)
    return _gelu_tanh(h).to(x.dtype)


def _cross_entropy(logits, target, ignore_index, reduction):
    """Loss of already-validated (N, V) logits, in float32 (float64 for float64 logits)."""
    lf = logits.to(_compute_dtype(logits.dtype))
    valid = target != ignore_index  # (N,)
    safe_target = torch.where(valid, target, 0).long()  # ignored rows read class 0, then drop
    lse = torch.logsumexp(lf, dim=-1)  # (N,), stable for |logits| ~ 1e4
    picked = lf.gather(1, safe_target.unsqueeze(1)).squeeze(1)  # (N,)
    # torch.where (not a multiply) so ignored rows get exactly zero gradient
    loss = torch.where(valid, lse - picked, torch.zeros_like(lse))
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    # Mean over non-ignored rows; with none left the sum is 0 and so is the mean (not NaN).
    count = valid.sum().clamp(min=1).to(loss.dtype)
    return loss.sum() / count


def cross_entropy(logits, target, ignore_index=-100, reduction="mean"):
    """-log softmax(logits)[target] per row: logits (N, V), target (N,) integer.

    ``reduction``: "mean" over the rows whose target is not ``ignore_index`` (0.0 when every
    row is ignored), "sum", or "none" (per-row losses, 0 for ignored rows). Float32 math and
    a float32 loss whatever the logits' dtype.
    """
    check_cross_entropy(logits, target, ignore_index, reduction)
    return _cross_entropy(logits, target, ignore_index, reduction)


def fused_linear_cross_entropy(x, weight, target, bias=None, ignore_index=-100,
                               reduction="mean"):
    """cross_entropy(x @ weight.T + bias, target): x (N, C), weight (V, C), bias (V,).

    The oracle materialises the (N, V) logits in float32; the Triton kernel does not.
    """
    check_fused_linear_cross_entropy(x, weight, target, bias, ignore_index, reduction)
    dt = _compute_dtype(x.dtype)
    logits = torch.matmul(x.to(dt), weight.to(dt).t())  # (N, V)
    if bias is not None:
        logits = logits + bias.to(dt)
    return _cross_entropy(logits, target, ignore_index, reduction)
