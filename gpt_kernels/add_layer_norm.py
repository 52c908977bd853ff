"""Residual add + LayerNorm in one pass: s = x + branch, y = layer_norm(s). Triton forward and
backward.

A pre-norm block ends its attention half with ``x = x + attn(...)`` and starts its MLP half
with ``layer_norm(x)``. Unfused (eager, or the separate ``layer_norm`` op under autocast) that
is three passes over (M, C): the add reads x and branch and writes s; LayerNorm reads s and
writes a float32 y (LayerNorm runs in float32 under autocast); the next matmul's autocast
reads that float32 y and writes a bf16 copy. Fused, one kernel reads x and branch once and
writes the float32 residual stream s and y directly in the matmul dtype.

Forward (``_add_layer_norm_fwd``): each program takes BLOCK_M rows; s is rounded to x's dtype
(the residual stream keeps its precision: float32 under mixed precision) before it is
normalised, so the statistics describe exactly the s that is returned and saved. float32
mean (with one correction pass) and two-pass variance, saved per row for backward.

Backward (``_add_layer_norm_bwd``) mirrors it: one kernel reads dy, the residual stream's own
gradient ds and the saved s, and writes dx = ds + LayerNorm's input gradient, both in x's
dtype and, when the branch has another dtype (a bf16 sublayer output), in the branch's dtype:
the add's backward is the identity, so the two gradients are one value. Per program it also
sums dweight and dbias over a fixed slice of rows (float32 partial sums); a second launch sums
the partials column block by column block (``layer_norm._layer_norm_bwd_dwdb``). No atomics:
reruns give bit-identical gradients.

Why the dweight/dbias reduction stays a second launch: folding it into the first (the last
program to finish sums every partial) would need one program to read all G x C x 2 float32
partials: at GPT-2's step (M = 8192, C = 768, G = 2 x 132 programs on an H100) that is
1.6 MB through one SM, ~16 us at ~100 GB/s per SM, while the second launch spreads it over
C / 128 = 6 programs (~3 us, most of it launch latency). One pass does not pay there.

Counted at GPT-2 124M's step (M = 8192 rows, C = 768, x float32, branch and y bf16), per
call (bytes of (M, C) tensors; the (M,) statistics and (C,) parameters are < 0.1 MB):

    forward   unfused: add (read 4+2, write 4) + LayerNorm (read 4, write 4) + autocast cast
              (read 4, write 2) = 24 B/element = 151 MB, 3 launches
              fused:   read 4+2, write 4+2 = 12 B/element = 75 MB, 1 launch
    backward  unfused: LayerNorm dx (read s 4, dy 4, write 4) + bf16 cast of dy's float32
              (read 2, write 4) + the add's gradient sum ds + dx (read 4+4, write 4) + the
              branch's bf16 copy (read 4, write 2) = 36 B/element = 226 MB, 5 launches
              fused:   read s 4, dy 2, ds 4; write dx 4, dbranch 2 = 16 B/element = 101 MB,
              2 launches

Memory: nothing is saved that the unfused pair did not save (s, the statistics); the float32
y of the unfused LayerNorm, a (M, C) temporary, is never allocated.
"""

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from gpt_kernels import reference
from gpt_kernels._library import define_op, launch, use_triton
from gpt_kernels.layer_norm import _backward_programs, _layer_norm_bwd_dwdb, _row_config

__all__ = ["add_layer_norm", "add_layer_norm_forward", "add_layer_norm_backward",
           "add_layer_norm_fwd", "add_layer_norm_bwd"]


@triton.jit
def _add_layer_norm_fwd(
    X, stride_xm, stride_xc,  # (M, C) residual stream
    R, stride_rm, stride_rc,  # (M, C) branch added to it, read only when HAS_BRANCH
    W,  # (C,) weight
    B,  # (C,) bias, read only when HAS_BIAS
    S, stride_sm,  # (M, C) s = x + branch in X's dtype, unit column stride; when HAS_BRANCH
    Y, stride_ym,  # (M, C) normalised output in the output dtype, unit column stride
    MEAN, RSTD,  # (M,) float32 row statistics saved for backward
    M, C, eps,
    HAS_BRANCH: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    # int64 rows: row * stride passes 2^31 once the activation holds more than 2^31 elements
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_C)
    row_ok = rows < M
    col_ok = cols < C
    mask = row_ok[:, None] & col_ok[None, :]

    x = tl.load(X + rows[:, None] * stride_xm + cols[None, :] * stride_xc, mask=mask, other=0.0)
    if HAS_BRANCH:
        r = tl.load(R + rows[:, None] * stride_rm + cols[None, :] * stride_rc, mask=mask,
                    other=0.0)
        # round to the stream's dtype first: the statistics must describe the s returned
        s = (x.to(tl.float32) + r.to(tl.float32)).to(X.dtype.element_ty)
        tl.store(S + rows[:, None] * stride_sm + cols[None, :], s, mask=mask)
        x = s
    x = x.to(tl.float32)
    mean = tl.sum(x, axis=1) / C
    xc = tl.where(mask, x - mean[:, None], 0.0)  # padding columns must not count
    # one correction pass for a mean rounded to float32 (see layer_norm.py)
    delta = tl.sum(xc, axis=1) / C
    xc = tl.where(mask, xc - delta[:, None], 0.0)
    mean += delta
    var = tl.sum(xc * xc, axis=1) / C
    rstd = tl.rsqrt(var + eps)

    w = tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32)
    y = xc * rstd[:, None] * w[None, :]
    if HAS_BIAS:
        y += tl.load(B + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(Y + rows[:, None] * stride_ym + cols[None, :], y.to(Y.dtype.element_ty), mask=mask)
    tl.store(MEAN + rows, mean, mask=row_ok)
    tl.store(RSTD + rows, rstd, mask=row_ok)


@triton.jit
def _add_layer_norm_bwd(
    DY, stride_dym, stride_dyc,  # (M, C) gradient of y
    DS, stride_dsm, stride_dsc,  # (M, C) gradient of s from the stream, read when HAS_DS
    S, stride_sm, stride_sc,  # (M, C) the normalised input (s, or x without a branch)
    W,  # (C,) weight
    MEAN, RSTD,  # (M,) float32 statistics from the forward
    DX, stride_dxm,  # (M, C) gradient of x in X's dtype, unit column stride
    DR, stride_drm,  # (M, C) the same gradient in the branch's dtype, written when STORE_DR
    DW_PART,  # (G, C) float32 partial sums of dweight, one row per program
    DB_PART,  # (G, C) float32 partial sums of dbias, written only when HAS_BIAS
    M, C, rows_per_program,
    HAS_DS: tl.constexpr,
    STORE_DR: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_C)
    col_ok = cols < C
    w = tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32)
    dw_acc = tl.zeros((BLOCK_M, BLOCK_C), dtype=tl.float32)
    db_acc = tl.zeros((BLOCK_M, BLOCK_C), dtype=tl.float32)

    # rows [row_start, row_end): fixed by M and the grid, so the partial sums' order is too
    row_start = pid.to(tl.int64) * rows_per_program  # int64: row * stride can pass 2^31
    row_end = tl.minimum(row_start + rows_per_program, M)
    for r in range(row_start, row_end, BLOCK_M):
        rows = r + tl.arange(0, BLOCK_M)
        row_ok = rows < row_end
        mask = row_ok[:, None] & col_ok[None, :]
        s = tl.load(S + rows[:, None] * stride_sm + cols[None, :] * stride_sc,
                    mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + rows[:, None] * stride_dym + cols[None, :] * stride_dyc,
                     mask=mask, other=0.0).to(tl.float32)
        mean = tl.load(MEAN + rows, mask=row_ok, other=0.0)
        rstd = tl.load(RSTD + rows, mask=row_ok, other=0.0)

        # centre as the forward did, with the same correction for a mean rounded to float32
        xc = tl.where(mask, s - mean[:, None], 0.0)
        xc = tl.where(mask, xc - (tl.sum(xc, axis=1) / C)[:, None], 0.0)
        xhat = xc * rstd[:, None]
        wdy = w[None, :] * dy  # gradient w.r.t. xhat; zero in the padding
        # dx = rstd * (wdy - mean_c(wdy) - xhat * mean_c(wdy * xhat)), see layer_norm.py
        c1 = tl.sum(xhat * wdy, axis=1) / C
        c2 = tl.sum(wdy, axis=1) / C
        dx = (wdy - (xhat * c1[:, None] + c2[:, None])) * rstd[:, None]
        if HAS_DS:
            # s = x + branch feeds the stream too: its gradient adds, in float32
            dx += tl.load(DS + rows[:, None] * stride_dsm + cols[None, :] * stride_dsc,
                          mask=mask, other=0.0).to(tl.float32)
        tl.store(DX + rows[:, None] * stride_dxm + cols[None, :], dx.to(DX.dtype.element_ty),
                 mask=mask)
        if STORE_DR:
            tl.store(DR + rows[:, None] * stride_drm + cols[None, :],
                     dx.to(DR.dtype.element_ty), mask=mask)

        dw_acc += dy * xhat
        if HAS_BIAS:
            db_acc += dy

    tl.store(DW_PART + pid * C + cols, tl.sum(dw_acc, axis=0), mask=col_ok)
    if HAS_BIAS:
        tl.store(DB_PART + pid * C + cols, tl.sum(db_acc, axis=0), mask=col_ok)


def add_layer_norm_forward(x: Tensor, branch: Optional[Tensor], weight: Tensor,
                           bias: Optional[Tensor], eps: float,
                           out_dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """x (M, C), branch (M, C) or None -> (s (M, C) in x's dtype, or (0,) without a branch;
    y (M, C) in ``out_dtype``; mean (M,) float32; rstd (M,) float32)."""
    M, C = x.shape
    has_branch = branch is not None
    s = torch.empty((M, C) if has_branch else (0,), dtype=x.dtype, device=x.device)
    y = torch.empty((M, C), dtype=out_dtype, device=x.device)
    mean = torch.empty(M, dtype=torch.float32, device=x.device)
    rstd = torch.empty(M, dtype=torch.float32, device=x.device)
    if M == 0:
        return s, y, mean, rstd
    block_m, block_c, num_warps = _row_config(C)
    r = branch if has_branch else x
    launch(_add_layer_norm_fwd)[(triton.cdiv(M, block_m),)](
        x, x.stride(0), x.stride(1),
        r, r.stride(0), r.stride(1),
        weight, bias if bias is not None else weight,
        s if has_branch else y, C,
        y, y.stride(0),
        mean, rstd,
        M, C, eps,
        HAS_BRANCH=has_branch, HAS_BIAS=bias is not None,
        BLOCK_M=block_m, BLOCK_C=block_c, num_warps=num_warps,
    )
    return s, y, mean, rstd


def add_layer_norm_backward(dy: Tensor, ds: Optional[Tensor], s: Tensor, weight: Tensor,
                            bias: Optional[Tensor], mean: Tensor, rstd: Tensor,
                            branch_dtype: Optional[torch.dtype]
                            ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """dy (M, C), ds (M, C) or None, the saved s (M, C) -> (dx (M, C) in s's dtype; dbranch
    (M, C) in ``branch_dtype`` when it is not None and differs from s's dtype, else (0,): then
    dx is the branch's gradient too; dweight (C,); dbias (C,), (0,) without bias)."""
    M, C = s.shape
    dx = torch.empty((M, C), dtype=s.dtype, device=s.device)
    store_dr = branch_dtype is not None and branch_dtype != s.dtype
    dr = torch.empty((M, C) if store_dr else (0,), dtype=branch_dtype or s.dtype,
                     device=s.device)
    has_bias = bias is not None
    if M == 0:
        db = torch.zeros_like(bias) if has_bias else weight.new_empty(0)
        return dx, dr, torch.zeros_like(weight), db
    block_m, block_c, num_warps = _row_config(C)
    G = _backward_programs(M, block_m, s.device)
    rows_per_program = triton.cdiv(triton.cdiv(M, G), block_m) * block_m  # whole tiles
    G = triton.cdiv(M, rows_per_program)
    dw_part = torch.empty((G, C), dtype=torch.float32, device=s.device)
    db_part = torch.empty((G, C), dtype=torch.float32, device=s.device) if has_bias else dw_part
    d_s = ds if ds is not None else dy
    launch(_add_layer_norm_bwd)[(G,)](
        dy, dy.stride(0), dy.stride(1),
        d_s, d_s.stride(0), d_s.stride(1),
        s, s.stride(0), s.stride(1),
        weight, mean, rstd,
        dx, C,
        dr if store_dr else dx, C,
        dw_part, db_part,
        M, C, rows_per_program,
        HAS_DS=ds is not None, STORE_DR=store_dr, HAS_BIAS=has_bias,
        BLOCK_M=block_m, BLOCK_C=block_c, num_warps=num_warps,
    )
    dw = torch.empty(C, dtype=weight.dtype, device=s.device)
    db = torch.empty(C, dtype=bias.dtype, device=s.device) if has_bias else None
    block_c2 = min(128, triton.next_power_of_2(int(C)))
    launch(_layer_norm_bwd_dwdb)[(triton.cdiv(C, block_c2),)](
        dw_part, db_part, dw, db if has_bias else dw,
        G, C,
        HAS_BIAS=has_bias, BLOCK_G=32, BLOCK_C=block_c2, num_warps=4,
    )
    return dx, dr, dw, db if has_bias else weight.new_empty(0)


# --------------------------------------------------------------------------- registration

add_layer_norm_fwd = define_op("add_layer_norm_fwd", add_layer_norm_forward)
add_layer_norm_bwd = define_op("add_layer_norm_bwd", add_layer_norm_backward)


def _setup_context(ctx, inputs, output):
    x, branch, weight, bias, _eps, _out_dtype = inputs
    s, _y, mean, rstd = output
    ctx.mark_non_differentiable(mean, rstd)  # statistics for backward, not results
    ctx.has_branch = branch is not None
    ctx.branch_dtype = branch.dtype if branch is not None else None
    # without a branch the normalised input is x itself
    ctx.save_for_backward(s if ctx.has_branch else x, weight, bias, mean, rstd)


def _backward(ctx, ds, dy, _dmean, _drstd):
    s, weight, bias, mean, rstd = ctx.saved_tensors
    if not ctx.has_branch:
        ds = None  # s was an empty placeholder: no gradient flows through it
    dx, dr, dw, db = add_layer_norm_bwd(dy, ds, s, weight, bias, mean, rstd, ctx.branch_dtype)
    need_x, need_r, need_w, need_b, _, _ = ctx.needs_input_grad
    if need_r and ctx.branch_dtype == s.dtype:
        dr = dx  # the add's gradient is the identity: one value, here in one dtype
    return (dx if need_x else None, dr if need_r else None, dw if need_w else None,
            db if need_b else None, None, None)


add_layer_norm_fwd.register_autograd(_backward, setup_context=_setup_context)


# --------------------------------------------------------------------------- public

def add_layer_norm(x, branch, weight, bias, eps=1e-5, *, backend="auto"):
    """s = x + branch, y = layer_norm(s) over the last dim: x, branch (..., C) -> (s, y).

    ``s`` (the residual stream) has x's dtype; ``branch`` (a sublayer's output, e.g. bf16
    under autocast) may have another and is added in float32. ``branch=None`` normalises x
    (then s is x itself). ``y`` has the autocast dtype when autocast is on for x's device
    (the dtype the next matmul reads), else x's dtype. Float32 statistics; gradients of x,
    branch, weight and bias in their dtypes. Same function as
    ``gpt_kernels.reference.add_layer_norm``.
    ``backend``: "auto" (Triton where it runs, else the reference), "triton" or "torch".
    """
    if not use_triton(backend, x, branch, weight, bias):
        return reference.add_layer_norm(x, branch, weight, bias, eps)
    reference.check_add_layer_norm(x, branch, weight, bias, eps, for_triton=True)
    out_dtype = reference.add_layer_norm_dtype(x)
    shape = x.shape
    C = shape[-1]
    bias = bias.contiguous() if bias is not None else None  # read with unit stride
    s, y, _, _ = add_layer_norm_fwd(
        x.reshape(-1, C), branch.reshape(-1, C) if branch is not None else None,
        weight.contiguous(), bias, float(eps), out_dtype)
    return (s.view(shape) if branch is not None else x), y.view(shape)
