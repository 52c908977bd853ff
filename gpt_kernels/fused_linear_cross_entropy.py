"""Fused linear cross-entropy: ``cross_entropy(x @ weight.T + bias, target)`` in token chunks.

The lm_head of GPT-2 at training sizes (N = 8192 tokens, V = 50304) would produce 412M logits:
1.6 GB in float32, and ``F.cross_entropy`` keeps a float32 log-softmax of the same size for its
backward. Here the tokens go through in chunks of ``chunk_rows(N, V, C)`` rows; for each chunk

1. the chunk's logits are one matmul (torch / cuBLAS, as Liger-Kernel does) into a
   ``(rows, V)`` buffer this module allocated once and reuses for every chunk;
2. the Triton cross-entropy kernel (``gpt_kernels/cross_entropy.py``) computes the chunk's loss and,
   in the same launch, overwrites that buffer with ``softmax - onehot`` (each program reads a
   logit before it writes its gradient, so the aliasing is safe);
3. two more matmuls turn that into the chunk's rows of ``grad_x`` and its contribution to
   ``grad_weight`` (``grad_bias`` is a column sum), accumulated across chunks in float32.

So for "mean" and "sum" the forward already holds every gradient up to the scalar upstream
gradient, and backward only scales them (three matmuls in all, as in an unfused lm_head; the
logits are never recomputed). What backward needs is stored, not recomputed: ``grad_x`` (N, C)
and ``grad_weight`` (V, C) float32, ``grad_bias`` (V,) float32, far smaller than (N, V) logits.

For "none" the upstream gradient differs per row and must weight each row of
``softmax - onehot`` before the ``grad_weight`` matmul sums over rows, so the forward computes
the loss only and backward runs the chunk loop again with the per-row gradient as the kernel's
scale (one extra lm_head matmul, still no (N, V) tensor).

Dtypes: the matmuls run in the dtype the public function was given, or in the autocast dtype
when autocast is on (as ``F.linear`` would); loss and log-sum-exp are float32. The reduction's
``1/n_valid`` and the upstream gradient are applied to the float32 accumulators, not to the
low-precision chunk buffer (in float16, ``softmax / 8192`` would flush to zero). Gradients come
back in each input's own dtype: float32 parameters under autocast get float32 gradients from
the float32 accumulators, not a bfloat16 copy.

TF32: none of our own. On the float32 path the matmuls are ``torch.mm`` and follow torch's
setting ``torch.backends.cuda.matmul.allow_tf32``: off by default (IEEE float32, what the tests
check), on in ``train.py``'s CUDA runs, where the lm_head matmuls then use TF32 exactly as an
unfused ``F.linear`` would. The cross-entropy kernel has no matmul.

Memory (GPT-2 sizes, bf16 under autocast): one 128 x 50304 chunk buffer (12.9 MB), float32
``grad_weight`` (155 MB) plus a bf16 per-chunk product of the same shape (77 MB), float32
``grad_x`` (25 MB); backward makes new scaled copies rather than scaling the saved gradients in
place, so ``backward(retain_graph=True)`` twice gives the same answer.
"""

from typing import Optional

import torch
import triton
from torch import Tensor

from gpt_kernels import reference
from gpt_kernels._library import define_op, use_triton
from gpt_kernels._validate import check_fused_linear_cross_entropy
from gpt_kernels.cross_entropy import cross_entropy_forward, reduce_loss, reduction_scale

__all__ = ["fused_linear_cross_entropy", "chunk_rows", "flce_pass", "flce_forward",
           "flce_backward_none", "flce_fwd", "flce_bwd_none"]

_MIN_CHUNK_ROWS = 64
_MAX_CHUNK_ROWS = 1024


def chunk_rows(N, V, C):
    """Tokens per chunk: the chunk's (rows, V) logits about as large as x's own (N, C).

    rows = N / ceil(V / C), rounded up to a power of two and kept in [64, 1024] (fewer than 64
    rows makes the matmuls inefficient; more than 1024 buys nothing), never more than N.
    GPT-2 training (N=8192, C=768, V=50304): ceil(V/C) = 66, 8192/66 -> 128 rows, a
    128 x 50304 chunk: 12.9 MB in bfloat16 against 824 MB for all the logits.
    """
    N, V, C = int(N), int(V), int(C)  # symbolic under dynamic shapes: chunks specialize on them
    rows = triton.next_power_of_2(max(1, triton.cdiv(N, triton.cdiv(V, C))))
    return max(1, min(N, max(_MIN_CHUNK_ROWS, min(_MAX_CHUNK_ROWS, rows))))


def flce_pass(x, weight, bias, target, ignore_index, grad_scale=None,
              need_x=False, need_weight=False, need_bias=False, rows=None):
    """One sweep over the tokens in chunks: per-row float32 loss and the requested gradients.

    x (N, C), weight (V, C), bias (V,) or None, all of one dtype; target (N,).
    ``grad_scale`` (float32, 1 or N values) multiplies each row of ``softmax - onehot``
    before the gradient matmuls. Returns ``(loss_rows, grad_x, grad_weight, grad_bias)``, the
    gradients float32 ((N, C), (V, C), (V,)) or None when not requested.
    """
    N, C = x.shape
    V = weight.shape[0]
    device = x.device
    need_grad = need_x or need_weight or need_bias
    rows = chunk_rows(N, V, C) if rows is None else rows
    loss_rows = torch.empty(N, dtype=torch.float32, device=device)
    grad_x = torch.empty(N, C, dtype=torch.float32, device=device) if need_x else None
    grad_weight = torch.zeros(V, C, dtype=torch.float32, device=device) if need_weight else None
    grad_bias = torch.zeros(V, dtype=torch.float32, device=device) if need_bias else None
    if N == 0:
        return loss_rows, grad_x, grad_weight, grad_bias
    if grad_scale is None:
        grad_scale = torch.ones(1, dtype=torch.float32, device=device)
    per_row_scale = grad_scale.numel() != 1
    # The one (rows, V) buffer: logits of a chunk, then overwritten with their gradient.
    buffer = torch.empty(min(rows, N), V, dtype=x.dtype, device=device)
    weight_t = weight.t()
    for start in range(0, N, rows):
        end = min(start + rows, N)
        x_chunk = x[start:end]  # (n, C)
        logits = buffer[: end - start]  # (n, V), contiguous: the first n rows of the buffer
        if bias is None:
            torch.mm(x_chunk, weight_t, out=logits)
        else:
            torch.addmm(bias, x_chunk, weight_t, out=logits)
        scale_c = grad_scale[start:end] if per_row_scale else grad_scale
        loss_rows[start:end], _ = cross_entropy_forward(
            logits, target[start:end], ignore_index,
            grad_out=logits if need_grad else None, grad_scale=scale_c,
        )
        # logits now holds dL/dlogits for the chunk (rows scaled by scale_c, ignored rows 0)
        if need_x:
            grad_x[start:end] = torch.mm(logits, weight)  # (n, V) @ (V, C)
        if need_weight:  # (V, n) @ (n, C), summed over chunks in float32
            if x.dtype == torch.float32:
                grad_weight.addmm_(logits.t(), x_chunk)  # no (V, C) temporary
            else:
                grad_weight += torch.mm(logits.t(), x_chunk)  # half product, float32 sum
        if need_bias:
            grad_bias += logits.sum(dim=0, dtype=torch.float32)
    return loss_rows, grad_x, grad_weight, grad_bias


def _compute_copies(x, weight, bias, dtype):
    """x, weight, bias in the matmuls' dtype: themselves, or copies cast to ``dtype``."""
    if dtype is None:
        return x, weight, bias
    return x.to(dtype), weight.to(dtype), bias.to(dtype) if bias is not None else None


def _caller_dtypes(grads, x, weight, bias):
    """The float32 gradients in the dtypes of the tensors the caller passed ((0,) if absent)."""
    gx, gw, gb = grads
    return (gx.to(x.dtype) if gx is not None else x.new_empty(0),
            gw.to(weight.dtype) if gw is not None else x.new_empty(0),
            gb.to(bias.dtype) if gb is not None else x.new_empty(0))


def flce_forward(x: Tensor, weight: Tensor, bias: Optional[Tensor], target: Tensor,
                 ignore_index: int, reduction: str, compute_dtype: Optional[torch.dtype],
                 need_x: bool, need_weight: bool,
                 need_bias: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(loss, grad_x, grad_weight, grad_bias, scale) of validated inputs.

    The matmuls run in ``compute_dtype`` (the autocast dtype) or in x's dtype. For "mean" and
    "sum" the requested gradients of the *sum* of the losses come back in float32 ((0,) when
    not requested) and ``scale`` is the reduction's (1,) float32 factor; for "none" no
    gradient is computed here (backward recomputes: see the module docstring).
    """
    x_c, weight_c, bias_c = _compute_copies(x, weight, bias, compute_dtype)
    scale = reduction_scale(target, ignore_index, reduction, x.device)
    with torch.autocast(x.device.type, enabled=False):
        if reduction == "none":
            loss_rows, *grads = flce_pass(x_c, weight_c, bias_c, target, ignore_index)
        else:
            loss_rows, *grads = flce_pass(x_c, weight_c, bias_c, target, ignore_index,
                                          need_x=need_x, need_weight=need_weight,
                                          need_bias=need_bias and bias is not None)
    empty = x.new_empty(0, dtype=torch.float32)
    gx, gw, gb = (g if g is not None else empty.clone() for g in grads)
    return reduce_loss(loss_rows, scale, reduction), gx, gw, gb, scale


def flce_backward_none(x: Tensor, weight: Tensor, bias: Optional[Tensor], target: Tensor,
                       grad_loss: Tensor, ignore_index: int,
                       compute_dtype: Optional[torch.dtype], need_x: bool, need_weight: bool,
                       need_bias: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients for reduction "none": the chunk loop again, each row of softmax - onehot
    weighted by its upstream gradient ``grad_loss`` (N,). In the caller's dtypes."""
    x_c, weight_c, bias_c = _compute_copies(x, weight, bias, compute_dtype)
    with torch.autocast(x.device.type, enabled=False):
        _, *grads = flce_pass(x_c, weight_c, bias_c, target, ignore_index,
                              grad_scale=grad_loss.to(torch.float32), need_x=need_x,
                              need_weight=need_weight, need_bias=need_bias and bias is not None)
    return _caller_dtypes(grads, x, weight, bias)


# --------------------------------------------------------------------------- registration

flce_fwd = define_op("fused_linear_cross_entropy_fwd", flce_forward)
flce_bwd_none = define_op("fused_linear_cross_entropy_bwd_none", flce_backward_none)


def _setup_context(ctx, inputs, output):
    x, weight, bias, target, ignore_index, reduction, compute_dtype, *needs = inputs
    _loss, gx, gw, gb, scale = output
    ctx.mark_non_differentiable(gx, gw, gb, scale)  # saved for backward, not results
    ctx.reduction = reduction
    if reduction == "none":
        ctx.save_for_backward(x, weight, bias, target)
        ctx.args = (ignore_index, compute_dtype, *needs)
    else:
        ctx.save_for_backward(gx, gw, gb, scale)
        ctx.dtypes = (x.dtype, weight.dtype, bias.dtype if bias is not None else None)


def _backward(ctx, grad_loss, *_):
    need_x, need_weight, need_bias = ctx.needs_input_grad[:3]
    if ctx.reduction == "none":
        x, weight, bias, target = ctx.saved_tensors
        gx, gw, gb = flce_bwd_none(x, weight, bias, target, grad_loss, *ctx.args)
    else:
        # the forward already holds the gradients of the summed loss: scale them by
        # upstream x 1/n_valid (new tensors: backward twice gives the same answer)
        gx, gw, gb, scale = ctx.saved_tensors
        g = grad_loss.to(torch.float32) * scale
        x_dtype, w_dtype, b_dtype = ctx.dtypes
        gx, gw = (gx * g).to(x_dtype), (gw * g).to(w_dtype)
        gb = (gb * g).to(b_dtype) if b_dtype is not None else None
    return (gx if need_x else None, gw if need_weight else None, gb if need_bias else None,
            None, None, None, None, None, None, None)


flce_fwd.register_autograd(_backward, setup_context=_setup_context)


# --------------------------------------------------------------------------- public

def fused_linear_cross_entropy(x, weight, target, bias=None, ignore_index=-100,
                               reduction="mean", *, backend="auto"):
    """cross_entropy(x @ weight.T + bias, target) without the (N, V) logits.

    x (N, C), weight (V, C), bias (V,) or None, target (N,); reductions as in
    ``gpt_kernels.cross_entropy``; the loss is float32. Under autocast x, weight and bias are cast
    to the autocast dtype like ``F.linear`` casts them; gradients come back in the dtypes the
    caller passed (from float32 accumulators). Under ``torch.no_grad()`` (or when no input
    requires grad) only the loss is computed.
    ``backend``: "auto" (Triton where it runs, else the reference), "triton" or "torch".
    """
    if not use_triton(backend, x, weight, target, bias):
        return reference.fused_linear_cross_entropy(x, weight, target, bias, ignore_index,
                                                    reduction)
    dtype = None
    if isinstance(x, torch.Tensor) and torch.is_autocast_enabled(x.device.type):
        dtype = torch.get_autocast_dtype(x.device.type)
    check_fused_linear_cross_entropy(x, weight, target, bias, ignore_index, reduction,
                                     for_triton=True, cast_to=dtype)
    grad = torch.is_grad_enabled()
    needs = [grad and t is not None and t.requires_grad for t in (x, weight, bias)]
    loss, *_ = flce_fwd(x, weight, bias, target, ignore_index, reduction, dtype, *needs)
    return loss
