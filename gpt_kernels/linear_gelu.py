"""Linear + tanh-GELU, gelu_tanh(x @ weight.T + bias): Triton forward and backward.

One file per op (the project's rule): this op's Triton kernels, launchers, autograd and
`torch.library` registration together, however long.

Forward: a tiled matmul (grouped tile order for L2 reuse) whose epilogue adds the bias and
applies the tanh GELU before the single store of y, so the pre-activation h = x @ W^T + b
never makes a round trip through memory between the matmul and the activation. When a
gradient will be needed the same epilogue also stores h (in x's dtype), because GELU is not
invertible: backward needs gelu'(h), and reloading h costs one (M, N) read while recomputing
it would cost another 2*M*N*K-flop matmul.

Backward: one pointwise pass forms dh = dy * gelu'(h) once per element (float32 math, stored
in the operand dtype), then two plain tiled matmuls read it: dx = dh @ W and dW = dh^T @ x, the
dW kernel summing dh over the rows for dbias in the same loop. Every reduction has a fixed
order and there are no atomics, so reruns with the same tile configuration are bit-identical.

Why a pass of its own (counted at GPT-2 124M's MLP, M = 8192 rows, K = 768, N = 3072, bf16;
E = M * N = 25.2 M elements of dy, h and dh):

    before: dh was formed in the prologue of every output tile of both matmuls, so each
            element of dh was recomputed once per column tile of dx (K / BLOCK_K = 6 with the
            128-wide tiles) and once per column tile of dW (6 again): 12 E = 302 M GELU
            derivatives. The compiled pass below spends 304 SASS instructions per thread on
            8 elements (sm_80 and sm_90, bf16; loads, conversions and stores included), ~38
            per element: ~11 G thread-instructions per layer (the review's estimate: ~9 G),
            against a backward whose two matmuls are 4 M N K = 77 GFLOP (~0.1 ms of
            tensor-core time on an H100). DRAM bytes: each kernel read dy and h (2 B each)
            at least once: 4 x 2 E = 201 MB; 2 launches.
    after:  1 E = 25.2 M derivatives, ~0.96 G thread-instructions (12x fewer); bytes: the
            pass reads dy and h and writes dh (3 x 2 E = 151 MB), the matmuls read dh
            (2 x 2 E = 101 MB): 252 MB, 3 launches. 50 MB more traffic (~15 us at 3.35 TB/s)
            for ~10 G fewer instructions (~0.3 ms of issue slots on an H100 SXM's 132 SMs x
            128 lanes at 1.98 GHz). The matmuls lose their float32 prologue tiles, the
            register pressure that forced short reduction tiles.
    memory: dh is a (M, N) temporary of backward (50 MB at this shape), freed before the op
            returns.

Precision: accumulation is float32. float32 operands use IEEE ``tl.dot`` unless
``torch.set_float32_matmul_precision("high"/"medium")`` allows TF32 on a GPU, mirroring what
``torch.nn.functional.linear`` does; float16/bfloat16 operands use the tensor cores directly.
"""

import math
import os
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from gpt_kernels import _autotune, reference
from gpt_kernels._library import define_op, launch, use_triton
from gpt_kernels._validate import check_linear_gelu

__all__ = ["linear_gelu", "linear_gelu_forward", "linear_gelu_backward", "linear_gelu_fwd",
           "linear_gelu_bwd", "gelu_backward", "linear_backward", "gelu_bwd", "linear_bwd"]

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


# --------------------------------------------------------------------------- autotuning
#
# Tiles (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) per kernel and per operand type:
# "16" for fp16/bf16, "tf32" and "ieee" for float32 (see _dot_precision). The autotuner is
# offered the list for the launch's operands, less the tiles whose shared memory (the
# _smem_* estimates, upper bounds of what Triton allocates) exceeds the GPU's. Every entry
# compiles for sm_80 and sm_90 at GPT-2's MLP shapes (M = 8192, K = 768, N = 3072) without
# spilling a register and within shared memory: `python -m tools.compile_report` checks it
# (make test on a subset); "regs" below is the larger of the two chips' counts.
# The gradient kernels' tiles were chosen when they formed dh = dy * gelu'(h) in a float32
# prologue (hence the short reduction tiles: BLOCK_N for dX, BLOCK_M for dW); they now read dh
# as it is stored, which needs fewer registers, and the compile report rechecks each entry.

_FWD_TILES = {
    "16": [
        (128, 128, 64, 8, 3),  # the large tile of Triton's matmul tutorial, BK=64: 188 regs
        (128, 64, 64, 4, 3),  # half as wide: twice the programs when N is small; 196 regs
        (64, 128, 64, 4, 3),  # half as tall, for few rows (short batches); 186 regs
        (64, 64, 32, 4, 4),  # small problems: more programs than SMs; 114 regs
        # (128, 256, 64, 8, 3) is gone: the GELU epilogue (h and y live together) spills
    ],
    "tf32": [  # float32 operands take twice the shared memory: BLOCK_K = 32
        (128, 128, 32, 8, 3),  # 182 regs, 96 KB on sm_90; with BK=64 it spills on sm_80
        (128, 64, 32, 4, 4),  # 184 regs
        (64, 128, 32, 4, 4),  # 244 regs
        (64, 64, 32, 4, 4),  # 128 regs
    ],
    "ieee": [  # float32 FMA loops (no TF32): no tensor cores, each thread holds its operands
        (64, 128, 16, 4, 3),  # 254 regs, no spill
        (64, 64, 32, 4, 3),  # 255 regs, no spill
        (64, 64, 16, 4, 3),  # 168 regs
        # out: (128, 128, 32, 8, 3) spills 16 B on sm_80 when storing h, (128, 64, 32, 4, 3) 44 B
    ],
}
_DX_TILES = {  # dX = dh @ W: BLOCK_N is the reduction, BLOCK_K the width of the dX tile
    "16": [
        (128, 64, 128, 8, 3),  # a 128 x 128 dX tile: 177 regs
        (128, 32, 128, 8, 3),  # the same with half the prologue tile: 169 regs
        (64, 64, 64, 4, 3),  # 128 regs
        (64, 32, 64, 4, 4),  # small problems; 96 regs
    ],
    "tf32": [
        (128, 32, 128, 8, 3),  # 172 regs (with BLOCK_N = 64 it spills 8 B on sm_90)
        (64, 32, 128, 4, 3),  # 168 regs
        (64, 64, 32, 4, 3),  # 3 stages: 4 (160 KB estimated) would not fit an A100
    ],
    "ieee": [
        (64, 32, 64, 4, 3),  # 232 regs
        (32, 32, 64, 4, 3),  # 96 regs
        # out since dh is read as stored: (64, 16, 64, 4, 3) spills 12 B on sm_90 (96 regs)
        # out: (128, 32, 128, 8, 3) spills 12 B on sm_80, (64, 64, 32, 4, 3) 200 B
    ],
}
_DW_TILES = {  # dW = dh^T @ x: BLOCK_M (rows of x) is the reduction, dW tiles BLOCK_N x BLOCK_K
    "16": [
        (32, 128, 128, 8, 3),  # a 128 x 128 dW tile, 32 rows per step: 254 regs
        (32, 64, 128, 4, 3),  # 239 regs
        (32, 128, 64, 4, 3),  # 255 regs, no spill
        # (128, 128, 32, 8, 3) and (64, 128, 128, 8, 3) are gone: 1.4 / 1.5 KB spilled on sm_80;
        # (64, 64, 64, 4, 3) since dh is read as stored: 12 B spilled on sm_80 (128 regs)
    ],
    "tf32": [
        (32, 128, 128, 8, 3),  # 255 regs, no spill; 116 KB on sm_90
        (32, 64, 128, 4, 3),  # 255 regs, no spill
        (32, 128, 64, 4, 3),  # 255 regs, no spill
        (64, 64, 64, 4, 3),  # 168 regs
    ],
    "ieee": [
        (32, 128, 128, 8, 3),  # 171 regs; 116 KB
        (32, 64, 128, 4, 3),  # 185 regs
        (32, 64, 64, 4, 3),  # 128 regs
        # out: (64, 64, 32, 4, 3) spills 312 B on sm_80
    ],
}
_NAMES = ("BLOCK_M", "BLOCK_N", "BLOCK_K")


def _smem_fwd(cfg, nargs, kwargs):
    """num_stages buffers of an x tile (BM x BK) and a W tile (BK x BN)."""
    k = cfg.kwargs
    return (cfg.num_stages * (k["BLOCK_M"] + k["BLOCK_N"]) * k["BLOCK_K"]
            * nargs["X"].element_size())


def _smem_dx(cfg, nargs, kwargs):
    """num_stages buffers of a dh tile (BM x BN) and a W tile (BN x BK)."""
    k = cfg.kwargs
    return (cfg.num_stages * (k["BLOCK_M"] + k["BLOCK_K"]) * k["BLOCK_N"]
            * nargs["W"].element_size())


def _smem_dw(cfg, nargs, kwargs):
    """num_stages buffers of a dh tile (BN x BM) and an x tile (BM x BK)."""
    k = cfg.kwargs
    return (cfg.num_stages * (k["BLOCK_N"] + k["BLOCK_K"]) * k["BLOCK_M"]
            * nargs["X"].element_size())


def _configs(tables):
    """The autotune set: every tile of ``tables``; the interpreter cannot benchmark a
    choice, so under TRITON_INTERPRET=1 it gets exactly one config."""
    if _INTERPRET:
        return [triton.Config({"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 4},
                              num_warps=4, num_stages=1)]
    return _autotune.configs_from(tables, _NAMES, GROUP_M=8)


def _prune(tables, smem, operand):
    """The launch-time pruning: the tiles for the dtype of tensor ``operand`` (and the dot
    precision for float32) that fit the GPU's shared memory."""
    if _INTERPRET:
        return None

    def choose(nargs, kwargs):
        kind = "16" if nargs[operand].element_size() == 2 else kwargs["DOT_PRECISION"]
        return tables[kind]

    return _autotune.Prune(_NAMES, choose, smem, operand)


@triton.jit
def _grouped_tile(pid, n_rows, n_cols, GROUP_M: tl.constexpr):
    """Tile (row, col) for program pid, walking GROUP_M row-tiles down a column band at a
    time so neighbouring programs share operand tiles in L2."""
    band = GROUP_M * n_cols
    first_row = (pid // band) * GROUP_M
    rows_in_band = tl.minimum(n_rows - first_row, GROUP_M)
    row = first_row + (pid % band) % rows_in_band
    col = (pid % band) // rows_in_band
    return row, col


@triton.jit
def _gelu_parts(h):
    """(gelu_tanh(h), s) with s = sigmoid(2u), u = sqrt(2/pi) (h + 0.044715 h^3).

    0.5 (1 + tanh(u)) = sigmoid(2u): no cancellation near u = 0. The exponent is capped at
    80 (exp(80) ~ 5e34 fits float32), so for very negative h, s ~ 2e-35 instead of an inf
    in the denominator; h * s and the derivative still vanish to float32 precision.
    """
    u = 0.7978845608028654 * (h + 0.044715 * h * h * h)
    s = 1.0 / (1.0 + tl.exp(tl.minimum(-2.0 * u, 80.0)))
    return h * s, s


@triton.jit
def _gelu_grad(h):
    """d gelu_tanh / dh = s + 2 h s (1 - s) sqrt(2/pi) (1 + 3 * 0.044715 h^2), s as above."""
    _, s = _gelu_parts(h)
    du = 0.7978845608028654 * (1.0 + 0.134145 * h * h)
    return s + 2.0 * h * s * (1.0 - s) * du


@_autotune.autotune(configs=_configs(_FWD_TILES), key=["M_BUCKET", "N", "K", "DOT_PRECISION"],
                    prune=_prune(_FWD_TILES, _smem_fwd, "X"))
@triton.jit
def _linear_gelu_fwd(
    X, stride_xm, stride_xk,  # (M, K) input rows
    W, stride_wn, stride_wk,  # (N, K) weight
    B,  # (N,) bias, read only when HAS_BIAS
    Y, stride_ym, stride_yn,  # (M, N) output gelu(h) in X's dtype
    H,  # (M, N) pre-activation h with Y's strides, written only when STORE_H
    M, N, K,
    M_BUCKET,  # M rounded up to a power of two: the autotune key (see _m_bucket)
    HAS_BIAS: tl.constexpr,
    STORE_H: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    pid_m, pid_n = _grouped_tile(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N),
                                 GROUP_M)
    # int64 indices: row * stride passes 2^31 for activations over 2^31 elements
    offs_m = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    m_ok = offs_m < M
    n_ok = offs_n < N
    x_ptrs = X + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk  # (BM, BK)
    w_ptrs = W + offs_n[None, :] * stride_wn + offs_k[:, None] * stride_wk  # (BK, BN) of W^T

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_ok = (k0 + offs_k) < K
        a = tl.load(x_ptrs, mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        b = tl.load(w_ptrs, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
        x_ptrs += BLOCK_K * stride_xk
        w_ptrs += BLOCK_K * stride_wk

    # epilogue: bias and GELU on the float32 accumulator, then one store of y (and h)
    if HAS_BIAS:
        acc += tl.load(B + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    y, _ = _gelu_parts(acc)
    out_offs = offs_m[:, None] * stride_ym + offs_n[None, :] * stride_yn
    mask = m_ok[:, None] & n_ok[None, :]
    tl.store(Y + out_offs, y.to(Y.dtype.element_ty), mask=mask)
    if STORE_H:
        tl.store(H + out_offs, acc.to(H.dtype.element_ty), mask=mask)


@triton.jit
def _gelu_bwd(
    DY, stride_dym, stride_dyn,  # (M, N) upstream gradient
    H, stride_hm, stride_hn,  # (M, N) saved pre-activation
    DH,  # (M, N) dh = dy * gelu'(h) in the matmul operand dtype, contiguous
    G,  # (M, N) gelu(h) recomputed, contiguous, written only when STORE_GELU
    M, N,
    STORE_GELU: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    # once per element: the derivative the two gradient matmuls used to recompute per tile
    offs_m = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)  # int64: 2^31
    offs_n = tl.program_id(1).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (offs_m < M)[:, None] & (offs_n < N)[None, :]
    dy = tl.load(DY + offs_m[:, None] * stride_dym + offs_n[None, :] * stride_dyn, mask=mask,
                 other=0.0).to(tl.float32)
    h = tl.load(H + offs_m[:, None] * stride_hm + offs_n[None, :] * stride_hn, mask=mask,
                other=0.0).to(tl.float32)
    out = offs_m[:, None] * N + offs_n[None, :]
    tl.store(DH + out, (dy * _gelu_grad(h)).to(DH.dtype.element_ty), mask=mask)
    if STORE_GELU:
        # the MLP's c_proj input, recomputed here from h instead of kept from the forward
        g, _ = _gelu_parts(h)
        tl.store(G + out, g.to(G.dtype.element_ty), mask=mask)


@_autotune.autotune(configs=_configs(_DX_TILES), key=["M_BUCKET", "N", "K", "DOT_PRECISION"],
                    prune=_prune(_DX_TILES, _smem_dx, "W"))
@triton.jit
def _linear_gelu_bwd_dx(
    DH, stride_dhm, stride_dhn,  # (M, N) gradient of the pre-activation
    W, stride_wn, stride_wk,  # (N, K) weight
    DX, stride_dxm, stride_dxk,  # (M, K) input gradient in W's dtype
    M, N, K,
    M_BUCKET,  # M rounded up to a power of two: the autotune key (see _m_bucket)
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    # dx = dh @ W, tiles (BLOCK_M, BLOCK_K) of dx, reduction over N
    pid_m, pid_k = _grouped_tile(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(K, BLOCK_K),
                                 GROUP_M)
    offs_m = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)  # int64: see the forward
    offs_k = pid_k.to(tl.int64) * BLOCK_K + tl.arange(0, BLOCK_K)
    offs_n = tl.arange(0, BLOCK_N)
    m_ok = offs_m < M
    k_ok = offs_k < K
    dh_ptrs = DH + offs_m[:, None] * stride_dhm + offs_n[None, :] * stride_dhn  # (BM, BN)
    w_ptrs = W + offs_n[:, None] * stride_wn + offs_k[None, :] * stride_wk  # (BN, BK)

    acc = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        n_ok = (n0 + offs_n) < N
        dh = tl.load(dh_ptrs, mask=m_ok[:, None] & n_ok[None, :], other=0.0)
        w = tl.load(w_ptrs, mask=n_ok[:, None] & k_ok[None, :], other=0.0)
        acc = tl.dot(dh, w, acc, input_precision=DOT_PRECISION)
        dh_ptrs += BLOCK_N * stride_dhn
        w_ptrs += BLOCK_N * stride_wn

    tl.store(DX + offs_m[:, None] * stride_dxm + offs_k[None, :] * stride_dxk,
             acc.to(DX.dtype.element_ty), mask=m_ok[:, None] & k_ok[None, :])


@_autotune.autotune(configs=_configs(_DW_TILES), key=["M_BUCKET", "N", "K", "DOT_PRECISION"],
                    prune=_prune(_DW_TILES, _smem_dw, "X"))
@triton.jit
def _linear_gelu_bwd_dw(
    DH, stride_dhm, stride_dhn,  # (M, N) gradient of the pre-activation
    X, stride_xm, stride_xk,  # (M, K) forward input
    DW, stride_dwn, stride_dwk,  # (N, K) weight gradient in X's dtype
    DB,  # (N,) bias gradient, written only when HAS_BIAS
    M, N, K,
    M_BUCKET,  # M rounded up to a power of two: the autotune key (see _m_bucket)
    HAS_BIAS: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    # dW = dh^T @ x, tiles (BLOCK_N, BLOCK_K) of dW, reduction over the M rows
    # at least one K-tile (K == 0 still needs dbias), as in the launcher's grid
    pid_n, pid_k = _grouped_tile(tl.program_id(0), tl.cdiv(N, BLOCK_N),
                                 tl.maximum(tl.cdiv(K, BLOCK_K), 1), GROUP_M)
    offs_n = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = pid_k.to(tl.int64) * BLOCK_K + tl.arange(0, BLOCK_K)
    # int64 rows: m * stride passes 2^31 for activations over 2^31 elements
    offs_m = tl.arange(0, BLOCK_M).to(tl.int64)
    n_ok = offs_n < N
    k_ok = offs_k < K
    dht_ptrs = DH + offs_n[:, None] * stride_dhn + offs_m[None, :] * stride_dhm  # (BN, BM)
    x_ptrs = X + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk  # (BM, BK)

    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    db = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for m0 in range(0, M, BLOCK_M):
        m_ok = (m0 + offs_m) < M
        dht = tl.load(dht_ptrs, mask=n_ok[:, None] & m_ok[None, :], other=0.0)  # (BN, BM)
        if HAS_BIAS:
            db += tl.sum(dht.to(tl.float32), axis=1)  # dbias = column sums of dh, float32
        x = tl.load(x_ptrs, mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        acc = tl.dot(dht, x, acc, input_precision=DOT_PRECISION)
        dht_ptrs += BLOCK_M * stride_dhm
        x_ptrs += BLOCK_M * stride_xm

    tl.store(DW + offs_n[:, None] * stride_dwn + offs_k[None, :] * stride_dwk,
             acc.to(DW.dtype.element_ty), mask=n_ok[:, None] & k_ok[None, :])
    if HAS_BIAS:
        # every K-tile of a band computed the same sums; the first one writes them
        if pid_k == 0:
            tl.store(DB + offs_n, db.to(DB.dtype.element_ty), mask=n_ok)


def _m_bucket(M):
    """The autotune key's stand-in for M: M rounded up to a power of two (at least 16).

    The best tile depends on how many row tiles there are, not on M's exact value, and
    keying on M itself re-benchmarks every config (seconds) at each new batch size or ragged
    last batch. Rows 4097..8192 share one choice, 8193..16384 the next, and so on.
    """
    return max(16, _autotune.bucket(M))


def _as_rows(t):
    """(..., K) -> (M, K): a view when the layout allows it, else a copy (strides are read)."""
    return t.reshape(math.prod(t.shape[:-1]), t.shape[-1])


def _grid(rows, cols, row_block, col_block):
    return lambda meta: (triton.cdiv(rows, meta[row_block]) * triton.cdiv(cols, meta[col_block]),)


def _dot_precision(dtype, device):
    """IEEE float32 dots unless torch's matmul precision setting allows TF32 on a GPU.

    Half operands always run on tensor cores; for them we pass Triton's default ("tf32"),
    which only affects float32 operands.
    """
    if dtype != torch.float32:
        return "tf32"
    if device.type == "cuda" and torch.get_float32_matmul_precision() != "highest":
        return "tf32"
    return "ieee"


def linear_gelu_forward(x: Tensor, weight: Tensor, bias: Optional[Tensor],
                        store_h: bool) -> tuple[Tensor, Tensor]:
    """x (M, K), weight (N, K), bias (N,) or None -> (y (M, N), h (M, N); h is (0,) unless
    ``store_h``)."""
    M, K = x.shape
    N = weight.shape[0]
    y = torch.empty((M, N), dtype=x.dtype, device=x.device)
    h = torch.empty((M, N) if store_h else (0,), dtype=x.dtype, device=x.device)
    if M == 0 or N == 0:
        return y, h
    if bias is not None:
        bias = bias.contiguous()  # read with unit stride
    launch(_linear_gelu_fwd)[_grid(M, N, "BLOCK_M", "BLOCK_N")](
        x, x.stride(0), x.stride(1),
        weight, weight.stride(0), weight.stride(1),
        bias if bias is not None else weight,
        y, y.stride(0), y.stride(1),
        h if store_h else y,
        M, N, K, _m_bucket(M),
        HAS_BIAS=bias is not None, STORE_H=store_h,
        DOT_PRECISION=_dot_precision(x.dtype, x.device),
    )
    return y, h


def gelu_backward(dy: Tensor, h: Tensor, dtype: torch.dtype,
                  store_gelu: bool) -> tuple[Tensor, Tensor]:
    """dy, h (M, N) -> (dh = dy * gelu_tanh'(h) (M, N) in ``dtype``; gelu_tanh(h) (M, N) in
    ``dtype`` when ``store_gelu``, else (0,)). One pass, float32 math, contiguous outputs."""
    M, N = h.shape
    dh = torch.empty((M, N), dtype=dtype, device=h.device)
    g = torch.empty((M, N) if store_gelu else (0,), dtype=dtype, device=h.device)
    if M == 0 or N == 0:
        return dh, g
    block_n = min(128, triton.next_power_of_2(int(N)))
    block_m = max(1, 2048 // block_n)  # ~2K elements a program: 8 per thread at 8 warps
    launch(_gelu_bwd)[(triton.cdiv(M, block_m), triton.cdiv(N, block_n))](
        dy, dy.stride(0), dy.stride(1),
        h, h.stride(0), h.stride(1),
        dh, g if store_gelu else dh, M, N,
        STORE_GELU=store_gelu, BLOCK_M=block_m, BLOCK_N=block_n, num_warps=8,
    )
    return dh, g


def linear_backward(dh: Tensor, x: Tensor, weight: Tensor, has_bias: bool, need_dx: bool,
                    need_dw: bool) -> tuple[Tensor, Tensor, Tensor]:
    """The gradients of h = x @ weight.T + bias from dh (M, N): x (M, K), weight (N, K) ->
    (dx = dh @ W (M, K), dweight = dh^T @ x (N, K), dbias = dh summed over rows (N,)), two
    tiled matmul launches. What is not asked for comes back as an empty (0,) tensor; dbias
    is computed with dweight (same kernel), so it is returned when ``need_dw`` and
    ``has_bias``."""
    M, K = x.shape
    N = weight.shape[0]
    precision = _dot_precision(x.dtype, x.device)
    dx = dw = db = None
    if need_dx:
        dx = torch.empty((M, K), dtype=x.dtype, device=x.device)
        if N == 0:
            dx.zero_()  # our own buffer: no rows of W, no contribution
        elif M > 0 and K > 0:
            launch(_linear_gelu_bwd_dx)[_grid(M, K, "BLOCK_M", "BLOCK_K")](
                dh, dh.stride(0), dh.stride(1),
                weight, weight.stride(0), weight.stride(1),
                dx, dx.stride(0), dx.stride(1),
                M, N, K, _m_bucket(M),
                DOT_PRECISION=precision,
            )
    if need_dw:
        dw = torch.empty((N, K), dtype=weight.dtype, device=x.device)
        db = torch.empty(N, dtype=weight.dtype, device=x.device) if has_bias else None
        if M == 0:
            dw.zero_()
            if db is not None:
                db.zero_()
        elif N > 0:
            # at least one K-tile even when K == 0: its program still writes dbias
            grid = lambda meta: (triton.cdiv(N, meta["BLOCK_N"])
                                 * max(1, triton.cdiv(K, meta["BLOCK_K"])),)
            launch(_linear_gelu_bwd_dw)[grid](
                dh, dh.stride(0), dh.stride(1),
                x, x.stride(0), x.stride(1),
                dw, dw.stride(0), dw.stride(1),
                db if db is not None else dw,
                M, N, K, _m_bucket(M),
                HAS_BIAS=has_bias, DOT_PRECISION=precision,
            )
    return tuple(t if t is not None else x.new_empty(0) for t in (dx, dw, db))


def linear_gelu_backward(dy: Tensor, h: Tensor, x: Tensor, weight: Tensor, has_bias: bool,
                         need_dx: bool, need_dw: bool) -> tuple[Tensor, Tensor, Tensor]:
    """dy, h (M, N), x (M, K), weight (N, K) -> (dx (M, K), dweight (N, K), dbias (N,)).

    Three launches: dh = dy * gelu'(h) once per element (``gelu_backward``, a (M, N)
    temporary in the weight's dtype), then ``linear_backward``'s two matmuls.
    """
    dh, _ = gelu_backward(dy, h, weight.dtype, False)
    return linear_backward(dh, x, weight, has_bias, need_dx, need_dw)


# --------------------------------------------------------------------------- registration

linear_gelu_fwd = define_op("linear_gelu_fwd", linear_gelu_forward)
linear_gelu_bwd = define_op("linear_gelu_bwd", linear_gelu_backward)
# the two halves, for callers that need them apart (gpt_kernels/recompute.py's MLP)
gelu_bwd = define_op("gelu_bwd", gelu_backward)
linear_bwd = define_op("linear_bwd", linear_backward)


def _setup_context(ctx, inputs, output):
    x, weight, bias, _store_h = inputs
    _y, h = output
    ctx.mark_non_differentiable(h)  # the saved pre-activation, not a result
    ctx.save_for_backward(x, weight, h)
    ctx.has_bias = bias is not None


def _backward(ctx, dy, _dh):
    x, weight, h = ctx.saved_tensors
    need_dx, need_dw, need_db, _ = ctx.needs_input_grad
    dx, dw, db = linear_gelu_bwd(dy, h, x, weight, ctx.has_bias, need_dx, need_dw or need_db)
    return dx if need_dx else None, dw if need_dw else None, db if need_db else None, None


linear_gelu_fwd.register_autograd(_backward, setup_context=_setup_context)


# --------------------------------------------------------------------------- public

def _autocast(t, device_type):
    if isinstance(t, torch.Tensor) and t.is_floating_point():
        return t.to(torch.get_autocast_dtype(device_type))
    return t


def linear_gelu(x, weight, bias=None, *, backend="auto"):
    """gelu_tanh(x @ weight.T + bias): x (..., K), weight (N, K), bias (N,) -> (..., N).

    Like ``torch.nn.functional.linear`` under autocast, x, weight and bias are first cast to
    the autocast dtype (and the output has it); otherwise all three must share a dtype and
    the output has it. Gradients of x, weight and bias, float32 accumulation throughout.
    ``backend``: "auto" (Triton where it runs, else the reference), "triton" or "torch".
    """
    if not use_triton(backend, x, weight, bias):
        return reference.linear_gelu(x, weight, bias)
    if isinstance(x, torch.Tensor) and torch.is_autocast_enabled(x.device.type):
        device_type = x.device.type
        x, weight, bias = (_autocast(t, device_type) for t in (x, weight, bias))
    check_linear_gelu(x, weight, bias, for_triton=True)
    # h is stored only when backward will need it (no_grad, inference: one store fewer)
    store_h = torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                              for t in (x, weight, bias))
    y, _ = linear_gelu_fwd(_as_rows(x), weight, bias, store_h)
    return y.view(*x.shape[:-1], weight.shape[0])
