"""Causal flash attention, forward and backward, as Triton kernels (FlashAttention-2 style).

One file per op (the project's rule): this op's Triton kernels, launchers, autograd and
`torch.library` registration together, however long.

    flash_attention(q, k, v, causal=True, sm_scale=None, *, dropout_p=0.0)
    q (B, H, Tq, D), k and v (B, H, Tk, D) -> (B, H, Tq, D) in q's dtype

What is fused: QK^T, the scale, the causal mask, softmax, attention dropout and the product
with V are one kernel; the (Tq, Tk) score matrix never exists in memory. The forward saves
only the output and one float32 log-sum-exp per query row. The backward recomputes the
probabilities from q, k and that log-sum-exp (cheaper than storing Tq x Tk numbers) in three
kernels and no atomics, so two backward passes are bit-identical:

- ``_attn_bwd_preprocess``: delta_i = sum_d dO_id * O_id (the rowsum(P * dP) of softmax's
  backward, since O = P V);
- ``_attn_bwd_dkdv``: one program per key block, looping over the query blocks that see it;
- ``_attn_bwd_dq``: one program per query block, looping over the key blocks it sees.

Causal masking is bottom-right aligned: query i sits at absolute position Tk - Tq + i and
sees keys j <= Tk - Tq + i (the KV-cache case). Key blocks entirely above the diagonal are
never visited, blocks entirely below it run without a mask, and only the blocks that cross
the diagonal (or the ragged tail of the sequence) pay for one.

Scores live in base 2: s2 = q.k * sm_scale * log2(e), so exp2 replaces exp, and the saved
log-sum-exp is log2(sum_j 2^s2_j). Dropout keeps each probability with chance 1 - p using
Philox (``tl.philox``) keyed on (seed, head, row, column); the backward regenerates the same
mask from the seed instead of storing it, and with ``dropout_p=0`` the RNG is compiled out.
"""

import math
import os
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from gpt_kernels import _autotune, reference
from gpt_kernels._library import define_op, env_backend, launch, use_triton
from gpt_kernels._validate import SUPPORTED_HEAD_DIMS, check_attention

__all__ = ["flash_attention", "attention_forward", "attention_backward", "attention_fwd",
           "attention_bwd", "dropout_seed", "dropout_keep_mask"]

_LOG2E = 1.4426950408889634
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


# --------------------------------------------------------------------------- autotuning
#
# Each kernel's autotuner is offered the tiles (BLOCK_M, BLOCK_N, num_warps, num_stages) its
# table lists for the launch (_tuning): by head dim (16 and 32 take the 64 rows: the same
# tiles over narrower heads need fewer registers and less shared memory) and by how the dots
# run: "16" for fp16/bf16 operands, "tf32" and "ieee" for float32 ones (_dot_precision).
# An entry whose last field is False is left out when dropout is on: Philox's state for a
# whole score tile takes registers, and those tiles spill with it. A BLOCK_M over twice the
# queries is left out (mostly padding: a KV-cache decode step has one query, and gets the
# 16-query tile every table has); then the tiles whose shared memory (_smem_*, an upper
# bound of what Triton allocates) exceeds the GPU's, so a 99 KB RTX 4090 gets a subset of
# a 227 KB H100's list.
# Every entry compiles for sm_80 and sm_90 at GPT-2's shapes without spilling a register:
# `python -m tools.compile_report` checks it (make test on a subset); "regs" below is the
# larger of the two chips' counts, with dropout where the tile allows it.


def _tuning(tables, smem):
    """``early_config_prune`` of an attention kernel: its table's tiles for this launch,
    pruned to the GPU (see above). None under the interpreter, which has one config."""
    if _INTERPRET:
        return None

    def choose(nargs, kwargs):
        kind = "16" if nargs["Q"].element_size() == 2 else kwargs["DOT_PRECISION"]
        tiles = tables[(64 if kwargs["HEAD_DIM"] <= 64 else 128, kind)]
        tiles = [t[:4] for t in tiles if t[4] or not kwargs["DROPOUT"]]
        # a query tile over twice the queries is mostly padding (a decode step has one query)
        return [t for t in tiles if t[0] <= max(16, 2 * nargs["Q_BUCKET"])]

    return _autotune.Prune(("BLOCK_M", "BLOCK_N"), choose, smem, "Q")


def _before_3_9(tables, changes):
    """``tables`` with ``changes`` applied when this Triton is older than 3.9: {(head dim,
    kind): {tile: None (left out) | "no dropout" | a replacement entry}}. Triton 3.6 (the GPU
    image's, torch 2.11) spills a few tiles on sm_90 that 3.9 compiles cleanly (measured with
    ``python -m tools.compile_report`` under each; see docs/gpu.md)."""
    if _autotune._TRITON >= (3, 9):
        return tables
    out = {}
    for key, tiles in tables.items():
        fix, out[key] = changes.get(key, {}), []
        for t in tiles:
            change = fix.get(t[:4], t)
            if change == "no dropout":
                out[key].append((*t[:4], False))
            elif change is not None:
                out[key].append(change)
    return out


def _configs(tables, interpreted):
    """Every tile of ``tables`` as a triton.Config; under TRITON_INTERPRET=1 only
    ``interpreted`` (BLOCK_M, BLOCK_N): the interpreter cannot benchmark a choice."""
    if _INTERPRET:
        return [triton.Config({"BLOCK_M": interpreted[0], "BLOCK_N": interpreted[1]},
                              num_warps=4, num_stages=1)]
    return _autotune.configs_from(tables, ("BLOCK_M", "BLOCK_N"))


# --------------------------------------------------------------------------- kernels

@triton.jit
def _keep_mask(seed, off_bh, rows, cols, dropout_p):
    """Dropout keep mask of head off_bh at query rows x key cols (2-D, broadcast): True = kept.

    One Philox4x32 draw per (head, query row, key column), so forward and backward (whatever
    their block shapes) regenerate exactly the same mask. The 128-bit counter is the triple
    (column, row, head) itself, one 32-bit word each: unique at any size, with no B*H*Tq*Tk
    product that would need 64 bits. (A flat int64 offset, as ``tl.rand`` takes, runs
    Philox in 64-bit arithmetic: twice the registers per element and spills in the
    attention tiles; see ``python -m tools.compile_report``.)
    """
    bits, _, _, _ = tl.philox(seed, cols.to(tl.int32), rows.to(tl.int32),
                              off_bh.to(tl.int32), 0)
    return tl.uint_to_uniform_float(bits) >= dropout_p


@triton.jit
def _attn_fwd_block(
    acc, l_i, m_i, q, k_ptrs, v_ptrs, seed, dropout_p, drop_scale, off_bh, offs_m, start_n,
    N_CTX_Q, N_CTX_K, qk_scale, diag, stride_kt, stride_vt,
    MASK: tl.constexpr, CAUSAL: tl.constexpr, DROPOUT: tl.constexpr,
    UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """One online-softmax step of a query tile over the keys [start_n, start_n + BLOCK_N)."""
    offs_n = start_n + tl.arange(0, BLOCK_N)
    if MASK:
        k = tl.load(k_ptrs + start_n * stride_kt, mask=offs_n[:, None] < N_CTX_K, other=0.0)
    else:
        k = tl.load(k_ptrs + start_n * stride_kt)
    if UPCAST:
        k = k.to(tl.float32)
    qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale  # (BLOCK_M, BLOCK_N)
    if MASK:
        allowed = offs_n[None, :] < N_CTX_K
        if CAUSAL:
            allowed = allowed & (offs_n[None, :] <= offs_m[:, None] + diag)
        qk = tl.where(allowed, qk, float("-inf"))
    # m_new is finite for every row: the first block a tile visits holds key 0, which
    # every query sees (Tq <= Tk when causal), so exp2(-inf - m_new) = 0, never NaN.
    m_new = tl.maximum(m_i, tl.max(qk, 1))
    p = tl.math.exp2(qk - m_new[:, None])
    alpha = tl.math.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)  # the normaliser uses the probabilities before dropout
    acc = acc * alpha[:, None]
    if DROPOUT:
        keep = _keep_mask(seed, off_bh, offs_m[:, None], offs_n[None, :], dropout_p)
        p = tl.where(keep, p * drop_scale, 0.0)
    if MASK:
        v = tl.load(v_ptrs + start_n * stride_vt, mask=offs_n[:, None] < N_CTX_K, other=0.0)
    else:
        v = tl.load(v_ptrs + start_n * stride_vt)
    if UPCAST:
        v = v.to(tl.float32)
    acc += tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
    return acc, l_i, m_new


# (BLOCK_M, BLOCK_N, num_warps, num_stages, with dropout): BLOCK_M queries per program, keys
# in steps of BLOCK_N. Shared memory: a Q tile and num_stages K and V tiles.
_FWD_TILES = {
    (64, "16"): [
        (128, 128, 8, 3, False),  # a 128-key step for long rows: 254 regs; spills w/ dropout
        (128, 64, 4, 3, False),  # FA2's D=64 tile: 255 regs, no spill; 668 B w/ dropout
        (128, 64, 8, 3, True),  # the same over 8 warps, room for dropout: 244 regs
        (64, 64, 4, 3, True),  # half the queries: twice the programs when B*H*T is small
        (16, 64, 4, 2, True),  # a KV-cache decode step (one query): 125 regs
        # out: (128, 32, 8, 3): ptxas caps it at 128 regs on sm_80 and spills 12 B
    ],
    (128, "16"): [
        (128, 32, 8, 3, False),  # 193 regs; spills 4 B with dropout on sm_80
        (64, 64, 8, 3, True),  # 240 regs
        (64, 32, 4, 3, True),  # 248 regs
        (64, 32, 4, 2, True),  # 251 regs; 36 KB, fits any chip
        (16, 64, 4, 2, True),  # up to 16 queries (a decode step)
        # out: (128, 64, 8, 3) spills 60 B on sm_80; (128, 64, 4, 3) 856 B; (64, 64, 4, 3) 60 B
        # with dropout
    ],
    (64, "tf32"): [
        (128, 32, 8, 3, True),  # 180 regs
        (64, 32, 4, 3, True),  # 168 regs
        (16, 32, 4, 2, True),  # up to 16 queries (a decode step)
        # out: (128, 64, 8, 3) spills 8 B at D=32 on sm_80 (ptxas stops at 128 regs),
        # (64, 64, 4, 3) 4 B at D=16 on sm_80, (16, 64, 4, 2) 4 B on sm_90
    ],
    (128, "tf32"): [
        (128, 32, 8, 3, True),  # 255 regs, no spill; 160 KB (estimate): A100 and H100 only
        (128, 32, 8, 2, True),  # 255 regs, no spill; one buffer less: 128 KB
        (64, 32, 4, 3, True),  # 255 regs, no spill; 104 KB on sm_80
        (64, 32, 4, 2, True),  # 255 regs, no spill; 72 KB, fits a 99 KB RTX 4090
        (16, 64, 4, 2, True),  # up to 16 queries (a decode step)
    ],
    # IEEE float32 dots are FMA loops: each thread holds its rows of Q across the whole head
    # dim, so the tiles are small and the warps many
    (64, "ieee"): [
        (32, 64, 8, 2, True),  # 108 regs
        (32, 32, 8, 2, True),  # 111 regs
        (16, 32, 4, 2, True),  # 112 regs
        # out: (64, 32, 4, 2) spills 996 B on sm_90, (16, 64, 4, 2) 8 B on sm_80,
        # (64, 32, 8, 2) 4 B at D=32 on sm_80
    ],
    (128, "ieee"): [  # 128-wide float32 rows: only 16-query tiles stay in registers
        (16, 32, 4, 2, True),  # 200 regs
        (16, 32, 8, 2, True),  # the same over 8 warps
        # out: (32, 32, 8, 2) spills 488 B on sm_90, (64, 32, 8, 2) 1.2 KB, (16, 16, 4, 2)
        # 4 B on sm_80
    ],
}


def _smem_fwd(cfg, nargs, kwargs):
    k, d = cfg.kwargs, kwargs["HEAD_DIM"]
    return (k["BLOCK_M"] + 2 * cfg.num_stages * k["BLOCK_N"]) * d * nargs["Q"].element_size()


_FWD_TILES = _before_3_9(_FWD_TILES, {
    (128, "ieee"): {(16, 32, 8, 2): None},  # 16 B spilled with Triton 3.6 on sm_90
})


@_autotune.autotune(configs=_configs(_FWD_TILES, (16, 32)),
                    key=["Q_BUCKET", "K_BUCKET", "HEAD_DIM", "CAUSAL", "DROPOUT", "DOT_PRECISION"],
                    prune=_tuning(_FWD_TILES, _smem_fwd))
@triton.jit
def _attn_fwd(
    Q, stride_qb, stride_qh, stride_qt, stride_qd,  # (B, H, Tq, D) queries
    K, stride_kb, stride_kh, stride_kt, stride_kd,  # (B, H, Tk, D) keys
    V, stride_vb, stride_vh, stride_vt, stride_vd,  # (B, H, Tk, D) values
    Out, stride_ob, stride_oh, stride_ot, stride_od,  # (B, H, Tq, D) output
    LSE,  # (B*H, Tq) float32 base-2 log-sum-exp of the scaled scores, contiguous
    H, N_CTX_Q, N_CTX_K, Q_BUCKET, K_BUCKET, qk_scale, SEED, dropout_p, drop_scale,  # SEED: (1,) int64, read when DROPOUT
    HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, DROPOUT: tl.constexpr,
    UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    seed = 0
    if DROPOUT:  # (1,) int64 tensor: an input of the op, so compile and recomputation replay it
        seed = tl.load(SEED)
    n_m = tl.cdiv(N_CTX_Q, BLOCK_M)
    pid_m = tl.program_id(0)
    if CAUSAL:  # the tiles near the end see the most keys: start them first
        pid_m = n_m - 1 - pid_m
    # int64 head offsets: b * stride_b passes 2^31 for large batches of long sequences
    off_bh = tl.program_id(1).to(tl.int64)
    off_b = off_bh // H
    off_h = off_bh % H
    diag = N_CTX_K - N_CTX_Q  # query i sees keys j <= i + diag

    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    q_ptrs = (Q + off_b * stride_qb + off_h * stride_qh
              + offs_m[:, None] * stride_qt + offs_d[None, :] * stride_qd)
    k_ptrs = (K + off_b * stride_kb + off_h * stride_kh
              + offs_n[:, None] * stride_kt + offs_d[None, :] * stride_kd)
    v_ptrs = (V + off_b * stride_vb + off_h * stride_vh
              + offs_n[:, None] * stride_vt + offs_d[None, :] * stride_vd)
    q = tl.load(q_ptrs, mask=offs_m[:, None] < N_CTX_Q, other=0.0)
    if UPCAST:
        q = q.to(tl.float32)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

    # Keys [0, split) are in bounds and visible to every query of the tile: no mask there.
    # Keys [split, hi) cross the diagonal or the ragged end and are masked; keys past hi
    # sit above the diagonal for the whole tile and are skipped.
    if CAUSAL:
        hi = tl.minimum(start_m + BLOCK_M + diag, N_CTX_K)
        split = tl.minimum((start_m + diag + 1) // BLOCK_N * BLOCK_N, hi)
    else:
        hi = N_CTX_K
        split = N_CTX_K // BLOCK_N * BLOCK_N
    for start_n in tl.range(0, split, BLOCK_N):
        acc, l_i, m_i = _attn_fwd_block(
            acc, l_i, m_i, q, k_ptrs, v_ptrs, seed, dropout_p, drop_scale, off_bh, offs_m,
            start_n, N_CTX_Q, N_CTX_K, qk_scale, diag, stride_kt, stride_vt,
            False, CAUSAL, DROPOUT, UPCAST, DOT_PRECISION, BLOCK_N)
    for start_n in tl.range(split, hi, BLOCK_N):
        acc, l_i, m_i = _attn_fwd_block(
            acc, l_i, m_i, q, k_ptrs, v_ptrs, seed, dropout_p, drop_scale, off_bh, offs_m,
            start_n, N_CTX_Q, N_CTX_K, qk_scale, diag, stride_kt, stride_vt,
            True, CAUSAL, DROPOUT, UPCAST, DOT_PRECISION, BLOCK_N)

    # l_i > 0 for every real row; the guard keeps padding rows free of 0/0 all the same
    l_safe = tl.where(l_i > 0.0, l_i, 1.0)
    out = acc / l_safe[:, None]
    row_ok = offs_m < N_CTX_Q
    tl.store(LSE + off_bh * N_CTX_Q + offs_m, m_i + tl.math.log2(l_safe), mask=row_ok)
    o_ptrs = (Out + off_b * stride_ob + off_h * stride_oh
              + offs_m[:, None] * stride_ot + offs_d[None, :] * stride_od)
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=row_ok[:, None])


@triton.jit
def _attn_bwd_preprocess(
    Out, stride_ob, stride_oh, stride_ot, stride_od,  # (B, H, Tq, D) forward output
    DO, stride_dob, stride_doh, stride_dot, stride_dod,  # (B, H, Tq, D) upstream gradient
    Delta,  # (B*H, Tq) float32 rowsum(dO * O), contiguous
    H, N_CTX_Q,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
):
    off_bh = tl.program_id(1).to(tl.int64)  # int64: head offsets pass 2^31 at scale
    off_b = off_bh // H
    off_h = off_bh % H
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < N_CTX_Q
    o = tl.load(Out + off_b * stride_ob + off_h * stride_oh
                + offs_m[:, None] * stride_ot + offs_d[None, :] * stride_od,
                mask=row_ok[:, None], other=0.0).to(tl.float32)
    do = tl.load(DO + off_b * stride_dob + off_h * stride_doh
                 + offs_m[:, None] * stride_dot + offs_d[None, :] * stride_dod,
                 mask=row_ok[:, None], other=0.0).to(tl.float32)
    tl.store(Delta + off_bh * N_CTX_Q + offs_m, tl.sum(o * do, 1), mask=row_ok)


@triton.jit
def _attn_bwd_dkdv_block(
    dk, dv, k, v, q_ptrs, do_ptrs, LSE_head, Delta_head, seed, dropout_p, drop_scale, off_bh,
    offs_n, start_m, N_CTX_Q, N_CTX_K, qk_scale, diag, stride_qt, stride_dot,
    MASK: tl.constexpr, CAUSAL: tl.constexpr, DROPOUT: tl.constexpr,
    UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr,
):
    """Add the queries [start_m, start_m + BLOCK_M) to a key tile's dK and dV.

    Works on the transposed scores (keys x queries) so P^T needs no transpose. Query rows past
    Tq load as zeros with lse = delta = 0: their p is 1, but dO = q = delta = 0 there, so they
    add exactly nothing and the ragged query tail needs no mask.
    """
    offs_m = start_m + tl.arange(0, BLOCK_M)
    row_ok = offs_m < N_CTX_Q
    q = tl.load(q_ptrs + start_m * stride_qt, mask=row_ok[:, None], other=0.0)
    do = tl.load(do_ptrs + start_m * stride_dot, mask=row_ok[:, None], other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
        do = do.to(tl.float32)
    lse = tl.load(LSE_head + offs_m, mask=row_ok, other=0.0)
    delta = tl.load(Delta_head + offs_m, mask=row_ok, other=0.0)
    qkT = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION) * qk_scale  # (BLOCK_N, BLOCK_M)
    if MASK:  # the causal mask, in backward too: key j is seen by query i iff j <= i + diag
        if CAUSAL:
            qkT = tl.where(offs_n[:, None] <= offs_m[None, :] + diag, qkT, float("-inf"))
    pT = tl.math.exp2(qkT - lse[None, :])  # P^T, the probabilities before dropout
    dpT = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)  # (dO V^T)^T
    if DROPOUT:
        keepT = _keep_mask(seed, off_bh, offs_m[None, :], offs_n[:, None], dropout_p)
        pT_used = tl.where(keepT, pT * drop_scale, 0.0)
        dpT = tl.where(keepT, dpT * drop_scale, 0.0)
    else:
        pT_used = pT
    dv += tl.dot(pT_used.to(do.dtype), do, input_precision=DOT_PRECISION)
    # softmax backward: dS = P * (dP - rowsum(P * dP)), and rowsum(P * dP) = rowsum(dO * O)
    dsT = pT * (dpT - delta[None, :])
    dk += tl.dot(dsT.to(q.dtype), q, input_precision=DOT_PRECISION)
    return dk, dv


# (BLOCK_M, BLOCK_N, num_warps, num_stages, with dropout): BLOCK_N keys per program, whose
# K, V, dK, dV tiles stay in registers, queries in steps of BLOCK_M. Shared memory: the K and
# V tiles and num_stages Q and dO tiles.
_DKDV_TILES = {
    (64, "16"): [
        (32, 128, 8, 3, True),  # the tile of Triton's fused-attention tutorial: 231 regs
        (64, 128, 8, 3, False),  # more queries per step: 255 regs; spills 8 B with dropout
        (32, 64, 4, 3, True),  # half the keys: twice the programs; 234 regs
        (16, 64, 4, 2, True),  # up to 16 queries: 168 regs
        # out: (64, 64, 4, 3) spills 64 B with dropout, (64, 64, 8, 3) 588 B (sm_80)
    ],
    (128, "16"): [
        (32, 128, 8, 3, False),  # 255 regs, no spill; 80 B with dropout on sm_80
        (64, 64, 8, 3, False),  # 255 regs, no spill; 108 B with dropout on sm_90
        (32, 64, 8, 3, True),  # 248 regs
        (32, 32, 4, 3, True),  # a small key tile for dropout
        (16, 64, 4, 2, True),  # up to 16 queries: 255 regs, no spill
        # out: (64, 128, 8, 3) spills 452 B on sm_80, (64, 64, 4, 3) 152 B on sm_90
    ],
    (64, "tf32"): [
        (32, 64, 8, 2, False),  # 52-56 B spilled w/ dropout; (32, 128, 8, 2) 4-8 B on 3.2
        # (32, 64, 4, 3) out: 8 B with dropout; 4 B without on sm_90 with Triton 3.2
        (16, 64, 4, 2, True),  # up to 16 queries: 240 regs
        # out: (64, 64, 4, 3) spills 920 B on sm_80, (64, 128, 8, 3) 1.8 KB, (32, 128, 8, 3)
        # 4-8 B with Triton 3.2
    ],
    (128, "tf32"): [  # float32 K, V, dK, dV tiles of 128 columns: 32 keys per program
        (32, 32, 8, 3, True),  # 212 regs
        (32, 32, 4, 3, True),  # 252 regs, no spill
        (16, 32, 4, 2, True),  # up to 16 queries: 242 regs; 56 KB
        # out: (16, 64, 4, 2) spills 4 B on sm_80; (32, 64, 8, 3) 284 B on sm_90
    ],
    (64, "ieee"): [  # FMA loops, see _FWD_TILES
        (32, 64, 8, 2, True),  # 250 regs, no spill
        (16, 32, 4, 2, True),  # 240 regs
        # out: (16, 64, 4, 2) spills 8 B on sm_90, (32, 32, 4, 2) 12 B with dropout on sm_90
    ],
    (128, "ieee"): [
        (16, 32, 8, 2, True),  # 108 regs
        (16, 16, 4, 2, True),  # 136 regs
        # out: (16, 32, 4, 2) spills 116 B on sm_90, (32, 32, 4, 2) 35 KB
    ],
}


def _smem_dkdv(cfg, nargs, kwargs):
    k, d = cfg.kwargs, kwargs["HEAD_DIM"]
    tiles = (2 * k["BLOCK_N"] + 2 * cfg.num_stages * k["BLOCK_M"]) * d
    return tiles * nargs["Q"].element_size() + 2 * cfg.num_stages * k["BLOCK_M"] * 4


_DKDV_TILES = _before_3_9(_DKDV_TILES, {
    (128, "ieee"): {(16, 32, 8, 2): None},  # 12 B spilled with Triton 3.6 on sm_90
    (64, "ieee"): {(32, 64, 8, 2): "no dropout"},  # 4 B with dropout, Triton 3.6 on sm_90
})


@_autotune.autotune(configs=_configs(_DKDV_TILES, (16, 32)),
                    key=["Q_BUCKET", "K_BUCKET", "HEAD_DIM", "CAUSAL", "DROPOUT", "DOT_PRECISION"],
                    prune=_tuning(_DKDV_TILES, _smem_dkdv))
@triton.jit
def _attn_bwd_dkdv(
    Q, stride_qb, stride_qh, stride_qt, stride_qd,  # (B, H, Tq, D) queries
    K, stride_kb, stride_kh, stride_kt, stride_kd,  # (B, H, Tk, D) keys
    V, stride_vb, stride_vh, stride_vt, stride_vd,  # (B, H, Tk, D) values
    DO, stride_dob, stride_doh, stride_dot, stride_dod,  # (B, H, Tq, D) upstream gradient
    DK, stride_dkb, stride_dkh, stride_dkt, stride_dkd,  # (B, H, Tk, D) output dK
    DV, stride_dvb, stride_dvh, stride_dvt, stride_dvd,  # (B, H, Tk, D) output dV
    LSE, Delta,  # (B*H, Tq) float32 each, contiguous
    H, N_CTX_Q, N_CTX_K, Q_BUCKET, K_BUCKET, sm_scale, qk_scale, SEED, dropout_p, drop_scale,  # SEED: (1,) int64, read when DROPOUT
    HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, DROPOUT: tl.constexpr,
    UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    seed = 0
    if DROPOUT:  # (1,) int64 tensor: an input of the op, so compile and recomputation replay it
        seed = tl.load(SEED)
    off_bh = tl.program_id(1).to(tl.int64)  # int64: head offsets pass 2^31 at scale
    off_b = off_bh // H
    off_h = off_bh % H
    diag = N_CTX_K - N_CTX_Q
    start_n = tl.program_id(0) * BLOCK_N
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    col_ok = offs_n < N_CTX_K

    k = tl.load(K + off_b * stride_kb + off_h * stride_kh
                + offs_n[:, None] * stride_kt + offs_d[None, :] * stride_kd,
                mask=col_ok[:, None], other=0.0)
    v = tl.load(V + off_b * stride_vb + off_h * stride_vh
                + offs_n[:, None] * stride_vt + offs_d[None, :] * stride_vd,
                mask=col_ok[:, None], other=0.0)
    if UPCAST:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    q_ptrs = (Q + off_b * stride_qb + off_h * stride_qh
              + offs_m[:, None] * stride_qt + offs_d[None, :] * stride_qd)
    do_ptrs = (DO + off_b * stride_dob + off_h * stride_doh
               + offs_m[:, None] * stride_dot + offs_d[None, :] * stride_dod)
    LSE_head = LSE + off_bh * N_CTX_Q
    Delta_head = Delta + off_bh * N_CTX_Q
    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)

    # Causal: queries i < start_n - diag see none of these keys (skipped); queries in
    # [lo, split) may see some of them (masked); queries from split on see all (unmasked).
    # Key rows past Tk load as zeros and are never stored, so they need no mask.
    if CAUSAL:
        lo = tl.maximum(start_n - diag, 0) // BLOCK_M * BLOCK_M
        split = tl.cdiv(tl.maximum(start_n + BLOCK_N - 1 - diag, 0), BLOCK_M) * BLOCK_M
        split = tl.minimum(split, tl.cdiv(N_CTX_Q, BLOCK_M) * BLOCK_M)
    else:
        lo = 0
        split = 0
    if CAUSAL:
        for start_m in tl.range(lo, split, BLOCK_M):
            dk, dv = _attn_bwd_dkdv_block(
                dk, dv, k, v, q_ptrs, do_ptrs, LSE_head, Delta_head, seed, dropout_p,
                drop_scale, off_bh, offs_n, start_m, N_CTX_Q, N_CTX_K, qk_scale, diag,
                stride_qt, stride_dot, True, CAUSAL, DROPOUT, UPCAST, DOT_PRECISION, BLOCK_M)
    for start_m in tl.range(split, N_CTX_Q, BLOCK_M):
        dk, dv = _attn_bwd_dkdv_block(
            dk, dv, k, v, q_ptrs, do_ptrs, LSE_head, Delta_head, seed, dropout_p, drop_scale,
            off_bh, offs_n, start_m, N_CTX_Q, N_CTX_K, qk_scale, diag, stride_qt, stride_dot,
            False, CAUSAL, DROPOUT, UPCAST, DOT_PRECISION, BLOCK_M)

    dk *= sm_scale  # S = sm_scale * Q K^T, so dK = sm_scale * dS^T Q
    tl.store(DK + off_b * stride_dkb + off_h * stride_dkh
             + offs_n[:, None] * stride_dkt + offs_d[None, :] * stride_dkd,
             dk.to(DK.dtype.element_ty), mask=col_ok[:, None])
    tl.store(DV + off_b * stride_dvb + off_h * stride_dvh
             + offs_n[:, None] * stride_dvt + offs_d[None, :] * stride_dvd,
             dv.to(DV.dtype.element_ty), mask=col_ok[:, None])


@triton.jit
def _attn_bwd_dq_block(
    dq, q, do, lse, delta, k_ptrs, v_ptrs, seed, dropout_p, drop_scale, off_bh, offs_m, start_n,
    N_CTX_Q, N_CTX_K, qk_scale, diag, stride_kt, stride_vt,
    MASK: tl.constexpr, CAUSAL: tl.constexpr, DROPOUT: tl.constexpr,
    UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Add the keys [start_n, start_n + BLOCK_N) to a query tile's dQ."""
    offs_n = start_n + tl.arange(0, BLOCK_N)
    if MASK:
        k = tl.load(k_ptrs + start_n * stride_kt, mask=offs_n[:, None] < N_CTX_K, other=0.0)
        v = tl.load(v_ptrs + start_n * stride_vt, mask=offs_n[:, None] < N_CTX_K, other=0.0)
    else:
        k = tl.load(k_ptrs + start_n * stride_kt)
        v = tl.load(v_ptrs + start_n * stride_vt)
    if UPCAST:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale  # (BLOCK_M, BLOCK_N)
    if MASK:  # keys past Tk must get p = 0 (a zero key still scores 0 and p = 2^-lse)
        allowed = offs_n[None, :] < N_CTX_K
        if CAUSAL:
            allowed = allowed & (offs_n[None, :] <= offs_m[:, None] + diag)
        qk = tl.where(allowed, qk, float("-inf"))
    p = tl.math.exp2(qk - lse[:, None])
    dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
    if DROPOUT:
        keep = _keep_mask(seed, off_bh, offs_m[:, None], offs_n[None, :], dropout_p)
        dp = tl.where(keep, dp * drop_scale, 0.0)
    ds = p * (dp - delta[:, None])
    dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT_PRECISION)
    return dq


# (BLOCK_M, BLOCK_N, num_warps, num_stages, with dropout): BLOCK_M queries per program, whose
# Q, dO, dQ tiles stay in registers, keys in steps of BLOCK_N. Shared memory: the Q and dO
# tiles and num_stages K and V tiles.
_DQ_TILES = {
    (64, "16"): [
        (128, 32, 8, 2, True),  # 168 regs (with 3 stages: 12 B spilled on sm_80)
        (64, 64, 8, 3, True),  # 255 regs, no spill
        (64, 32, 4, 2, True),  # 168 regs
        (16, 64, 4, 2, True),  # up to 16 queries: 128 regs
        # out: (64, 64, 4, 3) spills 88 B with dropout, (64, 32, 4, 3) 4 B (sm_80),
        # (128, 64, 8, 3) 8 B at D=32 on sm_80 (ptxas stops at 128 regs)
    ],
    (128, "16"): [
        (128, 32, 8, 3, False),  # 194 regs; 4 B spilled with dropout on sm_80
        (64, 64, 8, 3, False),  # 192 regs; 44 B spilled with dropout on sm_90
        (64, 32, 4, 3, True),  # 244 regs
        (64, 32, 4, 2, True),  # 244 regs, 52 KB
        (16, 64, 4, 2, True),  # up to 16 queries: 168 regs
        # out: (128, 64, 8, 3) spills 60 B on sm_80, (64, 64, 4, 3) 136 B with dropout
    ],
    (64, "tf32"): [
        (64, 32, 4, 3, True),  # 255 regs, no spill
        (64, 32, 4, 2, True),  # 255 regs, no spill
        (16, 64, 4, 2, True),  # up to 16 queries: 166 regs
        # out: (128, 64, 8, 3) spills 40 B on sm_80, (64, 64, 4, 3) 36 B, (128, 32, 8, 3)
        # 8 B at D=32 on sm_80
    ],
    (128, "tf32"): [
        (64, 32, 8, 2, False),  # 236 regs; 100 B spilled with dropout on sm_90
        (32, 32, 4, 2, True),  # 214 regs; 80 KB
        (16, 64, 4, 2, True),  # up to 16 queries: 240 regs
        # out: (64, 32, 4, 2) spills 76 B with dropout; (128, 32, 8, 3) 124 B on sm_80;
        # (32, 32, 4, 3) 4 B with dropout on sm_90
    ],
    (64, "ieee"): [  # FMA loops, see _FWD_TILES
        (32, 32, 8, 2, True),  # the 128-wide heads' tile
        (32, 32, 4, 2, True),  # 142 regs
        # out: (64, 32, 4, 2) spills 644 B on sm_80; (16, 64, 4, 2) 24 B without dropout;
        # (64, 32, 8, 2) and (16, 32, 4, 2) 4-8 B with dropout (ptxas stops at 128 / 80 regs);
        # (16, 16, 4, 2) 4 B on sm_80
    ],
    (128, "ieee"): [
        (32, 32, 8, 2, True),  # 102 regs
        (16, 16, 4, 2, True),  # 92 regs
        # out: (32, 32, 4, 2) spills 1 KB on sm_90, (16, 32, 4, 2) 4 B on sm_80
    ],
}


def _smem_dq(cfg, nargs, kwargs):
    k, d = cfg.kwargs, kwargs["HEAD_DIM"]
    return (2 * k["BLOCK_M"] + 2 * cfg.num_stages * k["BLOCK_N"]) * d * nargs["Q"].element_size()


_DQ_TILES = _before_3_9(_DQ_TILES, {
    # 8 B spilled in bf16 and fp16 with Triton 3.6 on sm_90; 32 keys a step compile cleanly
    (128, "16"): {(16, 64, 4, 2): (16, 32, 4, 2, True)},
})


@_autotune.autotune(configs=_configs(_DQ_TILES, (32, 16)),
                    key=["Q_BUCKET", "K_BUCKET", "HEAD_DIM", "CAUSAL", "DROPOUT", "DOT_PRECISION"],
                    prune=_tuning(_DQ_TILES, _smem_dq))
@triton.jit
def _attn_bwd_dq(
    Q, stride_qb, stride_qh, stride_qt, stride_qd,  # (B, H, Tq, D) queries
    K, stride_kb, stride_kh, stride_kt, stride_kd,  # (B, H, Tk, D) keys
    V, stride_vb, stride_vh, stride_vt, stride_vd,  # (B, H, Tk, D) values
    DO, stride_dob, stride_doh, stride_dot, stride_dod,  # (B, H, Tq, D) upstream gradient
    DQ, stride_dqb, stride_dqh, stride_dqt, stride_dqd,  # (B, H, Tq, D) output dQ
    LSE, Delta,  # (B*H, Tq) float32 each, contiguous
    H, N_CTX_Q, N_CTX_K, Q_BUCKET, K_BUCKET, sm_scale, qk_scale, SEED, dropout_p, drop_scale,  # SEED: (1,) int64, read when DROPOUT
    HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, DROPOUT: tl.constexpr,
    UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    seed = 0
    if DROPOUT:  # (1,) int64 tensor: an input of the op, so compile and recomputation replay it
        seed = tl.load(SEED)
    n_m = tl.cdiv(N_CTX_Q, BLOCK_M)
    pid_m = tl.program_id(0)
    if CAUSAL:
        pid_m = n_m - 1 - pid_m
    off_bh = tl.program_id(1).to(tl.int64)  # int64: head offsets pass 2^31 at scale
    off_b = off_bh // H
    off_h = off_bh % H
    diag = N_CTX_K - N_CTX_Q
    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < N_CTX_Q

    q = tl.load(Q + off_b * stride_qb + off_h * stride_qh
                + offs_m[:, None] * stride_qt + offs_d[None, :] * stride_qd,
                mask=row_ok[:, None], other=0.0)
    do = tl.load(DO + off_b * stride_dob + off_h * stride_doh
                 + offs_m[:, None] * stride_dot + offs_d[None, :] * stride_dod,
                 mask=row_ok[:, None], other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
        do = do.to(tl.float32)
    lse = tl.load(LSE + off_bh * N_CTX_Q + offs_m, mask=row_ok, other=0.0)
    delta = tl.load(Delta + off_bh * N_CTX_Q + offs_m, mask=row_ok, other=0.0)
    k_ptrs = (K + off_b * stride_kb + off_h * stride_kh
              + offs_n[:, None] * stride_kt + offs_d[None, :] * stride_kd)
    v_ptrs = (V + off_b * stride_vb + off_h * stride_vh
              + offs_n[:, None] * stride_vt + offs_d[None, :] * stride_vd)
    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

    # the same key ranges as the forward: unmasked [0, split), masked [split, hi)
    if CAUSAL:
        hi = tl.minimum(start_m + BLOCK_M + diag, N_CTX_K)
        split = tl.minimum((start_m + diag + 1) // BLOCK_N * BLOCK_N, hi)
    else:
        hi = N_CTX_K
        split = N_CTX_K // BLOCK_N * BLOCK_N
    for start_n in tl.range(0, split, BLOCK_N):
        dq = _attn_bwd_dq_block(
            dq, q, do, lse, delta, k_ptrs, v_ptrs, seed, dropout_p, drop_scale, off_bh, offs_m,
            start_n, N_CTX_Q, N_CTX_K, qk_scale, diag, stride_kt, stride_vt,
            False, CAUSAL, DROPOUT, UPCAST, DOT_PRECISION, BLOCK_N)
    for start_n in tl.range(split, hi, BLOCK_N):
        dq = _attn_bwd_dq_block(
            dq, q, do, lse, delta, k_ptrs, v_ptrs, seed, dropout_p, drop_scale, off_bh, offs_m,
            start_n, N_CTX_Q, N_CTX_K, qk_scale, diag, stride_kt, stride_vt,
            True, CAUSAL, DROPOUT, UPCAST, DOT_PRECISION, BLOCK_N)

    dq *= sm_scale  # S = sm_scale * Q K^T, so dQ = sm_scale * dS K
    tl.store(DQ + off_b * stride_dqb + off_h * stride_dqh
             + offs_m[:, None] * stride_dqt + offs_d[None, :] * stride_dqd,
             dq.to(DQ.dtype.element_ty), mask=row_ok[:, None])


@triton.jit
def _dropout_mask_kernel(
    Keep,  # (B*H, Tq, Tk) int8 keep mask, contiguous
    N_CTX_Q, N_CTX_K, SEED, dropout_p,  # SEED: (1,) int64 dropout seed
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Write the keep mask the attention kernels draw (for tests and debugging only)."""
    seed = tl.load(SEED)
    off_bh = tl.program_id(2).to(tl.int64)  # int64: B*H*Tq*Tk passes 2^31
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    keep = _keep_mask(seed, off_bh, offs_m[:, None], offs_n[None, :], dropout_p)
    ptrs = (Keep + off_bh * N_CTX_Q * N_CTX_K
            + offs_m[:, None].to(tl.int64) * N_CTX_K + offs_n[None, :])
    ok = (offs_m[:, None] < N_CTX_Q) & (offs_n[None, :] < N_CTX_K)
    tl.store(ptrs, keep.to(tl.int8), mask=ok)


# --------------------------------------------------------------------------- launchers

_MAX_GRID_Y = 65535  # CUDA's limit on grid dim 1, which holds B*H


def _dot_precision(dtype):
    """IEEE fp32 dots unless torch itself allows TF32 for float32 matmuls on this run.

    Half-precision operands use the tensor cores whatever this says.
    """
    tf32_allowed = torch.get_float32_matmul_precision() != "highest"
    if dtype == torch.float32 and tf32_allowed and not _INTERPRET:
        return "tf32"
    return "ieee"


def _upcast(dtype):
    # Triton's interpreter gets tl.dot wrong on bfloat16 operands: upcast them there
    return _INTERPRET and dtype == torch.bfloat16


# the autotune keys bucket the sequence lengths (and leave out B and H): see _autotune.bucket
_bucket = _autotune.bucket


def _head_view_ok(t):
    """The kernels add within-head offsets (t * stride_t + d * stride_d) in int32."""
    T, D = t.shape[2], t.shape[3]
    return (T - 1) * abs(t.stride(2)) + (D - 1) * abs(t.stride(3)) < 2**31


def _strided(t):
    """t as the kernels may read it: as is, or copied when its within-head span passes int32."""
    if _head_view_ok(t):
        return t
    t = t.contiguous()
    if not _head_view_ok(t):
        raise ValueError(f"attention input of shape {tuple(t.shape)} has more than 2^31 "
                         f"elements per head, which the Triton kernel does not index")
    return t


def _empty_bthd(B, H, T, D, like):
    """(B, H, T, D) output laid out as (B, T, H, D): the model's y.transpose(1, 2) is then
    contiguous for free, and dQ/dK/dV match the layout of the c_attn view they flow into."""
    return torch.empty(B, T, H, D, dtype=like.dtype, device=like.device).transpose(1, 2)


def _drop_args(dropout_p):
    """(dropout_p, 1 / (1 - dropout_p)) as runtime scalars: a new rate does not recompile."""
    return float(dropout_p), 1.0 / (1.0 - float(dropout_p))


def _strides(t):
    return t.stride(0), t.stride(1), t.stride(2), t.stride(3)


def _seed_arg(seed, placeholder):
    """The SEED pointer: the seed tensor, or any tensor when there is no dropout (unread)."""
    return seed if seed is not None else placeholder


def attention_forward(q: Tensor, k: Tensor, v: Tensor, causal: bool, sm_scale: float,
                      dropout_p: float, seed: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    """Run the forward kernel: returns (out (B, H, Tq, D), lse (B*H, Tq) float32, base 2).

    Arguments are assumed validated; ``seed`` is a (1,) int64 tensor when dropout_p > 0.
    """
    B, H, Tq, D = q.shape
    Tk = k.shape[2]
    q, k, v = _strided(q), _strided(k), _strided(v)
    out = _empty_bthd(B, H, Tq, D, q)
    lse = torch.empty(B * H, Tq, dtype=torch.float32, device=q.device)
    if Tq == 0 or B * H == 0:
        return out, lse

    def grid(meta):
        return (triton.cdiv(Tq, meta["BLOCK_M"]), B * H)

    launch(_attn_fwd)[grid](
        q, *_strides(q), k, *_strides(k), v, *_strides(v), out, *_strides(out), lse,
        H, Tq, Tk, _bucket(Tq), _bucket(Tk), sm_scale * _LOG2E, _seed_arg(seed, lse),
        *_drop_args(dropout_p),
        HEAD_DIM=D, CAUSAL=causal, DROPOUT=dropout_p > 0.0,
        UPCAST=_upcast(q.dtype), DOT_PRECISION=_dot_precision(q.dtype),
    )
    return out, lse


def attention_backward(do: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
                       causal: bool, sm_scale: float, dropout_p: float,
                       seed: Optional[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """Run the three backward kernels: returns (dq, dk, dv) in q's dtype, q/k/v's shapes."""
    B, H, Tq, D = q.shape
    Tk = k.shape[2]
    q, k, v, do = _strided(q), _strided(k), _strided(v), _strided(do)
    dq = _empty_bthd(B, H, Tq, D, q)
    dk = _empty_bthd(B, H, Tk, D, k)
    dv = _empty_bthd(B, H, Tk, D, v)
    if Tq == 0 or B * H == 0:
        return dq, dk.zero_(), dv.zero_()  # our own buffers; no query sees any key
    delta = torch.empty(B * H, Tq, dtype=torch.float32, device=q.device)
    pre_block = 64
    launch(_attn_bwd_preprocess)[(triton.cdiv(Tq, pre_block), B * H)](
        out, *_strides(out), do, *_strides(do), delta, H, Tq,
        HEAD_DIM=D, BLOCK_M=pre_block,
    )
    common = dict(HEAD_DIM=D, CAUSAL=causal, DROPOUT=dropout_p > 0.0,
                  UPCAST=_upcast(q.dtype), DOT_PRECISION=_dot_precision(q.dtype))
    scalars = (H, Tq, Tk, _bucket(Tq), _bucket(Tk), sm_scale, sm_scale * _LOG2E,
               _seed_arg(seed, lse), *_drop_args(dropout_p))

    def grid_k(meta):
        return (triton.cdiv(Tk, meta["BLOCK_N"]), B * H)

    launch(_attn_bwd_dkdv)[grid_k](
        q, *_strides(q), k, *_strides(k), v, *_strides(v), do, *_strides(do),
        dk, *_strides(dk), dv, *_strides(dv), lse, delta, *scalars, **common,
    )

    def grid_q(meta):
        return (triton.cdiv(Tq, meta["BLOCK_M"]), B * H)

    launch(_attn_bwd_dq)[grid_q](
        q, *_strides(q), k, *_strides(k), v, *_strides(v), do, *_strides(do),
        dq, *_strides(dq), lse, delta, *scalars, **common,
    )
    return dq, dk, dv


def dropout_seed(device):
    """A (1,) int64 dropout seed drawn from torch's generator for ``device``: seeded by
    ``torch.manual_seed``, restored by activation checkpointing, traced by torch.compile."""
    return torch.randint(0, 2**31 - 1, (1,), dtype=torch.int64, device=device)


def dropout_keep_mask(B, H, Tq, Tk, dropout_p, seed, device):
    """(B, H, Tq, Tk) bool: the attention-dropout keep mask the kernels use for ``seed``
    (a (1,) int64 tensor, as from ``dropout_seed``).

    For tests: a reference that applies this mask must match the kernel exactly.
    """
    keep = torch.empty(B * H, Tq, Tk, dtype=torch.int8, device=device)
    block = 32
    grid = (triton.cdiv(Tq, block), triton.cdiv(Tk, block), B * H)
    launch(_dropout_mask_kernel)[grid](keep, Tq, Tk, seed.to(device), float(dropout_p),
                                       BLOCK_M=block, BLOCK_N=block)
    return keep.view(B, H, Tq, Tk).bool()


# --------------------------------------------------------------------------- registration

attention_fwd = define_op("flash_attention_fwd", attention_forward)
attention_bwd = define_op("flash_attention_bwd", attention_backward)


def _setup_context(ctx, inputs, output):
    q, k, v, causal, sm_scale, dropout_p, seed = inputs
    out, lse = output
    ctx.mark_non_differentiable(lse)  # saved for backward, not a result
    ctx.set_materialize_grads(False)  # no zero-filled lse gradient: backward never reads it
    ctx.save_for_backward(q, k, v, out, lse, seed)
    ctx.causal, ctx.sm_scale, ctx.dropout_p = causal, sm_scale, dropout_p


def _backward(ctx, do, _dlse):
    # the probabilities are recomputed from q, k and the saved log-sum-exp (and the
    # dropout mask from the seed): nothing of size Tq x Tk was stored
    q, k, v, out, lse, seed = ctx.saved_tensors
    dq, dk, dv = attention_bwd(do, q, k, v, out, lse, ctx.causal, ctx.sm_scale,
                               ctx.dropout_p, seed)
    return dq, dk, dv, None, None, None, None


attention_fwd.register_autograd(_backward, setup_context=_setup_context)


# --------------------------------------------------------------------------- public

def flash_attention(q, k, v, causal=True, sm_scale=None, *, dropout_p=0.0, backend="auto"):
    """softmax(q @ k^T * sm_scale [+ causal mask]) @ v with Triton kernels, forward and backward.

    q (B, H, Tq, D), k and v (B, H, Tk, D) -> (B, H, Tq, D) in q's dtype; D in 16, 32, 64,
    128; float32, float16 or bfloat16; any strides (the model's (B, T, H, D) -> (B, H, T, D)
    transposed views are read in place). ``sm_scale`` defaults to 1/sqrt(D). With ``causal``
    the mask is bottom-right aligned (queries are the last Tq of Tk positions; Tq <= Tk).
    ``dropout_p`` drops attention probabilities (survivors scaled by 1/(1-p)) with a Philox
    mask whose seed is drawn from torch's generator on q's device (``dropout_seed``), so
    ``torch.manual_seed`` makes it reproducible.

    Under ``torch.autocast`` q, k and v are cast to the autocast dtype first, as
    ``scaled_dot_product_attention`` is; the output's grid (B, H, Tq, D) is a transposed view
    of a (B, Tq, H, D) buffer. ``backend``: "auto" (Triton where it runs and the head dim is
    supported, else the reference), "triton" or "torch".
    """
    head_dim_ok = not isinstance(q, torch.Tensor) or q.dim() != 4 or q.shape[-1] in SUPPORTED_HEAD_DIMS
    if (not use_triton(backend, q, k, v)
            or (backend == "auto" and env_backend() == "auto" and not head_dim_ok)):
        return reference.flash_attention(q, k, v, causal, sm_scale, dropout_p=dropout_p)
    check_attention(q, k, v, causal, sm_scale, dropout_p, for_triton=True)
    device_type = q.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    B, H = q.shape[0], q.shape[1]
    if B * H > _MAX_GRID_Y:
        raise ValueError(f"q has B*H = {B * H} heads in all (shape {tuple(q.shape)}); the "
                         f"Triton attention kernel launches at most {_MAX_GRID_Y}")
    scale = 1.0 / math.sqrt(q.shape[3]) if sm_scale is None else float(sm_scale)
    dropout_p = float(dropout_p)
    seed = dropout_seed(q.device) if dropout_p > 0.0 else None
    out, _ = attention_fwd(q, k, v, bool(causal), scale, dropout_p, seed)
    return out
