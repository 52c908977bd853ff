"""A roofline model of one GPT training step: where the time goes, counted before any GPU runs.

One file although over 500 lines: one cost function per op of the step (`op_*`), the
device ceilings and the report form one model, read top to bottom.

    python -m bench.roofline                                  # gpt2, B=8, T=1024, bf16, H100 + H200
    python -m bench.roofline --device=A100 --batch_size=16
    python -m bench.roofline --flops=790e12 --bandwidth=4.3e12   # ceilings a GPU run measured
    python -m bench.roofline --results=bench/results/<gpu>-<date>.json  # measured beside predicted

For every op of a step (forward + backward together), on each path

- ``triton``: ``GPT(kernels="triton")`` as the code runs it (our kernels, the fused residual
  add + LayerNorm, the LayerNorm outputs and gelu(h) recomputed in backward as
  ``Block.recompute`` does, cuBLAS for the plain matmuls, the casts around them);
- ``eager``: ``GPT(kernels="torch")``, eager PyTorch with SDPA's flash attention and the
  unfused lm_head + ``F.cross_entropy`` (float32 logits under autocast);
- ``compile``: what ``torch.compile`` (Inductor) makes of the eager path: each chain of
  pointwise ops and reductions between two matmuls becomes one kernel that reads its inputs
  once and writes its outputs once; matmuls stay cuBLAS, attention stays SDPA's flash kernel,

it counts FLOPs (matmul and attention; 2 per multiply-add), the fewest bytes the op must move
(its inputs read once, its outputs written once), the bytes the implementation actually moves
(each kernel's reads and writes of DRAM, every operand counted at each kernel that reads it:
no credit for L2 hits), the kernel launches, and for ``linear_gelu``'s backward pass the
thread-instructions it spends per element on dh = dy * gelu'(h). From a device's
ceilings (bf16 tensor-core FLOP/s, DRAM bytes/s, a fixed gap per launch, non-tensor
instructions/s) it derives:

- floor = max(FLOPs / peak, minimum bytes / bandwidth)
- predicted = max(FLOPs / peak, bytes moved / bandwidth, instructions / rate) + launches * gap

and per path the step's sum, tokens/s and the ratios between paths. These are estimates
(+-30-50% absolute: no kernel reaches the ceilings, and overlap between kernels is ignored);
the ratios are firmer, since every path is counted the same way. A GPU results JSON
(``bench.train``'s "train" section, its "paths" records) puts measured step times beside the
predictions.

Each op's counts are one small function ``op_<name>(s, path) -> Op`` (below), and an op's
row means the same work on every path (``op_residual_ln``: everything a block does to its
residual stream between the matmuls). A kernel change updates that function; the tests check
its FLOPs against ``torch.utils.flop_counter.FlopCounterMode`` on fake tensors, and a block's
bytes and launches against the kernels a real block runs (the triton path's exactly; eager's
but for SDPA).
"""

import json
import os
import sys
from dataclasses import dataclass, field, replace

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gpt.cli import Opt, UsageError, parse, run_main  # noqa: E402
from gpt.hardware import GPUS  # noqa: E402

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
# H100's and A100's are the datasheet figures of gpt.hardware.GPUS. The non-tensor rate is
# 132 SMs x 128 lanes x 1.98 GHz (one 32-bit instruction per lane per clock). The launch gap
# (2 us between back-to-back kernels) is an assumption, not a measurement: --launch_us
# changes it.
DEVICES = {
    "H100": Device("H100 SXM", 790e12, GPUS["H100"].bandwidth, 2e-6, 132 * 128 * 1.98e9,
                   "matmul: H200 measurement (same die); bandwidth: H100 SXM datasheet"),
    "H200": Device("H200", 790e12, 4.3e12, 2e-6, 132 * 128 * 1.98e9,
                   "matmul and copy ceilings measured on an H200 (issue 20)"),
    "A100": Device("A100 SXM 80GB", GPUS["A100"].bf16_flops, GPUS["A100"].bandwidth, 2e-6,
                   108 * 64 * 1.41e9, "datasheet: 312 TFLOP/s bf16 dense, 2.039 TB/s"),
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


def _linear_min_bytes(s, K, Nout):
    """Fewest bytes of a Linear's forward + backward: x, W (float32 master), y forward;
    dy, dx, dW (float32) backward (x and W again in backward: L2 is not that large, but the
    minimum credits them)."""
    N, e = s.N, s.e
    return 2 * (N * K * e + K * Nout * 4 + N * Nout * e)


def op_linear(s, path, name, K, Nout, after_norm=False):
    """A Linear x (N, K) -> (N, Nout) in the matmul dtype, x arriving in that dtype (the
    LayerNorm rows write it so) and the output's gradient too (the residual rows cast it).

    Counted: the weight and bias cast float32 -> bf16 each forward, the forward matmul (bias
    in cuBLAS's epilogue), dgrad, wgrad, the bias gradient (a column sum) and the weight and
    bias gradients back to float32 for the parameters' .grad.
    eager, and the triton path's plain ``nn.Linear`` (attn.c_proj): autocast's casts; the
    bias gradient summed in bf16, then cast (two launches).
    triton with ``after_norm`` (``gpt_kernels/recompute.py``'s c_attn and mlp.c_proj): the
    same casts made by hand, the bias gradient summed straight into float32 (one launch).
    compile: the weight and bias casts one kernel, the bias gradient and its cast one.
    """
    N, e = s.N, s.e
    c = _Count()
    if path == "compile":
        c.k("cast W, b", (K + 1) * Nout * 4 if s.bias else K * Nout * 4,
            (K + 1) * Nout * e if s.bias else K * Nout * e)
    else:
        c.k("cast W", K * Nout * 4, K * Nout * e)
        if s.bias:
            c.k("cast b", Nout * 4, Nout * e)
    c.k("fwd (+bias)", N * K * e + K * Nout * e + (Nout * e if s.bias else 0), N * Nout * e)
    _mm(c, "dgrad", N, Nout, K, e)
    _mm(c, "wgrad", Nout, N, K, e)
    c.k("dW to float32", K * Nout * e, K * Nout * 4)
    if s.bias:
        if path == "eager" or (path == "triton" and not after_norm):
            c.k("dbias", N * Nout * e, Nout * e)
            c.k("db to float32", Nout * e, Nout * 4)
        else:
            c.k("dbias (float32)", N * Nout * e, Nout * 4)
    return Op(name, linear_flops(N, K, Nout), _linear_min_bytes(s, K, Nout), c.bytes,
              c.launches, count=s.L)


def op_qkv(s, path):
    """c_attn: ln_1's output (N, C) -> q, k, v (N, 3C); on the triton path
    ``linear_after_norm`` (its input y is recomputed for dW: the residual + LayerNorm row)."""
    return op_linear(s, path, "c_attn (qkv)", s.C, 3 * s.C, after_norm=True)


def op_attn_proj(s, path):
    """attn.c_proj: (N, C) -> (N, C), an ``nn.Linear`` under autocast on every path."""
    return op_linear(s, path, "attn.c_proj", s.C, s.C)


def op_mlp_proj(s, path):
    """mlp.c_proj: gelu(h) (N, 4C) -> (N, C); on the triton path inside ``mlp_after_norm``
    (its input gelu(h) is stored again by linear+GELU's backward pass: the c_fc + GELU row)."""
    return op_linear(s, path, "mlp.c_proj", 4 * s.C, s.C, after_norm=True)


def attention_flops(s, backward_matmuls):
    """Causal attention: QK^T and PV forward (2 matmuls of 2*T*T*D/2 each, half masked),
    ``backward_matmuls`` more of the same size in backward (FlashAttention-2: 5)."""
    D = s.C // s.H
    per_matmul = 2 * s.B * s.H * s.T * s.T * D / 2
    return (2 + backward_matmuls) * per_matmul


def op_attention(s, path):
    """Causal attention over (B, H, T, D) q, k, v: strided views of c_attn's (N, 3C) output.

    triton: our flash attention; forward reads q, k, v and writes o and a float32 lse;
    backward runs a preprocess (delta = rowsum(o * do)), a dK/dV kernel (recomputes QK^T and
    dO V^T: 4 matmuls) and a dQ kernel (3 matmuls): 7 backward matmuls where FlashAttention-2
    has 5, and q, k, v, do each read twice. Its output layout (B, T, H, D) makes the model's
    transpose free.
    eager / compile: SDPA's flash kernel (FlashAttention-2): 5 backward matmuls, dq summed
    in a float32 buffer (written, read, converted), and the model's
    ``y.transpose(1, 2).contiguous()`` is one copy each way (compile fuses it away).
    Every path: dq, dk, dv are three tensors, and the backward of ``qkv.split`` concatenates
    them into c_attn's (N, 3C) gradient (one copy kernel).
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
    c.k("split backward (cat dq, dk, dv)", 3 * act, 3 * act)
    minimum = 3 * act + act + lse + (4 * act + lse) + 3 * act
    return Op("attention", flops, minimum, c.bytes, c.launches, count=s.L)


# at most this many programs share the rows of the Triton LayerNorm backward: 2 per SM of an
# H100 or H200 (132 SMs); the interpreter takes 4 (gpt_kernels/layer_norm.py)
LN_BWD_PROGRAMS = 2 * 132


def ln_bwd_programs(s):
    """G, the programs of the Triton LayerNorm backward (and the rows of its (G, C) float32
    partial sums): gpt_kernels/layer_norm.py's rule, at most LN_BWD_PROGRAMS programs, each
    over whole tiles of BLOCK_M rows."""
    def cdiv(a, b):
        return -(-a // b)

    block_c = 1 << max(0, (s.C - 1).bit_length())  # next power of 2
    block_m = max(1, min(16, 2048 // block_c))
    programs = max(1, min(cdiv(s.N, block_m), LN_BWD_PROGRAMS))
    rows_per_program = cdiv(cdiv(s.N, programs), block_m) * block_m
    return cdiv(s.N, rows_per_program)


def op_residual_ln(s, path):
    """The residual stream's work in a block, everything between the matmuls: ln_1, the
    attention branch's residual add, ln_2, the MLP branch's residual add, and their
    backward: the LayerNorms' outputs in the matmul dtype (the cast included), the branches'
    gradients in the matmul dtype, the stream's gradient summed where the stream forks.
    Float32 stream and statistics, bf16 branches and LayerNorm outputs.

    triton (``Block.forward`` with ``recompute``): ln_1 is ``add_layer_norm`` without a
    branch (reads x, writes y in bf16); the attention branch's add and ln_2 are one
    ``add_layer_norm`` kernel (reads x and the branch, writes s and y); the MLP branch's
    add is PyTorch's (float32 + bf16). Backward: the MLP branch's gradient cast to bf16
    (autograd's cast for a bf16 input); ln_2's backward reads dy, the stream's ds and s,
    writes dx and the branch's bf16 gradient (then a small launch reduces the dweight /
    dbias partial sums); ln_1's likewise without ds; the stream's two gradients at the
    block's input summed. ``recompute.py`` runs each LayerNorm's forward again in backward
    (reads s, writes y and the statistics) instead of keeping y for c_attn's and c_fc's dW.
    eager (``gpt_kernels.reference.add_layer_norm``): ln_1: F.layer_norm (float32 out),
    then a cast to bf16; the add casts the branch to float32 first, then adds; ln_2 as ln_1;
    the MLP add in one kernel. Backward: each LayerNorm's dy cast bf16 -> float32, PyTorch's
    dx kernel and dgamma/dbeta kernel (each reads dy and x), the two gradients of s summed,
    the attention branch's gradient cast to bf16, the MLP branch's too, the block input's
    two gradients summed.
    compile: each add fused into the LayerNorm that follows it (the MLP branch's into the
    next block's ln_1 or ln_f: counted here as its bytes, no launch), casts fused in;
    backward one dx kernel per LayerNorm (the stream's gradient sum and the branch's bf16
    cast fused in) and one dgamma/dbeta reduction.
    """
    N, C, e = s.N, s.C, s.e
    E = N * C
    stats = 2 * N * 4  # mean, rstd
    P = (2 if s.bias else 1) * C * 4  # LayerNorm weight and bias, float32
    c = _Count()
    if path == "triton":
        parts = (2 if s.bias else 1) * ln_bwd_programs(s) * C * 4  # (G, C) float32 partials
        c.k("ln_1 (y in bf16)", E * 4 + P, E * e + stats)
        c.k("add + ln_2 (s, y in bf16)", E * (4 + e) + P, E * (4 + e) + stats)
        c.k("add (MLP branch)", E * (4 + e), E * 4)
        c.k("MLP branch grad to bf16", E * 4, E * e)
        for ln in ("ln_2", "ln_1"):
            c.k(f"recompute {ln}'s y", E * 4 + P, E * e + stats)
            if ln == "ln_2":
                c.k("ln_2 bwd: dx + ds, dbranch, partials", E * (e + 4 + 4) + stats + C * 4,
                    E * (4 + e) + parts)
            else:
                c.k("ln_1 bwd: dx, partials", E * (e + 4) + stats + C * 4, E * 4 + parts)
            c.k(f"{ln} reduce partials", parts, P)
        c.k("stream grad sum", E * 8, E * 4)
    elif path == "eager":
        for ln in ("ln_1", "ln_2"):
            if ln == "ln_2":
                c.k("branch to float32", E * e, E * 4)
                c.k("add", E * 8, E * 4)
            c.k(f"{ln} fwd", E * 4 + P, E * 4 + stats)
            c.k(f"{ln} y to bf16", E * 4, E * e)
        c.k("add (MLP branch)", E * (4 + e), E * 4)
        c.k("MLP branch grad to bf16", E * 4, E * e)
        for ln in ("ln_2", "ln_1"):
            c.k(f"{ln} dy to float32", E * e, E * 4)
            c.k(f"{ln} bwd dx", E * 8 + stats + C * 4, E * 4)
            c.k(f"{ln} bwd dw db", E * 8 + stats, P)
            c.k("stream grad sum", E * 8, E * 4)
            if ln == "ln_2":
                c.k("attention branch grad to bf16", E * 4, E * e)
    else:
        c.k("ln_1 (+cast)", E * 4 + P, E * e + stats)
        c.k("add + ln_2 (+cast)", E * (4 + e) + P, E * (4 + e) + stats)
        c.k("add (MLP branch), into the next LayerNorm", E * e, E * 4, launches=0)
        for ln in ("ln_2", "ln_1"):  # each: dy, x, the stream's grad in; dx, dbranch out
            c.k(f"{ln} bwd dx (+grad sum, branch cast)", E * (e + 4 + 4) + stats + C * 4,
                E * (4 + e))
            c.k(f"{ln} bwd dw db", E * (e + 4) + stats, P)
    # fewest bytes: forward x, two branches in; y, s, y, the block's output out; backward
    # the output's grad, dy of both LayerNorms, saved x and s in; dx, two branch grads out
    minimum = E * (4 + 2 * e) + E * (2 * e + 8) + E * (4 + 2 * e + 8) + E * (4 + 2 * e)
    minimum += 4 * stats
    return Op("residual + ln_1 / ln_2", 0.0, minimum, c.bytes, c.launches, count=s.L)


def op_ln_f(s, path):
    """ln_f: LayerNorm of the float32 stream before the loss head.

    triton (``layer_norm``): y in float32 (the fused loss casts it, in op_loss); backward
    reads the loss's float32 gradient and x, writes dx and the partial sums, then reduces
    them. eager: the same forward; the lm_head's bf16 gradient cast to float32 (autocast's
    cast in reverse); PyTorch's dx and dgamma/dbeta kernels. compile: forward with the cast
    (bf16 y); one dx kernel, one dgamma/dbeta reduction. (The last block's MLP add fused in
    on the compile path is counted in that block's row.)
    """
    N, C, e = s.N, s.C, s.e
    E = N * C
    stats = 2 * N * 4
    P = (2 if s.bias else 1) * C * 4
    c = _Count()
    if path == "compile":
        c.k("fwd (+cast)", E * 4 + P, E * e + stats)
        c.k("bwd dx", E * (e + 4) + stats + C * 4, E * 4)
        c.k("bwd dw db", E * (e + 4) + stats, P)
    elif path == "triton":
        parts = (2 if s.bias else 1) * ln_bwd_programs(s) * C * 4
        c.k("fwd", E * 4 + P, E * 4 + stats)
        c.k("bwd dx, partials", E * 8 + stats + C * 4, E * 4 + parts)
        c.k("reduce partials", parts, P)
    else:
        c.k("fwd", E * 4 + P, E * 4 + stats)
        c.k("dy to float32", E * e, E * 4)
        c.k("bwd dx", E * 8 + stats + C * 4, E * 4)
        c.k("bwd dw db", E * 8 + stats, P)
    minimum = E * 4 + E * e + stats + E * (e + 4) + stats + E * 4
    return Op("ln_f", 0.0, minimum, c.bytes, c.launches)


# thread-instructions per element of linear+GELU's backward pass (dh = dy * gelu'(h), and
# gelu(h) stored again): the compiled kernel's 304 SASS instructions per thread for 8
# elements (sm_80 and sm_90, bf16; loads, conversions, stores included), as
# gpt_kernels/linear_gelu.py quotes from the compile report
GELU_BWD_INSTR = 304 / 8


def op_linear_gelu(s, path):
    """c_fc + tanh GELU: y (N, C) in the matmul dtype -> gelu(h) (N, 4C).

    triton (``mlp_after_norm``): W and b cast by hand; one forward kernel (matmul, bias and
    GELU in its epilogue) stores gelu(h) and the pre-activation h; only h is kept. Backward:
    one pointwise pass (``gpt::gelu_bwd``) reads dy (from mlp.c_proj's dgrad) and h, writes
    dh = dy * gelu'(h) and gelu(h) again (mlp.c_proj's dW reads it), GELU_BWD_INSTR
    instructions per element (the ``alu`` term); then ``gpt::linear_bwd``: a dx kernel and
    a dW + dbias kernel (both bf16, cast to float32 after). The input y it reads for dW is
    recomputed in the residual + LayerNorm row.
    eager (``gpt_kernels.reference.linear_gelu``): the weight and bias cast, a cuBLAS matmul
    (bias in the epilogue), F.gelu as a separate kernel (reads h, writes gelu(h), h kept);
    backward: gelu backward (reads dy, h, writes dh), dgrad, wgrad, dbias (bf16), the
    gradients cast to float32. compile: the same kernels (Inductor keeps the cuBLAS
    matmuls; GELU and its backward are one pointwise kernel each), casts paired.
    """
    N, C, e = s.N, s.C, s.e
    F = 4 * C
    Fb = F if s.bias else 0  # bias elements
    c = _Count()
    alu = 0.0
    if path == "compile":
        c.k("cast W, b", (C * F + Fb) * 4, (C * F + Fb) * e)
    else:
        c.k("cast W", C * F * 4, C * F * e)
        if s.bias:
            c.k("cast b", F * 4, F * e)
    if path == "triton":
        c.k("fwd (+bias, gelu; stores gelu(h), h)", N * C * e + C * F * e + Fb * e,
            2 * N * F * e)
        c.k("gelu bwd: dh, gelu(h) again", 2 * N * F * e, 2 * N * F * e)
        c.k("bwd dx", N * F * e + C * F * e, N * C * e)
        c.k("bwd dW, db", N * F * e + N * C * e, C * F * e + Fb * e)
        alu = N * F * GELU_BWD_INSTR
    else:
        c.k("fwd (+bias)", N * C * e + C * F * e + Fb * e, N * F * e)
        c.k("gelu", N * F * e, N * F * e)
        c.k("gelu backward", 2 * N * F * e, N * F * e)
        _mm(c, "dgrad", N, F, C, e)
        _mm(c, "wgrad", F, N, C, e)
        if s.bias:
            c.k("dbias", N * F * e, F * (e if path == "eager" else 4))  # compile: + cast
    c.k("dW to float32", C * F * e, C * F * 4)
    if s.bias and path != "compile":
        c.k("db to float32", F * e, F * 4)
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


def op_grad_clip(s, path):
    """``clip_grad_norm_(parameters, 1.0)`` as bench.train and train.py run it (all paths):
    ``_foreach_norm`` reads every float32 gradient, a few small launches combine the norms
    into the clip factor, ``_foreach_mul_`` reads and writes every gradient. Each foreach
    call is multi_tensor_apply's launches of at most 320 blocks of 65536 elements (one more
    where a launch boundary splits a tensor: 7 at GPT-2, as the H200 profile counted), the
    norm one more to combine its blocks' partials; the small launches: stack, norm, add,
    divide, clamp."""
    P = s.params
    per_call = -(-P // (320 * 65536)) + 1
    return Op("grad clip", 0.0, 3 * P * 4, 3 * P * 4, 2 * per_call + 1 + 5)


OPS = (op_embedding, op_residual_ln, op_qkv, op_attention, op_attn_proj, op_linear_gelu,
       op_mlp_proj, op_ln_f, op_loss, op_grad_clip, op_optimizer)


def step_ops(s, path):
    """The step's ops on ``path``, each with its count per step (a block's ops: L)."""
    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")
    return [f(s, path) for f in OPS]


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
        lines += ["", *_compare_ops(summary, d), ""]
    return "\n".join(lines), summary


def _compare_ops(summary, d):
    """Per op, the predicted ms and GB moved on each path side by side, and the triton path's
    difference from the others (the rows mean the same work on every path)."""
    ops = {p: summary[(d.name, p)]["ops"] for p in PATHS}
    lines = ["| op | triton ms | eager ms | compile ms | triton - eager ms | triton - compile ms "
             "| GB moved (triton / eager / compile) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for rows in zip(*(ops[p] for p in PATHS)):
        if len({r["op"] for r in rows}) != 1:
            raise ValueError(f"ops differ across paths: {[r['op'] for r in rows]}")
        t, e, c = (r["predicted"] * 1e3 for r in rows)
        gb = " / ".join(f"{r['bytes'] / GB:.2f}" for r in rows)
        lines.append(f"| {rows[0]['op']} | {t:.2f} | {e:.2f} | {c:.2f} | {t - e:+.2f} | "
                     f"{t - c:+.2f} | {gb} |")
    return lines


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
        device=Opt(("H100", "H200"), "comma-separated devices, or all", choices=tuple(DEVICES)),
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
    devices = []
    for n in cfg["device"]:
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
