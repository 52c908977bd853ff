"""A roofline model of one GPT training step: where the time goes, counted before any GPU runs.

    python -m bench.roofline                                  # gpt2, B=8, T=1024, bf16, H100 + H200
    python -m bench.roofline --device=A100 --batch_size=16
    python -m bench.roofline --flops=790e12 --bandwidth=4.3e12   # ceilings a GPU run measured
    python -m bench.roofline --results=bench/results/<gpu>-<date>.json  # measured beside predicted

For every op of a step (forward + backward together), on each path

- ``triton``: ``GPT(kernels="triton")`` as the code on this branch runs it (our kernels, cuBLAS
  for the plain Linears, autocast's casts around them);
- ``eager``: ``GPT(kernels="torch")``, eager PyTorch with SDPA's flash attention and the
  unfused lm_head + ``F.cross_entropy`` (float32 logits under autocast);
- ``compile``: what ``torch.compile`` (Inductor) makes of the eager path: each chain of
  pointwise ops and reductions between two matmuls becomes one kernel that reads its inputs
  once and writes its outputs once; matmuls stay cuBLAS, attention stays SDPA's flash kernel,

it counts FLOPs (matmul and attention; 2 per multiply-add), the fewest bytes the op must move
(its inputs read once, its outputs written once), the bytes the implementation actually moves
(each kernel's reads and writes of DRAM, every operand counted at each kernel that reads it:
no credit for L2 hits), the kernel launches, and for ``linear_gelu``'s backward the
thread-instructions spent re-forming dh = dy * gelu'(h) in every output tile. From a device's
ceilings (bf16 tensor-core FLOP/s, DRAM bytes/s, a fixed gap per launch, non-tensor
instructions/s) it derives:

- floor = max(FLOPs / peak, minimum bytes / bandwidth)
- predicted = max(FLOPs / peak, bytes moved / bandwidth, instructions / rate) + launches * gap

and per path the step's sum, tokens/s and the ratios between paths. These are estimates
(+-30-50% absolute: no kernel reaches the ceilings, and overlap between kernels is ignored);
the ratios are firmer, since every path is counted the same way. A GPU results JSON
(``bench.train``'s "train" section, its "paths" records) puts measured step times beside the predictions.

Each op's counts are one small function ``op_<name>(s, path) -> Op`` (below): a kernel change
updates that function, and the tests check its FLOPs against
``torch.utils.flop_counter.FlopCounterMode`` on fake tensors and its bytes against the
tensors' sizes.
"""

import json
import math
import os
import sys
from dataclasses import dataclass, field, replace

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gpt.cli import Opt, UsageError, parse, run_main  # noqa: E402

PATHS = ("triton", "eager", "compile")
GB = 1e9


@dataclass(frozen=True)
class Device:
    """A GPU's ceilings: bf16 dense tensor-core FLOP/s, DRAM bytes/s, the gap a kernel launch
    adds in a busy stream (s), non-tensor-core thread-instructions/s; and where they come from."""
    name: str
    flops: float
    bandwidth: float
    launch_s: float
    alu: float
    source: str


# H100 SXM and H200 share the GH100 die, clocks and 132 SMs; only the memory differs. The
# matmul ceiling is the one measured on an H200 (a large bf16 matmul on random data, ~790
# TFLOP/s, issue 20); the H200's bandwidth is its measured device copy (~4.3 TB/s), the
# H100's and A100's are datasheet figures. The non-tensor rate is 132 SMs x 128 lanes x 1.98
# GHz (one 32-bit instruction per lane per clock). The launch gap (2 us between back-to-back
# kernels) is an assumption, not a measurement: --launch_us changes it.
DEVICES = {
    "H100": Device("H100 SXM", 790e12, 3.35e12, 2e-6, 132 * 128 * 1.98e9,
                   "matmul: H200 measurement (same die); bandwidth: H100 SXM datasheet"),
    "H200": Device("H200", 790e12, 4.3e12, 2e-6, 132 * 128 * 1.98e9,
                   "matmul and copy ceilings measured on an H200 (issue 20)"),
    "A100": Device("A100 SXM 80GB", 312e12, 2.039e12, 2e-6, 108 * 64 * 1.41e9,
                   "datasheet: 312 TFLOP/s bf16 dense, 2.039 TB/s"),
}


@dataclass(frozen=True)
class Shape:
    """The step's sizes: B sequences of T tokens, C wide, H heads, L blocks, V vocabulary;
    ``e`` bytes per element of the matmul dtype (2: bf16 under autocast). Parameters, the
    residual stream and LayerNorm's statistics are float32 (4 bytes) as train.py runs them."""
    B: int = 8
    T: int = 1024
    C: int = 768
    H: int = 12
    L: int = 12
    V: int = 50304
    e: int = 2
    bias: bool = True
    flce: str = "now"  # "before": the fused loss as it was before issue 20 (128-row chunks)

    @property
    def N(self):
        return self.B * self.T

    @property
    def params(self):
        """Parameters (tied lm_head counted once), as GPT counts them."""
        C, L = self.C, self.L
        per_block = 12 * C * C + (13 * C if self.bias else 0) + (4 * C if self.bias else 2 * C)
        return self.V * C + self.T * C + L * per_block + (2 * C if self.bias else C)


@dataclass
class Op:
    """One op of the step, forward + backward: counts summed over its kernels."""
    name: str
    flops: float = 0.0
    min_bytes: float = 0.0
    bytes: float = 0.0
    launches: int = 0
    alu: float = 0.0  # thread-instructions outside the tensor cores that bound its time
    count: int = 1  # how many times a step runs it (L for a block's ops)
    notes: str = ""

    def floor(self, d):
        return max(self.flops / d.flops, self.min_bytes / d.bandwidth)

    def predicted(self, d):
        return (max(self.flops / d.flops, self.bytes / d.bandwidth, self.alu / d.alu)
                + self.launches * d.launch_s)


@dataclass
class _Count:
    """Kernel-by-kernel accumulator: ``k(reads, writes)`` adds one kernel's DRAM traffic."""
    bytes: float = 0.0
    launches: int = 0
    kernels: list = field(default_factory=list)

    def k(self, name, reads, writes, launches=1):
        self.bytes += reads + writes
        self.launches += launches
        self.kernels.append((name, reads, writes, launches))
        return self


def _mm(c, name, M, K, Nout, e, read_a=True):
    """One cuBLAS matmul (M, K) @ (K, Nout) in dtype of ``e`` bytes: A, B read, C written."""
    c.k(name, (M * K if read_a else 0) * e + K * Nout * e, M * Nout * e)


def linear_flops(M, K, Nout):
    """Forward + backward (dgrad + wgrad) of a Linear: 3 matmuls of 2*M*K*Nout."""
    return 3 * 2 * M * K * Nout


def op_linear(s, path, name, K, Nout, in_fp32=False, out_to_fp32=False):
    """A plain nn.Linear under autocast (cuBLAS on every path): x (N, K) -> (N, Nout).

    Counted: autocast's casts (weight float32 -> bf16 each forward; x when it arrives float32),
    the forward matmul (+ bias in its epilogue), dgrad, wgrad, the bias gradient (a column
    sum), the weight and bias gradients cast to float32 for the parameters' .grad, and the
    incoming gradient cast from float32 when the output fed the float32 residual stream.
    ``compile`` fuses the input cast into the producer and the output-gradient cast into
    its consumer.
    """
    N, e = s.N, s.e
    c = _Count()
    fused = path == "compile"
    c.k("cast W", K * Nout * 4, K * Nout * e)
    if in_fp32 and not fused:
        c.k("cast x", N * K * 4, N * K * e)
    _mm(c, "fwd", N, K, Nout, e)
    if out_to_fp32 and not fused:
        c.k("cast dy", N * Nout * 4, N * Nout * e)
    _mm(c, "dgrad", N, Nout, K, e)
    _mm(c, "wgrad", Nout, N, K, e)
    if s.bias:
        c.k("dbias", N * Nout * e, Nout * 4)
    c.k("dW to float32", K * Nout * e, K * Nout * 4)
    minimum = N * K * e + K * Nout * 4 + N * Nout * e  # fwd: x, W, y
    minimum += N * Nout * e + N * K * e + K * Nout * 4  # bwd: dy, dx, dW (x, W again: L2)
    return Op(name, linear_flops(N, K, Nout), minimum, c.bytes, c.launches, count=s.L)


def op_qkv(s, path):
    """c_attn: ln_1's output (N, C) -> q, k, v (N, 3C)."""
    return op_linear(s, path, "c_attn (qkv)", s.C, 3 * s.C, in_fp32=path != "compile")


def op_attn_proj(s, path):
    """attn.c_proj: (N, C) -> (N, C), its output added to the float32 residual stream."""
    return op_linear(s, path, "attn.c_proj", s.C, s.C, out_to_fp32=True)


def op_mlp_proj(s, path):
    """mlp.c_proj: (N, 4C) -> (N, C), its output added to the float32 residual stream."""
    return op_linear(s, path, "mlp.c_proj", 4 * s.C, s.C, out_to_fp32=True)


def attention_flops(s, backward_matmuls):
    """Causal attention: QK^T and PV forward (2 matmuls of 2*T*T*D/2 each, half masked),
    ``backward_matmuls`` more of the same size in backward (FlashAttention-2: 5)."""
    D = s.C // s.H
    per_matmul = 2 * s.B * s.H * s.T * s.T * D / 2
    return (2 + backward_matmuls) * per_matmul


def op_attention(s, path):
    """Causal attention over (B, H, T, D) q, k, v.

    triton: our flash attention; forward reads q, k, v and writes o and a float32 lse;
    backward runs a preprocess (delta = rowsum(o * do)), a dK/dV kernel (recomputes QK^T and
    dO V^T: 4 matmuls) and a dQ kernel (3 matmuls): 7 backward matmuls where FlashAttention-2
    has 5, and q, k, v, do each read twice. Its output layout (B, T, H, D) makes the model's
    transpose free.
    eager / compile: SDPA's flash kernel (FlashAttention-2): 5 backward matmuls, dq summed
    in a float32 buffer (written, read, converted), and the model's
    ``y.transpose(1, 2).contiguous()`` is one copy each way (compile fuses it away).
    """
    N, C, e, H, T, B = s.N, s.C, s.e, s.H, s.T, s.B
    act = N * C * e  # one of q, k, v, o, do, dq, dk, dv
    lse = B * H * T * 4
    c = _Count()
    c.k("fwd", 3 * act, act + lse)
    if path == "triton":
        c.k("bwd preprocess", 2 * act, lse)
        c.k("bwd dk dv", 4 * act + 2 * lse, 2 * act)
        c.k("bwd dq", 4 * act + 2 * lse, act)
        flops = attention_flops(s, 7)
    else:
        c.k("bwd preprocess", 2 * act, lse)
        c.k("bwd", 5 * act + 2 * lse, 2 * act + N * C * 4, 1)
        c.k("dq float32 -> bf16", N * C * 4, act)
        if path == "eager":
            c.k("y contiguous", act, act)
        flops = attention_flops(s, 5)
    minimum = 3 * act + act + lse + (4 * act + lse) + 3 * act
    return Op("attention", flops, minimum, c.bytes, c.launches, count=s.L)


def op_layer_norm(s, path, name="ln_1 / ln_2", count=None):
    """LayerNorm over the float32 residual stream, feeding a bf16 matmul.

    triton (layer_norm.py on this branch): forward writes y in x's dtype (float32) and the
    float32 mean / rstd; autocast then casts y to bf16 (in op_qkv / op_linear_gelu's "cast
    x"). Backward: one kernel writes dx and per-program float32 partial sums of dweight /
    dbias, a second small launch reduces them; the incoming gradient is cast bf16 -> float32
    first (autocast's cast in reverse).
    eager: the same forward; PyTorch's backward reads dy and x twice (dx, then dgamma/dbeta).
    compile: forward fused with the cast (reads float32 x, writes bf16 y); backward one dx
    kernel plus one dgamma/dbeta reduction.
    """
    N, C, e = s.N, s.C, s.e
    stats = 2 * N * 4
    c = _Count()
    if path == "compile":
        c.k("fwd (+cast)", N * C * 4, N * C * e + stats)
        c.k("bwd dx", N * C * (e + 4) + stats, N * C * 4)
        c.k("bwd dw db", N * C * (e + 4) + stats, 2 * C * 4)
    else:
        c.k("fwd", N * C * 4, N * C * 4 + stats)
        c.k("cast dy", N * C * e, N * C * 4)
        if path == "triton":
            parts = 2 * 4 * C * min(N, 1024)  # (G, C) float32 dweight / dbias partial sums
            c.k("bwd dx + partials", N * C * 8 + stats, N * C * 4 + parts)
            c.k("reduce partials", parts, 2 * C * 4)
        else:
            c.k("bwd dx", N * C * 8 + stats, N * C * 4)
            c.k("bwd dw db", N * C * 8 + stats, 2 * C * 4)
    minimum = N * C * 4 + N * C * e + stats + N * C * (e + 4) + N * C * 4
    return Op(name, 0.0, minimum, c.bytes, c.launches, count=2 * s.L if count is None else count)


def op_residual(s, path):
    """The two residual adds of a block, x + branch (float32 stream + bf16 branch output),
    and in backward the sum of the two gradients reaching each block input. compile fuses
    both into the neighbouring LayerNorm kernels (no launch, no extra bytes)."""
    N, C, e = s.N, s.C, s.e
    c = _Count()
    if path != "compile":
        for _ in range(2):  # after attention, after the MLP
            c.k("fwd add", N * C * (4 + e), N * C * 4)
            c.k("bwd grad sum", N * C * 8, N * C * 4)
    return Op("residual adds", 0.0, 0.0, c.bytes, c.launches, count=s.L)


# thread-instructions per element of dh = dy * gelu'(h) (tanh form: loads' address math,
# converts, the cubic, exp for tanh, a reciprocal, ~6 FMAs): the review count
GELU_GRAD_INSTR = 12


def op_linear_gelu(s, path, block_k=64):
    """c_fc + tanh GELU: x (N, C) -> h, y (N, 4C).

    triton (linear_gelu.py on this branch): x cast to bf16 by autocast; one forward kernel
    (matmul, bias and GELU in its epilogue, stores y and the pre-activation h); backward a
    dx kernel and a dW(+dbias) kernel, each re-forming dh = dy * gelu'(h) from dy and h in
    the prologue of every output tile: C / BLOCK_K times over the (N, 4C) elements in each
    kernel (the ``alu`` term); dW leaves the kernel in bf16 and is cast to float32.
    eager: cuBLAS matmul (bias in the epilogue), F.gelu as a separate kernel (reads h,
    writes y, saves h); backward: gelu backward (reads dy, h, writes dh), then dgrad, wgrad,
    dbias. compile: the same kernels (Inductor keeps the cuBLAS matmuls; GELU and its
    backward are already one pointwise kernel each), the input cast fused into LayerNorm.
    """
    N, C, e = s.N, s.C, s.e
    F = 4 * C
    c = _Count()
    alu = 0.0
    c.k("cast W", C * F * 4, C * F * e)
    if path != "compile":
        c.k("cast x", N * C * 4, N * C * e)
    if path == "triton":
        c.k("fwd (+bias, gelu, store h)", N * C * e + C * F * e, 2 * N * F * e)
        c.k("bwd dx (dh in prologue)", 2 * N * F * e + C * F * e, N * C * e)
        c.k("bwd dW db (dh in prologue)", 2 * N * F * e + N * C * e, C * F * e + F * 4)
        alu = 2 * (math.ceil(C / block_k)) * N * F * GELU_GRAD_INSTR
    else:
        _mm(c, "fwd", N, C, F, e)
        c.k("gelu", N * F * e, N * F * e)
        c.k("gelu backward", 2 * N * F * e, N * F * e)
        _mm(c, "dgrad", N, F, C, e)
        _mm(c, "wgrad", F, N, C, e)
        if s.bias:
            c.k("dbias", N * F * e, F * 4)
    c.k("dW to float32", C * F * e, C * F * 4)
    minimum = N * C * e + C * F * 4 + 2 * N * F * e + N * F * e + N * C * e + C * F * 4
    return Op("c_fc + GELU", linear_flops(N, C, F), minimum, c.bytes, c.launches, alu=alu,
              count=s.L)


# The fused loss's versions (``flce_counts``): before issue 20 (128-row chunks, a (V, C) half
# product per chunk), issue 20's cuBLAS chunks (cuBLAS matmuls around the cross-entropy
# kernel, grad_weight accumulated by cuBLAS in float32), and the Triton matmuls with the
# cross-entropy inside them (gpt_kernels/fused_linear_cross_entropy.py now).
FLCE_VERSIONS = ("before", "cublas", "fused")
FLCE_STAT_N = 128  # vocabulary columns per float32 tile log-sum-exp (the module's STAT_N)
FLCE_GRAD_BLOCK_K = 128  # the gradient kernels' widest BLOCK_K in bf16 (dx and dW tiles)
# Thread-instructions per element, an estimate from the kernels' source (not measured): the
# logits epilogue (max, subtract, exp2 and its scale, sum, scale, convert, store) ~8; forming
# dlogits = e * f - onehot * scale in a gradient kernel's operand load (convert, multiply,
# compare, select, subtract, convert back) ~6, done C / BLOCK_K times per element per kernel.
FLCE_EPILOGUE_INSTR = 8
FLCE_DLOGITS_INSTR = 6


def flce_counts(s, rows, version="fused"):
    """Kernels of ``fused_linear_cross_entropy`` (forward + backward) at x (N, C) float32
    under autocast, weight (V, C) float32, no bias (GPT-2's tied lm_head), chunks of
    ``rows``: a _Count (``flce_alu`` counts the fused kernels' non-tensor instructions).

    ``version`` (FLCE_VERSIONS): "before" issue 20 (each chunk's grad_weight a fresh (V, C)
    half product added into a zero-filled float32 accumulator, grad_x copied to float32);
    "cublas" (issue 20: cuBLAS matmuls write the chunk's logits, the cross-entropy kernel
    reads them twice and overwrites them with dlogits, two cuBLAS matmuls read those,
    grad_weight accumulated in float32 by cuBLAS); "fused" (now: the logits kernel writes
    exp(logit - tile lse) and each STAT_N-wide tile's float32 log-sum-exp, a small kernel
    combines those into lse and the loss, dgrad and wgrad re-form dlogits from the
    exponentials in their operand loads, wgrad adds into the float32 grad_weight in its
    epilogue).
    """
    if version not in FLCE_VERSIONS:
        raise ValueError(f"version must be one of {FLCE_VERSIONS}, got {version!r}")
    N, C, V, e = s.N, s.C, s.V, s.e
    T = -(-V // FLCE_STAT_N)  # vocabulary tiles
    c = _Count()
    c.k("cast x, W", (N * C + V * C) * 4, (N * C + V * C) * e, 2)
    c.k("n_valid scale", N * 8, 4, 3)
    if version == "before":
        c.k("zero grad_weight", 0, V * C * 4)
    for start in range(0, N, rows):
        n = min(rows, N - start)
        rows_in = n * (8 + 4)  # per row: the int64 target and a float32 (lse or target logit)
        if version == "fused":
            c.k("logits (+ tile lse, exp)", n * C * e + V * C * e + n * 8,
                n * V * e + n * T * 4 + n * 4)
            c.k("lse + loss", n * T * 4 + rows_in, 2 * n * 4)
            c.k("grad_x (dlogits in the loads)", n * V * e + V * C * e + n * T * 4 + rows_in,
                n * C * e)
            c.k("grad_weight += (dlogits in the loads)",
                n * V * e + n * C * e + n * T * 4 + rows_in + (V * C * 4 if start else 0),
                V * C * 4)
            continue
        _mm(c, "logits", n, C, V, e)
        c.k("cross-entropy (2 sweeps + grad)", 2 * n * V * e + n * 8, n * V * e + n * 8)
        _mm(c, "grad_x", n, V, C, e)
        if version == "before":
            c.k("grad_x to float32", n * C * e, n * C * 4)
            _mm(c, "grad_weight product", V, n, C, e)
            c.k("grad_weight +=", V * C * (e + 4), V * C * 4)
        else:
            c.k("grad_weight += (fp32 out)", n * V * e + n * C * e + (V * C * 4 if start else 0),
                V * C * 4)
    c.k("loss sum", N * 4, 4)
    # backward: scale the saved gradients by upstream x 1/n_valid
    c.k("grad scalar", 8, 4)
    c.k("grad_x * g", N * C * (4 if version == "before" else e), N * C * 4)
    c.k("grad_weight * g", V * C * 4, V * C * 4)
    return c


def flce_alu(s):
    """Thread-instructions outside the tensor cores of the "fused" version: each logit's
    epilogue once, and dlogits formed C / BLOCK_K times in each of the two gradient kernels."""
    per_element = (FLCE_EPILOGUE_INSTR
                   + 2 * -(-s.C // FLCE_GRAD_BLOCK_K) * FLCE_DLOGITS_INSTR)
    return s.N * s.V * per_element


FLCE_CHUNK_BUDGET = 256 * 2**20  # gpt_kernels.fused_linear_cross_entropy.CHUNK_BUDGET_BYTES


def flce_rows(s):
    """Chunk height the kernel picks (its own rule, imported lazily: it imports triton)."""
    from gpt_kernels.fused_linear_cross_entropy import chunk_rows

    return chunk_rows(s.N, s.V, s.C, s.e)


def op_loss(s, path):
    """lm_head + cross-entropy over (N, V) logits.

    triton: ``fused_linear_cross_entropy`` (flce_counts, "fused"; "before" with
    ``s.flce == "before"``): chunks of flce_rows(s) rows, the cross-entropy inside the
    Triton matmuls, whose dlogits formation is the ``alu`` term (flce_alu).
    eager: F.linear writes the bf16 (N, V) logits, autocast runs F.cross_entropy in float32:
    cast to float32, log_softmax (saved), nll; backward: nll's gradient (a float32 (N, V)
    zero-fill + scatter), log_softmax backward, cast to bf16, dgrad, wgrad.
    compile: the logits in bf16; Inductor's fused cross-entropy reads them once forward
    (online log-sum-exp) and once backward, writing bf16 dlogits; dgrad, wgrad.
    """
    N, C, V, e = s.N, s.C, s.V, s.e
    flops = linear_flops(N, C, V)
    minimum = (N * C + V * C) * 4 + N * C * 4 + V * C * 4  # x, W in; dx, dW out
    alu = 0.0
    if path == "triton" and s.flce == "before":
        c = flce_counts(s, 128, "before")
    elif path == "triton":
        c = flce_counts(s, flce_rows(s))
        alu = flce_alu(s)
    else:
        c = _Count()
        c.k("cast W", V * C * 4, V * C * e)
        c.k("cast x", N * C * 4, N * C * e)
        _mm(c, "logits", N, C, V, e)
        if path == "eager":
            c.k("logits to float32", N * V * e, N * V * 4)
            c.k("log_softmax", 2 * N * V * 4, N * V * 4)  # max + sum sweeps, then write
            c.k("nll", N * 12, 4)
            c.k("nll backward (fill + scatter)", N * 8, N * V * 4, 2)
            c.k("log_softmax backward", 2 * N * V * 4, N * V * 4)
            c.k("dlogits to bf16", N * V * 4, N * V * e)
        else:
            c.k("cross-entropy fwd", N * V * e + N * 8, N * 8)
            c.k("cross-entropy bwd", N * V * e + N * 16, N * V * e)
        _mm(c, "dgrad", N, V, C, e)
        _mm(c, "wgrad", V, N, C, e)
        c.k("dW to float32", V * C * e, V * C * 4)
    return Op("lm_head + cross-entropy", flops, minimum, c.bytes, c.launches, alu=alu)


def op_embedding(s, path):
    """wte + wpe lookups and their sum (float32); backward: an index_add of the token
    gradients into a float32 wte gradient (zero-filled first), wpe's gradient a column sum,
    and the tied wte's two gradients summed (the lm_head's and the embedding's)."""
    N, C, V, T = s.N, s.C, s.V, s.T
    c = _Count()
    c.k("gather + add", N * 8 + 2 * N * C * 4, N * C * 4, 1 if path == "compile" else 3)
    c.k("wte grad (fill + index_add)", N * C * 4 + N * 8, V * C * 4 + N * C * 4, 2)
    c.k("wpe grad", N * C * 4, T * C * 4)
    c.k("tied grads sum", 2 * V * C * 4, V * C * 4)
    minimum = N * 8 + 2 * N * C * 4 + N * C * 4 + N * C * 4 + V * C * 4
    return Op("embeddings", 0.0, minimum, c.bytes, c.launches)


def op_optimizer(s, path):
    """Fused AdamW over float32 parameters: reads p, grad, m, v, writes p, m, v (all paths);
    then zero_grad(set_to_none=True) frees the gradients. A handful of launches per step
    (the fused kernel batches tensors)."""
    P = s.params
    return Op("AdamW (fused)", 0.0, 7 * P * 4, 7 * P * 4, 4 * (4 * s.L + 4) // 8 + 2)


OPS = (op_embedding, op_layer_norm, op_qkv, op_attention, op_attn_proj, op_residual,
       op_linear_gelu, op_mlp_proj, op_loss, op_optimizer)


def step_ops(s, path):
    """The step's ops on ``path``, each with its count per step (ln_f is one LayerNorm)."""
    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")
    ops = [f(s, path) for f in OPS]
    ops.insert(2, op_layer_norm(s, path, name="ln_f", count=1))
    return ops


def step_summary(s, path, d):
    """Per-op rows and the step's totals on device ``d`` (times in seconds)."""
    rows = []
    tot = dict(flops=0.0, min_bytes=0.0, bytes=0.0, launches=0, floor=0.0, predicted=0.0)
    for op in step_ops(s, path):
        n = op.count
        row = dict(op=op.name, count=n, flops=op.flops * n, min_bytes=op.min_bytes * n,
                   bytes=op.bytes * n, launches=op.launches * n, alu=op.alu * n,
                   floor=op.floor(d) * n, predicted=op.predicted(d) * n)
        rows.append(row)
        for k in tot:
            tot[k] += row[k]
    tot["tokens_per_s"] = s.N / tot["predicted"]
    return dict(path=path, device=d.name, ops=rows, total=tot)


def measured_step_ms(results_path, s):
    """{path: step ms} from a GPU results JSON (bench.train's "train" section) at this batch
    and sequence; paths named as there (triton, torch -> eager, *compile* -> compile)."""
    with open(results_path) as f:
        data = json.load(f)
    out = {}
    train = data.get("train") or {}
    for rec in train.get("paths", []) if isinstance(train, dict) else []:
        if rec.get("skipped") or rec.get("batch_size") != s.B or rec.get("block_size") != s.T:
            continue
        name = str(rec.get("path", ""))
        key = ("compile" if "compile" in name and "triton" not in name else
               "eager" if name in ("torch", "eager") else name)
        if "step_ms" in rec:
            out[key] = rec["step_ms"]
    return out


def _fmt_row(r, d):
    return (f"| {r['op']} | {r['count']} | {r['flops'] / 1e12:.2f} | {r['min_bytes'] / GB:.2f} | "
            f"{r['bytes'] / GB:.2f} | {r['launches']} | {r['floor'] * 1e3:.2f} | "
            f"{r['predicted'] * 1e3:.2f} |")


def report(s, devices, results=None):
    """The markdown report: per device, per path the ops table, then the paths side by side."""
    lines = [f"Step: B={s.B}, T={s.T}, C={s.C}, H={s.H}, L={s.L}, V={s.V}, "
             f"{s.e}-byte matmul operands, "
             f"{s.params / 1e6:.1f}M parameters; fused loss chunks of "
             f"{128 if s.flce == 'before' else flce_rows(s)} rows", ""]
    measured = measured_step_ms(results, s) if results else {}
    summary = {}
    for d in devices:
        lines.append(f"## {d.name}: {d.flops / 1e12:.0f} TFLOP/s, {d.bandwidth / 1e12:.2f} TB/s, "
                     f"{d.launch_s * 1e6:.1f} us per launch ({d.source})")
        for path in PATHS:
            sm = step_summary(s, path, d)
            summary[(d.name, path)] = sm
            lines += ["", f"### {path}", "",
                      "| op | x | TFLOP | min GB | moved GB | launches | floor ms | predicted ms |",
                      "| --- | --- | --- | --- | --- | --- | --- | --- |"]
            lines += [_fmt_row(r, d) for r in sm["ops"]]
            t = dict(sm["total"], op="step", count="")
            lines.append(_fmt_row(t, d))
        lines += ["", "| path | floor ms | predicted ms | tokens/s | vs eager | vs compile |"
                  + (" measured ms |" if measured else ""),
                  "| --- | --- | --- | --- | --- | --- |" + (" --- |" if measured else "")]
        for path in PATHS:
            t = summary[(d.name, path)]["total"]
            eager = summary[(d.name, "eager")]["total"]["predicted"]
            comp = summary[(d.name, "compile")]["total"]["predicted"]
            row = (f"| {path} | {t['floor'] * 1e3:.1f} | {t['predicted'] * 1e3:.1f} | "
                   f"{t['tokens_per_s']:,.0f} | {eager / t['predicted']:.2f}x | "
                   f"{comp / t['predicted']:.2f}x |")
            if measured:
                m = measured.get(path)
                row += f" {m:.1f} |" if m is not None else " - |"
            lines.append(row)
        lines.append("")
    return "\n".join(lines), summary


PROG = "python -m bench.roofline"
OPTIONS = {
    "model": dict(
        preset=Opt("gpt2", "a GPT preset (gpt2, gpt2-medium, gpt2-large, gpt2-xl, ...)"),
        vocab_size=Opt(50304, "vocabulary (GPT-2's 50257 padded to 50304, as trained)", ge=1),
        batch_size=Opt(8, "micro-batch size B", ge=1),
        block_size=Opt(1024, "sequence length T", ge=1),
        flce=Opt("now", "the fused loss as it is now, or as it was before issue 20 "
                 "(128-row chunks, a (V, C) temporary per chunk)", choices=("now", "before")),
    ),
    "device": dict(
        device=Opt("H100,H200", "comma-separated: H100, H200, A100"),
        flops=Opt(0.0, "override: bf16 matmul FLOP/s (e.g. a GPU run's measured 790e12)", ge=0),
        bandwidth=Opt(0.0, "override: DRAM bytes/s (e.g. a measured copy, 4.3e12)", ge=0),
        launch_us=Opt(2.0, "gap each kernel launch adds, microseconds", ge=0),
    ),
    "output": dict(
        results=Opt("", "a GPU results JSON (bench.train): measured step times beside"),
        out=Opt("", "also write the summary as JSON here"),
    ),
}


def main(argv=None):
    cfg = parse(argv, OPTIONS, prog=PROG, description=__doc__.split("\n")[0])
    from gpt.model import PRESETS

    if cfg["preset"] not in PRESETS:
        raise UsageError(f"--preset={cfg['preset']}: unknown; choose from {sorted(PRESETS)}")
    p = PRESETS[cfg["preset"]]
    s = Shape(B=cfg["batch_size"], T=cfg["block_size"], C=p["n_embd"], H=p["n_head"],
              L=p["n_layer"], V=cfg["vocab_size"], flce=cfg["flce"])
    names = [n.strip() for n in cfg["device"].split(",") if n.strip()]
    bad = [n for n in names if n not in DEVICES]
    if bad or not names:
        raise UsageError(f"--device={cfg['device']}: expected a comma-separated list of "
                         f"{', '.join(DEVICES)}")
    devices = []
    for n in names:
        d = replace(DEVICES[n], launch_s=cfg["launch_us"] * 1e-6)
        if cfg["flops"]:
            d = replace(d, flops=cfg["flops"], source=d.source + "; FLOP/s from --flops")
        if cfg["bandwidth"]:
            d = replace(d, bandwidth=cfg["bandwidth"],
                        source=d.source + "; bandwidth from --bandwidth")
        devices.append(d)
    if cfg["results"] and not os.path.isfile(cfg["results"]):
        raise UsageError(f"--results={cfg['results']}: no such file")
    text, summary = report(s, devices, cfg["results"] or None)
    print(text)
    if cfg["out"]:
        from bench import common

        common.write_json(cfg["out"], {f"{d}/{p}": v for (d, p), v in summary.items()})
    return summary


if __name__ == "__main__":
    run_main(main, PROG)
