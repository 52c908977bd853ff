"""Which kernels the report compiles, at which shapes: one ``Case`` per kernel file and shape.

A case's ``run(dtype)`` calls the project's own launchers (``attention_forward``,
``layer_norm_backward``, ...) as the model calls them, on tensors made on ``device="cuda"``:
inside ``chips.stand_in_gpu`` those are fake and each launch is recorded, not run. Shapes
come from the model presets (``gpt.model.PRESETS``), batch ``BATCH``.
"""

import importlib
import math
from dataclasses import dataclass, field

import torch

__all__ = ["OPS", "KERNEL_MODULES", "BATCH", "TRAIN_VOCAB", "Case", "kernel_module",
           "build_cases"]

OPS = ("attention", "layer_norm", "add_layer_norm", "linear_gelu", "cross_entropy",
       "fused_linear_cross_entropy")
# the modules whose kernels are launched (add_layer_norm launches layer_norm.py's kernels)
KERNEL_MODULES = ("attention", "layer_norm", "add_layer_norm", "linear_gelu", "cross_entropy",
                  "fused_linear_cross_entropy")

BATCH = 8  # sequences per batch in every shape below
TRAIN_VOCAB = 50304  # GPTConfig's default: GPT-2's 50257 padded to a multiple of 64


@dataclass
class Case:
    """Launchers of one kernel file at one shape; ``run(dtype)`` calls them on fake tensors."""

    op: str
    label: str
    run: object = field(repr=False)


def kernel_module(name):
    """``gpt_kernels.<name>`` the module (the package binds the op's public function to
    ``gpt_kernels.layer_norm`` and the like, over the module of the same name)."""
    return importlib.import_module(f"gpt_kernels.{name}")


def _shape(preset):
    from gpt.model import PRESETS

    p = PRESETS[preset]
    return p["n_embd"], p["n_head"], p["block_size"], p.get("vocab_size", TRAIN_VOCAB)


def attention_case(label, C, H, T, causal=True, dropout=0.0):
    attention = kernel_module("attention")

    D = C // H
    scale = 1.0 / math.sqrt(D)

    def run(dtype):
        # the model's layout: q, k, v are (B, H, T, D) views of c_attn's (B, T, 3C) output
        qkv = torch.empty(BATCH, T, 3 * C, dtype=dtype, device="cuda")
        q, k, v = (t.view(BATCH, T, H, D).transpose(1, 2) for t in qkv.split(C, dim=2))
        # the dropout seed is a (1,) int64 tensor (attention.dropout_seed)
        seed = torch.empty(1, dtype=torch.int64, device="cuda") if dropout else None
        out, lse = attention.attention_forward(q, k, v, causal, scale, dropout, seed)
        # the gradient of y.transpose(1, 2).contiguous().view(B, T, C) arrives in that layout
        dy = torch.empty(BATCH, T, C, dtype=dtype, device="cuda").view(BATCH, T, H, D)
        attention.attention_backward(dy.transpose(1, 2), q, k, v, out, lse, causal, scale,
                                     dropout, seed)
        if dropout:
            attention.dropout_keep_mask(BATCH, H, T, T, dropout, seed, q.device)

    what = ("causal" if causal else "full") + (f", dropout {dropout}" if dropout else "")
    return Case("attention", f"{label}: B={BATCH} H={H} T={T} D={D}, {what}", run)


def layer_norm_case(label, C, T, bias=True):
    layer_norm = kernel_module("layer_norm")

    def run(dtype):
        x = torch.empty(BATCH * T, C, dtype=dtype, device="cuda")
        w = torch.empty(C, dtype=dtype, device="cuda")
        b = torch.empty(C, dtype=dtype, device="cuda") if bias else None
        y, mean, rstd = layer_norm.layer_norm_forward(x, w, b, 1e-5)
        layer_norm.layer_norm_backward(torch.empty_like(y), x, w, b, mean, rstd)

    return Case("layer_norm", f"{label}: N={BATCH * T} C={C}" + ("" if bias else ", no bias"), run)


def add_layer_norm_case(label, C, T, bias=True):
    add_layer_norm = kernel_module("add_layer_norm")

    def run(dtype):
        # the model's mixed precision: a float32 stream; branch, y and dy in the run's dtype
        x = torch.empty(BATCH * T, C, dtype=torch.float32, device="cuda")
        r = torch.empty(BATCH * T, C, dtype=dtype, device="cuda")
        w = torch.empty(C, dtype=torch.float32, device="cuda")
        b = torch.empty(C, dtype=torch.float32, device="cuda") if bias else None
        s, y, mean, rstd = add_layer_norm.add_layer_norm_forward(x, r, w, b, 1e-5, dtype)
        add_layer_norm.add_layer_norm_backward(torch.empty_like(y), torch.empty_like(s), s, w, b,
                                               mean, rstd, dtype)

    return Case("add_layer_norm", f"{label}: N={BATCH * T} C={C}, float32 stream", run)


def linear_gelu_case(label, C, T, bias=True, inference=True):
    linear_gelu = kernel_module("linear_gelu")

    def run(dtype):
        M, K, N = BATCH * T, C, 4 * C  # the MLP's c_fc: (4C, C)
        x = torch.empty(M, K, dtype=dtype, device="cuda")
        w = torch.empty(N, K, dtype=dtype, device="cuda")
        b = torch.empty(N, dtype=dtype, device="cuda") if bias else None
        if inference:  # no h stored: a separate specialisation
            linear_gelu.linear_gelu_forward(x, w, b, store_h=False)
        y, h = linear_gelu.linear_gelu_forward(x, w, b, store_h=True)
        linear_gelu.linear_gelu_backward(torch.empty_like(y), h, x, w, bias, True, True)
        # the MLP's backward on the Triton path also rewrites gelu(h) (gpt_kernels/recompute.py)
        linear_gelu.gelu_backward(torch.empty_like(y), h, dtype, True)

    return Case("linear_gelu", f"{label}: M={BATCH * T} K={C} N={4 * C}"
                + ("" if bias else ", no bias"), run)


def cross_entropy_case(label, V, T, inference=True):
    cross_entropy = kernel_module("cross_entropy")

    def run(dtype):
        N = BATCH * T
        logits = torch.empty(N, V, dtype=dtype, device="cuda")
        target = torch.empty(N, dtype=torch.int64, device="cuda")
        if inference:  # no gradient wanted (evaluation): a separate specialisation
            cross_entropy.cross_entropy_forward(logits, target, -100)
        dlogits = torch.empty_like(logits)
        cross_entropy.cross_entropy_forward(logits, target, -100, grad_out=dlogits)
        one = torch.empty(1, dtype=torch.float32, device="cuda")
        cross_entropy.cross_entropy_backward(dlogits, one, one)

    return Case("cross_entropy", f"{label}: N={BATCH * T} V={V}", run)


def flce_case(label, C, V, T):
    flce = kernel_module("fused_linear_cross_entropy")

    def run(dtype):
        N = BATCH * T
        x = torch.empty(N, C, dtype=dtype, device="cuda")
        w = torch.empty(V, C, dtype=dtype, device="cuda")
        target = torch.empty(N, dtype=torch.int64, device="cuda")
        flce.flce_pass(x, w, None, target, -100, need_x=True, need_weight=True)

    return Case("fused_linear_cross_entropy", f"{label}: N={BATCH * T} C={C} V={V}", run)


def decode_case(label, C, H, T):
    """One KV-cache generation step: a single query against T cached keys (forward only)."""
    attention = kernel_module("attention")
    D = C // H

    def run(dtype):
        qkv = torch.empty(BATCH, 1, 3 * C, dtype=dtype, device="cuda")
        q = qkv.split(C, dim=2)[0].view(BATCH, 1, H, D).transpose(1, 2)
        # gpt.generate.KVCache: (n_layer, B, H, max_len, D) buffers, a layer's first T positions
        k, v = (torch.empty(1, BATCH, H, T, D, dtype=dtype, device="cuda").select(0, 0)
                for _ in range(2))
        attention.attention_forward(q, k, v, True, 1.0 / math.sqrt(D), 0.0, None)

    return Case("attention", f"{label}: B={BATCH} H={H} Tq=1 Tk={T} D={D}, decode step", run)


def build_cases(subset, ops):
    """The shapes of the report.

    ``ci``: GPT-2 small's, as its training step launches them (no dropout, no launch that
    only inference or evaluation makes).
    ``full``: every preset's LayerNorm, linear+GELU and cross-entropy shapes; attention at
    GPT-2 small's width and context at every head dim the kernel takes (with dropout too at
    64, every GPT-2 size's and shakespeare-char's, and 128, the largest tiles' registers;
    gpt2-medium/large/xl differ from gpt2 only in the number of heads, a runtime argument),
    shakespeare-char's own shape (dropout 0.2, T=256), and a KV-cache decode step. Causal
    attention with biases throughout, as the model runs it.
    """
    from gpt.model import PRESETS
    from gpt_kernels import SUPPORTED_HEAD_DIMS

    C0, H0, T0, _ = _shape("gpt2")
    if subset == "ci":
        cases = [layer_norm_case("gpt2", C0, T0), add_layer_norm_case("gpt2", C0, T0),
                 linear_gelu_case("gpt2", C0, T0, inference=False),
                 cross_entropy_case("gpt2", PRESETS["gpt2"]["vocab_size"], T0, inference=False),
                 flce_case("gpt2", C0, TRAIN_VOCAB, T0), attention_case("gpt2", C0, H0, T0)]
        return [c for c in cases if c.op in ops]
    cases = []
    for preset in PRESETS:
        C, H, T, V = _shape(preset)
        cases += [layer_norm_case(preset, C, T), add_layer_norm_case(preset, C, T),
                  linear_gelu_case(preset, C, T),
                  cross_entropy_case(preset, V, T), flce_case(preset, C, TRAIN_VOCAB, T)]
    for D in SUPPORTED_HEAD_DIMS:  # GPT-2 small's width and context, every head dim
        for dropout in (0.0, 0.1) if D >= 64 else (0.0,):
            cases.append(attention_case(f"gpt2 width, D={D}", C0, C0 // D, T0, dropout=dropout))
    C, H, T, _ = _shape("shakespeare-char")
    cases.append(attention_case("shakespeare-char", C, H, T,
                                dropout=PRESETS["shakespeare-char"]["dropout"]))
    cases.append(decode_case("gpt2", C0, H0, T0))
    return [c for c in cases if c.op in ops]

