"""Matmuls after a LayerNorm that keep less for backward: the Triton path's activation memory.

A pre-norm block keeps, per layer and per token, what its matmuls save for their weight
gradients: c_attn and c_fc save their input, the LayerNorm's output y (C values in the matmul
dtype each), and c_proj of the MLP saves its input gelu(h) (4C values). All three can be
recomputed cheaply from what is kept anyway:

- y = layer_norm(s) from s, the residual stream the LayerNorm itself keeps for its own
  backward (``add_layer_norm``): one pass reading s (4 B) and writing y (2 B) per element;
- gelu(h) from the pre-activation h that ``linear_gelu`` keeps for gelu'(h): written by the
  same backward pass that forms dh = dy * gelu'(h) (``linear_gelu.gelu_backward``), one more
  2-byte store per element and no extra read.

Counted at GPT-2 124M's step (B = 8, T = 1024: M = 8192 tokens, C = 768, bf16 matmuls), per
layer: y of ln_1 12.6 MB, y of ln_2 12.6 MB, gelu(h) 50.3 MB: 75.5 MB of 12 x 75.5 = 906 MB
(0.84 GiB) per step that is not kept; the recomputation moves 2 x 6 B x M x C + 2 B x M x 4C
= 126 MB per layer in backward (~38 us on an H100 at 3.35 TB/s, against ~11 ms a step).

``linear_after_norm(y, s, ...)`` is ``F.linear(y, weight, bias)`` and ``mlp_after_norm(y, s,
...)`` is ``F.linear(linear_gelu(y, fc_weight, fc_bias), proj_weight, proj_bias)``; both keep
s (and the LayerNorm's parameters) in place of y, and the MLP keeps h in place of gelu(h).
The gradient of y flows to y's producer as usual; s gets none from here. The matmul dtype is
y's (the autocast dtype when ``add_layer_norm`` ran under autocast): the weights are cast to
it, and the weight gradients come back in the weights' own dtype, as under autocast.
``torch.autograd.Function``s made of registered ops (``gpt::add_layer_norm_fwd``,
``gpt::linear_gelu_fwd``, ``gpt::gelu_bwd``, ``gpt::linear_bwd``) and aten matmuls, so
``torch.compile`` traces them and the memory meter sees every buffer.
"""

import torch
import torch.nn.functional as F

from gpt_kernels.add_layer_norm import add_layer_norm_fwd
from gpt_kernels.linear_gelu import gelu_bwd, linear_bwd, linear_gelu_fwd

__all__ = ["linear_after_norm", "mlp_after_norm"]


def _cast(t, dtype):
    return None if t is None else t.to(dtype)


def _rows(t):
    return t.reshape(-1, t.shape[-1])


def _renorm(ctx, s, ln_weight, ln_bias):
    """y = layer_norm(s) in the matmul dtype: the same kernel on the same s as the forward,
    so the same bits."""
    return add_layer_norm_fwd(_rows(s), None, ln_weight, ln_bias, ctx.eps, ctx.dtype)[1]


class _LinearAfterNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y, s, ln_weight, ln_bias, eps, weight, bias):
        ctx.eps, ctx.dtype, ctx.has_bias = eps, y.dtype, bias is not None
        ctx.weight_dtype = weight.dtype
        ctx.bias_dtype = bias.dtype if bias is not None else None
        w = weight.to(y.dtype)
        ctx.save_for_backward(s, ln_weight, ln_bias, w)
        return F.linear(y, w, _cast(bias, y.dtype))

    @staticmethod
    def backward(ctx, dout):
        s, ln_weight, ln_bias, w = ctx.saved_tensors
        dout = _rows(dout)
        dy = dw = db = None
        if ctx.needs_input_grad[0]:
            dy = (dout @ w).view(*s.shape[:-1], w.shape[1])
        if ctx.needs_input_grad[5]:
            dw = (dout.t() @ _renorm(ctx, s, ln_weight, ln_bias)).to(ctx.weight_dtype)
        if ctx.has_bias and ctx.needs_input_grad[6]:
            db = dout.sum(0, dtype=torch.float32).to(ctx.bias_dtype)
        return dy, None, None, None, None, dw, db


class _MLPAfterNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y, s, ln_weight, ln_bias, eps, fc_weight, fc_bias, proj_weight, proj_bias):
        dt = y.dtype
        ctx.eps, ctx.dtype = eps, dt
        ctx.dtypes = [None if t is None else t.dtype
                      for t in (fc_weight, fc_bias, proj_weight, proj_bias)]
        ctx.has_fc_bias, ctx.has_proj_bias = fc_bias is not None, proj_bias is not None
        w1, w2 = fc_weight.to(dt), proj_weight.to(dt)
        g, h = linear_gelu_fwd(_rows(y), w1, _cast(fc_bias, dt), True)  # keeps h, not g
        out = F.linear(g, w2, _cast(proj_bias, dt))
        ctx.save_for_backward(s, ln_weight, ln_bias, h, w1, w2)
        return out.view(*y.shape[:-1], w2.shape[0])

    @staticmethod
    def backward(ctx, dout):
        s, ln_weight, ln_bias, h, w1, w2 = ctx.saved_tensors
        need = ctx.needs_input_grad
        dout = _rows(dout)
        # dh = (dout @ W2) * gelu'(h), and gelu(h) again for W2's gradient, in one pass
        dh, g = gelu_bwd(dout @ w2, h, ctx.dtype, need[7])
        dw2 = (dout.t() @ g).to(ctx.dtypes[2]) if need[7] else None
        db2 = (dout.sum(0, dtype=torch.float32).to(ctx.dtypes[3])
               if ctx.has_proj_bias and need[8] else None)
        need_w1 = need[5] or (ctx.has_fc_bias and need[6])
        y = _renorm(ctx, s, ln_weight, ln_bias)  # c_fc's input: its shape even without dW1
        dy, dw1, db1 = linear_bwd(dh, y, w1, ctx.has_fc_bias, need[0], need_w1)
        dy = dy.view(*s.shape[:-1], w1.shape[1]) if need[0] else None
        dw1 = dw1.to(ctx.dtypes[0]) if need[5] else None
        db1 = db1.to(ctx.dtypes[1]) if ctx.has_fc_bias and need[6] else None
        return dy, None, None, None, None, dw1, db1, dw2, db2


def linear_after_norm(y, s, ln_weight, ln_bias, eps, weight, bias):
    """F.linear(y, weight, bias) for y = layer_norm(s) (in the matmul dtype, from
    ``add_layer_norm``), keeping s instead of y for backward. y, s (..., C), weight (N, C),
    bias (N,) or None -> (..., N) in y's dtype."""
    return _LinearAfterNorm.apply(y, s, ln_weight, ln_bias, eps, weight, bias)


def mlp_after_norm(y, s, ln_weight, ln_bias, eps, fc_weight, fc_bias, proj_weight, proj_bias):
    """c_proj(gelu_tanh(c_fc(y))) for y = layer_norm(s): keeps s and the pre-activation h
    (..., 4C), not y nor gelu(h). y, s (..., C), fc_weight (4C, C), proj_weight (C, 4C) ->
    (..., C) in y's dtype."""
    return _MLPAfterNorm.apply(y, s, ln_weight, ln_bias, eps, fc_weight, fc_bias, proj_weight,
                               proj_bias)
