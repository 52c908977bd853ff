"""Fused linear cross-entropy: ``cross_entropy(x @ weight.T + bias, target)``, the
cross-entropy inside the matmuls.

One file per op (the project's rule): this op's Triton kernels, launchers, autograd and
`torch.library` registration together, however long.

The lm_head of GPT-2 at training sizes (N = 8192 tokens, V = 50304) would produce 412M logits:
1.6 GB in float32, and ``F.cross_entropy`` keeps a float32 log-softmax of the same size for its
backward. Here the tokens go through in chunks of ``chunk_rows(N, V, C, itemsize)`` rows, as
many as ``CHUNK_BUDGET_BYTES`` (256 MiB) of logits hold (all N when they fit), and each chunk
takes four Triton launches:

1. ``_flce_logits``: the chunk's logits x @ W^T (+ bias), tiled over (rows, vocabulary) in
   grouped order, K loop over C. Its epilogue works on the float32 accumulator: the
   log-sum-exp of each row over the tile's ``STAT_N`` = 128 columns (one float32 per row
   and tile), the target's logit where the tile holds the target, and, when a gradient is
   wanted, the softmax within the tile, exp(logit - tile lse), stored in the matmul dtype
   into a (rows, V) buffer allocated once for all chunks.
2. ``_flce_lse``: each row's lse from its tile log-sum-exps, and its loss, lse - target
   logit (0 for an ignored row). Nothing reads the (rows, V) buffer to normalise it.
3. ``_flce_dx`` (dgrad): the chunk's rows of grad_x = dlogits @ W. dlogits is formed in the
   operand loads: softmax = e * exp(tile lse - lse) (one exp per row and tile, a multiply
   per element), minus the one-hot target, times the row's scale (0 for ignored rows).
4. ``_flce_dw`` (wgrad): grad_weight (V, C) float32 (+)= dlogits^T @ x with the same
   prologue, the float32 sum over chunks in its epilogue (load, add, store; the first
   chunk stores without loading, so nothing is zero-filled), grad_bias the column sums of
   the float32 dlogits in the same loop (K-tile 0 writes them).

The buffer holds exp(logit - tile lse), not the logit: the gradient kernels then spend a
multiply per element instead of an exp, and a value in (0, 1] keeps its dtype's whole
relative precision, where a bf16 logit of 10 is off by up to 0.02 (2% in its softmax). Each
gradient kernel re-forms a dlogits element once per output tile it feeds (C / BLOCK_K times:
6 at BLOCK_K = 128), about 6 instructions each; the alternative, a stored dlogits, would be
another write and read of the (rows, V) buffer.

So for "mean" and "sum" the forward already holds every gradient up to the scalar upstream
gradient, and backward only scales them (three matmuls in all, as in an unfused lm_head; the
logits are never recomputed). What backward needs is stored, not recomputed: ``grad_x`` (N, C)
and ``grad_weight`` (V, C) float32, ``grad_bias`` (V,) float32, far smaller than (N, V) logits.

For "none" the upstream gradient differs per row and must weight each row of
``softmax - onehot`` before the wgrad kernel sums over rows, so the forward computes the loss
only (no (rows, V) buffer: the logits kernel stores no exponentials) and backward runs the
chunk loop again with the per-row gradient as the gradient kernels' scale (one extra lm_head
matmul, still no (N, V) tensor).

One path: the version before this one (cuBLAS matmuls around the cross-entropy kernel of
``gpt_kernels/cross_entropy.py``, which overwrote the chunk's logits with dlogits) is gone.
On a CPU these kernels run in Triton's interpreter (CI), where ``tl.dot`` on bfloat16 is wrong:
there the kernels upcast bfloat16 dot operands to float32 (exact products, float32 sums, as the
tensor cores give).

Dtypes: the matmuls run in the dtype the public function was given, or in the autocast dtype
when autocast is on (as ``F.linear`` would); loss and log-sum-exps are float32. The reduction's
``1/n_valid`` and the upstream gradient are applied to the float32 accumulators, not to
low-precision dlogits (in float16, ``softmax / 8192`` would flush to zero); for "none", whose
per-row gradients must weight the dlogits themselves, float16 takes them divided by their
largest magnitude (``flce_backward_none``). Gradients come
back in each input's own dtype: float32 parameters under autocast get float32 gradients from
the float32 accumulators, not a bfloat16 copy.

TF32: float32 operands use IEEE dots unless torch's float32 matmul precision allows TF32 on a
GPU (``linear_gelu._dot_precision``): off by default (what the tests check), on in
``train.py``'s CUDA runs (``allow_tf32``), where an unfused ``F.linear`` would use TF32 too.

Bytes and launches per step (GPT-2: N = 8192, C = 768, V = 50304, bf16 under autocast; every
operand counted at each kernel that reads it, no L2 credit; ``bench.roofline.flce_counts``
computes them and tests/test_roofline.py checks them). FLOPs are the same in every version:
3 x 2NCV = 1.90 TFLOP, 2.4 ms at 790 TFLOP/s.

- before issue 20: 64 chunks of 128 rows, each chunk's grad_weight a fresh (V, C) bf16
  product (77 MB) added into float32, a zero-fill, grad_x copied to float32: 45.4 GB and
  394 launches (13.5 ms at 3.35 TB/s).
- issue 20, cuBLAS chunks: 4 chunks of 2048 rows, grad_weight accumulated in float32 by
  cuBLAS: 7.3 GB and 25 launches (2.2 ms at 3.35 TB/s), 4.1 GB of them the (N, V) bf16 logits
  (written by the matmul, read twice and overwritten by the cross-entropy kernel, read by
  the two gradient matmuls).
- now: the same chunks; the (N, V) exponentials are written once (824 MB) and read twice
  (dgrad, wgrad: 1.65 GB); the float32 tile log-sum-exps (12.9 MB) written once and read
  three times: 4.9 GB and 25 launches (per chunk logits, lse, dgrad, wgrad; 1.46 ms at
  3.35 TB/s, under the 2.4 ms of the matmuls). The dlogits formation, ~33 G
  thread-instructions by the roofline's estimate (1.0 ms of an H100's non-tensor issue
  rate), runs beside the tensor cores. Unmeasured on a GPU.

Memory (GPT-2 sizes, bf16 under autocast): the 2048 x 50304 chunk buffer (206 MB) as before,
float32 ``grad_weight`` (155 MB), bf16 ``grad_x`` (12.6 MB), the float32 tile log-sum-exps
(2048 x 393: 3.2 MB, new), and the bf16 copies of x and weight autocast needs (90 MB): 3.2 MB
(0.9%) more than the cuBLAS chunks when a gradient is wanted, and no chunk buffer (206 MB
less) when none is (``torch.no_grad()``, evaluation, the "none" forward). Backward scales
the saved gradients by the upstream gradient into new tensors (the saved ones are outputs
of the forward op, which must not change after it returned: opcheck and torch.compile
compare them), so backward twice gives the same answer.

Compiled for sm_80 and sm_90 by Triton 3.9.0 (``python -m tools.compile_report
--ops=fused_linear_cross_entropy``, every config each autotuner offers at every preset's
lm_head, bf16 / fp16 / fp32 / fp32-tf32; bench/results/compile-3.9.0-2026-12-05.json): 88
compiles, none failing, spilling or over shared memory. Registers per thread: logits 162-218,
lse 26-32, dgrad 80-252, wgrad 108-255 (the IEEE float32 FMA tiles on sm_80); shared memory
at most 97 KB (sm_90), within every shared-memory estimate the pruning uses; the bf16, fp16
and TF32 dots compile to tensor-core instructions (HMMA on sm_80, HGMMA on sm_90). Each
table entry below gives its own figures.

Not measured: no GPU ran this version. A 2048-row chunk gives dgrad 96 tiles of 128 x 128
(C = 768) for 132 SMs; the autotuner may take the 64-row tiles (192) instead, and a
split over the vocabulary is the next step if a GPU run shows dgrad short of the matmul rate.
"""

import os
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from gpt_kernels import _autotune, reference
from gpt_kernels._library import define_op, launch, use_triton
from gpt_kernels._validate import check_fused_linear_cross_entropy
from gpt_kernels.cross_entropy import reduce_loss, reduction_scale
from gpt_kernels.linear_gelu import _dot_precision, _grouped_tile, _m_bucket

__all__ = ["fused_linear_cross_entropy", "chunk_rows", "flce_pass", "flce_logits", "flce_lse",
           "flce_grad_x", "flce_grad_weight", "flce_forward", "flce_backward_none", "flce_fwd",
           "flce_bwd_none", "STAT_N"]

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

# The chunk buffer's default budget. 256 MiB holds 2048 rows of GPT-2's 50304 bf16 logits: at
# N = 8192 four chunks, so the float32 grad_weight is read and written 3 times instead of 63.
CHUNK_BUDGET_BYTES = 256 * 2**20
_MIN_CHUNK_ROWS = 64
_ROW_MULTIPLE = 64  # chunk heights rounded to a matmul tile when the budget allows it

# Vocabulary columns per tile log-sum-exp: the logits kernel's BLOCK_N in every config. It is
# fixed because the (rows, cdiv(V, STAT_N)) float32 statistics buffer is allocated before the
# autotuner picks a config; the gradient kernels' vocabulary tiles divide it, so each of their
# tiles lies inside one statistics tile.
STAT_N = 128


def chunk_rows(N, V, C, itemsize=2, budget=None):
    """Tokens per chunk: as many rows of (rows, V) logits as ``budget`` bytes hold.

    ``itemsize`` is the bytes of one logit (the matmuls' dtype); ``budget`` defaults to
    ``CHUNK_BUDGET_BYTES``. All N rows when their logits fit; else the fewest chunks that
    fit, of equal height (rounded up to a multiple of 64 when that still fits), never fewer
    than 64 rows (smaller matmuls waste the tensor cores) nor more than N. C is unused (kept
    so the call reads like the matmul's shape). GPT-2 training (N=8192, V=50304, bf16, 256
    MiB): 2048 rows, 4 chunks of 206 MB each.
    """
    N, V = int(N), int(V)  # symbolic under dynamic shapes: chunks specialize on them
    budget = CHUNK_BUDGET_BYTES if budget is None else int(budget)
    if N <= 0:
        return 1
    fit = max(_MIN_CHUNK_ROWS, budget // max(1, V * int(itemsize)))
    if N <= fit:
        return N
    even = triton.cdiv(N, triton.cdiv(N, fit))  # equal chunks, the last one no smaller
    rounded = triton.cdiv(even, _ROW_MULTIPLE) * _ROW_MULTIPLE
    return min(N, rounded if rounded <= fit else even)


# --------------------------------------------------------------------------- autotuning
#
# Tiles (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) per kernel and operand type ("16"
# for fp16/bf16, "tf32" and "ieee" for float32: see linear_gelu._dot_precision). BLOCK_M is
# always the chunk's rows, BLOCK_N the vocabulary, BLOCK_K the hidden size C. Every entry
# compiles for sm_80 and sm_90 at GPT-2's lm_head (2048-row chunks, C = 768, V = 50304)
# without spilling and within shared memory (python -m tools.compile_report; "regs" is the
# larger of the two chips' counts, KB the shared memory sm_90 allocates where it is large).

_LOGITS_TILES = {  # logits = x @ W^T with the log-sum-exp epilogue; BLOCK_N is STAT_N
    "16": [
        (128, 128, 64, 8, 3),  # the large tile of linear_gelu's forward: 199 regs, 96 KB
        (64, 128, 64, 4, 3),  # half as tall: more programs for short chunks; 199 regs
        (64, 128, 32, 4, 4),  # deeper pipeline, 48 KB; 218 regs
        # out: (128, 128, 32, 4, 4) spills 352 B (sm_80) / 528 B (sm_90): the epilogue's exp
    ],
    "tf32": [
        (128, 128, 32, 8, 3),  # 197 regs, 96 KB
        (64, 128, 32, 4, 3),  # 196 regs
    ],
    "ieee": [  # FMA loops: each thread holds its operands
        (64, 128, 16, 4, 3),  # 168 regs
        (32, 128, 32, 4, 3),  # 210 regs
    ],
}
_DX_TILES = {  # dx = dlogits @ W: dx tiles BLOCK_M x BLOCK_K, BLOCK_N the reduction over V.
    # Wide BLOCK_K: each program re-forms its dlogits tile from the stored exponentials, so
    # every element is formed C / BLOCK_K times (6 at BLOCK_K = 128)
    "16": [
        (128, 64, 128, 8, 3),  # a 128 x 128 dx tile: 242 regs, 97 KB
        (64, 64, 128, 4, 3),  # twice the programs (a 2048-row chunk has 96 128 x 128 tiles)
        # at C = 768: 222 regs
        (64, 32, 256, 8, 3),  # dlogits formed 3 times per element, not 6: 153 regs
    ],
    "tf32": [
        (128, 32, 128, 8, 3),  # 178 regs, 97 KB
        (64, 32, 128, 4, 3),  # 174 regs
    ],
    "ieee": [
        (64, 32, 64, 8, 3),  # 108 regs
        (32, 32, 128, 4, 3),  # 252 regs, no spill
        (32, 32, 64, 4, 3),  # 96 regs
        # out: (64, 32, 64, 4, 3) spills 36 B on sm_80
    ],
}
_DW_TILES = {  # dW (+)= dlogits^T @ x: dW tiles BLOCK_N x BLOCK_K, BLOCK_M the reduction
    "16": [
        (32, 128, 128, 8, 3),  # a 128 x 128 dW tile, 32 rows a step: 186 regs, 64 KB
        (32, 64, 128, 4, 3),  # 180 regs
        (64, 128, 128, 8, 3),  # 64 rows a step: 186 regs, 91 KB
    ],
    "tf32": [
        (32, 128, 128, 8, 3),  # 182 regs, 97 KB
        (32, 64, 128, 4, 3),  # 182 regs
    ],
    "ieee": [
        (32, 64, 64, 4, 3),  # 255 regs, no spill
        (32, 32, 128, 4, 3),  # 254 regs, no spill
        (16, 128, 64, 4, 3),  # 168 regs
        # out (sm_80 spills): (32, 128, 128, 8, 3) 216 B, (32, 64, 128, 8, 3) 124 B,
        # (32, 128, 64, 8, 3) 140 B
    ],
}
_NAMES = ("BLOCK_M", "BLOCK_N", "BLOCK_K")
# the interpreter's one config per kernel: wide vocabulary tiles, few loop trips
_INTERPRET_TILES = {"logits": (32, STAT_N, 32), "dx": (32, STAT_N, 64), "dw": (32, STAT_N, 64)}


# Each estimate is the larger of the main loop's buffers and the epilogue's: the float32
# output tile may pass through shared memory on its way to the store, reusing the pipeline's
# buffers (sm_90 compiles the (32, 128, 128) wgrad tile into 64 KB: its 128 x 128 float32
# tile, more than its 56 KB of operand buffers).

def _smem_logits(cfg, nargs, kwargs):
    """num_stages buffers of an x tile (BM x BK) and a W tile (BK x BN), or the float32
    logits tile (BM x BN)."""
    k = cfg.kwargs
    loop = cfg.num_stages * (k["BLOCK_M"] + k["BLOCK_N"]) * k["BLOCK_K"] * nargs["X"].element_size()
    return max(loop, k["BLOCK_M"] * k["BLOCK_N"] * 4)


def _smem_dx(cfg, nargs, kwargs):
    """num_stages buffers of an exponentials tile (BM x BN) and a W tile (BN x BK), and the
    dlogits tile formed in registers, which reaches the dot through shared memory; or the
    float32 dx tile (BM x BK)."""
    k = cfg.kwargs
    loop = ((cfg.num_stages * (k["BLOCK_M"] + k["BLOCK_K"]) + k["BLOCK_M"]) * k["BLOCK_N"]
            * nargs["W"].element_size())
    return max(loop, k["BLOCK_M"] * k["BLOCK_K"] * 4)


def _smem_dw(cfg, nargs, kwargs):
    """num_stages buffers of an exponentials tile (BN x BM) and an x tile (BM x BK), and the
    dlogits tile formed in registers; or the float32 dW tile (BN x BK)."""
    k = cfg.kwargs
    loop = ((cfg.num_stages * (k["BLOCK_N"] + k["BLOCK_K"]) + k["BLOCK_N"]) * k["BLOCK_M"]
            * nargs["X"].element_size())
    return max(loop, k["BLOCK_N"] * k["BLOCK_K"] * 4)


def _configs(tables, kernel):
    """Every tile of ``tables``; under TRITON_INTERPRET=1 exactly one (the interpreter cannot
    benchmark a choice)."""
    if _INTERPRET:
        m, n, k = _INTERPRET_TILES[kernel]
        return [triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k, "GROUP_M": 4},
                              num_warps=4, num_stages=1)]
    return _autotune.configs_from(tables, _NAMES, GROUP_M=8)


def _prune(tables, smem, operand):
    """The tiles for the dtype of tensor ``operand`` (and the dot precision for float32)
    that fit the GPU's shared memory."""
    if _INTERPRET:
        return None

    def choose(nargs, kwargs):
        kind = "16" if nargs[operand].element_size() == 2 else kwargs["DOT_PRECISION"]
        return tables[kind]

    return _autotune.Prune(_NAMES, choose, smem, operand)


# --------------------------------------------------------------------------- kernels

@_autotune.autotune(configs=_configs(_LOGITS_TILES, "logits"),
                    key=["M_BUCKET", "V", "C", "DOT_PRECISION"],
                    prune=_prune(_LOGITS_TILES, _smem_logits, "X"))
@triton.jit
def _flce_logits(
    X, stride_xm, stride_xk,  # (n, C) the chunk's rows
    W, stride_wv, stride_wk,  # (V, C) weight
    B,  # (V,) bias, read only when HAS_BIAS
    TARGET, stride_t,  # (n,) class ids or ignore_index
    E, stride_em,  # (n, V) out, unit column stride: exp(logit - tile lse), when STORE_E
    TILE_LSE,  # (n, n_tiles) float32 out: log-sum-exp of each row's STAT_N-wide vocab tile
    TARGET_LOGIT,  # (n,) float32 out: the target's logit (rows with an ignored target: unset)
    n, V, C, n_tiles,
    M_BUCKET,  # the pass's chunk height rounded up to a power of two: the autotune key
    HAS_BIAS: tl.constexpr,
    STORE_E: tl.constexpr,
    UPCAST: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    # logits tile = x @ W^T (float32 accumulator), then the epilogue turns it into the
    # tile's log-sum-exp statistics, so no later pass reads the logits to normalise them
    pid_m, pid_v = _grouped_tile(tl.program_id(0), tl.cdiv(n, BLOCK_M), tl.cdiv(V, BLOCK_N),
                                 GROUP_M)
    # int64 indices: row * stride passes 2^31 once n * V does
    offs_m = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_v = pid_v.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    m_ok = offs_m < n
    v_ok = offs_v < V
    x_ptrs = X + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk  # (BM, BK)
    w_ptrs = W + offs_v[None, :] * stride_wv + offs_k[:, None] * stride_wk  # (BK, BN) of W^T

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, C, BLOCK_K):
        k_ok = (k0 + offs_k) < C
        a = tl.load(x_ptrs, mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        b = tl.load(w_ptrs, mask=k_ok[:, None] & v_ok[None, :], other=0.0)
        if UPCAST:  # the interpreter's tl.dot is wrong on bfloat16: exact float32 products
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
        x_ptrs += BLOCK_K * stride_xk
        w_ptrs += BLOCK_K * stride_wk
    if HAS_BIAS:
        acc += tl.load(B + offs_v, mask=v_ok, other=0.0).to(tl.float32)[None, :]

    # the tile's log-sum-exp, from the float32 logits; columns past V carry no probability
    acc = tl.where(v_ok[None, :], acc, float("-inf"))
    tile_max = tl.max(acc, axis=1)  # finite: every tile holds at least one column < V
    e = tl.exp(acc - tile_max[:, None])  # in (0, 1], 1 at the max
    tile_sum = tl.sum(e, axis=1)  # in [1, BLOCK_N]
    tl.store(TILE_LSE + offs_m * n_tiles + pid_v, tile_max + tl.log(tile_sum), mask=m_ok)
    # the target's logit, from the one tile that holds its column
    target = tl.load(TARGET + offs_m * stride_t, mask=m_ok, other=-1).to(tl.int64)
    first = pid_v.to(tl.int64) * BLOCK_N
    mine = m_ok & (target >= first) & (target < first + BLOCK_N)
    hit = offs_v[None, :] == target[:, None]
    tl.store(TARGET_LOGIT + offs_m, tl.sum(tl.where(hit, acc, 0.0), axis=1), mask=mine)
    if STORE_E:
        # the softmax within the tile, exp(logit - tile lse), rather than the logit: the
        # gradient kernels then need one multiply per element, not an exp, and a value in
        # (0, 1] keeps the dtype's full relative precision (a bf16 logit of 10 is off by up
        # to 0.02, i.e. 2% in its softmax)
        e = e * (1.0 / tile_sum)[:, None]
        tl.store(E + offs_m[:, None] * stride_em + offs_v[None, :],
                 e.to(E.dtype.element_ty), mask=m_ok[:, None] & v_ok[None, :])


@triton.jit
def _flce_lse(
    TILE_LSE,  # (n, n_tiles) float32 tile log-sum-exps from _flce_logits
    TARGET, stride_t,  # (n,) class ids or ignore_index
    TARGET_LOGIT,  # (n,) float32 target logits (unset where the target is ignored)
    LSE,  # (n,) float32 out: log-sum-exp of each row
    LOSS,  # (n,) float32 out: lse - target logit, 0 for ignored rows
    n_tiles, ignore_index,
    BLOCK_T: tl.constexpr,
):
    # a row's lse is the log-sum-exp of its tiles' ones: M + log(sum_t exp(l_t - M)),
    # M = max_t l_t, accumulated online over blocks of tiles
    row = tl.program_id(0).to(tl.int64)  # int64: row * n_tiles for long chunks
    offs = tl.arange(0, BLOCK_T)
    m = float("-inf")
    s = 0.0
    for t0 in range(0, n_tiles, BLOCK_T):
        ok = (t0 + offs) < n_tiles
        lt = tl.load(TILE_LSE + row * n_tiles + t0 + offs, mask=ok, other=float("-inf"))
        m_new = tl.maximum(m, tl.max(lt, axis=0))  # finite from the first block on
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(lt - m_new), axis=0)
        m = m_new
    lse = m + tl.log(s)
    valid = tl.load(TARGET + row * stride_t) != ignore_index
    x_target = tl.load(TARGET_LOGIT + row)
    tl.store(LSE + row, lse)
    tl.store(LOSS + row, tl.where(valid, lse - x_target, 0.0))


@triton.jit
def _row_terms(TARGET, stride_t, SCALE, stride_s, LSE, rows, ok, ignore_index):
    """Per row: (target, scale, lse); scale 0 for ignored rows and rows past the chunk."""
    target = tl.load(TARGET + rows * stride_t, mask=ok, other=0).to(tl.int64)
    scale = tl.load(SCALE + rows * stride_s, mask=ok, other=0.0).to(tl.float32)
    scale = tl.where(ok & (target != ignore_index), scale, 0.0)
    lse = tl.load(LSE + rows, mask=ok, other=0.0)
    return target, scale, lse


@_autotune.autotune(configs=_configs(_DX_TILES, "dx"), key=["M_BUCKET", "V", "C", "DOT_PRECISION"],
                    prune=_prune(_DX_TILES, _smem_dx, "W"))
@triton.jit
def _flce_dx(
    E, stride_em,  # (n, V) exp(logit - tile lse), unit column stride
    TILE_LSE,  # (n, n_tiles) float32 tile log-sum-exps
    LSE,  # (n,) float32
    TARGET, stride_t,  # (n,) class ids or ignore_index
    SCALE, stride_s,  # (n,) float32 gradient of each row's loss; stride 0 broadcasts one
    W, stride_wv, stride_wk,  # (V, C) weight
    DX, stride_dxm, stride_dxk,  # (n, C) out: dlogits @ W in W's dtype
    n, V, C, n_tiles, ignore_index,
    M_BUCKET,  # the pass's chunk height rounded up to a power of two: the autotune key
    UPCAST: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    STAT_WIDTH: tl.constexpr,  # STAT_N; BLOCK_N divides it
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    # dx tiles (BLOCK_M, BLOCK_K), the reduction over V. The programs of one row band are
    # neighbours (K-tiles innermost), so they stream the same exponentials through L2.
    pid_k, pid_m = _grouped_tile(tl.program_id(0), tl.cdiv(C, BLOCK_K), tl.cdiv(n, BLOCK_M),
                                 GROUP_M)
    offs_m = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)  # int64: see _flce_logits
    offs_k = pid_k.to(tl.int64) * BLOCK_K + tl.arange(0, BLOCK_K)
    offs_v = tl.arange(0, BLOCK_N)
    m_ok = offs_m < n
    k_ok = offs_k < C
    target, scale, lse = _row_terms(TARGET, stride_t, SCALE, stride_s, LSE, offs_m, m_ok,
                                    ignore_index)
    e_ptrs = E + offs_m[:, None] * stride_em + offs_v[None, :]  # (BM, BN)
    w_ptrs = W + offs_v[:, None] * stride_wv + offs_k[None, :] * stride_wk  # (BN, BK)
    stat_ptrs = TILE_LSE + offs_m * n_tiles

    acc = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)
    for v0 in range(0, V, BLOCK_N):
        v_ok = (v0 + offs_v) < V
        # softmax = e * exp(tile lse - lse): one exp per row and tile, not per element
        f = tl.exp(tl.load(stat_ptrs + v0 // STAT_WIDTH, mask=m_ok, other=0.0) - lse) * scale
        e = tl.load(e_ptrs, mask=m_ok[:, None] & v_ok[None, :], other=0.0).to(tl.float32)
        hit = (v0 + offs_v)[None, :] == target[:, None]
        d = (e * f[:, None] - tl.where(hit, scale[:, None], 0.0)).to(W.dtype.element_ty)
        w = tl.load(w_ptrs, mask=v_ok[:, None] & k_ok[None, :], other=0.0)
        if UPCAST:
            d = d.to(tl.float32)
            w = w.to(tl.float32)
        acc = tl.dot(d, w, acc, input_precision=DOT_PRECISION)
        e_ptrs += BLOCK_N
        w_ptrs += BLOCK_N * stride_wv

    tl.store(DX + offs_m[:, None] * stride_dxm + offs_k[None, :] * stride_dxk,
             acc.to(DX.dtype.element_ty), mask=m_ok[:, None] & k_ok[None, :])


@_autotune.autotune(configs=_configs(_DW_TILES, "dw"), key=["M_BUCKET", "V", "C", "DOT_PRECISION"],
                    prune=_prune(_DW_TILES, _smem_dw, "X"))
@triton.jit
def _flce_dw(
    E, stride_em,  # (n, V) exp(logit - tile lse), unit column stride
    TILE_LSE,  # (n, n_tiles) float32 tile log-sum-exps
    LSE,  # (n,) float32
    TARGET, stride_t,  # (n,) class ids or ignore_index
    SCALE, stride_s,  # (n,) float32 gradient of each row's loss; stride 0 broadcasts one
    X, stride_xm, stride_xk,  # (n, C) the chunk's rows
    DW, stride_dwv, stride_dwk,  # (V, C) float32 accumulator, written when WRITE_DW
    DB,  # (V,) float32 accumulator of the bias gradient, written when HAS_BIAS
    n, V, C, n_tiles, ignore_index,
    M_BUCKET,  # the pass's chunk height rounded up to a power of two: the autotune key
    HAS_BIAS: tl.constexpr,
    WRITE_DW: tl.constexpr,
    ACCUMULATE: tl.constexpr,  # add to DW / DB (a later chunk) or overwrite them (the first)
    UPCAST: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    STAT_WIDTH: tl.constexpr,  # STAT_N; BLOCK_N divides it
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    # dW tiles (BLOCK_N, BLOCK_K), the reduction over the chunk's rows; the programs of one
    # vocabulary band are neighbours (K-tiles innermost) and share its exponentials in L2.
    # Without WRITE_DW (only the bias is trained) one program per vocabulary band.
    if WRITE_DW:  # at least one K-tile: with C == 0 it still writes dbias
        pid_k, pid_v = _grouped_tile(tl.program_id(0), tl.maximum(tl.cdiv(C, BLOCK_K), 1),
                                     tl.cdiv(V, BLOCK_N), GROUP_M)
    else:
        pid_k = 0
        pid_v = tl.program_id(0)
    offs_v = pid_v.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    offs_r = tl.arange(0, BLOCK_M).to(tl.int64)  # int64 rows: r * stride passes 2^31
    v_ok = offs_v < V
    k_ok = offs_k < C
    stat = (pid_v * BLOCK_N) // STAT_WIDTH  # the statistics tile holding this band
    et_ptrs = E + offs_r[None, :] * stride_em + offs_v[:, None]  # (BN, BM) of E^T
    x_ptrs = X + offs_r[:, None] * stride_xm + offs_k[None, :] * stride_xk  # (BM, BK)

    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    db = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for r0 in range(0, n, BLOCK_M):
        rows = r0 + offs_r
        r_ok = rows < n
        target, scale, lse = _row_terms(TARGET, stride_t, SCALE, stride_s, LSE, rows, r_ok,
                                        ignore_index)
        f = tl.exp(tl.load(TILE_LSE + rows * n_tiles + stat, mask=r_ok, other=0.0) - lse) * scale
        et = tl.load(et_ptrs, mask=v_ok[:, None] & r_ok[None, :], other=0.0).to(tl.float32)
        hit = offs_v[:, None] == target[None, :]
        dt = et * f[None, :] - tl.where(hit, scale[None, :], 0.0)  # (BN, BM) dlogits^T
        if HAS_BIAS:
            db += tl.sum(dt, axis=1)  # dbias: column sums of dlogits, before any rounding
        if WRITE_DW:
            x = tl.load(x_ptrs, mask=r_ok[:, None] & k_ok[None, :], other=0.0)
            a = dt.to(X.dtype.element_ty)
            if UPCAST:
                a = a.to(tl.float32)
                x = x.to(tl.float32)
            acc = tl.dot(a, x, acc, input_precision=DOT_PRECISION)
        et_ptrs += BLOCK_M * stride_em
        x_ptrs += BLOCK_M * stride_xm

    if WRITE_DW:
        dw_ptrs = DW + offs_v[:, None] * stride_dwv + offs_k[None, :] * stride_dwk
        mask = v_ok[:, None] & k_ok[None, :]
        if ACCUMULATE:  # the float32 sum over chunks, in this kernel's epilogue
            acc += tl.load(dw_ptrs, mask=mask, other=0.0)
        tl.store(dw_ptrs, acc, mask=mask)
    if HAS_BIAS:
        if pid_k == 0:  # every K-tile of a band summed the same columns; one writes them
            if ACCUMULATE:
                db += tl.load(DB + offs_v, mask=v_ok, other=0.0)
            tl.store(DB + offs_v, db, mask=v_ok)


# --------------------------------------------------------------------------- launchers

def _upcast(dtype):
    # Triton's interpreter gets tl.dot wrong on bfloat16 operands: upcast them there
    return _INTERPRET and dtype == torch.bfloat16


def _precision(dtype, device):
    return "ieee" if _upcast(dtype) else _dot_precision(dtype, device)


def _tiles(rows, cols, row_block, col_block):
    return lambda meta: (triton.cdiv(rows, meta[row_block]) * triton.cdiv(cols, meta[col_block]),)


def _stat_tiles(V):
    return triton.cdiv(int(V), STAT_N)


def flce_logits(x, weight, bias, target, e, tile_lse, target_logit, key_rows=None):
    """The logits kernel on one chunk: x (n, C), weight (V, C), bias (V,) or None, target (n,).

    Writes ``tile_lse`` (n, cdiv(V, STAT_N)) float32 (the log-sum-exp of each row's
    STAT_N-wide vocabulary tiles) and ``target_logit`` (n,) float32, and, when ``e`` is an
    (n, V) buffer (not None), exp(logit - tile lse) into it in x's dtype. All outputs are
    buffers the caller allocated. ``key_rows`` (default n): the rows the autotune key buckets,
    the pass's chunk height (see ``flce_pass``).
    """
    n, C = x.shape
    V = weight.shape[0]
    launch(_flce_logits)[_tiles(n, V, "BLOCK_M", "BLOCK_N")](
        x, x.stride(0), x.stride(1),
        weight, weight.stride(0), weight.stride(1),
        bias if bias is not None else weight,
        target, target.stride(0),
        e if e is not None else tile_lse, e.stride(0) if e is not None else 0,
        tile_lse, target_logit,
        n, V, C, _stat_tiles(V), _m_bucket(key_rows or n),
        HAS_BIAS=bias is not None, STORE_E=e is not None, UPCAST=_upcast(x.dtype),
        DOT_PRECISION=_precision(x.dtype, x.device),
    )


def flce_lse(tile_lse, target, target_logit, ignore_index, lse, loss):
    """Combine the tile log-sum-exps (n, T) of n rows into ``lse`` and ``loss`` (n,) float32."""
    n, n_tiles = tile_lse.shape
    block = min(1024, triton.next_power_of_2(n_tiles))
    launch(_flce_lse)[(n,)](
        tile_lse, target, target.stride(0), target_logit, lse, loss,
        n_tiles, ignore_index,
        BLOCK_T=block, num_warps=4 if block >= 512 else 2,
    )


def _scale_stride(scale):
    return 0 if scale.numel() == 1 else scale.stride(0)


def flce_grad_x(e, tile_lse, lse, target, scale, ignore_index, weight, grad_x, key_rows=None):
    """grad_x (n, C) = dlogits @ weight, dlogits = (softmax - onehot) * scale formed from
    ``e`` (n, V) in the kernel's operand loads; ``scale`` float32, 1 or n values;
    ``key_rows`` as in ``flce_logits``."""
    n, C = grad_x.shape
    V = weight.shape[0]
    if C == 0:
        return
    launch(_flce_dx)[_tiles(n, C, "BLOCK_M", "BLOCK_K")](
        e, e.stride(0), tile_lse, lse, target, target.stride(0), scale, _scale_stride(scale),
        weight, weight.stride(0), weight.stride(1),
        grad_x, grad_x.stride(0), grad_x.stride(1),
        n, V, C, tile_lse.shape[1], ignore_index, _m_bucket(key_rows or n),
        UPCAST=_upcast(weight.dtype), DOT_PRECISION=_precision(weight.dtype, weight.device),
        STAT_WIDTH=STAT_N,
    )


def flce_grad_weight(e, tile_lse, lse, target, scale, ignore_index, x, grad_weight, grad_bias,
                     accumulate, key_rows=None):
    """grad_weight (V, C) float32 (+)= dlogits^T @ x and grad_bias (V,) float32 (+)= the
    column sums of dlogits, dlogits formed from ``e`` (n, V) as in ``flce_grad_x``; either
    may be None. ``accumulate``: add to them (a later chunk) or overwrite them (the first:
    their contents are never read, so they need no zero-fill).

    The autotuner benchmarks a new key on the launch's own arguments, hundreds of times, and
    an accumulating launch would add its chunk into the gradients at every one of them. So a
    launch with ``accumulate=True`` must never be the first with its key: ``key_rows`` (the
    pass's chunk height, as in ``flce_logits``) keys every chunk of a pass like its first,
    which overwrites and so can be benchmarked safely."""
    n, C = x.shape
    V = e.shape[1]
    write_dw = grad_weight is not None
    if write_dw:
        grid = lambda meta: (triton.cdiv(V, meta["BLOCK_N"])  # noqa: E731
                             * max(1, triton.cdiv(C, meta["BLOCK_K"])),)
    else:
        grid = lambda meta: (triton.cdiv(V, meta["BLOCK_N"]),)  # noqa: E731
    dw = grad_weight if write_dw else grad_bias  # a placeholder when not written
    launch(_flce_dw)[grid](
        e, e.stride(0), tile_lse, lse, target, target.stride(0), scale, _scale_stride(scale),
        x, x.stride(0), x.stride(1),
        dw, *(grad_weight.stride() if write_dw else (0, 0)),
        grad_bias if grad_bias is not None else dw,
        n, V, C, tile_lse.shape[1], ignore_index, _m_bucket(key_rows or n),
        HAS_BIAS=grad_bias is not None, WRITE_DW=write_dw, ACCUMULATE=accumulate,
        UPCAST=_upcast(x.dtype), DOT_PRECISION=_precision(x.dtype, x.device),
        STAT_WIDTH=STAT_N,
    )


def flce_pass(x, weight, bias, target, ignore_index, grad_scale=None,
              need_x=False, need_weight=False, need_bias=False, rows=None):
    """One sweep over the tokens in chunks: per-row float32 loss and the requested gradients.

    x (N, C), weight (V, C), bias (V,) or None, all of one dtype; target (N,).
    ``grad_scale`` (float32, 1 or N values) multiplies each row of ``softmax - onehot``
    before the gradient matmuls. Returns ``(loss_rows, grad_x, grad_weight, grad_bias)``:
    grad_x in x's dtype (N, C) (each row block written once by its chunk), grad_weight
    (V, C) and grad_bias (V,) float32 (summed over the chunks in the wgrad kernel's
    epilogue), or None when not requested. Per chunk: the logits kernel, the lse kernel,
    then dgrad and wgrad when a gradient is wanted (4 launches).
    """
    N, C = x.shape
    V = weight.shape[0]
    device = x.device
    need_grad = need_x or need_weight or need_bias
    rows = chunk_rows(N, V, C, x.element_size()) if rows is None else rows
    loss_rows = torch.empty(N, dtype=torch.float32, device=device)
    grad_x = torch.empty(N, C, dtype=x.dtype, device=device) if need_x else None
    grad_weight = torch.empty(V, C, dtype=torch.float32, device=device) if need_weight else None
    grad_bias = torch.empty(V, dtype=torch.float32, device=device) if need_bias else None
    if N == 0:
        for g in (grad_weight, grad_bias):
            if g is not None:
                g.zero_()
        return loss_rows, grad_x, grad_weight, grad_bias
    if grad_scale is None:
        grad_scale = torch.ones(1, dtype=torch.float32, device=device)
    per_row_scale = grad_scale.numel() != 1
    if bias is not None:
        bias = bias.contiguous()  # read with unit stride
    # Buffers allocated once and reused by every chunk: the exponentials (only when a
    # gradient kernel will read them) and the float32 row statistics.
    height = min(rows, N)
    e_buffer = torch.empty(height, V, dtype=x.dtype, device=device) if need_grad else None
    tile_lse = torch.empty(height, _stat_tiles(V), dtype=torch.float32, device=device)
    target_logit = torch.empty(height, dtype=torch.float32, device=device)
    lse = torch.empty(height, dtype=torch.float32, device=device)
    for start in range(0, N, rows):
        end = min(start + rows, N)
        n = end - start
        x_chunk, t_chunk = x[start:end], target[start:end]
        e = e_buffer[:n] if need_grad else None  # the first n rows: contiguous
        flce_logits(x_chunk, weight, bias, t_chunk, e, tile_lse[:n], target_logit[:n], height)
        flce_lse(tile_lse[:n], t_chunk, target_logit[:n], ignore_index, lse[:n],
                 loss_rows[start:end])
        scale = grad_scale[start:end] if per_row_scale else grad_scale
        if need_x:
            flce_grad_x(e, tile_lse[:n], lse[:n], t_chunk, scale, ignore_index, weight,
                        grad_x[start:end], height)
        if need_weight or need_bias:
            flce_grad_weight(e, tile_lse[:n], lse[:n], t_chunk, scale, ignore_index, x_chunk,
                             grad_weight, grad_bias, accumulate=start > 0, key_rows=height)
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
    weighted by its upstream gradient ``grad_loss`` (N,). In the caller's dtypes.

    The weights reach the dlogits operand before its cast to the matmul dtype (wgrad sums
    over rows, so a row's weight cannot wait for the float32 accumulator). In float16, whose
    smallest value is 6e-8, ``softmax * grad`` would flush to zero for a loss averaged by the
    caller (``loss.mean()`` over 8192 rows: 1e-4 x 1e-5); so there the weights are divided
    by their largest magnitude, and the float32 results multiplied back by it."""
    x_c, weight_c, bias_c = _compute_copies(x, weight, bias, compute_dtype)
    grad_scale = grad_loss.to(torch.float32)
    top = None
    if x_c.dtype == torch.float16:  # bfloat16 has float32's exponent range
        top = grad_scale.abs().amax().clamp_min(torch.finfo(torch.float32).tiny)
        grad_scale = grad_scale / top  # on the device: no host synchronisation
    with torch.autocast(x.device.type, enabled=False):
        _, *grads = flce_pass(x_c, weight_c, bias_c, target, ignore_index,
                              grad_scale=grad_scale, need_x=need_x,
                              need_weight=need_weight, need_bias=need_bias and bias is not None)
    if top is not None:
        grads = [g.to(torch.float32) * top if g is not None else None for g in grads]
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


def _scaled(saved, g, dtype):
    """saved * g in ``dtype``, as a new tensor: the saved gradients are outputs of the forward
    op, and scaling them in place would change what that op returned (opcheck and
    torch.compile compare them), so backward twice also gives the same answer. The product is
    taken in float32: a half buffer bound for a float32 gradient is not rounded first."""
    return torch.mul(saved.to(torch.float32), g).to(dtype)


def _backward(ctx, grad_loss, *_):
    need_x, need_weight, need_bias = ctx.needs_input_grad[:3]
    if ctx.reduction == "none":
        x, weight, bias, target = ctx.saved_tensors
        gx, gw, gb = flce_bwd_none(x, weight, bias, target, grad_loss, *ctx.args)
    else:
        # the forward already holds the gradients of the summed loss: scale them by
        # upstream x 1/n_valid
        gx, gw, gb, scale = ctx.saved_tensors
        g = grad_loss.to(torch.float32) * scale
        x_dtype, w_dtype, b_dtype = ctx.dtypes
        gx = _scaled(gx, g, x_dtype) if need_x else None
        gw = _scaled(gw, g, w_dtype) if need_weight else None
        gb = _scaled(gb, g, b_dtype) if need_bias and b_dtype is not None else None
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
