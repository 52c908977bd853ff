"""Cross-entropy over a large vocabulary: one Triton program per row, online log-sum-exp.

Forward (``_cross_entropy_fwd``) streams a row of logits in ``BLOCK_V`` chunks (a GPT-2
vocabulary of 50257/50304 does not fit one block), keeping a running max ``m`` and a running
sum ``s = sum(exp(x - m))`` in float32, so ``lse = m + log(s)`` is exact for |logits| ~ 1e4
whatever the logits' dtype. When a gradient is wanted, a second sweep over the same row writes
``(softmax - onehot(target)) * scale`` into a gradient buffer in that same launch. The buffer
is one the launcher's caller allocated; it may alias the logits (each program reads an
element before it overwrites it), never the caller's logits. (The fused linear cross-entropy
used that aliasing before its cross-entropy moved into its own matmul kernels.)

Backward (``_cross_entropy_bwd``) multiplies the saved ``softmax - onehot`` by the upstream
gradient (one scalar for "mean"/"sum", one value per row for "none") and the reduction's scale
in float32, and writes a new tensor: the saved buffer is left untouched, so ``backward`` may run
twice (``retain_graph=True``) and give the same answer.

Why the forward stores the unscaled ``softmax - onehot`` (values in [-1, 1]) rather than the
final gradient: the upstream gradient (a loss scale of 2^16 under float16 training, or the
per-row weights of "none") is unknown at forward time, and pre-multiplying by ``1/n_valid``
would flush float16 gradients to zero for a large batch before the loss scale could lift them.
"""

import torch
import triton
import triton.language as tl
from torch import Tensor

from gpt_kernels import reference
from gpt_kernels._library import define_op, launch, use_triton
from gpt_kernels._validate import check_cross_entropy

__all__ = ["cross_entropy", "cross_entropy_forward", "cross_entropy_backward", "cross_entropy_loss",
           "cross_entropy_fwd", "cross_entropy_bwd", "block_config"]


@triton.jit
def _cross_entropy_fwd(
    LOGITS, stride_logits,  # (N, V) logits, unit column stride
    TARGET, stride_target,  # (N,) integer class ids (or ignore_index)
    LOSS,  # (N,) float32 out: per-row loss, 0 for ignored rows
    LSE,  # (N,) float32 out: per-row log-sum-exp
    DLOGITS, stride_dlogits,  # (N, V) out: (softmax - onehot) * scale; may alias LOGITS
    SCALE, stride_scale,  # (N,) float32 gradient scale per row; stride 0 broadcasts one value
    V, ignore_index,
    BLOCK_V: tl.constexpr,
    WRITE_GRAD: tl.constexpr,
):
    # int64: row * stride passes 2^31 once N * V does (8192 x 50304 logits already do)
    row = tl.program_id(0).to(tl.int64)
    logits_row = LOGITS + row * stride_logits
    target = tl.load(TARGET + row * stride_target).to(tl.int64)
    valid = target != ignore_index
    cols = tl.arange(0, BLOCK_V)

    # Online log-sum-exp: after each block, s = sum(exp(x - m)) over the columns seen so far.
    # The first block always holds column 0, so m is finite from then on and exp(m - m_new)
    # never sees -inf - (-inf).
    m = float("-inf")
    s = 0.0
    for start in range(0, V, BLOCK_V):
        offs = start + cols
        x = tl.load(logits_row + offs, mask=offs < V, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(x, axis=0))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), axis=0)
        m = m_new
    lse = m + tl.log(s)

    # Read the target's logit before the gradient sweep, which may overwrite it in place.
    # Ignored rows read column 0 (always in bounds) and then drop it.
    x_target = tl.load(logits_row + tl.where(valid, target, 0)).to(tl.float32)
    tl.store(LOSS + row, tl.where(valid, lse - x_target, 0.0))
    tl.store(LSE + row, lse)

    if WRITE_GRAD:
        # d loss_i / d x_ij = softmax_ij - [j == target_i]; ignored rows get exact zeros
        scale = tl.load(SCALE + row * stride_scale).to(tl.float32)
        scale = tl.where(valid, scale, 0.0)
        dlogits_row = DLOGITS + row * stride_dlogits
        for start in range(0, V, BLOCK_V):
            offs = start + cols
            mask = offs < V
            x = tl.load(logits_row + offs, mask=mask, other=0.0).to(tl.float32)
            p = tl.exp(x - lse)
            grad = (p - tl.where(offs == target, 1.0, 0.0)) * scale
            tl.store(dlogits_row + offs, grad.to(DLOGITS.dtype.element_ty), mask=mask)


@triton.jit
def _cross_entropy_bwd(
    DLOGITS, stride_dlogits,  # (N, V) saved softmax - onehot (zero rows where ignored)
    GRAD_LOSS, stride_grad,  # (N,) upstream gradient per row; stride 0 broadcasts a scalar
    SCALE,  # (1,) float32 reduction scale: 1 / n_valid for "mean", 1 otherwise
    DX, stride_dx,  # (N, V) out: gradient of the logits, a new tensor
    V,
    BLOCK_V: tl.constexpr,
):
    # int64 for the same reason as in the forward: row * stride can pass 2^31
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)
    mask = offs < V
    g = tl.load(GRAD_LOSS + row * stride_grad).to(tl.float32) * tl.load(SCALE)
    d = tl.load(DLOGITS + row * stride_dlogits + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(DX + row * stride_dx + offs, (d * g).to(DX.dtype.element_ty), mask=mask)


_MAX_BLOCK_V = 4096


def block_config(V):
    """(BLOCK_V, num_warps) for a vocabulary of V columns; wider rows loop over blocks."""
    V = int(V)  # a symbolic size under torch.compile's dynamic shapes: tiles specialize on it
    block = min(triton.next_power_of_2(V), _MAX_BLOCK_V)
    num_warps = 8 if block >= 2048 else (4 if block >= 512 else 2)
    return block, num_warps


def _unit_columns(t):
    """t with unit column stride; a copy (made explicitly) only when its columns are strided."""
    return t if t.stride(1) == 1 else t.contiguous()


def cross_entropy_forward(logits, target, ignore_index, grad_out=None, grad_scale=None):
    """Per-row loss and log-sum-exp of validated (N, V) logits, both float32 (N,).

    With ``grad_out`` (an (N, V) buffer with unit column stride, owned by the caller of this
    launcher; it may be ``logits`` itself) the same launch writes
    ``(softmax - onehot) * grad_scale`` into it; ``grad_scale`` is a float32 tensor of one
    value (broadcast) or of N values (one per row). Ignored rows get loss 0 and zero gradient.
    """
    logits = _unit_columns(logits)
    N, V = logits.shape
    loss = torch.empty(N, dtype=torch.float32, device=logits.device)
    lse = torch.empty(N, dtype=torch.float32, device=logits.device)
    write_grad = grad_out is not None
    if write_grad:
        if grad_out.shape != logits.shape or grad_out.stride(1) != 1:
            raise ValueError(
                f"grad_out must be an ({N}, {V}) buffer with unit column stride, "
                f"got shape {tuple(grad_out.shape)} strides {grad_out.stride()}"
            )
        if grad_scale is None:
            grad_scale = torch.ones(1, dtype=torch.float32, device=logits.device)
        if grad_scale.numel() not in (1, N):
            raise ValueError(f"grad_scale must hold 1 or {N} values, got {grad_scale.numel()}")
        grad_scale = grad_scale.reshape(-1).to(torch.float32)
        scale_stride = 0 if grad_scale.numel() == 1 else grad_scale.stride(0)
    else:
        grad_out, grad_scale, scale_stride = logits, loss, 0  # unused placeholders
    if N == 0:
        return loss, lse
    block, num_warps = block_config(V)
    launch(_cross_entropy_fwd)[(N,)](
        logits, logits.stride(0),
        target, target.stride(0),
        loss, lse,
        grad_out, grad_out.stride(0),
        grad_scale, scale_stride,
        V, ignore_index,
        BLOCK_V=block, WRITE_GRAD=write_grad, num_warps=num_warps,
    )
    return loss, lse


def cross_entropy_backward(dlogits: Tensor, grad_loss: Tensor, scale: Tensor) -> Tensor:
    """New (N, V) tensor ``dlogits * grad_loss[row] * scale`` in dlogits' dtype.

    ``grad_loss`` holds one value (broadcast to every row) or N values; ``scale`` one float32
    value. ``dlogits`` is read, never written.
    """
    N, V = dlogits.shape
    dx = torch.empty_like(dlogits)
    if N == 0:
        return dx
    grad_loss = grad_loss.reshape(-1)
    grad_stride = 0 if grad_loss.numel() == 1 else grad_loss.stride(0)
    block, num_warps = block_config(V)
    launch(_cross_entropy_bwd)[(N, triton.cdiv(V, block))](
        dlogits, dlogits.stride(0),
        grad_loss, grad_stride,
        scale,
        dx, dx.stride(0),
        V,
        BLOCK_V=block, num_warps=num_warps,
    )
    return dx


def reduction_scale(target, ignore_index, reduction, device):
    """float32 (1,) tensor: 1 / max(n_valid, 1) for "mean", 1 otherwise; no host sync."""
    if reduction == "mean":
        n_valid = (target != ignore_index).sum().clamp(min=1)
        return (1.0 / n_valid.to(torch.float32)).reshape(1)
    return torch.ones(1, dtype=torch.float32, device=device)


def reduce_loss(loss_rows, scale, reduction):
    """Per-row float32 losses -> the requested reduction (a mean over no rows is 0, not NaN)."""
    if reduction == "none":
        return loss_rows
    return (loss_rows.sum() * scale).reshape(())


def cross_entropy_loss(logits: Tensor, target: Tensor, ignore_index: int, reduction: str,
                       need_grad: bool) -> tuple[Tensor, Tensor, Tensor]:
    """The reduced float32 loss of validated (N, V) logits, plus what backward needs.

    Returns (loss, dlogits, scale): dlogits is ``softmax - onehot`` in the logits' dtype,
    written by the same launch ((0,) when not ``need_grad``), scale the (1,) float32
    reduction scale.
    """
    dlogits = torch.empty(logits.shape if need_grad else (0,), dtype=logits.dtype,
                          device=logits.device)
    loss_rows, _ = cross_entropy_forward(logits, target, ignore_index,
                                         grad_out=dlogits if need_grad else None)
    scale = reduction_scale(target, ignore_index, reduction, logits.device)
    return reduce_loss(loss_rows, scale, reduction), dlogits, scale


# --------------------------------------------------------------------------- registration

cross_entropy_fwd = define_op("cross_entropy_fwd", cross_entropy_loss)
cross_entropy_bwd = define_op("cross_entropy_bwd", cross_entropy_backward)


def _setup_context(ctx, inputs, output):
    _loss, dlogits, scale = output
    ctx.mark_non_differentiable(dlogits, scale)  # saved for backward, not results
    ctx.save_for_backward(dlogits, scale)


def _backward(ctx, grad_loss, _ddlogits, _dscale):
    dlogits, scale = ctx.saved_tensors
    return cross_entropy_bwd(dlogits, grad_loss.to(torch.float32), scale), None, None, None, None


cross_entropy_fwd.register_autograd(_backward, setup_context=_setup_context)


# --------------------------------------------------------------------------- public

def cross_entropy(logits, target, ignore_index=-100, reduction="mean", *, backend="auto"):
    """-log softmax(logits)[target] per row: logits (N, V) float32/float16/bfloat16, target (N,).

    ``reduction``: "mean" over non-ignored rows (0 when all are ignored), "sum", or "none".
    The loss is float32 (as ``F.cross_entropy`` under autocast); the logits' gradient comes
    back in their dtype. Without a gradient to compute (``torch.no_grad()`` or logits that do
    not require grad) only the loss is computed and no (N, V) buffer is allocated.
    ``backend``: "auto" (Triton where it runs, else the reference), "triton" or "torch".
    """
    if not use_triton(backend, logits, target):
        return reference.cross_entropy(logits, target, ignore_index, reduction)
    check_cross_entropy(logits, target, ignore_index, reduction, for_triton=True)
    need_grad = torch.is_grad_enabled() and logits.requires_grad
    loss, _, _ = cross_entropy_fwd(logits, target, ignore_index, reduction, need_grad)
    return loss
