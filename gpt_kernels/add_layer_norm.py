"""Residual add + LayerNorm in one pass: s = x + branch, y = layer_norm(s). Triton forward and
backward.

A pre-norm block ends its attention half with ``x = x + attn(...)`` and starts its MLP half
with ``layer_norm(x)``. Unfused (eager, or the separate ``layer_norm`` op under autocast) that
is three passes over (M, C): the add reads x and branch and writes s; LayerNorm reads s and
writes a float32 y (LayerNorm runs in float32 under autocast); the next matmul's autocast
reads that float32 y and writes a bf16 copy. Fused, one kernel reads x and branch once and
writes the float32 residual stream s and y directly in the matmul dtype.

The kernels are LayerNorm's (layer_norm.py), compiled with the add switched on.

Forward (``_layer_norm_fwd`` with HAS_BRANCH): each program takes BLOCK_M rows; s is rounded
to x's dtype (the residual stream keeps its precision: float32 under mixed precision) before
it is normalised, so the statistics describe exactly the s that is returned and saved. float32
mean (with one correction pass) and two-pass variance, saved per row for backward.

Backward (``_layer_norm_bwd_dx`` with HAS_DS, STORE_DR) mirrors it: one kernel reads dy,
the residual stream's own gradient ds and the saved s, and writes dx = ds + LayerNorm's input
gradient, both in x's dtype and, when the branch has another dtype (a bf16 sublayer output),
in the branch's dtype: the add's backward is the identity, so the two gradients are one
value. Per program it also sums dweight and dbias over a fixed slice of rows (float32 partial
sums); a second launch sums the partials column block by column block
(``_layer_norm_bwd_dwdb``). No atomics: reruns give bit-identical gradients.

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

import torch

from gpt_kernels import reference
from gpt_kernels._library import define_op, use_triton
# the kernels and launchers are LayerNorm's, with the add switched on
from gpt_kernels.layer_norm import add_layer_norm_backward, add_layer_norm_forward

__all__ = ["add_layer_norm", "add_layer_norm_forward", "add_layer_norm_backward",
           "add_layer_norm_fwd", "add_layer_norm_bwd"]


# --------------------------------------------------------------------------- registration

add_layer_norm_fwd = define_op("add_layer_norm_fwd", add_layer_norm_forward)
add_layer_norm_bwd = define_op("add_layer_norm_bwd", add_layer_norm_backward)


def _setup_context(ctx, inputs, output):
    x, branch, weight, bias, _eps, _out_dtype = inputs
    s, y, mean, rstd = output
    ctx.y_dtype = y.dtype
    ctx.mark_non_differentiable(mean, rstd)  # statistics for backward, not results
    # an unused output's gradient arrives as None instead of a zero-filled tensor: no launch
    # for the statistics' gradients (never read) nor for s's when there is no branch
    ctx.set_materialize_grads(False)
    ctx.has_branch = branch is not None
    ctx.branch_dtype = branch.dtype if branch is not None else None
    # without a branch the normalised input is x itself
    ctx.save_for_backward(s if ctx.has_branch else x, weight, bias, mean, rstd)


def _backward(ctx, ds, dy, _dmean, _drstd):
    s, weight, bias, mean, rstd = ctx.saved_tensors
    if not ctx.has_branch:
        ds = None  # s was an empty placeholder: no gradient flows through it
    if dy is None:  # only s was used (rare): y's gradient is zero
        dy = torch.zeros(s.shape, dtype=ctx.y_dtype, device=s.device)
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
