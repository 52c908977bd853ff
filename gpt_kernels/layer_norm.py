"""LayerNorm over the last dim, optionally after a residual add: Triton forward and backward.

The kernels serve two ops: ``layer_norm`` (y = layer_norm(x)) and ``add_layer_norm``
(s = x + branch, y = layer_norm(s), see add_layer_norm.py for why the add is fused); the
add, its saved s and the add's gradient are compile-time switches (HAS_BRANCH, HAS_DS,
STORE_DR), so plain LayerNorm compiles without them.

Forward: each program normalises BLOCK_M rows of width C (one row for wide C, several rows
for narrow C so a program still has enough work), float32 mean (with one correction pass,
so rows with a large common offset keep their precision) and two-pass variance whatever the
input dtype, and saves the float32 mean and 1/std of every row for backward.

Backward: one kernel writes dx (plus the stream's own gradient ds when the add is fused)
and, per program, float32 partial sums of dweight and dbias over a fixed contiguous slice of
rows; a second kernel sums those partials column-block by column-block. Both reductions run
in a fixed order with no atomics, so two backward passes on the same inputs give bit-identical
gradients.
"""

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from gpt_kernels import reference
from gpt_kernels._library import define_op, launch, use_triton
from gpt_kernels._validate import check_layer_norm

__all__ = ["layer_norm", "layer_norm_forward", "layer_norm_backward", "layer_norm_fwd",
           "layer_norm_bwd", "add_layer_norm_forward", "add_layer_norm_backward"]

# Widest row the kernels hold in one block; a row must fit in one program's registers.
MAX_WIDTH = 16384


@triton.jit
def _layer_norm_fwd(
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
    # One correction pass: with a large common offset (|mean| >> std) a float32 mean is off
    # by up to half its ulp, which is large next to std. x - mean is exact for x near mean,
    # so subtracting the (small, accurate) mean of the centred values fixes xc.
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
def _layer_norm_bwd_dx(
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

    # This program owns rows [row_start, row_end); the slice depends only on M and the grid,
    # so the partial sums (and their order) are the same on every run.
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
        # y = xhat * w + b with xhat = (x - mean) * rstd gives
        # dx = rstd * (wdy - mean_c(wdy) - xhat * mean_c(wdy * xhat))
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


@triton.jit
def _layer_norm_bwd_dwdb(
    DW_PART,  # (G, C) float32 partial sums of dweight
    DB_PART,  # (G, C) float32 partial sums of dbias, read only when HAS_BIAS
    DW,  # (C,) weight gradient in the weight's dtype
    DB,  # (C,) bias gradient in the bias's dtype, written only when HAS_BIAS
    G, C,
    HAS_BIAS: tl.constexpr,
    BLOCK_G: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    # second stage of the deterministic reduction: column block pid sums the G partials
    cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    col_ok = cols < C
    dw = tl.zeros((BLOCK_G, BLOCK_C), dtype=tl.float32)
    db = tl.zeros((BLOCK_G, BLOCK_C), dtype=tl.float32)
    for g0 in range(0, G, BLOCK_G):
        g = g0 + tl.arange(0, BLOCK_G)
        mask = (g < G)[:, None] & col_ok[None, :]
        offs = g[:, None] * C + cols[None, :]
        dw += tl.load(DW_PART + offs, mask=mask, other=0.0)
        if HAS_BIAS:
            db += tl.load(DB_PART + offs, mask=mask, other=0.0)
    tl.store(DW + cols, tl.sum(dw, axis=0).to(DW.dtype.element_ty), mask=col_ok)
    if HAS_BIAS:
        tl.store(DB + cols, tl.sum(db, axis=0).to(DB.dtype.element_ty), mask=col_ok)


def _row_config(C):
    """(BLOCK_M, BLOCK_C, num_warps) for rows of width C; raises past MAX_WIDTH."""
    if C > MAX_WIDTH:
        raise ValueError(
            f"x's last dim C={C} is wider than the Triton LayerNorm supports ({MAX_WIDTH}); "
            f"use the torch backend"
        )
    C = int(C)  # a symbolic size under torch.compile's dynamic shapes: tiles specialize on it
    block_c = triton.next_power_of_2(C)
    # narrow rows: several per program, so each program moves at least ~2K elements
    block_m = max(1, min(16, 2048 // block_c))
    num_warps = min(max(block_m * block_c // 256, 1), 8)
    return block_m, block_c, num_warps


def _backward_programs(M, block_m, device):
    """How many programs share the rows in backward (the G in the (G, C) partial sums).

    A function of M and the device only, so the reduction order is fixed for a machine.
    """
    tiles = triton.cdiv(M, block_m)
    if device.type == "cuda":
        per_device = 2 * torch.cuda.get_device_properties(device).multi_processor_count
    else:  # the interpreter: few programs, each looping over its rows
        per_device = 4
    return max(1, min(tiles, per_device))


def _as_rows(t, C):
    """(..., C) -> (M, C): a view when the layout allows it, else a copy (strides are read)."""
    return t.reshape(-1, C)


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
    launch(_layer_norm_fwd)[(triton.cdiv(M, block_m),)](
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
    launch(_layer_norm_bwd_dx)[(G,)](
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


def layer_norm_forward(x: Tensor, weight: Tensor, bias: Optional[Tensor],
                       eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """x (M, C) -> (y (M, C) in x's dtype, mean (M,) float32, rstd (M,) float32)."""
    _, y, mean, rstd = add_layer_norm_forward(x, None, weight, bias, eps, x.dtype)
    return y, mean, rstd


def layer_norm_backward(dy: Tensor, x: Tensor, weight: Tensor, bias: Optional[Tensor],
                        mean: Tensor, rstd: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """dy, x (M, C) -> (dx (M, C) in x's dtype, dweight (C,), dbias (C,); (0,) without bias)."""
    dx, _, dw, db = add_layer_norm_backward(dy, None, x, weight, bias, mean, rstd, None)
    return dx, dw, db


# --------------------------------------------------------------------------- registration

layer_norm_fwd = define_op("layer_norm_fwd", layer_norm_forward)
layer_norm_bwd = define_op("layer_norm_bwd", layer_norm_backward)


def _setup_context(ctx, inputs, output):
    x, weight, bias, _eps = inputs
    _y, mean, rstd = output
    ctx.mark_non_differentiable(mean, rstd)  # statistics for backward, not results
    # their gradients would be zero-filled tensors backward never reads: two launches saved
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(x, weight, bias, mean, rstd)


def _backward(ctx, dy, _dmean, _drstd):
    x, weight, bias, mean, rstd = ctx.saved_tensors
    dx, dw, db = layer_norm_bwd(dy, x, weight, bias, mean, rstd)
    need_x, need_w, need_b, _ = ctx.needs_input_grad
    return dx if need_x else None, dw if need_w else None, db if need_b else None, None


layer_norm_fwd.register_autograd(_backward, setup_context=_setup_context)


# --------------------------------------------------------------------------- public

def layer_norm(x, weight, bias, eps=1e-5, *, backend="auto"):
    """(x - mean) / sqrt(var + eps) * weight + bias over the last dim of x (..., C).

    Float32 statistics and math whatever the dtypes; the output has x's dtype (under
    autocast too, like ``gpt_kernels.reference.layer_norm``: no cast to the autocast dtype), the
    gradients have the dtypes of x, weight and bias. ``bias`` may be None. Any layout of x is
    accepted (read through strides, or copied when (..., C) cannot be viewed as rows).
    ``backend``: "auto" (Triton where it runs, else the reference), "triton" or "torch".
    """
    if not use_triton(backend, x, weight, bias):
        return reference.layer_norm(x, weight, bias, eps)
    check_layer_norm(x, weight, bias, eps, for_triton=True)
    shape = x.shape
    # the kernels read weight and bias with unit stride
    bias = bias.contiguous() if bias is not None else None
    y, _, _ = layer_norm_fwd(_as_rows(x, shape[-1]), weight.contiguous(), bias, float(eps))
    return y.view(shape)
