"""Fused linear cross-entropy: ``cross_entropy(x @ weight.T + bias, target)`` in token chunks.

The lm_head of GPT-2 at training sizes (N = 8192 tokens, V = 50304) would produce 412M logits:
1.6 GB in float32, and ``F.cross_entropy`` keeps a float32 log-softmax of the same size for its
backward. Here the tokens go through in chunks of ``chunk_rows(N, V, C, itemsize)`` rows, as
many as ``CHUNK_BUDGET_BYTES`` (256 MiB) of logits hold (all N when they fit); for each chunk

1. the chunk's logits are one matmul (torch / cuBLAS, as Liger-Kernel does) into a
   ``(rows, V)`` buffer this module allocated once and reuses for every chunk;
2. the Triton cross-entropy kernel (``gpt_kernels/cross_entropy.py``) computes the chunk's loss and,
   in the same launch, overwrites that buffer with ``softmax - onehot`` (each program reads a
   logit before it writes its gradient, so the aliasing is safe);
3. two more matmuls turn that into the chunk's rows of ``grad_x`` (written in place, in the
   matmul dtype) and its contribution to ``grad_weight``, which cuBLAS adds straight into
   the float32 accumulator (``torch.addmm(..., out_dtype=torch.float32)``, CUDA, torch >= 2.8;
   the first chunk overwrites it, so nothing is zero-filled); ``grad_bias`` is a column sum.

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

Bytes and launches per step (GPT-2: N = 8192, C = 768, V = 50304, bf16 under autocast; every
operand counted at each kernel that reads it, no L2 credit; ``bench.roofline.flce_counts``
computes them and tests/test_roofline.py checks them). FLOPs are the same before and after:
3 x 2NCV = 1.90 TFLOP, 2.4 ms at 790 TFLOP/s.

- before issue 20: 64 chunks of 128 rows, each chunk's grad_weight a fresh (V, C) bf16
  product (77 MB) added into float32 (read 232 MB, write 155 MB), a zero-fill, grad_x copied
  to float32: 45.4 GB and 394 launches (13.5 ms at 3.35 TB/s).
- now: 4 chunks of 2048 rows; grad_weight read + written once per chunk after the first
  (cuBLAS float32 output), grad_x stored by its matmul: 7.3 GB and 25 launches (2.2 ms at
  3.35 TB/s). Of these, 4.1 GB are the (N, V) bf16 logits themselves (written by the matmul,
  read twice and overwritten by the cross-entropy kernel, read by the two gradient matmuls);
  the 5 GB target needs the cross-entropy fused into the matmuls' epilogue, not done here.
  Where torch has no float32-output matmul for half operands (CPU torch) each chunk's product
  is a half temporary added in float32, as before.

Memory (GPT-2 sizes, bf16 under autocast): one 2048 x 50304 chunk buffer (206 MB), float32
``grad_weight`` (155 MB), bf16 ``grad_x`` (12.6 MB), the bf16 copies of x and weight
autocast needs (90 MB). Backward scales the saved gradients by the upstream gradient into
new tensors (the saved ones are outputs of the forward op, which must not change after it
returned: opcheck and torch.compile compare them), so backward twice gives the same answer.
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

# The chunk buffer's default budget. 256 MiB holds 2048 rows of GPT-2's 50304 bf16 logits: at
# N = 8192 four chunks, so the float32 grad_weight is read and written 3 times instead of 63,
# and the step's metered peak (python -m bench.memory) stays below the 128-row version's
# (see the module docstring: the backward no longer copies the saved gradients).
CHUNK_BUDGET_BYTES = 256 * 2**20
_MIN_CHUNK_ROWS = 64
_ROW_MULTIPLE = 64  # chunk heights rounded to a matmul tile when the budget allows it


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


_FP32_OUT = {}  # device type -> whether torch.addmm(..., out_dtype=torch.float32) runs there
# The memory meter (bench/memory.py) stands fake CPU tensors in for a GPU step, so fake tensors
# answer as CUDA does; its check against real CPU allocations sets this False (both sides then
# take the CPU path).
FAKE_TENSORS_MODEL_CUDA = True


def _fp32_out_matmul(t):
    """Whether half-precision operands can be multiplied straight into a float32 tensor
    (``torch.addmm(out_dtype=torch.float32)``, cuBLAS with a float32 C/D; CUDA on torch >=
    2.8). Probed once per device type. Fake and meta tensors (the memory meter) answer for
    CUDA: the meter models the GPU step."""
    from torch._subclasses.fake_tensor import is_fake

    if t.is_meta or is_fake(t):
        if not FAKE_TENSORS_MODEL_CUDA:
            return False
        if t.device.type == "cuda" and not torch.cuda.is_available():
            return False  # fake CUDA tensors in a CPU-only torch (the compile report) cannot
            # run its decomposition; only the kernel launches are looked at there
        return _FP32_OUT.get("cuda", hasattr(torch.ops.aten.addmm, "dtype_out"))
    kind = t.device.type
    if kind not in _FP32_OUT:
        try:
            a = torch.ones(2, 2, dtype=torch.bfloat16, device=t.device)
            c = torch.ones(2, 2, dtype=torch.float32, device=t.device)
            torch.addmm(c, a, a, out_dtype=torch.float32, out=c)
            _FP32_OUT[kind] = bool((c == 3).all())
        except (RuntimeError, TypeError, NotImplementedError):
            _FP32_OUT[kind] = False
    return _FP32_OUT[kind]


def _accumulate_weight_grad(grad_weight, dlogits, x_chunk, first):
    """grad_weight (V, C) float32 (+)= dlogits.T @ x_chunk: (V, n) @ (n, C).

    float32 operands: ``addmm_`` (the first chunk ``mm`` into it: no zero-fill). Half
    operands: cuBLAS writes the float32 accumulator directly (``out_dtype``), so no (V, C)
    temporary exists and each chunk reads + writes grad_weight once (310 MB at GPT-2's size).
    Where that is not available (CPU torch) the half product is a temporary added into the
    zero-filled float32 accumulator, as before issue 20.
    """
    dlogits_t = dlogits.t()
    if x_chunk.dtype == torch.float32:
        if first:
            torch.mm(dlogits_t, x_chunk, out=grad_weight)
        else:
            grad_weight.addmm_(dlogits_t, x_chunk)
    elif _fp32_out_matmul(x_chunk):
        torch.addmm(grad_weight, dlogits_t, x_chunk, beta=0 if first else 1,
                    out_dtype=torch.float32, out=grad_weight)
    else:  # CPU torch: the half product is a temporary, summed in float32 (cast explicitly:
        # the memory meter's check against real CPU allocations sees the float32 copy)
        product = torch.mm(dlogits_t, x_chunk).to(torch.float32)
        if first:
            grad_weight.zero_()  # (not copy_: fake CUDA tensors in a CPU-only torch cannot)
        grad_weight += product


def flce_pass(x, weight, bias, target, ignore_index, grad_scale=None,
              need_x=False, need_weight=False, need_bias=False, rows=None):
    """One sweep over the tokens in chunks: per-row float32 loss and the requested gradients.

    x (N, C), weight (V, C), bias (V,) or None, all of one dtype; target (N,).
    ``grad_scale`` (float32, 1 or N values) multiplies each row of ``softmax - onehot``
    before the gradient matmuls. Returns ``(loss_rows, grad_x, grad_weight, grad_bias)``:
    grad_x in x's dtype (N, C) (one matmul per row block, float32 inside cuBLAS: nothing is
    summed across chunks), grad_weight (V, C) and grad_bias (V,) float32 (summed over the
    chunks), or None when not requested.
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
    # The one (rows, V) buffer: logits of a chunk, then overwritten with their gradient.
    buffer = torch.empty(min(rows, N), V, dtype=x.dtype, device=device)
    weight_t = weight.t()
    for start in range(0, N, rows):
        end = min(start + rows, N)
        first = start == 0
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
            torch.mm(logits, weight, out=grad_x[start:end])  # (n, V) @ (V, C)
        if need_weight:  # (V, n) @ (n, C), summed over chunks in float32
            _accumulate_weight_grad(grad_weight, logits, x_chunk, first)
        if need_bias:
            if first:
                torch.sum(logits, dim=0, dtype=torch.float32, out=grad_bias)
            else:
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
